"""Message contracts: everything that crosses Kafka, declared once.

- ``debezium``: Debezium's change-event and transaction-metadata envelopes, as
  the applier reads them (a consumer-side contract: Debezium defines them).
- ``snapshot``: the snapshotter's framed full-refresh batches (begin/rows/end).
- ``control``: resnapshot requests on the control topic.

JSON Schema files exported from these models live in ``schemas/json/``;
``python -m mallard.schemas.export`` rewrites them and a test fails when they are stale.
"""
