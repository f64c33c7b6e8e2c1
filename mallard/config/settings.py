"""Settings shared by the services and the CLI, read from ``MALLARD_*`` environment variables.

Every field is declared once, with its description; ``--help`` of each service
lists them. The local stack and docker-compose set the same variables.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import os
from importlib import resources

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
"""The checkout (the local stack runs from one: its demo database and jvm/pom.xml are there)."""
# Package data (mallard.debezium): found in a checkout and in an installed wheel alike.
DEFAULT_CONNECTOR_CONFIG = Path(str(resources.files("mallard.debezium").joinpath("postgres-connector.json")))

# Defaults stay clear of a system Postgres (5432) and a system Kafka (9092).
DEFAULT_PG_PORT = 15432
DEFAULT_KAFKA_PORT = 19092


class ReplicationConfigSource(PydanticBaseSettingsSource):
    """The replication config's ``source`` (the Postgres to replicate) and ``target`` (the
    DuckDB file) as settings, ranked below the environment: the one way they reach every
    service and the CLI. The file is the one named by a ``replication_config`` keyword or
    MALLARD_REPLICATION_CONFIG (never a field's default); an unusable file gives nothing here
    (whoever uses the config loads it again and reports it in one line)."""

    FIELDS = {"pg_host": ("source", "host"), "pg_port": ("source", "port"), "pg_user": ("source", "user"),
              "pg_password": ("source", "password"), "pg_database": ("source", "database"),
              "duckdb_path": ("target", "path")}

    def __init__(self, settings_cls: type[BaseSettings], path: str | None):
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # (all values come from __call__)

    def __call__(self) -> dict[str, Any]:
        if not self.path or not Path(self.path).is_file():
            return {}
        from mallard.config.replication import load_config  # reads one small file; nothing connects
        from mallard.core.replication import ConfigError, resolve_env

        try:
            model = load_config(self.path).model
        except ConfigError:
            return {}
        values: dict[str, Any] = {}
        for name, (part, key) in self.FIELDS.items():
            if name in self.settings_cls.model_fields:
                try:
                    values[name] = resolve_env(getattr(getattr(model, part), key), os.environ)
                except KeyError:
                    pass  # a reference to a variable not set here: the default stands
        return values


class MallardSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MALLARD_", extra="ignore")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        init = init_settings() if callable(init_settings) else {}
        path = init.get("replication_config") or os.environ.get("MALLARD_REPLICATION_CONFIG")
        return (init_settings, env_settings, ReplicationConfigSource(settings_cls, path), dotenv_settings,
                file_secret_settings)


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
    kafka_security_protocol: str = Field("", description="librdkafka security.protocol: PLAINTEXT, SSL, SASL_PLAINTEXT "
                                         "or SASL_SSL; empty: PLAINTEXT.")
    kafka_sasl_mechanism: str = Field("", description="librdkafka sasl.mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512.")
    kafka_sasl_username: str = Field("", description="SASL user name.")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="SASL password; never logged or shown.")
    kafka_ssl_ca_location: str = Field("", description="CA certificate file (PEM) that verifies the brokers.")
    kafka_ssl_certificate_location: str = Field("", description="Client certificate file (PEM), for TLS client "
                                                "authentication.")
    kafka_ssl_key_location: str = Field("", description="The client certificate's private key file (PEM).")
    kafka_ssl_key_password: SecretStr = Field(SecretStr(""), description="Password of that key; never logged or shown.")

    def kafka_client_config(self) -> dict[str, str]:
        """The librdkafka security properties every client of this process gets."""
        from mallard.core.deployment import KAFKA_ENV

        props = {}
        for prop, var in KAFKA_ENV.items():
            value = getattr(self, var[len("MALLARD_"):].lower())
            value = value.get_secret_value() if isinstance(value, SecretStr) else value
            if value:
                props[prop] = value
        return props


class PostgresSettings(MallardSettings):
    pg_host: str = Field("127.0.0.1", description="Source Postgres host.")
    pg_port: int = Field(DEFAULT_PG_PORT, description="Source Postgres port.")
    pg_user: str = Field("mallard", description="Source Postgres user. The local stack gives each service a role of "
                         "its own; this one owns the demo schema and is what the CLI connects as.")
    pg_password: SecretStr = Field(SecretStr("mallard"), description="Source Postgres password; never logged.")
    pg_database: str = Field("shop", description="Source Postgres database.")

    def pg_dsn(self, with_password: bool = True) -> str:
        """libpq DSN; without the password for anything that is printed."""
        password = self.pg_password.get_secret_value() if with_password else "***"
        return (
            f"postgresql://{self.pg_user}:{password}@{self.pg_host}:{self.pg_port}/{self.pg_database}"
        )

    pg_sslmode: str = Field("", description="libpq sslmode of every connection to the source (disable, require, "
                            "verify-ca, verify-full, ...); empty: libpq's default (prefer).")
    pg_sslrootcert: str = Field("", description="CA certificate file that verifies the source's server certificate.")
    pg_sslcert: str = Field("", description="Client certificate file, when the source authenticates by certificate.")
    pg_sslkey: str = Field("", description="The client certificate's key file.")

    def pg_params(self, dbname: str | None = None) -> dict[str, Any]:
        """What adapters.postgres.connect() takes: plain connection parameters."""
        tls = {k: getattr(self, f"pg_{k}") for k in ("sslmode", "sslrootcert", "sslcert", "sslkey") if getattr(self, f"pg_{k}")}
        return {"host": self.pg_host, "port": self.pg_port, "user": self.pg_user,
                "password": self.pg_password.get_secret_value(), "dbname": dbname or self.pg_database, **tls}

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
    config_reload_interval_s: float = Field(
        2.0, ge=0, description="How often the service looks whether its replication config file changed, and takes "
        "the new one without a restart (streams added or removed, modes, schedules; `mallard config apply` does the "
        "rest); 0: never.")
