"""Decode Debezium messages (JsonConverter, schemas enabled) into change events. Pure.

The schema block is the same for every event of a table, so it is parsed once
per distinct schema text and cached; only the small payload is parsed per event.
"""
from __future__ import annotations

import hashlib
import json
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any

import msgspec
import orjson

from mallard.core.errors import TerminalError
from mallard.core.names import stream_name
from mallard.core.pgtypes import INT_RANGES, ColumnType, column_type, is_unavailable, placeholder_texts

OPS = frozenset("cudrt")
_NOTHING_UNAVAILABLE: frozenset[int] = frozenset()


def _decoded(values: tuple, decoders: tuple) -> tuple | None:
    """``values`` with the typed pass's (index, decode) columns decoded; None where a decoder
    refuses its value (the general path then names the column)."""
    values = list(values)
    try:
        for i, decode in decoders:
            if (v := values[i]) is not None:
                values[i] = decode(v)
    except Exception:  # noqa: BLE001 - the general path names the column
        return None
    return tuple(values)


class PoisonMessage(TerminalError, ValueError):
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

    @cached_property
    def fingerprint(self) -> str:
        text = "|".join(f"{c}:{t.duckdb}" for c, t in zip(self.columns, self.types)) + "#" + ",".join(self.key_columns)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    @cached_property
    def key_indexes(self) -> tuple[int, ...]:
        return tuple(self.columns.index(c) for c in self.key_columns)

    @cached_property
    def key_of(self) -> Callable[[tuple], tuple]:
        """A row's key (built once per layout: it runs for every event)."""
        indexes = self.key_indexes
        if len(indexes) == 1:
            i = indexes[0]
            return lambda row: (row[i],)
        return operator.itemgetter(*indexes)


class ChangeEvent(msgspec.Struct, gc=False):
    """One decoded change. A msgspec Struct, not a dataclass: one is made for every event,
    and a Struct is made in a third of the time; never in a reference cycle (gc=False)."""

    topic: str
    partition: int
    offset: int
    stream: str
    op: str
    tx_id: int
    total_order: int
    committed_at_ms: int
    key: tuple | None
    """The primary key's values; for a table without one, the before image of an update or
    delete (all its columns, as REPLICA IDENTITY FULL sends them), else None."""
    row: tuple | None
    """After image in ``schema.columns`` order (transport values); None for d and t."""
    unavailable: frozenset[int]
    """Indexes of columns Debezium did not send (unchanged TOASTed values)."""
    schema: TableSchema


class TransactionMarker(msgspec.Struct, gc=False):
    """A BEGIN or END of Debezium's transaction topic (a Struct, as ChangeEvent)."""

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


def _prefix(raw: bytes, payload_raw: bytes) -> bytes:
    """What comes before the payload (``split_envelope``'s payload text) in a message: the
    same bytes in every message with the same schema."""
    return raw[: len(raw) - len(payload_raw) - 1]


class _Source(msgspec.Struct, gc=False):
    schema: str
    table: str
    txId: int
    ts_ms: int | None = None


class _Block(msgspec.Struct, gc=False):
    total_order: int


class _DataCollection(msgspec.Struct):
    data_collection: str
    event_count: int


class _TransactionPayload(msgspec.Struct):
    status: str
    id: str
    event_count: int | None = None
    data_collections: list[_DataCollection] | None = None
    ts_ms: int | None = None


MESSAGE_COLLECTION = re.compile(r"^io\.debezium\.connector\.postgresql\.LogicalDecodingMessageMonitor\$"
                                r"LogicalDecodingMessageId@[0-9a-f]+$")
"""How Debezium 3.x names, in a transaction's END, the logical decoding messages
(``pg_logical_emit_message(true, ...)``) the transaction sent: they go to
``<prefix>.message``, never to a table topic, so they are not events the applier waits for."""


def table_event_count(total: int, collections: Iterable[tuple[object, object]]) -> int:
    """An END's event count without its logical decoding messages, given its
    (data_collection, event_count) pairs: an application that emits one inside a
    transaction must not leave the transaction waiting for ever."""
    return total - sum(count for name, count in collections
                       if isinstance(name, str) and isinstance(count, int) and MESSAGE_COLLECTION.match(name))


_TX_DECODER = msgspec.json.Decoder(_TransactionPayload)
_WIRE_TYPES = {**{f"int{bits}": Annotated[int, msgspec.Meta(ge=low, le=high)]
                   for bits, (low, high) in INT_RANGES.items()},
               "float": float, "bool": bool, "str": str, "bytes": bytes, "json": Any}
_FAST_OPS = frozenset("cur")


