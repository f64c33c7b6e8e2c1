"""Which deployment the CLI talks to: a pure resolution of command-line options,
``MALLARD_*`` variables, a named profile and the local stack's own addresses, in
that order of precedence (the first that gives a value wins).

A profile file is YAML, like kubectl contexts or kcat's ``-F`` file::

    profiles:
      compose:
        bootstrap_server: 127.0.0.1:9092
        applier_url: http://127.0.0.1:8082
        connect_url: http://127.0.0.1:8083
        pg_dsn: postgresql://mallard@127.0.0.1:5432/shop
        config: demo/replication.yaml
        replica_file: .mallard/compose/mallard.duckdb   # a read copy, when the applier is not reachable
        kafka:                          # librdkafka properties: security and TLS
          security.protocol: SASL_SSL
          sasl.mechanism: SCRAM-SHA-512
          sasl.username: mallard
          sasl.password: ${KAFKA_PASSWORD}   # secrets only as ${ENV} references
          ssl.ca.location: /etc/kafka/ca.pem

Nothing here reads a file or the environment: the caller hands both in.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from mallard.core.replication import resolve_env

ADDRESSES = ("bootstrap_server", "applier_url", "connect_url", "pg_dsn", "config", "replica_file")
"""What names a deployment; each is a global option (--bootstrap-server ...) and a variable."""

ENV_NAMES = {
    "bootstrap_server": "MALLARD_KAFKA_BOOTSTRAP_SERVERS",
    "applier_url": "MALLARD_APPLIER_URL",
    "connect_url": "MALLARD_CONNECT_URL",
    "pg_dsn": "MALLARD_PG_DSN",
    "config": "MALLARD_REPLICATION_CONFIG",
    "replica_file": "MALLARD_REPLICA_FILE",
}

KAFKA_ENV = {
    "security.protocol": "MALLARD_KAFKA_SECURITY_PROTOCOL",
    "sasl.mechanism": "MALLARD_KAFKA_SASL_MECHANISM",
    "sasl.username": "MALLARD_KAFKA_SASL_USERNAME",
    "sasl.password": "MALLARD_KAFKA_SASL_PASSWORD",
    "ssl.ca.location": "MALLARD_KAFKA_SSL_CA_LOCATION",
    "ssl.certificate.location": "MALLARD_KAFKA_SSL_CERTIFICATE_LOCATION",
    "ssl.key.location": "MALLARD_KAFKA_SSL_KEY_LOCATION",
    "ssl.key.password": "MALLARD_KAFKA_SSL_KEY_PASSWORD",
}
"""The librdkafka security properties mallard passes through, and their variables."""

SECRET_KAFKA = frozenset({"sasl.password", "ssl.key.password"})
_KAFKA_ALLOWED = re.compile(r"^(security\.protocol|sasl\.[a-z.]+|ssl\.[a-z.]+|client\.id)$")


class ProfileError(ValueError):
    """The profile file or a profile in it cannot be used; one line naming what is wrong."""


@dataclass(frozen=True)
class Deployment:
    bootstrap_server: str
    applier_url: str
    connect_url: str
    pg_dsn: str
    config: str
    replica_file: str = ""
    """A copy of the replica (the applier's read copy) that query, status and verify open
    read-only when the applier does not answer: compose from the host."""
    kafka: Mapping[str, str] = field(default_factory=dict)
    """librdkafka properties every client gets (security.protocol, sasl.*, ssl.*)."""
    profile: str | None = None
    origin: Mapping[str, str] = field(default_factory=dict)
    """Where each value came from: option, environment, profile <name>, local stack."""

    @property
    def is_local_stack(self) -> bool:
        """Nothing was given: every address is the local stack's."""
        return all(self.origin.get(name) == "local stack" for name in ("bootstrap_server", "applier_url"))

    def shown(self) -> dict[str, Any]:
        """What ``mallard profile show`` prints: secrets masked."""
        return {
            "profile": self.profile,
            **{name: mask_dsn(getattr(self, name)) if name == "pg_dsn" else getattr(self, name) for name in ADDRESSES},
            "kafka": {k: ("***" if k in SECRET_KAFKA else v) for k, v in sorted(self.kafka.items())},
            "from": dict(self.origin),
        }


def mask_dsn(dsn: str) -> str:
    """A libpq URL or key=value DSN with its password replaced by ***."""
    if not dsn:
        return dsn
    if "://" in dsn:
        parts = urlsplit(dsn)
        if parts.password is None:
            return dsn
        netloc = parts.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn)


