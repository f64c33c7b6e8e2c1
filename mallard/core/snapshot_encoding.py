"""Encode rows read by a snapshot exactly as Debezium encodes the same rows in change
events, so the applier turns both into the very same DuckDB values. Pure.

For each Postgres column: the SQL to select it (a few types are selected in a form
that keeps what psycopg2 would lose: interval months, JSON text), the Kafka Connect
field schema Debezium would declare, and the JSON value Debezium would send. What each
type needs is its row in ``mallard.core.type_registry``; here are arrays, enums and
types no row names (read as their text).

``json_expression`` is SQL that makes Postgres produce, as JSON text, exactly what
``encode`` produces in Python (same text for every type but floats, which Postgres
and Python both print as their shortest round-trip form). A whole row is then one
JSON array of text, which the snapshotter frames into batch messages without
parsing it. Needs Postgres 14+ (extract() returning numeric, exact). Numerics are
their text (as Debezium sends them in decimal.handling.mode=string), so no SQL marks a
value for Python any more; ``fix_marked`` still encodes one that is marked.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from mallard.core.sql import quote_ident
from mallard.core.type_registry import (  # noqa: F401 (re-exported where they were)
    ENUM, PY_MARKER, READ_AS_TEXT, REGISTRY, PgColumn, PgType, Snapshot, _unscaled_b64, as_is,
)


def _by_typname(rows: tuple[PgType, ...]) -> dict[str, Snapshot]:
    """pg_type.typname -> how a snapshot reads it (types read as their text left out)."""
    return {name: row.snapshot for row in rows for name in row.names if row.snapshot is not READ_AS_TEXT}


_SNAPSHOT = _by_typname(REGISTRY)
SUPPORTED = frozenset(_SNAPSHOT)
_IN_ARRAYS = frozenset(name for name, s in _SNAPSHOT.items() if s.in_arrays)
# Encoders that change psycopg2's value (the others hand it on as it is).
_ENCODE = {name: s.encode for name, s in _SNAPSHOT.items() if s.encode is not as_is}
_MARKER_BYTES = b'"' + PY_MARKER.encode() + b'"'


def _snapshot(col: PgColumn) -> Snapshot:
    """The column's way in (scalars: arrays are read apart)."""
    if col.is_enum:
        return ENUM.snapshot
    return _SNAPSHOT.get(col.type_name, READ_AS_TEXT)


def _sql(template: Any, col: PgColumn) -> str:
    return template.format(quote_ident(col.name)) if isinstance(template, str) else template(col)


def select_expression(col: PgColumn) -> str:
    """How the snapshot's SELECT reads the column."""
    if col.element is not None:
        return quote_ident(col.name) if supported(col) else READ_AS_TEXT.select.format(quote_ident(col.name))
    return _snapshot(col).select.format(quote_ident(col.name))


def supported(col: PgColumn) -> bool:
    if col.element is not None:
        return col.element in _IN_ARRAYS
    return col.is_enum or col.type_name in SUPPORTED


def connect_schema(col: PgColumn) -> dict[str, Any]:
    """The field schema Debezium declares for the column (what the applier maps to DuckDB)."""
    base: dict[str, Any]
    if col.element is not None and supported(col):
        base = {"type": "array", "items": {**connect_schema(PgColumn("", col.element)), "optional": True}}
    elif col.element is not None:
        base = dict(READ_AS_TEXT.schema)  # type: ignore[arg-type]
    else:
        schema = _snapshot(col).schema
        base = dict(schema) if isinstance(schema, dict) else schema(col)
    return {**base, "optional": True, "field": col.name}


def encode(col: PgColumn, value: Any) -> Any:
    """The JSON value Debezium sends for ``value`` (as psycopg2 returns ``select_expression``)."""
    if value is None:
        return None
    if col.element is not None:
        return [encode(PgColumn("", col.element), v) for v in value] if supported(col) else value
    if col.is_enum:
        return value
    enc = _ENCODE.get(col.type_name)
    return value if enc is None else enc(col, value)


def json_expression(col: PgColumn) -> str:
    """SQL giving the column's value as the JSON text ``encode`` would give (NULL for NULL)."""
    if col.element is not None:
        c = quote_ident(col.name)
        # arrays of ints/text; floats print NaN and ±Infinity quoted, like encode
        return f"to_json({c})::text" if supported(col) else f"to_json({c}::text)::text"
    return _sql(_snapshot(col).json, col)


def row_json_expression(columns: list[PgColumn]) -> str:
    """SQL giving one row as the JSON array of its encoded values (text)."""
    return "'[' || " + " || ',' || ".join(f"coalesce({json_expression(c)}, 'null')" for c in columns) + " || ']'"


def fix_marked(columns: list[PgColumn], rows_json: bytes) -> bytes:
    """Encode in Python the values Postgres handed back as marked text (numerics, once):
    ``rows_json`` is a JSON array of rows; returns it with those values encoded."""
    if _MARKER_BYTES not in rows_json:
        return rows_json
    import orjson

    rows = orjson.loads(rows_json)
    for row in rows:
        for i, (col, value) in enumerate(zip(columns, row)):
            # only a numeric's SQL marks (JSON and unknown types come as strings, arrays as lists)
            if col.element is None and isinstance(value, dict) and set(value) == {PY_MARKER}:
                row[i] = encode(col, Decimal(value[PY_MARKER]))
    return orjson.dumps(rows)
