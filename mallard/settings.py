"""Settings shared by the services and the CLI, read from ``MALLARD_*`` environment variables.

Every field is declared once, with its description; ``--help`` of each service
lists them. The local stack and docker-compose set the same variables.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import os

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONNECTOR_CONFIG = REPO_ROOT / "debezium" / "postgres-connector.json"

# Defaults stay clear of a system Postgres (5432) and a system Kafka (9092).
DEFAULT_PG_PORT = 15432
DEFAULT_KAFKA_PORT = 19092


class MallardSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MALLARD_", extra="ignore")


class KafkaSettings(MallardSettings):
    kafka_bootstrap_servers: str = Field(
        f"127.0.0.1:{DEFAULT_KAFKA_PORT}", description="Kafka bootstrap servers, host:port[,host:port...]."
    )
    topic_prefix: str = Field(
        "mallard", description="Debezium's topic.prefix: CDC topics are <prefix>.<schema>.<table>, tx metadata <prefix>.transaction."
    )
    control_topic: str = Field("mallard.control", description="Topic of resnapshot requests (schemas/control.py).")
    snapshot_topic: str = Field("mallard.snapshots", description="Topic of framed snapshot batches (schemas/snapshot.py).")
    dead_letter_topic: str = Field(
        "mallard.dead-letter", description="Where messages that cannot be applied go, with the reason (schemas/deadletter.py)."
    )


class PostgresSettings(MallardSettings):
    pg_host: str = Field("127.0.0.1", description="Source Postgres host.")
    pg_port: int = Field(DEFAULT_PG_PORT, description="Source Postgres port.")
    pg_user: str = Field("mallard", description="Source Postgres user. The local stack gives each service a role of "
                         "its own; this one owns the demo schema and is what the CLI connects as.")
    pg_password: SecretStr = Field(SecretStr("mallard"), description="Source Postgres password; never logged.")
    pg_database: str = Field("shop", description="Source Postgres database.")

    @model_validator(mode="after")
    def _source_from_the_replication_config(self) -> "PostgresSettings":
        """The replication config's ``source`` names the Postgres to replicate: a setting
        not given as a MALLARD_PG_* variable comes from it (its env references resolved)."""
        path = os.environ.get("MALLARD_REPLICATION_CONFIG")
        fields = ("pg_host", "pg_port", "pg_user", "pg_password", "pg_database")
        if not path or not Path(path).is_file() or all(f in self.model_fields_set for f in fields):
            return self
        from mallard.core.replication_config import ConfigError, resolve_env
        from mallard.replication import load_config  # reads one small file; nothing connects

        try:
            source = load_config(path).model.source
        except ConfigError:
            return self  # whoever uses the config loads it again and reports it in one line (not a settings traceback)
        for field in fields:
            if field in self.model_fields_set:
                continue
            try:
                value = resolve_env(getattr(source, field[3:]), os.environ)
            except KeyError:
                continue  # a reference to a variable not set here: the default stands
            setattr(self, field, SecretStr(value) if field == "pg_password" else
                    int(value) if field == "pg_port" else value)
        return self

    def pg_dsn(self, with_password: bool = True) -> str:
        """libpq DSN; without the password for anything that is printed."""
        password = self.pg_password.get_secret_value() if with_password else "***"
        return (
            f"postgresql://{self.pg_user}:{password}@{self.pg_host}:{self.pg_port}/{self.pg_database}"
        )

    def pg_env(self) -> dict[str, str]:
        """The MALLARD_PG_* variables the connector config refers to."""
        return {
            "MALLARD_PG_HOST": self.pg_host,
            "MALLARD_PG_PORT": str(self.pg_port),
            "MALLARD_PG_USER": self.pg_user,
            "MALLARD_PG_PASSWORD": self.pg_password.get_secret_value(),
            "MALLARD_PG_DATABASE": self.pg_database,
        }


class PostgresRoleSettings(MallardSettings):
    """The roles each part connects as: none of them a superuser (see ``mallard check``)."""

    pg_debezium_user: str = Field("mallard_debezium", description="Role Debezium streams WAL as: LOGIN REPLICATION "
                                  "and SELECT on the captured tables, nothing else.")
    pg_snapshotter_user: str = Field("mallard_snapshotter", description="Role the snapshotter (and the other services' "
                                     "reads) connects as: SELECT only.")


class ServiceSettings(KafkaSettings):
    health_port: int = Field(0, description="Port of the service's HTTP health endpoint (/healthz); 0 disables it.")
    health_host: str = Field("127.0.0.1", description="Interface the health endpoint listens on (0.0.0.0 in containers).")
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text (for people) or json (one object per line with time, level, logger, "
        "message and the line's fields, e.g. stream, rows, rate); --log-format overrides it.")
