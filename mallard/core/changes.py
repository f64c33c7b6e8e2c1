"""Decode Debezium messages (JsonConverter, schemas enabled) into change events. Pure.

The schema block is the same for every event of a table, so it is parsed once
per distinct schema text and cached; only the small payload is parsed per event.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import orjson

from mallard.core.pgtypes import ColumnType, column_type, is_unavailable

OPS = frozenset("cudrt")


class PoisonMessage(ValueError):
    """A message that cannot be applied; the reason names what was wrong."""


@dataclass(frozen=True)
class TableSchema:
    stream: str
    """'<schema>.<table>' in Postgres."""
    columns: tuple[str, ...]
    types: tuple[ColumnType, ...]
    key_columns: tuple[str, ...]
    """Primary-key columns (empty: the table has no primary key)."""
    key_known: bool = True
    """False for a truncate, which carries no key: its schema says nothing about the key."""

    @property
    def fingerprint(self) -> str:
        text = "|".join(f"{c}:{t.duckdb}" for c, t in zip(self.columns, self.types)) + "#" + ",".join(self.key_columns)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    @property
    def key_indexes(self) -> tuple[int, ...]:
        return tuple(self.columns.index(c) for c in self.key_columns)


@dataclass(slots=True)
class ChangeEvent:
    topic: str
    partition: int
    offset: int
    stream: str
    op: str
    tx_id: int
    total_order: int
    committed_at_ms: int
    key: tuple | None
    row: tuple | None
    """After image in ``schema.columns`` order (transport values); None for d and t."""
    unavailable: frozenset[int]
    """Indexes of columns Debezium did not send (unchanged TOASTed values)."""
    schema: TableSchema


@dataclass(slots=True)
class TransactionMarker:
    topic: str
    partition: int
    offset: int
    status: str
    tx_id: int
    lsn: int
    """For END: the commit LSN, which orders transactions as Postgres committed them."""
    event_count: int
    committed_at_ms: int


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # Jackson writes NaN/Infinity as bare tokens; the stdlib parser accepts them
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise PoisonMessage(f"not JSON: {e}") from None


def split_envelope(raw: bytes) -> tuple[bytes | None, bytes]:
    """(schema text, payload text) of '{"schema":...,"payload":...}' without parsing the
    schema; (None, raw) when the message is not in that exact shape."""
    if raw.startswith(b'{"schema":') and raw.endswith(b"}"):
        cut = raw.find(b',"payload":')
        if cut > 0:
            return raw[10:cut], raw[cut + 11 : -1]
    return None, raw


class Decoder:
    """Turns raw Kafka messages into ChangeEvents / TransactionMarkers."""

    def __init__(self) -> None:
        self._value_schemas: dict[bytes, tuple[str, tuple[str, ...], tuple[ColumnType, ...]]] = {}
        self._key_schemas: dict[bytes, tuple[tuple[str, ...], tuple[ColumnType, ...]]] = {}
        self._tables: dict[tuple[bytes, bytes], TableSchema] = {}
        self._keys: dict[str, tuple[str, ...]] = {}

    # -- schemas ---------------------------------------------------------------

    def _value_schema(self, schema_raw: bytes | None, envelope: dict) -> tuple[str, tuple, tuple]:
        cached = self._value_schemas.get(schema_raw) if schema_raw is not None else None
        if cached:
            return cached
        schema = _loads(schema_raw) if schema_raw is not None else envelope.get("schema")
        if not isinstance(schema, dict) or schema.get("type") != "struct":
            raise PoisonMessage("unknown envelope: no struct schema (is schemas.enable=true?)")
        fields = {f.get("field"): f for f in schema.get("fields") or []}
        row = fields.get("after") or fields.get("before")
        if not {"source", "op"} <= set(fields) or row is None or row.get("type") != "struct":
            raise PoisonMessage("unknown envelope: expected a Debezium change event (before/after/source/op)")
        name = str(schema.get("name") or "")
        columns = tuple(f["field"] for f in row["fields"])
        types = tuple(column_type(f) for f in row["fields"])
        result = (name, columns, types)
        if schema_raw is not None:
            self._value_schemas[schema_raw] = result
        return result

    def _key_schema(self, key_raw: bytes | None) -> tuple[bytes, tuple[str, ...], tuple[ColumnType, ...], Any]:
        if key_raw is None:
            return b"", (), (), None
        schema_raw, payload_raw = split_envelope(key_raw)
        if schema_raw is not None and schema_raw in self._key_schemas:
            cols, types = self._key_schemas[schema_raw]
            return schema_raw, cols, types, _loads(payload_raw)
        doc = _loads(key_raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("schema"), dict):
            raise PoisonMessage("unknown key envelope: expected {schema, payload}")
        fields = doc["schema"].get("fields") or []
        cols = tuple(f["field"] for f in fields)
        types = tuple(column_type(f) for f in fields)
        schema_raw = schema_raw if schema_raw is not None else orjson.dumps(doc["schema"])
        self._key_schemas[schema_raw] = (cols, types)
        return schema_raw, cols, types, doc.get("payload")

    # -- messages --------------------------------------------------------------

    def decode_change(self, topic: str, partition: int, offset: int, key_raw: bytes | None,
                      value_raw: bytes) -> ChangeEvent:
        schema_raw, payload_raw = split_envelope(value_raw)
        envelope = None
        if schema_raw is None:
            envelope = _loads(value_raw)
            if not isinstance(envelope, dict) or "payload" not in envelope:
                raise PoisonMessage("unknown envelope: expected {schema, payload}")
            payload = envelope["payload"]
        else:
            payload = _loads(payload_raw)
        if not isinstance(payload, dict):
            raise PoisonMessage("unknown envelope: payload is not an object")
        op = payload.get("op")
        if op not in OPS:
            raise PoisonMessage(f"unknown op {op!r}")
        _, columns, types = self._value_schema(schema_raw, envelope or {})
        source = payload.get("source") or {}
        tx = payload.get("transaction")
        if not isinstance(tx, dict) or "total_order" not in tx:
            raise PoisonMessage("change event without transaction metadata (provide.transaction.metadata=true?)")
        stream = f"{source.get('schema')}.{source.get('table')}"
        key_schema_raw, key_cols, key_types, key_payload = self._key_schema(key_raw)
        if op == "t":  # no key: the table's key is whatever its other events say
            table = TableSchema(stream, columns, types, self._keys.get(stream, ()), key_known=stream in self._keys)
        else:
            table = self._tables.get((schema_raw or b"", key_schema_raw))
            if table is None or table.stream != stream:
                table = TableSchema(stream, columns, types, key_cols)
                if schema_raw is not None:
                    self._tables[(schema_raw, key_schema_raw)] = table
            self._keys[stream] = key_cols
        try:
            tx_id = int(source["txId"])
            total_order = int(tx["total_order"])
            committed_at = int(source.get("ts_ms") or payload.get("ts_ms") or 0)
        except (KeyError, TypeError, ValueError):
            raise PoisonMessage("source.txId or transaction.total_order missing") from None
        key = None
        if op != "t" and key_cols:
            if not isinstance(key_payload, dict):
                raise PoisonMessage("key payload missing")
            key = tuple(self._decode(c, t, key_payload.get(c)) for c, t in zip(key_cols, key_types))
        row, unavailable = None, frozenset()
        if op in "cur":
            after = payload.get("after")
            if not isinstance(after, dict):
                raise PoisonMessage(f"op {op!r} without an after image")
            values, missing = [], []
            for i, (c, t) in enumerate(zip(columns, types)):
                v = after.get(c)
                if v is not None and t.toastable and is_unavailable(t, v):
                    missing.append(i)
                    values.append(None)
                else:
                    values.append(self._decode(c, t, v))
            row, unavailable = tuple(values), frozenset(missing)
        return ChangeEvent(topic, partition, offset, stream, op, tx_id, total_order, committed_at,
                           key, row, unavailable, table)

    @staticmethod
    def _decode(column: str, ct: ColumnType, v: Any) -> Any:
        if v is None:
            return None
        try:
            return ct.decode(v)
        except (ValueError, TypeError, ArithmeticError) as e:
            raise PoisonMessage(f"column {column!r} ({ct.duckdb}): {e}") from None

    def decode_transaction(self, topic: str, partition: int, offset: int, value_raw: bytes) -> TransactionMarker:
        _, payload_raw = split_envelope(value_raw)
        payload = _loads(payload_raw)
        if isinstance(payload, dict) and "schema" in payload and "payload" in payload:
            payload = payload["payload"]
        if not isinstance(payload, dict) or payload.get("status") not in ("BEGIN", "END"):
            raise PoisonMessage("unknown transaction envelope: expected status BEGIN or END")
        tx_id, _, lsn = str(payload.get("id", "")).partition(":")
        try:
            return TransactionMarker(topic, partition, offset, payload["status"], int(tx_id), int(lsn or 0),
                                     int(payload.get("event_count") or 0), int(payload.get("ts_ms") or 0))
        except ValueError:
            raise PoisonMessage(f"transaction id {payload.get('id')!r} is not '<txId>:<lsn>'") from None
