"""Debezium's envelopes (JsonConverter with ``schemas.enable=true``), consumer side.

Debezium defines these; the models say what mallard relies on and let unknown
fields through (``extra="allow"``) so a newer Debezium does not break decoding.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

UNAVAILABLE_VALUE = "__debezium_unavailable_value"
"""Placeholder Debezium sends for an unchanged TOASTed column: never store it."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ConnectSchema(_Open):
    """A Kafka Connect schema node: the column types of every event."""

    type: str = Field(description="Connect type: int8..int64, float32/64, boolean, string, bytes, array, map, struct.")
    optional: bool = False
    field: str | None = Field(None, description="Field name when this node is a struct member.")
    name: str | None = Field(None, description="Logical type, e.g. org.apache.kafka.connect.data.Decimal, io.debezium.time.MicroTimestamp.")
    version: int | None = None
    parameters: dict[str, str] | None = Field(None, description="Logical-type parameters, e.g. scale for Decimal, allowed for Enum.")
    default: Any = None
    fields: list[ConnectSchema] | None = Field(None, description="Members of a struct.")
    items: ConnectSchema | None = Field(None, description="Element type of an array.")


class SourceInfo(_Open):
    """``payload.source`` of a PostgreSQL change event."""

    version: str
    connector: str
    name: str = Field(description="The connector's topic.prefix.")
    ts_ms: int = Field(description="Commit time in Postgres (ms since epoch).")
    snapshot: str | bool | None = None
    db: str
    schema_: str = Field(alias="schema")
    table: str
    txId: int | None = Field(None, description="32-bit Postgres xid of the writing transaction.")
    lsn: int | None = Field(None, description="LSN of the change.")
    xmin: int | None = None


class TransactionBlock(_Open):
    """``payload.transaction`` when provide.transaction.metadata=true."""

    id: str = Field(description="'<txId>:<lsn>' of the transaction.")
    total_order: int = Field(description="Position of the event among all events of the transaction (1-based).")
    data_collection_order: int = Field(description="Position among the transaction's events of this table (1-based).")


class ChangeEventPayload(_Open):
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    source: SourceInfo
    op: Literal["c", "u", "d", "r", "t", "m"] = Field(description="create, update, delete, read (snapshot), truncate, message.")
    ts_ms: int | None = None
    transaction: TransactionBlock | None = None


class ChangeEventValue(_Open):
    """Value of a message on ``<prefix>.<schema>.<table>`` (a tombstone has no value at all)."""

    schema_: ConnectSchema = Field(alias="schema")
    payload: ChangeEventPayload


class ChangeEventKey(_Open):
    """Key of a message on ``<prefix>.<schema>.<table>``: the primary-key columns."""

    schema_: ConnectSchema = Field(alias="schema")
    payload: dict[str, Any] | None


class DataCollectionCount(_Open):
    data_collection: str = Field(description="'<schema>.<table>'.")
    event_count: int


class TransactionEventPayload(_Open):
    status: Literal["BEGIN", "END"]
    id: str
    event_count: int | None = Field(None, description="Events of the transaction over all tables (END only).")
    data_collections: list[DataCollectionCount] | None = Field(None, description="Per-table event counts (END only).")
    ts_ms: int


class TransactionEvent(_Open):
    """Value of a message on ``<prefix>.transaction``."""

    schema_: ConnectSchema = Field(alias="schema")
    payload: TransactionEventPayload


class LogicalMessage(_Open):
    """``payload.message`` of a logical decoding message (``pg_logical_emit_message``)."""

    prefix: str | None = None
    content: str | None = Field(None, description="The message's bytes, base64 (Connect bytes in JSON).")


class LogicalMessagePayload(_Open):
    op: Literal["m"]
    ts_ms: int | None = None
    source: SourceInfo
    transaction: TransactionBlock | None = Field(None, description="Present for a transactional message.")
    message: LogicalMessage


class LogicalMessageValue(_Open):
    """Value of a message on ``<prefix>.message``: Debezium publishes every logical decoding
    message there (the ``txId`` of a transactional one is its transaction's); mallard reads
    only those with the ``mallard.ddl`` prefix (schemas/ddl.py)."""

    schema_: ConnectSchema = Field(alias="schema")
    payload: LogicalMessagePayload


ConnectSchema.model_rebuild()
