"""Every Postgres type mallard knows, one row each (``REGISTRY``). Pure.

A row says, for one Postgres type (or a family read alike):

- ``arrives_as``: the Connect field schemas Debezium sends a column of it as, and for each
  the ``ColumnType`` the applier makes of it (DuckDB type, transport, CDC decoder);
- ``snapshot``: how a snapshot reads it: the field schema it declares, the SELECT
  expression, the Python encoding and the SQL encoding, both giving Debezium's JSON value
  (``READ_AS_TEXT``: read as its text, like a type nobody knows);
- ``verify``: the canonical text ``mallard verify`` compares, per DuckDB type the replica
  may hold it as, and the key kind when it is a primary key (``NOT_HASHED``: not compared).

``pgtypes`` (CDC), ``snapshot_encoding`` and ``verify`` build their lookup tables from
these rows once, at import: adding a type is adding a row here. Shapes that are not
a type (arrays, enums' own names, types nobody knows) stay with the code that reads them.
"""
from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Context, Decimal
from typing import Any

from mallard.core.sql import quote_ident

MAX_DECIMAL_PRECISION = 38  # DuckDB's limit
_EXACT = Context(prec=100)  # wide enough that no decimal arithmetic here ever rounds
UNCONSTRAINED_NUMERIC = (38, 18)  # numeric without typmod: 20 integer and 18 fractional digits, exactly
TOASTABLE_TRANSPORTS = ("string", "binary")


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


@dataclass(frozen=True)
class Canon:
    """SQL templates (``{}`` is the column's SQL) giving the canonical text of a non-NULL value."""

    pg: str
    duck: str
    note: str | None = None


# -- the row ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arrival:
    """A Connect field schema a column arrives as, and the column type the applier makes of it
    (or, for a schema with parameters, what makes it from the schema)."""

    connect: str
    """Connect's type: int32, string, bytes, struct..."""
    name: str | None
    """Connect's logical name (io.debezium.time.Date...); None: Connect's plain type."""
    column: ColumnType | Callable[[dict[str, Any]], ColumnType]
    source_type: str | None = None
    """Debezium's ``__debezium.source.column.type`` parameter (``datatype.propagate.source.type``):
    the arrival is for a schema of Connect type ``connect`` carrying it (upper case)."""


@dataclass(frozen=True)
class Snapshot:
    """How a snapshot reads the type. A text is an SQL template (``{0}``: the quoted column);
    a callable takes the ``PgColumn`` (what depends on its typmod) and gives the result itself."""

    schema: dict[str, Any] | Callable[[PgColumn], dict[str, Any]]
    """The field schema Debezium declares (without ``optional`` and ``field``)."""
    encode: Callable[[PgColumn, Any], Any]
    """Debezium's JSON value of what psycopg2 returns for ``select`` (not None)."""
    json: str | Callable[[PgColumn], str]
    """SQL making Postgres give ``encode``'s JSON text (NULL for NULL)."""
    select: str = "{0}"
    """How the SELECT reads the column for ``encode``."""
    in_arrays: bool = False
    """Arrays of the type are read as arrays of it (else as their text)."""


@dataclass(frozen=True)
class VerifyAs:
    """How verify compares the type when the replica holds it as one of ``duckdb``."""

    duckdb: tuple[str, ...]
    """DuckDB types, upper case; ``DECIMAL*``: any DECIMAL."""
    canon: Canon
    key: str | None = None
    """The key kind verify ranges over when this is a single-column primary key (None: not one)."""

    def holds(self, duck_type: str) -> bool:
        return any(duck_type == d or (d.endswith("*") and duck_type.startswith(d[:-1])) for d in self.duckdb)


@dataclass(frozen=True)
class PgType:
    names: tuple[str, ...]
    """pg_type.typname of each type the row is for (none: the enums' row, or a Connect schema only)."""
    arrives_as: tuple[Arrival, ...]
    snapshot: Snapshot
    verify: tuple[VerifyAs, ...]


