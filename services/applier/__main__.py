"""python -m services.applier"""
import sys

from mallard.service import main
from services.applier.config import ApplierSettings
from services.applier.service import ApplierService

SUMMARY = """\
mallard applier: the only writer of the DuckDB file. Consumes Debezium's CDC topics
(<prefix>.<schema>.<table>, <prefix>.transaction) and the snapshot topic, orders
changes per key, applies them in batches on Postgres transaction boundaries, and
commits Kafka offsets only after DuckDB has committed. Today it reaches Kafka and
waits; the apply loop arrives with the applier issue."""

if __name__ == "__main__":
    sys.exit(main("python -m services.applier", SUMMARY, ApplierSettings, ApplierService))
