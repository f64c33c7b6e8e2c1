"""python -m services.cdc_publisher"""
import sys

from mallard.service import main
from services.cdc_publisher.config import CdcPublisherSettings
from services.cdc_publisher.service import CdcPublisherService

SUMMARY = """\
mallard CDC publisher (local stack only; docker-compose runs Kafka Connect instead):
runs the real Debezium PostgreSQL connector embedded on the JVM, from the same
connector config file that docker-compose registers, creates the publication and
replication slot it needs, and produces every change event to the topic Debezium
names, key and value unchanged. Each batch is flushed to Kafka before Debezium may
commit its offsets (at-least-once); offsets are kept in a file across restarts."""

if __name__ == "__main__":
    sys.exit(main("python -m services.cdc_publisher", SUMMARY, CdcPublisherSettings, CdcPublisherService))
