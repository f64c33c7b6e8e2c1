from pydantic import Field

from mallard.settings import ServiceSettings


class SchedulerSettings(ServiceSettings):
    health_port: int = Field(18083, description="Port of the scheduler's HTTP health endpoint (/healthz); 0 disables it.")
    replication_config: str = Field("", description="Path of the replication config (streams and cron schedules); empty: none yet.")
