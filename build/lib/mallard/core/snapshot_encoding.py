"""Encode rows read by a snapshot exactly as Debezium encodes the same rows in change
events, so the applier turns both into the very same DuckDB values. Pure.

For each Postgres column: the SQL to select it (a few types are selected in a form
that keeps what psycopg2 would lose: interval months, JSON text), the Kafka Connect
field schema Debezium would declare, and the JSON value Debezium would send.
"""
from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

from mallard.core.sql import quote_ident

_EPOCH_DATE = date(1970, 1, 1)
_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True)
class PgColumn:
    name: str
    type_name: str
    """pg_type.typname: int4, numeric, timestamptz, _int4 (array of int4), mood (an enum)..."""
    typmod: int = -1
    is_enum: bool = False
    element: str | None = None
    """typname of an array's elements."""

    @property
    def numeric_precision(self) -> tuple[int, int] | None:
        if self.typmod < 4:
            return None
        return ((self.typmod - 4) >> 16) & 0xFFFF, (self.typmod - 4) & 0xFFFF

    @property
    def time_precision(self) -> int:
        return 6 if self.typmod < 0 else self.typmod


_SIMPLE = {
    "int2": {"type": "int16"}, "int4": {"type": "int32"}, "int8": {"type": "int64"},
    "float4": {"type": "float"}, "float8": {"type": "double"}, "bool": {"type": "boolean"},
    "text": {"type": "string"}, "varchar": {"type": "string"}, "bpchar": {"type": "string"},
    "name": {"type": "string"}, "bytea": {"type": "bytes"},
    "date": {"type": "int32", "name": "io.debezium.time.Date"},
    "timestamptz": {"type": "string", "name": "io.debezium.time.ZonedTimestamp"},
    "interval": {"type": "string", "name": "io.debezium.time.Interval"},
    "uuid": {"type": "string", "name": "io.debezium.data.Uuid"},
    "json": {"type": "string", "name": "io.debezium.data.Json"},
    "jsonb": {"type": "string", "name": "io.debezium.data.Json"},
}
SUPPORTED = frozenset(_SIMPLE) | {"numeric", "time", "timestamp"}


def select_expression(col: PgColumn) -> str:
    """How the snapshot's SELECT reads the column."""
    ident = quote_ident(col.name)
    if col.type_name == "interval":
        # months, days and microseconds apart: psycopg2's timedelta would fold months into days
        return (f"CASE WHEN {ident} IS NULL THEN NULL ELSE ARRAY["
                f"(extract(year from {ident}) * 12 + extract(month from {ident}))::bigint, "
                f"extract(day from {ident})::bigint, (extract(hour from {ident}) * 3600000000 + "
                f"extract(minute from {ident}) * 60000000 + extract(microseconds from {ident}))::bigint] END")
    if col.type_name in ("json", "jsonb") or col.is_enum or not supported(col):
        return f"{ident}::text"  # the exact text Postgres holds (Debezium sends the same)
    return ident


def supported(col: PgColumn) -> bool:
    if col.element is not None:
        return col.element in ("int2", "int4", "int8", "text", "varchar")
    return col.is_enum or col.type_name in SUPPORTED


def connect_schema(col: PgColumn) -> dict[str, Any]:
    """The field schema Debezium declares for the column (what the applier maps to DuckDB)."""
    base: dict[str, Any]
    if col.element is not None and supported(col):
        base = {"type": "array", "items": {**connect_schema(PgColumn("", col.element)), "optional": True}}
    elif col.is_enum:
        base = {"type": "string", "name": "io.debezium.data.Enum"}
    elif col.type_name == "numeric":
        p_s = col.numeric_precision
        base = ({"type": "struct", "name": "io.debezium.data.VariableScaleDecimal"} if p_s is None else
                {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
                 "parameters": {"scale": str(p_s[1]), "connect.decimal.precision": str(p_s[0])}})
    elif col.type_name == "time":
        base = ({"type": "int32", "name": "io.debezium.time.Time"} if col.time_precision <= 3 else
                {"type": "int64", "name": "io.debezium.time.MicroTime"})
    elif col.type_name == "timestamp":
        base = ({"type": "int64", "name": "io.debezium.time.Timestamp"} if col.time_precision <= 3 else
                {"type": "int64", "name": "io.debezium.time.MicroTimestamp"})
    else:
        base = dict(_SIMPLE.get(col.type_name, {"type": "string"}))
    return {**base, "optional": True, "field": col.name}


