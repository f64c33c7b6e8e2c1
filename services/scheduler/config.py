from typing import Literal

from pydantic import Field

from mallard.config.settings import PostgresSettings, ServiceSettings


class SchedulerSettings(ServiceSettings, PostgresSettings):
    health_port: int = Field(18083, description="Port of the scheduler's HTTP health endpoint (/healthz); 0 disables it.")
    replication_config: str = Field("", description="Path of the replication config (streams and cron schedules); "
                                    "empty: no schedules, the scheduler idles.")
    consumer_group: str = Field("mallard-scheduler", description="Kafka consumer group on the control topic: the member "
                                "holding its partition is the one scheduler that publishes (others stand by).")
    catch_up: Literal["once", "skip"] = Field("once", description="A fire missed while no scheduler ran: 'once' runs the "
                                              "latest missed fire once on start, 'skip' does not (a schedule may override).")
    missed_after_s: float = Field(60.0, description="A fire published later than this after its time counts as missed.")
    check_tables: bool = Field(True, description="At start, check every stream's table exists in Postgres (stop if not).")
    now: str = Field("", description="Tests: the scheduler's clock starts at this ISO instant instead of the real time.")
    time_scale: float = Field(1.0, gt=0, description="Tests: scheduler seconds per real second (60: a minute a second).")
    session_timeout_ms: int = Field(6000, description="Kafka consumer session timeout: how soon a stand-by takes over.")
