from typing import Literal

from pydantic import Field

from mallard.config.settings import DEFAULT_CONNECTOR_CONFIG, PostgresSettings, ServiceSettings


class SnapshotterSettings(ServiceSettings, PostgresSettings):
    health_port: int = Field(18081, description="Port of the snapshotter's HTTP health endpoint (/healthz); 0 disables it.")
    batch_rows: int = Field(10_000, description="Rows per snapshot batch message (upper bound; batch_bytes also applies).")
    batch_bytes: int = Field(900_000, description="Approximate bytes per snapshot batch message, under Kafka's 1 MB default.")
    consumer_group: str = Field("mallard-snapshotter", description="Kafka consumer group reading the control topic.")
    slot_wait_s: float = Field(120, description="How long a request waits for Debezium's replication slot to exist "
                               "before it fails (the slot appears when the CDC side has started).")
    connector_config: str = Field(str(DEFAULT_CONNECTOR_CONFIG),
                                  description="Debezium connector config: names the replication slot that must exist before a cut.")
    parallel_readers: int = Field(2, ge=1, description="Connections reading one large table at once (disjoint ctid page "
                                  "ranges, all in the one exported snapshot of the cut).")
    parallel_min_rows: int = Field(500_000, ge=0, description="Tables estimated at fewer rows are read by one connection.")
    sql_encoding: bool = Field(True, description="Let Postgres (14+) encode rows as Debezium does, as JSON text; false: "
                               "encode in Python (slower; also used on older servers).")
    rows_format: Literal["arrow", "json"] = Field(
        "arrow", description="How rows batches are written: 'arrow' (Arrow record batches of the columns' transport "
        "types, parsed from COPY CSV: fastest) or 'json' (Debezium-encoded JSON rows). Servers before 14: always json.")
    producer_queue_kb: int = Field(32_768, description="Bound of the Kafka producer's queue (kB): readers wait when it is full, "
                                   "so memory stays flat whatever the table's size.")
    progress_interval_s: float = Field(2.0, description="Seconds between progress log lines of a running snapshot.")
    connect_url: str = Field("http://127.0.0.1:18084", description="Kafka Connect's REST API, read when Prometheus "
                             "scrapes /metrics for the connector's task states; empty: not read.")
    replication_config: str = Field("", description="Replication config (YAML): each stream's mode, update_key and "
                                    "filter; empty: every stream is a full refresh of the whole table.")
