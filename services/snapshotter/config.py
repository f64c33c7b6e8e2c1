from pydantic import Field

from mallard.settings import DEFAULT_CONNECTOR_CONFIG, PostgresSettings, ServiceSettings


class SnapshotterSettings(ServiceSettings, PostgresSettings):
    health_port: int = Field(18081, description="Port of the snapshotter's HTTP health endpoint (/healthz); 0 disables it.")
    batch_rows: int = Field(10_000, description="Rows per snapshot batch message (upper bound; batch_bytes also applies).")
    batch_bytes: int = Field(900_000, description="Approximate bytes per snapshot batch message, under Kafka's 1 MB default.")
    consumer_group: str = Field("mallard-snapshotter", description="Kafka consumer group reading the control topic.")
    connector_config: str = Field(str(DEFAULT_CONNECTOR_CONFIG),
                                  description="Debezium connector config: names the replication slot that must exist before a cut.")
