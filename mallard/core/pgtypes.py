"""Debezium (Kafka Connect JSON) column schemas -> DuckDB types, and JSON values ->
the exact values Postgres holds. Pure: a lookup table and small decoders.

Every column has a *transport*: the plain Python value a decoder produces and the
DuckDB adapter loads column-wise (via Arrow), plus, for a few types, a SQL cast.
A value that does not fit its declared type raises ``ValueError`` (the applier
dead-letters that event); an unknown type is kept as text.
"""
from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Context, Decimal
from typing import Any

import orjson

from mallard.schemas.debezium import UNAVAILABLE_VALUE as UNAVAILABLE  # one definition: the Debezium contract
# The same placeholder as Debezium sends it for bytea columns (the string's bytes, base64).
UNAVAILABLE_B64 = binascii.b2a_base64(UNAVAILABLE.encode(), newline=False).decode()

MAX_DECIMAL_PRECISION = 38  # DuckDB's limit
_EXACT = Context(prec=100)  # wide enough that no decimal arithmetic here ever rounds
UNCONSTRAINED_NUMERIC = (38, 18)  # numeric without typmod: 20 integer and 18 fractional digits, exactly


@dataclass(frozen=True)
class ColumnType:
    duckdb: str
    """DuckDB column type, e.g. DECIMAL(12,2)."""
    transport: str
    """How decoded values travel to DuckDB: int16/32/64, float32/64, bool, string, date32,
    time_us/ms/ns, ts_us/ms/ns, tstz_us, binary, decimal, interval, list:<transport>."""
    decode: Callable[[Any], Any] = field(compare=False, repr=False)
    sql: str | None = None
    """SQL that turns the loaded transport value ``{}`` into the DuckDB value, when it is
    not loaded as is (text cast to uuid/json/timetz, unscaled integers to decimals)."""
    toastable: bool = False
    """Can arrive as Debezium's 'unavailable' placeholder (unchanged TOASTed value)."""
    known: bool = True
    precision: tuple[int, int] | None = None
    decode_column: Callable[[Sequence[Any]], list[Any]] | None = field(default=None, compare=False, repr=False)
    """``decode`` for a whole column at once (snapshot batches), where that is much faster."""
    wire: str = "json"
    """The JSON kind a typed parser checks (int8..int64: an integer of that width, float, bool,
    str; bytes: a base64 string it decodes) or, for json, any JSON value."""
    from_wire: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)
    """What turns a value of that kind into the transport value (None: it is one)."""


def _int(v: Any) -> int:
    if type(v) is not int:
        raise ValueError(f"expected an integer, got {v!r:.60}")
    return v


INT_RANGES = {bits: (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) for bits in (8, 16, 32, 64)}
"""Signed integer widths of Connect's int8..int64: a wider value cannot be loaded, and is poison."""


def _int_of(bits: int) -> Callable[[Any], int]:
    low, high = INT_RANGES[bits]

    def decode(v: Any) -> int:
        if not low <= _int(v) <= high:
            raise ValueError(f"{v} does not fit a {bits}-bit integer")
        return v

    return decode


INT_BITS = {bits: _int_of(bits) for bits in INT_RANGES}


def _float(v: Any) -> float:
    if type(v) is float or type(v) is int:
        return float(v)
    if v in ("NaN", "Infinity", "-Infinity"):  # how JSON carries IEEE specials
        return float(v.replace("Infinity", "inf"))
    raise ValueError(f"expected a number, got {v!r:.60}")


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise ValueError(f"expected a boolean, got {v!r:.60}")
    return v


def _str(v: Any) -> str:
    if type(v) is not str:
        raise ValueError(f"expected a string, got {v!r:.60}")
    return v


def _bytes(v: Any) -> bytes:
    try:
        return binascii.a2b_base64(_str(v))
    except binascii.Error as e:
        raise ValueError(f"bytes not in base64: {e}") from None


def _unscaled(raw: bytes) -> int:
    return int.from_bytes(raw, "big", signed=True)


def _fit_decimal(value: Decimal, precision: int, scale: int) -> Decimal:
    """The value exactly, or ValueError: never round to make it fit."""
    exponent = value.as_tuple().exponent
    quantum = Decimal(1).scaleb(-scale, context=_EXACT)
    if isinstance(exponent, int) and -exponent > scale and value != value.quantize(quantum, context=_EXACT):
        raise ValueError(f"{value} has more than {scale} decimal places for DECIMAL({precision},{scale})")
    if value.is_finite() and value.adjusted() + 1 > precision - scale:
        raise ValueError(f"{value} has more than {precision - scale} integer digits for DECIMAL({precision},{scale})")
    return value.quantize(quantum, context=_EXACT)


def _decimal(precision: int, scale: int, wire_scale: int) -> Callable[[bytes], Decimal]:
    """From the unscaled two's-complement bytes."""
    def from_bytes(raw: bytes) -> Decimal:
        return _fit_decimal(Decimal(_unscaled(raw)).scaleb(-wire_scale, context=_EXACT), precision, scale)

    return from_bytes