@dataclass(frozen=True)
class _Layout:
    """What one schema text says: the columns and how to decode them."""

    columns: tuple[str, ...]
    types: tuple[ColumnType, ...]
    pairs: tuple[tuple[str, Any], ...]
    toastable: tuple[int, ...]

    @cached_property
    def placeholders(self) -> tuple[bytes, ...]:
        """The texts Debezium's TOAST placeholder can take in this layout's messages: it is
        in a message's text whenever a column has it."""
        return tuple(sorted({text.encode() for i in self.toastable for text in placeholder_texts(self.types[i])}))

    @cached_property
    def fast(self) -> tuple[msgspec.json.Decoder, tuple[tuple[int, Callable[[Any], Any]], ...]]:
        """A typed decoder of the whole payload of an insert/update/read with this layout:
        the JSON kind of each column is checked while parsing (and base64 decoded), the
        source and transaction blocks are read, all else is skipped. Then the columns
        whose value still needs a decoder, with it."""
        row = msgspec.defstruct("Row", [(f"c{i}", _WIRE_TYPES[t.wire] | None, None) for i, t in enumerate(self.types)],
                                rename={f"c{i}": c for i, c in enumerate(self.columns)}, gc=False)
        envelope = msgspec.defstruct("Envelope", [("op", str), ("source", _Source), ("after", row | None, None),
                                                  ("transaction", _Block | None, None), ("ts_ms", int | None, None)], gc=False)
        return msgspec.json.Decoder(envelope), tuple((i, t.from_wire) for i, t in enumerate(self.types) if t.from_wire)

    @cached_property
    def fast_key(self) -> tuple[msgspec.json.Decoder, tuple[tuple[int, Callable[[Any], Any]], ...]]:
        """For a key's layout: a typed decoder of the before image of a delete with that key,
        reading only the key's columns (all else is skipped); then the columns whose value
        still needs a decoder, with it."""
        key = msgspec.defstruct("Key", [(f"c{i}", _WIRE_TYPES[t.wire] | None, None) for i, t in enumerate(self.types)],
                                rename={f"c{i}": c for i, c in enumerate(self.columns)})
        envelope = msgspec.defstruct("DeleteEnvelope", [("before", key | None, None)])
        return msgspec.json.Decoder(envelope), tuple((i, t.from_wire) for i, t in enumerate(self.types) if t.from_wire)


@dataclass(slots=True)
class _Known:
    """The key and value schemas of the last message on a topic the typed pass decoded: a
    message that starts with both again is decoded with no lookup (the common case)."""

    value_prefix: bytes
    key_prefix: bytes | None
    """None: the message had no key (a table without a primary key)."""
    layout: _Layout
    key_layout: _Layout | None
    table: TableSchema

    def matches(self, key_raw: bytes | None, value_raw: bytes) -> bool:
        if not (value_raw.startswith(self.value_prefix) and value_raw.endswith(b"}")):
            return False
        if self.key_prefix is None:
            return key_raw is None
        return key_raw is not None and key_raw.startswith(self.key_prefix) and key_raw.endswith(b"}")


def _layout(fields: list[dict]) -> _Layout:
    columns = tuple(f["field"] for f in fields)
    types = tuple(column_type(f) for f in fields)
    return _Layout(columns, types, tuple((c, t.decode) for c, t in zip(columns, types)),
                   tuple(i for i, t in enumerate(types) if t.toastable))


