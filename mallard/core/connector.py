"""The Debezium connector config, one file for both stacks.

docker-compose registers it with Kafka Connect as it is (Connect resolves the
``${env:NAME}`` placeholders with its EnvVarConfigProvider); the local stack's
embedded engine reads the same file and resolves them here. Pure: no I/O but
the caller's text.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from mallard.core import names

PLACEHOLDER = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")

# Settings that only mean something to a Kafka Connect worker: the embedded
# engine hands events to our publisher instead, and we create topics ourselves.

REQUIRED = {
    "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
    "plugin.name": "pgoutput",
    "snapshot.mode": "no_data",
    "skipped.operations": "none",
    "provide.transaction.metadata": "true",
    # numerics as their exact text (NaN and ±Infinity too: precise mode sends null for them),
    # with the column's precision and scale as schema parameters
    "decimal.handling.mode": "string",
    "datatype.propagate.source.type": ".+\\.numeric",
    "interval.handling.mode": "string",
    "key.converter.schemas.enable": "true",
    "value.converter.schemas.enable": "true",
}
"""What mallard relies on: the applier's decoding and the cut rule assume these."""


class ConnectorConfigError(ValueError):
    """The connector config file is unusable; the message names the key or variable."""


@dataclass(frozen=True)
class ConnectorConfig:
    name: str
    config: dict[str, str]

    @property
    def topic_prefix(self) -> str:
        return self.config["topic.prefix"]

    @property
    def slot_name(self) -> str:
        return self.config.get("slot.name", "debezium")

    @property
    def publication_name(self) -> str:
        """The publication of every change (the first of ``publication.name``'s list)."""
        return self.config.get("publication.name", "dbz_publication").split(",")[0].strip()

    @property
    def inserts_publication(self) -> str | None:
        """The inserts-only publication of tables without a primary key (mallard/core/keyless.py),
        when ``publication.name`` lists it."""
        names = [n.strip() for n in self.config.get("publication.name", "").split(",")]
        return names[1] if len(names) > 1 else None

    @property
    def publication_marker(self) -> str | None:
        """When ``publication.name`` lists two publications: that whole text, the name of the
        (empty) publication Debezium checks exists before it streams."""
        return self.config["publication.name"] if self.inserts_publication else None

    @property
    def include_entries(self) -> list[str]:
        """table.include.list's entries (Debezium's regexes), as written."""
        return names.split_include_list(self.config.get("table.include.list", ""))

    @property
    def tables(self) -> list[str]:
        """The streams of table.include.list's entries (empty: every table): each entry
        written by ``with_streams`` names its stream (names.include_entry); any other is a
        regex of Debezium's, kept as it is."""
        return [names.stream_of_include(e) or e for e in self.include_entries]

    def cdc_topic(self, stream: str) -> str:
        return cdc_topic(self.topic_prefix, stream)

    @property
    def transaction_topic(self) -> str:
        return transaction_topic(self.topic_prefix)


def cdc_topic(prefix: str, stream: str) -> str:
    """Debezium's topic for a stream: '<prefix>.<schema>.<table>', sanitized as Debezium
    does (names.cdc_topic: ``public."Order Items"`` -> ``<prefix>.public.Order_Items``)."""
    return names.cdc_topic(prefix, stream)


def transaction_topic(prefix: str) -> str:
    return f"{prefix}.transaction"


def message_topic(prefix: str) -> str:
    """The topic of logical decoding messages (``pg_logical_emit_message``), where mallard's
    DDL signal comes (schemas/ddl.py)."""
    return f"{prefix}.message"


def message_topic_pattern(prefix: str) -> str:
    """``message_topic`` as a regex subscription: Debezium creates the topic with its first
    message, and a subscription by name to a missing topic is an error."""
    return "^" + re.escape(message_topic(prefix)) + "$"


def cdc_topic_pattern(prefix: str) -> str:
    """A Kafka regex subscription to every table topic of the prefix (not the transaction
    topic, which has one dot fewer), so new tables are picked up without a restart.
    Debezium keeps a dot inside a schema or table name (a valid topic character): a table
    topic has at least two dots after the prefix, maybe more (librdkafka's regexes have no
    lookahead, so the shape is all it can say)."""
    return "^" + re.escape(prefix) + r"\..+\..+$"


def parse_connector_config(text: str, source: str = "connector config") -> ConnectorConfig:
    """Parse the Kafka Connect REST form ``{"name": ..., "config": {...}}`` and check it."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConnectorConfigError(f"{source}: not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not isinstance(doc.get("config"), dict):
        raise ConnectorConfigError(f'{source}: expected {{"name": "...", "config": {{...}}}}')
    config = {str(k): str(v) for k, v in doc["config"].items()}
    for key, expected in REQUIRED.items():
        if config.get(key) != expected:
            raise ConnectorConfigError(
                f"{source}: '{key}' must be '{expected}' (found {config.get(key)!r}); mallard's applier depends on it"
            )
    if not config.get("topic.prefix"):
        raise ConnectorConfigError(f"{source}: 'topic.prefix' is required")
    return ConnectorConfig(name=doc["name"], config=config)


def with_streams(config: ConnectorConfig, streams: list[str]) -> ConnectorConfig:
    """The connector config capturing exactly the replication config's streams
    (``table.include.list`` derived from them, so the two cannot disagree)."""
    if not streams:
        raise ConnectorConfigError("the replication config has no streams for table.include.list")
    entries = ",".join(names.include_entry(s) for s in streams)
    return ConnectorConfig(name=config.name, config={**config.config, "table.include.list": entries})


def placeholders(config: ConnectorConfig) -> set[str]:
    """Environment variables the config refers to."""
    return {m.group(1) for v in config.config.values() for m in PLACEHOLDER.finditer(v)}


def resolve_placeholders(config: ConnectorConfig, env: Mapping[str, str]) -> ConnectorConfig:
    """Replace every ``${env:NAME}`` with env[NAME], as Connect's EnvVarConfigProvider does."""
    missing = sorted(n for n in placeholders(config) if n not in env)
    if missing:
        raise ConnectorConfigError("connector config needs environment variable(s): " + ", ".join(missing))
    resolved = {k: PLACEHOLDER.sub(lambda m: env[m.group(1)], v) for k, v in config.config.items()}
    return ConnectorConfig(name=config.name, config=resolved)


def with_inserts_publication(config: ConnectorConfig) -> ConnectorConfig:
    """The connector config streaming from the publication and its inserts-only sibling
    (mallard/core/keyless.py): Debezium hands ``publication.name`` to pgoutput as it is."""
    from mallard.core.keyless import publication_names

    names = publication_names(config.publication_name)
    return ConnectorConfig(name=config.name, config={**config.config, "publication.name": names})