def _unscaled_decimal(precision: int) -> Callable[[bytes], int]:
    """The fast path for DECIMAL(p<=18, s): the unscaled integer, scaled in SQL (exactly)."""
    bound = 10**precision

    def from_bytes(raw: bytes) -> int:
        unscaled = _unscaled(raw)
        if not -bound < unscaled < bound:
            raise ValueError(f"{unscaled} (unscaled) has more than {precision} digits for its DECIMAL")
        return unscaled

    return from_bytes


def _from_base64(from_bytes: Callable[[bytes], Any]) -> Callable[[Any], Any]:
    return lambda v: from_bytes(_bytes(v))


def _unscaled_decimal_column(precision: int) -> Callable[[Sequence[Any]], list[Any]]:
    """``_unscaled_decimal`` over a column: one comprehension, then one range check."""
    bound = 10**precision
    a2b, from_bytes = binascii.a2b_base64, int.from_bytes

    def decode_column(values: Sequence[Any]) -> list[Any]:
        try:  # a value that is not text: TypeError
            out = [None if v is None else from_bytes(a2b(v), "big", signed=True) for v in values]
        except binascii.Error as e:
            raise ValueError(f"bytes not in base64: {e}") from None
        present = [v for v in out if v is not None]
        if present and not (-bound < min(present) and max(present) < bound):
            wrong = next(v for v in present if not -bound < v < bound)
            raise ValueError(f"{wrong} (unscaled) has more than {precision} digits for its DECIMAL")
        return out

    return decode_column


def _variable_decimal(v: Any) -> Decimal:
    if not isinstance(v, dict) or "scale" not in v or "value" not in v:
        raise ValueError(f"expected a VariableScaleDecimal struct, got {v!r:.60}")
    value = Decimal(_unscaled(_bytes(v["value"]))).scaleb(-_int(v["scale"]), context=_EXACT)
    return _fit_decimal(value, *UNCONSTRAINED_NUMERIC)


def _zoned_timestamp(v: Any) -> int:
    """ISO-8601 with offset (Debezium sends UTC, 'Z') -> microseconds since the epoch."""
    try:
        dt = datetime.fromisoformat(_str(v))
    except ValueError:
        raise ValueError(f"not an ISO timestamp with time zone: {v!r:.60}") from None
    if dt.tzinfo is None:
        raise ValueError(f"timestamp without time zone offset: {v!r:.60}")
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")
_ISO_DURATION = re.compile(
    r"^P(?:(-?\d+)Y)?(?:(-?\d+)M)?(?:(-?\d+)W)?(?:(-?\d+)D)?"
    r"(?:T(?:(-?\d+)H)?(?:(-?\d+)M)?(?:(-?\d+(?:\.\d+)?)S)?)?$"
)


def _interval(v: Any) -> tuple[int, int, int]:
    """ISO-8601 duration (interval.handling.mode=string) -> (months, days, nanoseconds), exactly
    as Postgres keeps an interval: months and days are not converted to time."""
    m = _ISO_DURATION.match(_str(v))
    if not m:
        raise ValueError(f"not an ISO-8601 duration: {v!r:.60}")
    y, mo, w, d, h, mi, s = m.groups()
    months = int(y or 0) * 12 + int(mo or 0)
    days = int(w or 0) * 7 + int(d or 0)
    seconds = Decimal(s or 0)
    nanos = (int(h or 0) * 3600 + int(mi or 0) * 60) * 1_000_000_000 + int(seconds * 1_000_000_000)
    return months, days, nanos


def _list(element: ColumnType) -> Callable[[Any], list]:
    def decode(v: Any) -> list:
        if type(v) is not list:
            raise ValueError(f"expected an array, got {v!r:.60}")
        return [None if x is None else element.decode(x) for x in v]

    return decode


def _as_text(v: Any) -> str:
    return v if type(v) is str else orjson.dumps(v).decode()


_SIMPLE = {
    "int8": ("TINYINT", "int8", INT_BITS[8]),
    "int16": ("SMALLINT", "int16", INT_BITS[16]),
    "int32": ("INTEGER", "int32", INT_BITS[32]),
    "int64": ("BIGINT", "int64", INT_BITS[64]),
    "float32": ("REAL", "float32", _float),
    "float64": ("DOUBLE", "float64", _float),
    "float": ("REAL", "float32", _float),  # JsonConverter's names for float32/float64
    "double": ("DOUBLE", "float64", _float),
    "boolean": ("BOOLEAN", "bool", _bool),
    "string": ("VARCHAR", "string", _str),
    "bytes": ("BLOB", "binary", _bytes),
}

# Decoders that only check a value's JSON type: column-wise, the Arrow conversion checks it.
CHECK_ONLY = frozenset({*INT_BITS.values(), _str, _bool})
# Decoders whose text Arrow parses column-wise to the same value (ISO timestamps with offset).
ARROW_PARSED = frozenset({_zoned_timestamp})

