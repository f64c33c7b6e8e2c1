"""python -m mallard.services.snapshotter"""
import sys

from mallard.runtime.service import main
from mallard.services.snapshotter.config import SnapshotterSettings
from mallard.services.snapshotter.bootstrap import bootstrap

SUMMARY = """\
mallard snapshotter: consumes resnapshot requests from the control topic and, for
each requested stream, reads the table in one consistent REPEATABLE READ Postgres
snapshot and publishes it to the snapshot topic as framed batches (begin with the
cut, rows as Arrow record batches of the applier's transport types, end with the
row count). It refuses to take a cut before Debezium's replication slot exists."""

if __name__ == "__main__":
    sys.exit(main("python -m mallard.services.snapshotter", SUMMARY, SnapshotterSettings, bootstrap))
