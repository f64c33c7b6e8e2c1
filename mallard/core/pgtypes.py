"""Debezium (Kafka Connect JSON) column schemas -> DuckDB types, and JSON values ->
the exact values Postgres holds. Pure: lookup tables built once from the type registry
(``mallard.core.type_registry``, where each type's decoder is), and the shapes that are
no one type: arrays, and types nobody knows.

Every column has a *transport*: the plain Python value a decoder produces and the
DuckDB adapter loads column-wise (via Arrow), plus, for a few types, a SQL cast.
A value that does not fit its declared type raises ``ValueError`` (the applier
dead-letters that event); an unknown type is kept as text.
"""
from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import orjson

from mallard.core.type_registry import (  # noqa: F401 (re-exported: the decoders' names as they were)
    ARROW_PARSED, CHECK_ONLY, INT_BITS, INT_RANGES, MAX_DECIMAL_PRECISION, REGISTRY, SOURCE_TYPE, TOASTABLE_TRANSPORTS,
    UNCONSTRAINED_NUMERIC, WIRES, Arrival, ColumnType, PgType,
)
from mallard.schemas.debezium import UNAVAILABLE_VALUE as UNAVAILABLE  # one definition: the Debezium contract

# The same placeholder as Debezium sends it for bytea columns (the string's bytes, base64).
UNAVAILABLE_B64 = binascii.b2a_base64(UNAVAILABLE.encode(), newline=False).decode()


def _by_schema(rows: Sequence[PgType]) -> tuple[dict[str, Arrival], dict[str, Arrival], dict[tuple[str, str], Arrival]]:
    """The registry's arrivals by Connect logical name, (without one) by Connect type, and by
    Connect type and the source column type Debezium propagates."""
    by_name: dict[str, Arrival] = {}
    by_type: dict[str, Arrival] = {}
    by_source: dict[tuple[str, str], Arrival] = {}
    for row in rows:
        for arrival in row.arrives_as:
            table: dict[Any, Arrival]
            if arrival.source_type:
                table, key = by_source, (arrival.connect, arrival.source_type)
            else:
                table, key = (by_name, arrival.name) if arrival.name else (by_type, arrival.connect)
            # a schema several types arrive as (string: text, varchar, citext...) means one thing
            assert table.get(key, arrival) == arrival, f"{key} arrives as two column types"
            table[key] = arrival
    return by_name, by_type, by_source


_BY_NAME, _BY_TYPE, _BY_SOURCE = _by_schema(REGISTRY)


def _list(element: ColumnType) -> Callable[[Any], list]:
    def decode(v: Any) -> list:
        if type(v) is not list:
            raise ValueError(f"expected an array, got {v!r:.60}")
        return [None if x is None else element.decode(x) for x in v]

    return decode


def _as_text(v: Any) -> str:
    return v if type(v) is str else orjson.dumps(v).decode()


def column_type(schema: dict[str, Any]) -> ColumnType:
    """DuckDB type and decoder for one Connect schema node (a struct member)."""
    ct = _column_type(schema)
    if ct.wire != "json":
        return ct
    wire, from_wire = WIRES.get(ct.decode, ("json", ct.decode))
    return replace(ct, wire=wire, from_wire=from_wire)


def _column_type(schema: dict[str, Any]) -> ColumnType:
    name = schema.get("name")
    ctype = schema.get("type")
    if name in _BY_NAME:
        column = _BY_NAME[name].column
        return column if isinstance(column, ColumnType) else column(schema)
    if ctype == "array" and schema.get("items"):
        element = _column_type(schema["items"])
        if element.known and element.sql is None and not element.transport.startswith("list"):
            return ColumnType(f"{element.duckdb}[]", f"list:{element.transport}", _list(element), toastable=True)
        return ColumnType("VARCHAR", "string", _as_text, toastable=True, known=False)
    source = name is None and (schema.get("parameters") or {}).get(SOURCE_TYPE)
    if source and (ctype, source.upper()) in _BY_SOURCE:
        column = _BY_SOURCE[ctype, source.upper()].column
        return column if isinstance(column, ColumnType) else column(schema)
    if name is None and ctype in _BY_TYPE:
        column = _BY_TYPE[ctype].column
        return column if isinstance(column, ColumnType) else column(schema)
    # Geometry structs, hstore maps, ranges, ...: kept as text, not dropped.
    return ColumnType("VARCHAR", "string", _as_text, toastable=True, known=False)


def decode_values(ct: ColumnType, values: Sequence[Any]) -> Sequence[Any]:
    """Encoded (Debezium JSON) values of one column -> its transport values; values whose
    encoding is their transport value pass as they are (loading them into Arrow checks them)."""
    if ct.decode in CHECK_ONLY or ct.decode in ARROW_PARSED:
        return values
    if ct.decode_column is not None:
        return ct.decode_column(values)
    decode = ct.decode
    return [None if v is None else decode(v) for v in values]


def placeholder_texts(ct: ColumnType) -> tuple[str, ...]:
    """How Debezium's placeholder for an unchanged TOASTed value reads in a column of this
    type: plain, base64 for bytea, either as an array's one element."""
    if not ct.toastable:
        return ()
    if ct.transport == "binary":
        return (UNAVAILABLE_B64,)
    if ct.transport.startswith("list"):
        return (UNAVAILABLE, UNAVAILABLE_B64)
    return (UNAVAILABLE,)


def is_unavailable(ct: ColumnType, value: Any) -> bool:
    """Debezium's placeholder for an unchanged TOASTed column: keep the stored value."""
    texts = placeholder_texts(ct)
    if ct.transport.startswith("list"):
        return type(value) is list and len(value) == 1 and value[0] in texts
    return any(value == text for text in texts)


_INT_RANK = {"TINYINT": 0, "SMALLINT": 1, "INTEGER": 2, "BIGINT": 3}
_DECIMAL = re.compile(r"^DECIMAL\((\d+),(\d+)\)$")


def widens(old: str, new: str) -> bool:
    """Whether a column of DuckDB type ``old`` can become ``new`` in place without
    losing or changing any stored value."""
    if old == new:
        return True
    if old in _INT_RANK and new in _INT_RANK:
        return _INT_RANK[new] > _INT_RANK[old]
    if old == "REAL" and new == "DOUBLE":
        return True
    if old in _INT_RANK and (m := _DECIMAL.match(new)):
        digits = {"TINYINT": 3, "SMALLINT": 5, "INTEGER": 10, "BIGINT": 19}[old]
        return int(m.group(1)) - int(m.group(2)) >= digits
    mo, mn = _DECIMAL.match(old), _DECIMAL.match(new)
    if mo and mn:
        p1, s1, p2, s2 = (int(x) for x in (*mo.groups(), *mn.groups()))
        return s2 >= s1 and p2 - s2 >= p1 - s1
    if old == "TIMESTAMP" and new == "TIMESTAMP_NS":
        return True
    return False
