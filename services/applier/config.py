from pydantic import Field

from mallard.settings import ServiceSettings


class ApplierSettings(ServiceSettings):
    health_port: int = Field(18082, description="Port of the applier's HTTP health endpoint (/healthz); 0 disables it.")
    duckdb_path: str = Field(".mallard/duckdb/mallard.duckdb", description="The DuckDB file the applier alone writes.")
    consumer_group: str = Field("mallard-applier", description="Kafka consumer group; its committed offsets are the replication state.")