# -- CDC: Debezium's JSON values -> transport values -------------------------------------------

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
    if len(v) > 27 and _SUB_MICROSECOND(v):  # fromisoformat would drop the digits: Postgres has none
        raise ValueError(f"timestamp with time zone finer than a microsecond: {v!r:.60}")
    delta = dt - _EPOCH_TZ
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH_TZ = datetime.fromisoformat("1970-01-01T00:00:00+00:00")
_SUB_MICROSECOND = re.compile(r"\.[0-9]{7}").search
_ISO_DURATION = re.compile(
    r"^(-)?P(?:(-?\d+)Y)?(?:(-?\d+)M)?(?:(-?\d+)W)?(?:(-?\d+)D)?"
    r"(?:T(?:(-?\d+)H)?(?:(-?\d+)M)?(?:(-?\d+(?:\.\d+)?)S)?)?$"
)
_MICRO = Decimal(1)


def interval_parts(iso: str) -> tuple[int, int, int] | None:
    """An ISO-8601 duration (Debezium's interval.handling.mode=string) -> (months, days,
    microseconds) as Postgres keeps the interval (months and days not converted to time), or
    None if it is not one. The seconds are rounded to the microsecond, half to even: pgjdbc
    keeps them as a double, so Debezium may send ``2.278032999`` for Postgres' ``2.278033``
    (a double's error is far below half a microsecond, so rounding gives the stored value)."""
    m = _ISO_DURATION.match(iso)
    if not m:
        return None
    negate, y, mo, w, d, h, mi, s = m.groups()
    sign = -1 if negate else 1
    months = sign * (int(y or 0) * 12 + int(mo or 0))
    days = sign * (int(w or 0) * 7 + int(d or 0))
    seconds = Decimal(int(h or 0) * 3600 + int(mi or 0) * 60) + Decimal(s or 0)
    micros = int(seconds.scaleb(6, context=_EXACT).quantize(_MICRO, "ROUND_HALF_EVEN", context=_EXACT))
    return months, days, sign * micros


def _interval(v: Any) -> tuple[int, int, int]:
    """ISO-8601 duration -> (months, days, nanoseconds): ``interval_parts``, Arrow's
    month_day_nano (whole microseconds, as Postgres holds them)."""
    parts = interval_parts(_str(v))
    if parts is None:
        raise ValueError(f"not an ISO-8601 duration: {v!r:.60}")
    months, days, micros = parts
    return months, days, micros * 1000


# Decoders that only check a value's JSON type: column-wise, the Arrow conversion checks it.
CHECK_ONLY = frozenset({*INT_BITS.values(), _str, _bool})
# Decoders whose text Arrow parses column-wise to the same value (ISO timestamps with offset).
ARROW_PARSED = frozenset({_zoned_timestamp})
# Decoders whose JSON kind a typed parser checks: (kind, what still turns it into the transport
# value). A decoder not here is handed the parsed JSON value as it is.
WIRES = {**{decode: (f"int{bits}", None) for bits, decode in INT_BITS.items()},
         _float: ("float", None), _bool: ("bool", None), _str: ("str", None), _bytes: ("bytes", None),
         _zoned_timestamp: ("str", _zoned_timestamp), _interval: ("str", _interval)}


def _decimal_column(schema: dict[str, Any]) -> ColumnType:
    """Connect's Decimal: DECIMAL(precision, scale) from the schema's parameters."""
    params = schema.get("parameters") or {}
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


# decimal.handling.mode=string, with datatype.propagate.source.type naming numeric: Debezium sends
# a numeric as its text (BigDecimal.toPlainString: Postgres' digits and scale) or NAN,
# POSITIVE_INFINITY, NEGATIVE_INFINITY, in a string schema whose parameters give the column's
# precision (length) and scale. The only encoding that holds every numeric value exactly.
SOURCE_TYPE = "__debezium.source.column.type"
SOURCE_LENGTH = "__debezium.source.column.length"
SOURCE_SCALE = "__debezium.source.column.scale"
SOURCE_NAME = "__debezium.source.column.name"
UNCONSTRAINED_LENGTH = 131089
"""The length Debezium reports for a numeric without precision (pgjdbc's bound)."""
NUMERIC_SPECIALS = {"NAN": "NaN", "POSITIVE_INFINITY": "Infinity", "NEGATIVE_INFINITY": "-Infinity"}
"""Debezium's names of numeric's special values -> Postgres' text of them."""
DEBEZIUM_SPECIALS = {pg: debezium for debezium, pg in NUMERIC_SPECIALS.items()}
_PG_SPECIALS = {**NUMERIC_SPECIALS, **{pg: pg for pg in DEBEZIUM_SPECIALS}}
_NUMERIC_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def numeric_text(v: Any) -> str:
    """Debezium's text of a numeric -> Postgres' own text of it, exactly (specials renamed)."""
    text = _str(v)
    special = _PG_SPECIALS.get(text)
    if special is not None:
        return special
    if _NUMERIC_TEXT.fullmatch(text) is None:
        raise ValueError(f"not the text of a numeric: {v!r:.60}")
    return text


