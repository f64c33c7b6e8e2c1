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
    ident = '"' + col.name.replace('"', '""') + '"'
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