def parse_profiles(text: str, source: str = "profiles.yaml") -> dict[str, dict[str, Any]]:
    """name -> the profile's raw values. ProfileError (one line) on anything unusable."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ProfileError(f"{source}{line}: not valid YAML") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict) or not isinstance(doc.get("profiles", {}), dict) or set(doc) - {"profiles"}:
        raise ProfileError(f"{source}: expected a mapping with one key, 'profiles' (name -> settings)")
    profiles: dict[str, dict[str, Any]] = {}
    for name, values in (doc.get("profiles") or {}).items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ProfileError(f"{source}: profiles.{name}: a profile name is letters, digits, '.', '_' or '-'")
        values = values or {}
        if not isinstance(values, dict):
            raise ProfileError(f"{source}: profiles.{name}: expected a mapping of settings")
        unknown = sorted(set(values) - set(ADDRESSES) - {"kafka"})
        if unknown:
            raise ProfileError(f"{source}: profiles.{name}.{unknown[0]}: unknown setting (expected one of "
                               f"{', '.join(ADDRESSES)}, kafka)")
        for key in ADDRESSES:
            if key in values and not isinstance(values[key], (str, int)):
                raise ProfileError(f"{source}: profiles.{name}.{key}: expected a string")
        kafka = values.get("kafka") or {}
        if not isinstance(kafka, dict):
            raise ProfileError(f"{source}: profiles.{name}.kafka: expected librdkafka properties (a mapping)")
        for key, value in kafka.items():
            if not isinstance(key, str) or not _KAFKA_ALLOWED.match(key):
                raise ProfileError(f"{source}: profiles.{name}.kafka.{key}: only security.protocol, sasl.* and ssl.* "
                                   "properties belong here")
            if key in SECRET_KAFKA and not re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", str(value)):
                raise ProfileError(f"{source}: profiles.{name}.kafka.{key}: a secret must be an environment "
                                   "reference such as ${KAFKA_PASSWORD}, never the secret itself")
        if "pg_dsn" in values and mask_dsn(str(values["pg_dsn"])) != str(values["pg_dsn"]) \
                and "${" not in str(values["pg_dsn"]):
            raise ProfileError(f"{source}: profiles.{name}.pg_dsn: a password in the DSN must be an environment "
                               "reference (or use PGPASSWORD / ~/.pgpass)")
        profiles[name] = {**{k: str(values[k]) for k in ADDRESSES if k in values},
                          "kafka": {k: str(v) for k, v in kafka.items()}}
    return profiles


def resolve(options: Mapping[str, str | None], env: Mapping[str, str], profile: Mapping[str, Any] | None,
            profile_name: str | None, local: Mapping[str, str],
            local_kafka: Mapping[str, str] | None = None) -> Deployment:
    """Each address from the first of: the option, the variable, the profile, the local stack.
    Kafka properties: the variables over the profile's. ``${ENV}`` references in a profile
    are resolved from ``env`` (ProfileError names one that is not set)."""
    profile = profile or {}
    values: dict[str, str] = {}
    origin: dict[str, str] = {}
    for name in ADDRESSES:
        for where, value in (("option", options.get(name)), ("environment", env.get(ENV_NAMES[name])),
                             (f"profile {profile_name}", profile.get(name)), ("local stack", local.get(name, ""))):
            if value:
                value = str(value)
                values[name] = _resolved(value, env, f"{profile_name}.{name}") if where.startswith("profile") else value
                origin[name] = where
                break
        else:
            values[name], origin[name] = "", "unset"
    kafka: dict[str, str] = {}
    for key, value in (profile.get("kafka") or {}).items():
        kafka[key] = _resolved(value, env, f"{profile_name}.kafka.{key}")
    for key, var in KAFKA_ENV.items():
        if env.get(var):
            kafka[key] = env[var]
    if kafka:
        origin["kafka"] = "environment" if any(env.get(v) for v in KAFKA_ENV.values()) else f"profile {profile_name}"
    elif local_kafka and origin["bootstrap_server"] == "local stack":  # its own broker's login, never another's
        kafka, origin["kafka"] = dict(local_kafka), "local stack"
    return Deployment(kafka=kafka, profile=profile_name, origin=origin, **values)


def _resolved(value: str, env: Mapping[str, str], where: str) -> str:
    try:
        return resolve_env(value, env)
    except KeyError as e:
        raise ProfileError(f"profile {where}: the variable {e.args[0]} it refers to is not set") from None
