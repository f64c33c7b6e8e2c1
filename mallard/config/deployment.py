"""Which deployment the CLI talks to (the edge around mallard/core/deployment.py): the
profile file on disk, the environment, and the local stack's own addresses as the
default when nothing else is given."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mallard.core.deployment import Deployment, ProfileError, parse_profiles, resolve

BUILT_IN_PROFILES: dict[str, dict[str, Any]] = {
    # docker-compose.yml's published ports (all on 127.0.0.1); the applier's port is
    # published only with the override its header shows: until then the replica is read
    # from the read copy the applier writes to the host's .mallard/compose/.
    "compose": {"bootstrap_server": "127.0.0.1:19092", "connect_url": "http://127.0.0.1:8083",
                "applier_url": "http://127.0.0.1:18082", "pg_dsn": "postgresql://mallard@127.0.0.1:15432/shop",
                "config": "demo/replication.yaml", "replica_file": ".mallard/compose/mallard.duckdb", "kafka": {}},
}


def profiles_path(env: Mapping[str, str] | None = None) -> Path:
    """MALLARD_PROFILES, else $XDG_CONFIG_HOME/mallard/profiles.yaml (~/.config/...)."""
    env = os.environ if env is None else env
    if env.get("MALLARD_PROFILES"):
        return Path(env["MALLARD_PROFILES"])
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "mallard" / "profiles.yaml"


def load_profiles(path: Path) -> dict[str, dict[str, Any]]:
    """The built-in profiles, overridden by the file's (a missing file: the built-in ones)."""
    profiles = dict(BUILT_IN_PROFILES)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return profiles
    except OSError as e:
        raise ProfileError(f"{path}: cannot read the profile file: {e.strerror}") from None
    profiles.update(parse_profiles(text, str(path)))
    return profiles


def stack_settings() -> Any:
    """The local stack's settings: the environment, then what ``up`` recorded in the home's
    stack.json (so commands talk to the stack ``up`` started, whatever the shell)."""
    from mallard.stack.local import StackSettings

    settings = StackSettings()
    recorded = settings.home / "stack.json"
    if recorded.exists():
        settings = StackSettings(**{**json.loads(recorded.read_text()), "pg_password": settings.pg_password})
    return settings


def local_addresses(stack: Any) -> dict[str, str]:
    """The local stack's addresses: the default deployment. (Its Postgres is reached through
    its settings and roles, not a DSN: pg_dsn stays empty.)"""
    return {"bootstrap_server": stack.bootstrap_servers, "applier_url": f"http://127.0.0.1:{stack.applier_health_port}",
            "connect_url": stack.connect_url, "pg_dsn": "", "config": stack.replication_config, "replica_file": ""}


def resolve_deployment(options: Mapping[str, str | None], profile: str | None = None,
                       env: Mapping[str, str] | None = None, stack: Any = None) -> Deployment:
    env = os.environ if env is None else env
    profile = profile or env.get("MALLARD_PROFILE") or None
    values = None
    if profile:
        path = profiles_path(env)
        profiles = load_profiles(path)
        if profile not in profiles:
            raise ProfileError(f"no profile {profile!r} in {path} (profiles: {', '.join(sorted(profiles)) or 'none'})")
        values = profiles[profile]
    stack = stack if stack is not None else stack_settings()
    from mallard.stack.local import LocalStack

    return resolve(options, env, values, profile, local_addresses(stack), LocalStack(stack).kafka_client_config())


def config_source(stack: Any, path: str) -> Any:
    """The stack's Postgres settings with the replication config's ``source`` over them
    (a MALLARD_PG_* variable, where set, still wins): what a config given with ``--config``,
    MALLARD_REPLICATION_CONFIG or a profile names, as ``mallard check`` reads it too."""
    from mallard.config.settings import PostgresSettings

    ranked = PostgresSettings(replication_config=path)
    return stack.model_copy(update={f: getattr(ranked, f) for f in ranked.model_fields_set
                                    if f.startswith("pg_") and f in PostgresSettings.model_fields})


def same_server(a: Any, b: Any) -> bool:
    return (a.pg_host, int(a.pg_port), a.pg_database) == (b.pg_host, int(b.pg_port), b.pg_database)


def postgres_settings(deployment: Deployment, stack: Any, env: Mapping[str, str] | None = None) -> Any:
    """What connects to the source: the deployment's DSN (its password, if none, from
    PGPASSWORD or MALLARD_PG_PASSWORD), else the local stack's settings."""
    if not deployment.pg_dsn:
        return stack
    import psycopg2.extensions
    from pydantic import SecretStr

    from mallard.config.settings import PostgresSettings

    env = os.environ if env is None else env
    try:
        parts = psycopg2.extensions.parse_dsn(deployment.pg_dsn)
    except psycopg2.ProgrammingError:
        raise ValueError("--pg-dsn: not a libpq connection string or postgresql:// URL") from None
    password = parts.get("password") or env.get("PGPASSWORD") or env.get("MALLARD_PG_PASSWORD") or ""
    fields = {"pg_host": parts.get("host", "127.0.0.1"), "pg_port": int(parts.get("port", 5432)),
              "pg_user": parts.get("user", "mallard"), "pg_database": parts.get("dbname", "postgres"),
              "pg_password": SecretStr(password)}
    for key in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
        if parts.get(key):
            fields[f"pg_{key}"] = parts[key]
    return PostgresSettings.model_construct(**{**PostgresSettings().model_dump(), **fields})