def _decimal_text(precision: int, scale: int) -> Callable[[Any], str]:
    """Debezium's text of a numeric(p, s) value, checked to be one DECIMAL(p, s) holds exactly
    (at most p - s integer digits, s places: DuckDB's cast then never rounds); NaN is not one."""
    whole = rf"0*[0-9]{{1,{precision - scale}}}" if precision > scale else "0*0"
    pattern = re.compile(rf"-?{whole}(?:\.[0-9]{{1,{scale}}})?" if scale else rf"-?{whole}")
    duck = f"DECIMAL({precision},{scale})"
    fits = pattern.fullmatch

    def check(v: Any) -> str:
        if type(v) is str and fits(v) is not None:
            return v
        if v in NUMERIC_SPECIALS:
            raise ValueError(f"{NUMERIC_SPECIALS[v]} cannot be held by {duck} (DuckDB's DECIMAL has no NaN)")
        raise ValueError(f"{_str(v)!r:.60} is not a value {duck} holds exactly")

    return check


def numeric_column(precision: int, scale: int) -> ColumnType:
    """What a numeric column becomes: DECIMAL(p, s) when DuckDB has it (1 <= p <= 38, 0 <= s <= p),
    loaded as text and cast in SQL (exact: the text is checked to fit); otherwise (unconstrained,
    wider than 38 digits, a negative scale) VARCHAR holding Postgres' exact text, NaN and
    ±Infinity included: no DuckDB type holds every such value."""
    if 1 <= precision <= MAX_DECIMAL_PRECISION and 0 <= scale <= precision:
        duck = f"DECIMAL({precision},{scale})"
        check = _decimal_text(precision, scale)
        return ColumnType(duck, "string", check, sql=f"CAST({{}} AS {duck})", precision=(precision, scale),
                          wire="str", from_wire=check)
    return ColumnType("VARCHAR", "string", numeric_text, toastable=True, wire="str", from_wire=numeric_text)


def _numeric_text_column(schema: dict[str, Any]) -> ColumnType:
    params = schema.get("parameters") or {}
    try:
        precision, scale = int(params.get(SOURCE_LENGTH, 0)), int(params.get(SOURCE_SCALE, 0))
    except ValueError:
        precision, scale = 0, 0  # not numbers: the exact text, whatever the column holds
    return numeric_column(precision, scale)


def _variable_decimal_column(schema: dict[str, Any]) -> ColumnType:
    p, s = UNCONSTRAINED_NUMERIC
    return ColumnType(f"DECIMAL({p},{s})", "decimal", _variable_decimal, precision=(p, s))


def arrives(connect: str, name: str | None, duckdb: str, transport: str, decode: Callable[[Any], Any], *,
            cast: bool = False) -> Arrival:
    """An arrival whose values load as ``transport`` (then, with ``cast``, cast to ``duckdb`` in SQL)."""
    return Arrival(connect, name, ColumnType(duckdb, transport, decode, sql=f"CAST({{}} AS {duckdb})" if cast else None,
                                             toastable=transport in TOASTABLE_TRANSPORTS))


# -- snapshots: psycopg2's values -> Debezium's JSON values, in Python and in SQL --------------

_EPOCH_DATE = date(1970, 1, 1)
_EPOCH = datetime(1970, 1, 1)
PY_MARKER = "$mallard_py"


def as_is(col: PgColumn, value: Any) -> Any:
    """psycopg2's value is Debezium's."""
    return value