_LOGICAL = {
    "io.debezium.time.Date": ("DATE", "date32", INT_BITS[32], False),
    "org.apache.kafka.connect.data.Date": ("DATE", "date32", INT_BITS[32], False),
    "io.debezium.time.Time": ("TIME", "time_ms", INT_BITS[32], False),
    "io.debezium.time.MicroTime": ("TIME", "time_us", INT_BITS[64], False),
    "io.debezium.time.NanoTime": ("TIME", "time_ns", INT_BITS[64], False),
    "io.debezium.time.Timestamp": ("TIMESTAMP", "ts_ms", INT_BITS[64], False),
    "io.debezium.time.MicroTimestamp": ("TIMESTAMP", "ts_us", INT_BITS[64], False),
    "io.debezium.time.NanoTimestamp": ("TIMESTAMP_NS", "ts_ns", INT_BITS[64], False),
    "io.debezium.time.ZonedTimestamp": ("TIMESTAMPTZ", "tstz_us", _zoned_timestamp, False),
    "io.debezium.time.ZonedTime": ("TIMETZ", "string", _str, True),
    "io.debezium.time.Interval": ("INTERVAL", "interval", _interval, False),
    "io.debezium.data.Uuid": ("UUID", "string", _str, True),
    "io.debezium.data.Json": ("JSON", "string", _str, True),
    "io.debezium.data.Enum": ("VARCHAR", "string", _str, False),
    "io.debezium.data.Xml": ("VARCHAR", "string", _str, False),
    "io.debezium.data.Ltree": ("VARCHAR", "string", _str, False),
}

TOASTABLE_TRANSPORTS = ("string", "binary")


# Decoders whose JSON kind a typed parser checks: (kind, what still turns it into the transport value).
_WIRES = {**{decode: (f"int{bits}", None) for bits, decode in INT_BITS.items()},
          _float: ("float", None), _bool: ("bool", None), _str: ("str", None), _bytes: ("bytes", None),
          _zoned_timestamp: ("str", _zoned_timestamp), _interval: ("str", _interval)}


def column_type(schema: dict[str, Any]) -> ColumnType:
    """DuckDB type and decoder for one Connect schema node (a struct member)."""
    ct = _column_type(schema)
    if ct.wire != "json":
        return ct
    wire, from_wire = _WIRES.get(ct.decode, ("json", ct.decode))
    return replace(ct, wire=wire, from_wire=from_wire)


def _column_type(schema: dict[str, Any]) -> ColumnType:
    name = schema.get("name")
    ctype = schema.get("type")
    params = schema.get("parameters") or {}
    if name == "org.apache.kafka.connect.data.Decimal":
        wire_scale = int(params.get("scale", 0))
        precision = int(params.get("connect.decimal.precision", MAX_DECIMAL_PRECISION))
        precision = min(max(precision, wire_scale, 1), MAX_DECIMAL_PRECISION)
        scale = min(wire_scale, precision)
        duck = f"DECIMAL({precision},{scale})"
        if precision <= 18 and scale == wire_scale:
            quantum = f" * {Decimal(1).scaleb(-scale)}" if scale else ""  # a DECIMAL literal: exact
            from_bytes = _unscaled_decimal(precision)
            return ColumnType(duck, "int64", _from_base64(from_bytes),
                              sql=f"CAST(CAST({{}} AS DECIMAL(18,0)){quantum} AS {duck})", precision=(precision, scale),
                              decode_column=_unscaled_decimal_column(precision), wire="bytes", from_wire=from_bytes)
        from_bytes = _decimal(precision, scale, wire_scale)
        return ColumnType(duck, "decimal", _from_base64(from_bytes), precision=(precision, scale), wire="bytes",
                          from_wire=from_bytes)
    if name == "io.debezium.data.VariableScaleDecimal":
        p, s = UNCONSTRAINED_NUMERIC
        return ColumnType(f"DECIMAL({p},{s})", "decimal", _variable_decimal, precision=(p, s))
    if name in _LOGICAL:
        duck, transport, decode, cast = _LOGICAL[name]
        return ColumnType(duck, transport, decode, sql=f"CAST({{}} AS {duck})" if cast else None,
                          toastable=transport == "string")
    if ctype == "array" and schema.get("items"):
        element = _column_type(schema["items"])
        if element.known and element.sql is None and not element.transport.startswith("list"):
            return ColumnType(f"{element.duckdb}[]", f"list:{element.transport}", _list(element), toastable=True)
        return ColumnType("VARCHAR", "string", _as_text, toastable=True, known=False)
    if name is None and ctype in _SIMPLE:
        duck, transport, decode = _SIMPLE[ctype]
        return ColumnType(duck, transport, decode, toastable=transport in TOASTABLE_TRANSPORTS)
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