def _unscaled_b64(unscaled: int) -> str:
    length = max(1, (unscaled.bit_length() + 8) // 8)  # two's complement, big-endian, minimal
    return base64.b64encode(unscaled.to_bytes(length, "big", signed=True)).decode()


def _digits(value: Decimal) -> tuple[int, int]:
    """(signed digits, exponent): the exact integer behind a Decimal, no context rounding."""
    sign, digits, exponent = value.as_tuple()
    n = int("".join(map(str, digits)) or "0")
    return (-n if sign else n), int(exponent)


def _micros(delta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def encode(col: PgColumn, value: Any) -> Any:
    """The JSON value Debezium sends for ``value`` (as psycopg2 returns ``select_expression``)."""
    if value is None:
        return None
    t = col.type_name
    if col.element is not None:
        return [encode(PgColumn("", col.element), v) for v in value] if supported(col) else value
    if col.is_enum or not supported(col):
        return value
    if t in ("float4", "float8"):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if t == "numeric":
        digits, exponent = _digits(value)
        p_s = col.numeric_precision
        if p_s is None:
            scale = max(0, -exponent)
            return {"scale": scale, "value": _unscaled_b64(digits * 10 ** (exponent + scale))}
        return _unscaled_b64(digits * 10 ** (exponent + p_s[1]))  # Postgres never holds more places
    if t == "bytea":
        return base64.b64encode(bytes(value)).decode()
    if t == "date":
        return (value - _EPOCH_DATE).days
    if t == "time":
        micros = ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond
        return micros // 1000 if col.time_precision <= 3 else micros
    if t == "timestamp":
        micros = _micros(value - _EPOCH)
        return micros // 1000 if col.time_precision <= 3 else micros
    if t == "timestamptz":
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if t == "interval":
        months, days, micros = value
        return f"P{months}M{days}DT{Decimal(micros).scaleb(-6):f}S"
    return value




# --- The same encoding, done by Postgres ------------------------------------------------
#
# ``json_expression`` is SQL that makes Postgres produce, as JSON text, exactly what
# ``encode`` produces in Python (same text for every type but floats, which Postgres
# and Python both print as their shortest round-trip form). A whole row is then one
# JSON array of text, which the snapshotter frames into batch messages without
# parsing it. Needs Postgres 14+ (extract() returning numeric, exact). Numerics whose
# unscaled value does not fit 127 bits are handed back as their text, marked, and
# encoded in Python (``fix_marked``): rare, and exact either way.

PY_MARKER = "$mallard_py"
_MARKER_BYTES = b'"' + PY_MARKER.encode() + b'"'


def _min_bytes(value: str, limit_bytes: int, array_type: str) -> str:
    """SQL: how many bytes ``encode`` uses for the unscaled integer ``value``: the least n
    with |value| < 2**(8n - 1) (one binary search, ``value`` evaluated once)."""
    bounds = ", ".join(str(2 ** (8 * n - 1)) for n in range(1, limit_bytes))
    return f"1 + width_bucket(abs({value}), ARRAY[{bounds}]::{array_type}[])"


def _b64_int8(value: str) -> str:
    """SQL: base64 of the minimal two's-complement bytes of an int8 expression (|v| < 2**63)."""
    return f"encode(substr(int8send({value}), 9 - ({_min_bytes(value, 8, 'int8')})), 'base64')"


def _b64_int128(value: str) -> str:
    """SQL: the same for an integral numeric expression with |v| < 2**127, as two int8 limbs."""
    hi = f"floor(({value}) / 18446744073709551616::numeric)"
    lo = f"(({value}) - {hi} * 18446744073709551616::numeric)"  # 0 <= lo < 2**64
    lo_signed = f"(CASE WHEN {lo} >= 9223372036854775808::numeric THEN {lo} - 18446744073709551616::numeric ELSE {lo} END)"
    raw = f"int8send({hi}::int8) || int8send({lo_signed}::int8)"
    return f"encode(substr({raw}, 17 - ({_min_bytes(value, 16, 'numeric')})), 'base64')"


def _quoted(expr: str) -> str:
    return f"'\"' || {expr} || '\"'"


def _marked(expr_text: str) -> str:
    return f"'{{\"{PY_MARKER}\":\"' || {expr_text} || '\"}}'"


def json_expression(col: PgColumn) -> str:
    """SQL giving the column's value as the JSON text ``encode`` would give (NULL for NULL)."""
    c, t = quote_ident(col.name), col.type_name
    if t in ("float4", "float8"):  # JSON -0 would parse as the integer 0: keep the sign as encode does
        return f"CASE WHEN {c} = 0 AND {c}::text LIKE '-%' THEN '-0.0' ELSE to_json({c})::text END"
    if col.element is not None or t == "bool":
        if col.element is not None and not supported(col):
            return f"to_json({c}::text)::text"
        return f"to_json({c})::text"  # arrays of ints/text; floats print NaN and ±Infinity quoted, like encode
    if t == "bpchar":
        return f"to_json({c})::text"  # bpchar::text would drop the padding encode keeps
    if col.is_enum or not supported(col) or t in ("text", "varchar", "name", "uuid", "json", "jsonb"):
        return f"to_json({c}::text)::text"
    if t in ("int2", "int4", "int8"):
        return f"{c}::text"
    if t == "bytea":
        return _quoted(f"translate(encode({c}, 'base64'), E'\\n', '')")
    if t == "date":
        return f"({c} - DATE '1970-01-01')::text"
    if t == "time":
        return (f"(extract(epoch FROM {c}) * 1000)::int8::text" if col.time_precision <= 3 else
                f"(extract(epoch FROM {c}) * 1000000)::int8::text")
    if t == "timestamp":
        return (f"floor(extract(epoch FROM {c}) * 1000)::int8::text" if col.time_precision <= 3 else
                f"(extract(epoch FROM {c}) * 1000000)::int8::text")
    if t == "timestamptz":
        return _quoted(f"to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    if t == "interval":
        months = f"(extract(year FROM {c}) * 12 + extract(month FROM {c}))::int8"
        micros = (f"(extract(hour FROM {c}) * 3600000000 + extract(minute FROM {c}) * 60000000 + "
                  f"extract(microseconds FROM {c}))::int8")
        return (f"CASE WHEN {c} IS NULL THEN NULL ELSE '\"P' || {months} || 'M' || extract(day FROM {c})::int8 "
                f"|| 'DT' || ({micros}::numeric * 0.000001)::text || 'S\"' END")
    if t == "numeric":
        p_s = col.numeric_precision
        if p_s is not None:
            precision, scale = p_s
            unscaled = f"({c} * 1{'0' * scale})" if scale else c
            if precision <= 18:
                return _quoted(_b64_int8(f"{unscaled}::int8"))
            return (f"CASE WHEN abs({unscaled}) < {2 ** 127} THEN {_quoted(_b64_int128(unscaled))} "
                    f"ELSE {_marked(f'{c}::text')} END")
        unscaled = f"({c} * power(10::numeric, scale({c})))"
        return (f"CASE WHEN {c} IS NULL THEN NULL WHEN {c} = 'NaN' OR abs({unscaled}) >= {2 ** 127} "
                f"THEN {_marked(f'{c}::text')} "
                f"ELSE '{{\"scale\":' || scale({c}) || ',\"value\":\"' || {_b64_int128(unscaled)} || '\"}}' END")
    raise AssertionError(f"no SQL encoding for {t}")  # every supported type is handled above


def row_json_expression(columns: list[PgColumn]) -> str:
    """SQL giving one row as the JSON array of its encoded values (text)."""
    return "'[' || " + " || ',' || ".join(f"coalesce({json_expression(c)}, 'null')" for c in columns) + " || ']'"


def fix_marked(columns: list[PgColumn], rows_json: bytes) -> bytes:
    """Encode in Python the values Postgres handed back as marked text (huge numerics):
    ``rows_json`` is a JSON array of rows; returns it with those values encoded."""
    if _MARKER_BYTES not in rows_json:
        return rows_json
    import orjson

    rows = orjson.loads(rows_json)
    for row in rows:
        for i, (col, value) in enumerate(zip(columns, row)):
            if col.type_name == "numeric" and isinstance(value, dict) and set(value) == {PY_MARKER}:
                row[i] = encode(col, Decimal(value[PY_MARKER]))
    return orjson.dumps(rows)
