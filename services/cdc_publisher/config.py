from pydantic import Field

from mallard.settings import DEFAULT_CONNECTOR_CONFIG, PostgresSettings, ServiceSettings


class CdcPublisherSettings(ServiceSettings, PostgresSettings):
    health_port: int = Field(18084, description="Port of the publisher's HTTP health endpoint (/healthz); 0 disables it.")
    connector_config: str = Field(
        str(DEFAULT_CONNECTOR_CONFIG),
        description="Debezium connector config (Kafka Connect JSON), the same file docker-compose registers.",
    )
    offsets_file: str = Field(
        ".mallard/debezium/offsets.dat", description="Where Debezium's embedded engine keeps its offsets across restarts."
    )
    offset_flush_interval_ms: int = Field(
        1000, description="How often Debezium writes its offsets (only of events already flushed to Kafka)."
    )
    flush_timeout_s: float = Field(60.0, description="How long a batch may wait for Kafka to acknowledge it before the publisher stops.")
    jvm_max_heap: str = Field("1g", description="Maximum JVM heap of the embedded Debezium engine (-Xmx).")