class Decoder:
    """Turns raw Kafka messages into ChangeEvents / TransactionMarkers.

    A message starts with its schema; the bytes up to the payload are remembered per
    topic, so the common case is one prefix comparison and a parse of the payload."""

    def __init__(self, typed: bool = True) -> None:
        self.typed = typed
        """Decode the common case in one typed pass (False: the general path only, to compare)."""
        self._value_prefixes: dict[str, list[tuple[bytes, _Layout]]] = {}
        self._key_prefixes: dict[str, list[tuple[bytes, _Layout]]] = {}
        self._tables: dict[tuple[int, int, str], TableSchema] = {}
        self._keys: dict[str, tuple[str, ...]] = {}
        self._tx_prefix: bytes | None = None
        self._known: dict[str, _Known] = {}

    @staticmethod
    def _cached(cache: list[tuple[bytes, _Layout]], raw: bytes) -> tuple[_Layout, bytes] | None:
        for prefix, layout in cache:
            if raw.startswith(prefix) and raw.endswith(b"}"):
                return layout, raw[len(prefix):-1]
        return None

    def _value(self, topic: str, raw: bytes) -> tuple[_Layout, Any, bytes]:
        """(layout, payload, payload text); the payload is None (not parsed yet) when the
        schema is one seen before."""
        cache = self._value_prefixes.setdefault(topic, [])
        hit = self._cached(cache, raw)
        if hit is not None:
            return hit[0], None, hit[1]
        schema_raw, payload_raw = split_envelope(raw)
        doc = _loads(raw) if schema_raw is None else None
        schema = doc.get("schema") if isinstance(doc, dict) else (_loads(schema_raw) if schema_raw else None)
        if not isinstance(schema, dict) or schema.get("type") != "struct":
            raise PoisonMessage("unknown envelope: no struct schema (is schemas.enable=true?)")
        fields = {f.get("field"): f for f in schema.get("fields") or []}
        row = fields.get("after") or fields.get("before")
        if not {"source", "op"} <= set(fields) or row is None or row.get("type") != "struct":
            raise PoisonMessage("unknown envelope: expected a Debezium change event (before/after/source/op)")
        layout = _layout(row["fields"])
        if schema_raw is not None:
            cache.insert(0, (_prefix(raw, payload_raw), layout))
            del cache[8:]  # a table's schema changes rarely; keep the latest few
        payload = doc["payload"] if doc is not None else _loads(payload_raw)
        return layout, payload, payload_raw

    def _key(self, topic: str, raw: bytes | None, parse: bool) -> tuple[_Layout | None, Any]:
        """The key's layout, and its payload when ``parse`` (or the layout is new)."""
        if raw is None:
            return None, None
        cache = self._key_prefixes.setdefault(topic, [])
        hit = self._cached(cache, raw)
        if hit is not None:
            return hit[0], _loads(hit[1]) if parse else None
        schema_raw, payload_raw = split_envelope(raw)
        doc = _loads(raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("schema"), dict):
            raise PoisonMessage("unknown key envelope: expected {schema, payload}")
        layout = _layout(doc["schema"].get("fields") or [])
        if schema_raw is not None:
            cache.insert(0, (_prefix(raw, payload_raw), layout))
            del cache[8:]
        return layout, doc.get("payload")

    def _table(self, stream: str, value: _Layout, key: _Layout | None) -> TableSchema:
        ident = (id(value), id(key), stream)
        table = self._tables.get(ident)
        if table is None:
            table = self._tables[ident] = TableSchema(stream, value.columns, value.types,
                                                      key.columns if key else ())
            self._keys[stream] = table.key_columns
        elif self._keys.get(stream) is not table.key_columns:
            self._keys[stream] = table.key_columns
        return table

    # -- messages --------------------------------------------------------------

    def decode_change(self, topic: str, partition: int, offset: int, key_raw: bytes | None,
                      value_raw: bytes) -> ChangeEvent:
        known = self._known.get(topic) if self.typed else None
        # known.matches(key_raw, value_raw), inlined: this runs for every event.
        if known is not None and value_raw.startswith(known.value_prefix) and value_raw.endswith(b"}") and (
                key_raw is None if known.key_prefix is None else
                key_raw is not None and key_raw.startswith(known.key_prefix) and key_raw.endswith(b"}")):
            # Its schema is the known one: the general path, if needed, starts from it too.
            layout, payload, payload_raw = known.layout, None, value_raw[len(known.value_prefix):-1]
            event = self._fast_change(topic, partition, offset, key_raw, layout, payload_raw, known)
            if event is not None:
                return event
        else:
            layout, payload, payload_raw = self._value(topic, value_raw)
            if payload is None and self.typed:
                event = self._fast_change(topic, partition, offset, key_raw, layout, payload_raw)
                if event is not None:
                    self._remember(topic, key_raw, value_raw, payload_raw, layout, event.schema)
                    return event
        if payload is None:
            payload = _loads(payload_raw)
        if not isinstance(payload, dict):
            raise PoisonMessage("unknown envelope: payload is not an object")
        op = payload.get("op")
        if op not in OPS:
            raise PoisonMessage(f"unknown op {op!r}")
        source = payload.get("source")
        tx = payload.get("transaction")
        if not isinstance(tx, dict) or not isinstance(source, dict):
            raise PoisonMessage("change event without transaction metadata (provide.transaction.metadata=true?)")
        try:
            stream = stream_name(source["schema"], source["table"])  # the event's own table, not its topic
            tx_id = int(source["txId"])
            total_order = int(tx["total_order"])
            committed_at = int(source.get("ts_ms") or payload.get("ts_ms") or 0)
        except (KeyError, TypeError, ValueError):
            raise PoisonMessage("source.schema/table/txId or transaction.total_order missing") from None
        key_layout, key_payload = self._key(topic, key_raw, parse=op == "t")
        if op == "t":  # no key: the table's key is whatever its other events say
            table = TableSchema(stream, layout.columns, layout.types, self._keys.get(stream, ()),
                                key_known=stream in self._keys)
            return ChangeEvent(topic, partition, offset, stream, op, tx_id, total_order, committed_at,
                               None, None, frozenset(), table)
        table = self._table(stream, layout, key_layout)
        row, unavailable, key = None, _NOTHING_UNAVAILABLE, None
        if op != "d":
            after = payload.get("after")
            if not isinstance(after, dict):
                raise PoisonMessage(f"op {op!r} without an after image")
            try:  # the hot path, inlined: _row again finds the column when one fails
                values = [None if (v := after.get(c)) is None else decode(v) for c, decode in layout.pairs]
            except Exception:  # noqa: BLE001
                values = self._row(layout, after)
            if any(placeholder in payload_raw for placeholder in layout.placeholders):
                missing = [i for i in layout.toastable
                           if (v := after.get(layout.columns[i])) is not None and is_unavailable(layout.types[i], v)]
                for i in missing:
                    values[i] = None
                unavailable = frozenset(missing)
            row = tuple(values)
        if table.key_columns:
            # The key columns are in the row image (a delete's before image holds at least them),
            # so the key's own payload need not be parsed.
            if row is not None:
                key = table.key_of(row)
            else:
                before = payload.get("before")
                if not isinstance(before, dict):
                    if not isinstance(key_payload, dict):
                        key_payload = self._key(topic, key_raw, parse=True)[1]
                    before = key_payload
                if not isinstance(before, dict):
                    raise PoisonMessage("a delete without its key")
                key = tuple(self._row(key_layout, before))
            if None in key:
                raise PoisonMessage(f"primary key {table.key_columns} has a NULL")
        elif op in ("u", "d"):
            # No key: the row is found by all its columns, from the before image Postgres
            # sends when the table's REPLICA IDENTITY is FULL.
            before = payload.get("before")
            if not isinstance(before, dict):
                raise PoisonMessage(f"op {op!r} on {stream}, a table without a primary key, without a before image "
                                    "(its REPLICA IDENTITY is not FULL)")
            key = tuple(self._row(layout, before))
            if unavailable:  # unchanged TOASTed values: the before image has them
                row = tuple(key[i] if i in unavailable else v for i, v in enumerate(row))
                unavailable = _NOTHING_UNAVAILABLE
        return ChangeEvent(topic, partition, offset, stream, op, tx_id, total_order, committed_at,
                           key, row, unavailable, table)

    def _remember(self, topic: str, key_raw: bytes | None, value_raw: bytes, payload_raw: bytes, layout: _Layout,
                  table: TableSchema) -> None:
        key_prefix = None
        if key_raw is not None:
            schema_raw, key_payload = split_envelope(key_raw)
            if schema_raw is None:
                return
            key_prefix = _prefix(key_raw, key_payload)
        key_layout = self._key(topic, key_raw, parse=False)[0]  # cached: the typed pass just found it
        self._known[topic] = _Known(_prefix(value_raw, payload_raw), key_prefix, layout, key_layout, table)

    def _fast_change(self, topic: str, partition: int, offset: int, key_raw: bytes | None, layout: _Layout,
                     payload_raw: bytes, known: _Known | None = None) -> ChangeEvent | None:
        """The common case (an insert, update or read, every value of its declared JSON kind,
        no TOAST placeholder), decoded in one typed pass; None: anything else, which the
        general path decodes (or names as poison) the same way. ``known``: the message has
        that entry's schemas, so its table is known unless the source names another."""
        for placeholder in layout.placeholders:
            if placeholder in payload_raw:
                return None
        decoder, decoders = layout.fast
        try:
            payload = decoder.decode(payload_raw)
        except msgspec.MsgspecError:
            return None
        after, tx, source = payload.after, payload.transaction, payload.source
        if after is None or tx is None or payload.op not in _FAST_OPS:
            if payload.op == "d" and tx is not None:
                return self._fast_delete(topic, partition, offset, key_raw, layout, payload_raw, known, payload)
            return None
        values = msgspec.structs.astuple(after)
        if decoders and (values := _decoded(values, decoders)) is None:
            return None
        stream = stream_name(source.schema, source.table)
        if known is not None and known.table.stream == stream:
            table = known.table
            if self._keys.get(stream) is not table.key_columns:
                self._keys[stream] = table.key_columns
        else:
            table = self._table(stream, layout, self._key(topic, key_raw, parse=False)[0])
        key = None
        if table.key_columns:
            key = table.key_of(values)
            if None in key:
                raise PoisonMessage(f"primary key {table.key_columns} has a NULL")
        elif payload.op == "u":
            return None  # no key: the general path reads the before image
        return ChangeEvent(topic, partition, offset, stream, payload.op, source.txId, tx.total_order,
                           source.ts_ms or payload.ts_ms or 0, key, values, _NOTHING_UNAVAILABLE, table)

    def _fast_delete(self, topic: str, partition: int, offset: int, key_raw: bytes | None, layout: _Layout,
                     payload_raw: bytes, known: _Known | None, payload: Any) -> ChangeEvent | None:
        """A delete from a table with a primary key, its key's columns read from the before
        image in a second typed pass (as the general path reads them); None: anything else."""
        source = payload.source
        stream = stream_name(source.schema, source.table)
        if known is not None and known.table.stream == stream:
            table, key_layout = known.table, known.key_layout
            if self._keys.get(stream) is not table.key_columns:
                self._keys[stream] = table.key_columns
        else:
            key_layout = self._key(topic, key_raw, parse=False)[0]
            table = self._table(stream, layout, key_layout)
        if key_layout is None or not table.key_columns:
            return None  # no key: the general path reads the whole before image
        decoder, decoders = key_layout.fast_key
        try:
            before = decoder.decode(payload_raw).before
        except msgspec.MsgspecError:
            return None
        if before is None:
            return None
        key = msgspec.structs.astuple(before)
        if decoders and (key := _decoded(key, decoders)) is None:
            return None
        if None in key:
            return None  # the general path names it
        return ChangeEvent(topic, partition, offset, stream, "d", source.txId, payload.transaction.total_order,
                           source.ts_ms or payload.ts_ms or 0, key, None, _NOTHING_UNAVAILABLE, table)

    @staticmethod
    def _row(layout: _Layout, image: dict) -> list:
        try:
            return [None if (v := image.get(c)) is None else decode(v) for c, decode in layout.pairs]
        except Exception:  # noqa: BLE001 - find the column, keeping placeholders out of decoders
            values = []
            for c, t in zip(layout.columns, layout.types):
                v = image.get(c)
                if v is None or (t.toastable and is_unavailable(t, v)):
                    values.append(None)
                    continue
                try:
                    values.append(t.decode(v))
                except (ValueError, TypeError, ArithmeticError) as e:
                    raise PoisonMessage(f"column {c!r} ({t.duckdb}): {e}") from None
            return values

    def decode_transaction(self, topic: str, partition: int, offset: int, value_raw: bytes) -> TransactionMarker:
        prefix = self._tx_prefix
        if prefix is not None and value_raw.startswith(prefix) and value_raw.endswith(b"}"):
            payload_raw = value_raw[len(prefix):-1]
        else:
            schema_raw, payload_raw = split_envelope(value_raw)
            if schema_raw is not None:
                self._tx_prefix = _prefix(value_raw, payload_raw)
        if self.typed:  # the common case, in one typed pass
            try:
                m = _TX_DECODER.decode(payload_raw)
                tx_id, _, lsn = m.id.partition(":")
                if m.status in ("BEGIN", "END"):
                    return TransactionMarker(topic, partition, offset, m.status, int(tx_id), int(lsn or 0),
                                             table_event_count(m.event_count or 0, (
                                                 (c.data_collection, c.event_count)
                                                 for c in m.data_collections or ())),
                                             m.ts_ms or 0)
            except (msgspec.MsgspecError, ValueError):
                pass  # the general path names what is wrong
        payload = _loads(payload_raw)
        if isinstance(payload, dict) and "schema" in payload and "payload" in payload:
            payload = payload["payload"]
        if not isinstance(payload, dict) or payload.get("status") not in ("BEGIN", "END"):
            raise PoisonMessage("unknown transaction envelope: expected status BEGIN or END")
        tx_id, _, lsn = str(payload.get("id", "")).partition(":")
        collections = payload.get("data_collections")
        collections = collections if isinstance(collections, list) else ()
        try:
            return TransactionMarker(topic, partition, offset, payload["status"], int(tx_id), int(lsn or 0),
                                     table_event_count(int(payload.get("event_count") or 0), (
                                         (c.get("data_collection"), c.get("event_count"))
                                         for c in collections if isinstance(c, dict))),
                                     int(payload.get("ts_ms") or 0))
        except ValueError:
            raise PoisonMessage(f"transaction id {payload.get('id')!r} is not '<txId>:<lsn>'") from None
