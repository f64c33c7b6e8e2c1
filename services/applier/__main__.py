"""python -m mallard.services.applier"""
import sys

from mallard.runtime.service import main
from mallard.services.applier.config import ApplierSettings
from mallard.services.applier.bootstrap import bootstrap

SUMMARY = """\
mallard applier: the only writer of the DuckDB file. Consumes Debezium's CDC topics
(<prefix>.<schema>.<table>, <prefix>.transaction) and the snapshot topic, orders
changes per key, applies them in batches on Postgres transaction boundaries, and
commits Kafka offsets only after DuckDB has committed. Snapshots from the snapshot
topic are staged and merged into their tables with the cut rule."""

if __name__ == "__main__":
    sys.exit(main("python -m mallard.services.applier", SUMMARY, ApplierSettings, bootstrap))