def _unscaled_b64(unscaled: int) -> str:
    length = max(1, (unscaled.bit_length() + 8) // 8)  # two's complement, big-endian, minimal
    return base64.b64encode(unscaled.to_bytes(length, "big", signed=True)).decode()


def _micros(delta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _encode_float(col: PgColumn, value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _encode_bytea(col: PgColumn, value: Any) -> str:
    return base64.b64encode(bytes(value)).decode()


def _encode_date(col: PgColumn, value: date) -> int:
    return (value - _EPOCH_DATE).days


def _encode_time(col: PgColumn, value: Any) -> int:
    micros = ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond
    return micros // 1000 if col.time_precision <= 3 else micros


def _encode_timestamp(col: PgColumn, value: datetime) -> int:
    micros = _micros(value - _EPOCH)
    return micros // 1000 if col.time_precision <= 3 else micros


def _encode_timestamptz(col: PgColumn, value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _encode_interval(col: PgColumn, value: Any) -> str:
    months, days, micros = value
    return f"P{months}M{days}DT{Decimal(micros).scaleb(-6):f}S"


def _quoted(expr: str) -> str:
    return f"'\"' || {expr} || '\"'"


def _numeric_schema(col: PgColumn) -> dict[str, Any]:
    precision, scale = col.numeric_precision or (UNCONSTRAINED_LENGTH, 0)
    return {"type": "string", "parameters": {SOURCE_TYPE: "NUMERIC", SOURCE_LENGTH: str(precision),
                                             SOURCE_SCALE: str(scale), SOURCE_NAME: col.name}}


def _encode_numeric_text(col: PgColumn, value: Any) -> str:
    """Postgres' text of a numeric (or psycopg2's Decimal of it) as Debezium sends it."""
    text = value if isinstance(value, str) else format(value, "f")
    return DEBEZIUM_SPECIALS.get(text, text)


_NUMERIC_JSON = ("CASE {0}::text WHEN 'NaN' THEN '\"NAN\"' WHEN 'Infinity' THEN '\"POSITIVE_INFINITY\"' "
                 "WHEN '-Infinity' THEN '\"NEGATIVE_INFINITY\"' ELSE to_json({0}::text)::text END")


def _time_schema(col: PgColumn) -> dict[str, Any]:
    return ({"type": "int32", "name": "io.debezium.time.Time"} if col.time_precision <= 3 else
            {"type": "int64", "name": "io.debezium.time.MicroTime"})


def _time_json(col: PgColumn) -> str:
    c = quote_ident(col.name)
    return (f"(extract(epoch FROM {c}) * 1000)::int8::text" if col.time_precision <= 3 else
            f"(extract(epoch FROM {c}) * 1000000)::int8::text")


def _timestamp_schema(col: PgColumn) -> dict[str, Any]:
    return ({"type": "int64", "name": "io.debezium.time.Timestamp"} if col.time_precision <= 3 else
            {"type": "int64", "name": "io.debezium.time.MicroTimestamp"})


def _timestamp_json(col: PgColumn) -> str:
    c = quote_ident(col.name)
    return (f"floor(extract(epoch FROM {c}) * 1000)::int8::text" if col.time_precision <= 3 else
            f"(extract(epoch FROM {c}) * 1000000)::int8::text")


_TO_JSON_TEXT = "to_json({0}::text)::text"  # the exact text Postgres holds, as a JSON string

READ_AS_TEXT = Snapshot({"type": "string"}, as_is, _TO_JSON_TEXT, select="{0}::text")
"""The fallback: the snapshot reads the type as its text (what it does for a type no row names)."""


# -- verify: the canonical text both engines compute ---------------------------------------------

def _trim_decimal(x: str) -> str:
    return f"(CASE WHEN strpos({x}, '.') > 0 THEN rtrim(rtrim({x}, '0'), '.') ELSE {x} END)"


AS_TEXT = Canon("{}::text", "CAST({} AS VARCHAR)")
def _leading_zero(x: str) -> str:
    """DuckDB prints a DECIMAL(p,p) without the integer part's zero ('.5', '-.5'): Postgres' form."""
    return (f"(CASE WHEN starts_with({x}, '.') THEN '0' || {x} "
            f"WHEN starts_with({x}, '-.') THEN '-0' || substr({x}, 2) ELSE {x} END)")


DECIMAL_TEXT = Canon(_trim_decimal("{0}::text"), _trim_decimal(_leading_zero("CAST({0} AS VARCHAR)")))
"""Decimal text without trailing fractional zeros (a replica may hold a numeric in another scale:
an older replica's DECIMAL(38,18) for an unconstrained one, integers)."""
DAYS = Canon("(CASE WHEN isfinite({0}) THEN ({0} - DATE '1970-01-01')::text ELSE {0}::text END)",
             "(CASE WHEN isfinite({0}) THEN CAST({0} - DATE '1970-01-01' AS VARCHAR) "
             "ELSE CAST({0} AS VARCHAR) END)")
EPOCH_US = Canon("(CASE WHEN isfinite({0}) THEN (extract(epoch FROM {0}) * 1000000)::bigint::text ELSE {0}::text END)",
                 "(CASE WHEN isfinite({0}) THEN CAST(epoch_us({0}) AS VARCHAR) ELSE CAST({0} AS VARCHAR) END)")
_FLOAT = Canon("(CASE WHEN {0} = 0 THEN '0' WHEN {0} = 'NaN' THEN 'nan' WHEN {0} = 'Infinity' THEN 'inf' "
               "WHEN {0} = '-Infinity' THEN '-inf' ELSE trim(to_char({0}::float8, '9.99999999999999EEEE')) END)",
               "(CASE WHEN isnan({0}) THEN 'nan' WHEN {0} = 0 THEN '0' WHEN {0} = 'inf'::DOUBLE THEN 'inf' "
               "WHEN {0} = '-inf'::DOUBLE THEN '-inf' ELSE printf('%.14e', CAST({0} AS DOUBLE)) END)",
               note="compared to 15 significant digits")
_OUTPUT_TEXT = Canon("concat({})", "CAST({} AS VARCHAR)")  # concat: the output function (char(n) padded)
_TIME_US = Canon("(extract(epoch FROM {0}) * 1000000)::bigint::text",
                 "CAST((datepart('hour', {0}) * 3600 + datepart('minute', {0}) * 60)::BIGINT * 1000000 "
                 "+ datepart('microseconds', {0}) AS VARCHAR)")
_INTERVAL = Canon("((extract(year FROM {0}) * 12 + extract(month FROM {0}))::bigint::text || ':' || "
                  "extract(day FROM {0})::bigint::text || ':' || (extract(hour FROM {0}) * 3600000000 + "
                  "extract(minute FROM {0}) * 60000000 + extract(microseconds FROM {0}))::bigint::text)",
                  "(CAST(datepart('year', {0}) * 12 + datepart('month', {0}) AS VARCHAR) || ':' || "
                  "CAST(datepart('day', {0}) AS VARCHAR) || ':' || CAST(datepart('hour', {0}) * 3600000000::BIGINT + "
                  "datepart('minute', {0}) * 60000000::BIGINT + datepart('microseconds', {0}) AS VARCHAR))")
_HEX = Canon("encode({}, 'hex')", "lower(hex({}))")

DUCK_INTS = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT")
NOT_HASHED: tuple[VerifyAs, ...] = ()
"""The fallback: verify does not compare the type (no text both engines compute alike)."""


# -- the rows ----------------------------------------------------------------------------------

_STRING = arrives("string", None, "VARCHAR", "string", _str)
_JSON = arrives("string", "io.debezium.data.Json", "JSON", "string", _str, cast=True)
_AS_VARCHAR = (VerifyAs(("VARCHAR",), _OUTPUT_TEXT),)


def _integer(name: str, connect: str, duckdb: str, bits: int) -> PgType:
    return PgType(
        (name,), (arrives(connect, None, duckdb, connect, INT_BITS[bits]),),
        Snapshot({"type": connect}, as_is, "{0}::text", in_arrays=True),
        (VerifyAs(DUCK_INTS, AS_TEXT, key="int"), VerifyAs(("DECIMAL*",), DECIMAL_TEXT)))


def _floating(name: str, connect: str, alias: str, duckdb: str, transport: str) -> PgType:
    # JSON -0 would parse as the integer 0: keep the sign as encode does
    json = "CASE WHEN {0} = 0 AND {0}::text LIKE '-%' THEN '-0.0' ELSE to_json({0})::text END"
    return PgType(
        (name,), (arrives(connect, None, duckdb, transport, _float), arrives(alias, None, duckdb, transport, _float)),
        Snapshot({"type": connect}, _encode_float, json),
        (VerifyAs(("FLOAT", "REAL", "DOUBLE"), _FLOAT),))


ENUM = PgType((), (arrives("string", "io.debezium.data.Enum", "VARCHAR", "string", _str),),
              Snapshot({"type": "string", "name": "io.debezium.data.Enum"}, as_is, _TO_JSON_TEXT, select="{0}::text"),
              _AS_VARCHAR)
"""Every enum, whatever its name (a column flagged ``is_enum``)."""

# A row: PgType((typnames), (arrivals: Connect schema -> column type), Snapshot(schema, encode, json,
# select=, in_arrays=) or READ_AS_TEXT, (VerifyAs((DuckDB types), canon, key=), ...) or NOT_HASHED).
REGISTRY: tuple[PgType, ...] = (
    _integer("int2", "int16", "SMALLINT", 16),
    _integer("int4", "int32", "INTEGER", 32),
    _integer("int8", "int64", "BIGINT", 64),
    # numeric arrives as its text (decimal.handling.mode=string, see numeric_column), or as
    # precise mode's bytes from a connector configured so
    PgType(("numeric",), (Arrival("string", None, _numeric_text_column, source_type="NUMERIC"),
                          Arrival("bytes", "org.apache.kafka.connect.data.Decimal", _decimal_column),
                          Arrival("struct", "io.debezium.data.VariableScaleDecimal", _variable_decimal_column)),
           Snapshot(_numeric_schema, _encode_numeric_text, _NUMERIC_JSON, select="{0}::text"),
           (VerifyAs(("DECIMAL*",), DECIMAL_TEXT, key="numeric"), VerifyAs(DUCK_INTS, DECIMAL_TEXT),
            VerifyAs(("VARCHAR",), AS_TEXT))),
    # float4/float8 are Connect's float32/float64, named float/double by JsonConverter
    _floating("float4", "float", "float32", "REAL", "float32"),
    _floating("float8", "double", "float64", "DOUBLE", "float64"),
    PgType(("bool",), (arrives("boolean", None, "BOOLEAN", "bool", _bool),),
           Snapshot({"type": "boolean"}, as_is, "to_json({0})::text"),
           (VerifyAs(("BOOLEAN",), AS_TEXT),)),
    PgType(("text", "varchar"), (_STRING,), Snapshot({"type": "string"}, as_is, _TO_JSON_TEXT, in_arrays=True),
           (VerifyAs(("VARCHAR",), _OUTPUT_TEXT, key="text"),)),
    PgType(("name",), (_STRING,), Snapshot({"type": "string"}, as_is, _TO_JSON_TEXT), _AS_VARCHAR),
    # bpchar::text would drop the padding encode keeps
    PgType(("bpchar",), (_STRING,), Snapshot({"type": "string"}, as_is, "to_json({0})::text"), _AS_VARCHAR),
    PgType(("citext", "inet", "cidr", "macaddr", "macaddr8"), (_STRING,), READ_AS_TEXT, _AS_VARCHAR),
    PgType(("xml",), (arrives("string", "io.debezium.data.Xml", "VARCHAR", "string", _str),), READ_AS_TEXT,
           _AS_VARCHAR),
    PgType(("ltree",), (arrives("string", "io.debezium.data.Ltree", "VARCHAR", "string", _str),), READ_AS_TEXT,
           _AS_VARCHAR),
    PgType(("bytea",), (arrives("bytes", None, "BLOB", "binary", _bytes),),
           Snapshot({"type": "bytes"}, _encode_bytea, _quoted("translate(encode({0}, 'base64'), E'\\n', '')")),
           (VerifyAs(("BLOB",), _HEX),)),
    # date, time and timestamp arrive as Debezium's types (time.precision.mode=adaptive), or Connect's
    PgType(("date",), (arrives("int32", "io.debezium.time.Date", "DATE", "date32", INT_BITS[32]),
                       arrives("int32", "org.apache.kafka.connect.data.Date", "DATE", "date32", INT_BITS[32])),
           Snapshot({"type": "int32", "name": "io.debezium.time.Date"}, _encode_date,
                    "({0} - DATE '1970-01-01')::text"),
           (VerifyAs(("DATE",), DAYS, key="date"),)),
    PgType(("time",), (arrives("int32", "io.debezium.time.Time", "TIME", "time_ms", INT_BITS[32]),
                       arrives("int64", "io.debezium.time.MicroTime", "TIME", "time_us", INT_BITS[64]),
                       arrives("int64", "io.debezium.time.NanoTime", "TIME", "time_ns", INT_BITS[64])),
           Snapshot(_time_schema, _encode_time, _time_json),
           (VerifyAs(("TIME",), _TIME_US),)),
    PgType(("timetz",), (arrives("string", "io.debezium.time.ZonedTime", "TIMETZ", "string", _str, cast=True),),
           READ_AS_TEXT,
           (VerifyAs(("TIMETZ", "TIME WITH TIME ZONE"), AS_TEXT),)),
    PgType(("timestamp",), (arrives("int64", "io.debezium.time.Timestamp", "TIMESTAMP", "ts_ms", INT_BITS[64]),
                            arrives("int64", "io.debezium.time.MicroTimestamp", "TIMESTAMP", "ts_us", INT_BITS[64]),
                            arrives("int64", "io.debezium.time.NanoTimestamp", "TIMESTAMP_NS", "ts_ns", INT_BITS[64])),
           Snapshot(_timestamp_schema, _encode_timestamp, _timestamp_json),
           (VerifyAs(("TIMESTAMP",), EPOCH_US, key="timestamp"),)),
    PgType(("timestamptz",),
           (arrives("string", "io.debezium.time.ZonedTimestamp", "TIMESTAMPTZ", "tstz_us", _zoned_timestamp),),
           Snapshot({"type": "string", "name": "io.debezium.time.ZonedTimestamp"}, _encode_timestamptz,
                    _quoted("to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")),
           (VerifyAs(("TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE"), EPOCH_US, key="timestamptz"),)),
    PgType(("interval",), (arrives("string", "io.debezium.time.Interval", "INTERVAL", "interval", _interval),),
           Snapshot(
               {"type": "string", "name": "io.debezium.time.Interval"}, _encode_interval,
               "CASE WHEN {0} IS NULL THEN NULL ELSE '\"P' || (extract(year FROM {0}) * 12 + extract(month FROM {0}))"
               "::int8 || 'M' || extract(day FROM {0})::int8 || 'DT' || ((extract(hour FROM {0}) * 3600000000 + "
               "extract(minute FROM {0}) * 60000000 + extract(microseconds FROM {0}))::int8::numeric * 0.000001)"
               "::text || 'S\"' END",
               # months, days and microseconds apart: psycopg2's timedelta would fold months into days
               select="CASE WHEN {0} IS NULL THEN NULL ELSE ARRAY[(extract(year from {0}) * 12 + extract(month "
                      "from {0}))::bigint, extract(day from {0})::bigint, (extract(hour from {0}) * 3600000000 + "
                      "extract(minute from {0}) * 60000000 + extract(microseconds from {0}))::bigint] END"),
           (VerifyAs(("INTERVAL",), _INTERVAL),)),
    PgType(("uuid",), (arrives("string", "io.debezium.data.Uuid", "UUID", "string", _str, cast=True),),
           Snapshot({"type": "string", "name": "io.debezium.data.Uuid"}, as_is, _TO_JSON_TEXT),
           (VerifyAs(("UUID",), AS_TEXT, key="uuid"),)),
    PgType(("json", "jsonb"), (_JSON,),
           Snapshot({"type": "string", "name": "io.debezium.data.Json"}, as_is, _TO_JSON_TEXT, select="{0}::text"),
           (VerifyAs(("JSON",), AS_TEXT),)),
    ENUM,
    # No Postgres type arrives as Connect's int8; a Connect schema may still declare it.
    PgType((), (arrives("int8", None, "TINYINT", "int8", INT_BITS[8]),), READ_AS_TEXT, NOT_HASHED),
)
