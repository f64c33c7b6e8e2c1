"""A Debezium value as Postgres would print it, from the value's own Connect schema
(``mallard tail``): numerics as decimals, dates and timestamps as ISO text, intervals as
Postgres' ``1 year 2 mons 3 days 04:05:06.789``, bytea as ``\\x…``, arrays element by
element. Pure. A schema it does not know leaves the value as it came."""
from __future__ import annotations

import base64
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from mallard.core.type_registry import SOURCE_TYPE, interval_parts, numeric_text

_EPOCH = date(1970, 1, 1)


def _bytes(value: Any) -> bytes:
    return base64.b64decode(value) if isinstance(value, str) else bytes(value)


def _decimal(value: Any, scale: int) -> str:
    unscaled = int.from_bytes(_bytes(value), "big", signed=True)
    # From text, exactly: arithmetic would round to the context's 28 digits.
    return format(Decimal(f"{unscaled}E{-scale}"), "f")


def _clock(micros: int) -> str:
    """HH:MM:SS[.ffffff] of a time of day in microseconds (Postgres trims trailing zeros)."""
    seconds, fraction = divmod(micros, 1_000_000)
    text = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return text + (f".{fraction:06d}".rstrip("0") if fraction else "")


def _timestamp(micros: int) -> str:
    moment = datetime(1970, 1, 1) + timedelta(microseconds=micros)
    return moment.date().isoformat() + " " + _clock(micros % 86_400_000_000)


def interval_text(iso: str) -> str:
    """Debezium's ISO 8601 interval (``P1Y2M3DT4H5M6.789S``, seconds from a double) as
    Postgres prints it, rounded to the microsecond as Postgres stores it."""
    read = interval_parts(iso)  # the applier's own reading of it
    if read is None:
        return iso
    months, days, micros = read
    # As Postgres' EncodeInterval (IntervalStyle postgres): years and months split with the
    # sign of the total, plural unless exactly 1, '+' on a positive part after a negative one.
    year = int(months / 12)
    parts: list[str] = []
    before = False
    for value, unit in ((year, "year"), (months - year * 12, "mon"), (days, "day")):
        if value:
            parts.append(f"{'+' if before and value > 0 else ''}{value} {unit}{'' if value == 1 else 's'}")
            before = value < 0
    if not parts or micros:
        parts.append(("-" if micros < 0 else "+" if before else "") + _clock(abs(micros)))
    return " ".join(parts)


def pg_text(schema: dict[str, Any] | None, value: Any) -> Any:
    """``value`` of a column whose Connect schema is ``schema``, as Postgres prints it
    (a JSON-friendly string, number, bool, list or None)."""
    if value is None or not isinstance(schema, dict):
        return value
    name = schema.get("name") or ""
    kind = schema.get("type")
    params = schema.get("parameters") or {}
    try:
        if name == "org.apache.kafka.connect.data.Decimal":
            return _decimal(value, int(params.get("scale", 0)))
        if not name and kind == "string" and str(params.get(SOURCE_TYPE, "")).upper() == "NUMERIC":
            return numeric_text(value)  # decimal.handling.mode=string: the text, specials renamed
        if name == "io.debezium.data.VariableScaleDecimal" and isinstance(value, dict):
            return _decimal(value["value"], int(value["scale"]))
        if name == "io.debezium.time.Date" or name == "org.apache.kafka.connect.data.Date":
            return (_EPOCH + timedelta(days=int(value))).isoformat()
        if name == "io.debezium.time.Time" or name == "org.apache.kafka.connect.data.Time":
            return _clock(int(value) * 1000)
        if name == "io.debezium.time.MicroTime":
            return _clock(int(value))
        if name == "io.debezium.time.NanoTime":
            return _clock(int(value) // 1000)
        if name in ("io.debezium.time.Timestamp", "org.apache.kafka.connect.data.Timestamp"):
            return _timestamp(int(value) * 1000)
        if name == "io.debezium.time.MicroTimestamp":
            return _timestamp(int(value))
        if name == "io.debezium.time.NanoTimestamp":
            return _timestamp(int(value) // 1000)
        if name == "io.debezium.time.ZonedTimestamp":
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(timezone.utc)
            text = moment.strftime("%Y-%m-%d %H:%M:%S")
            return text + (f".{moment.microsecond:06d}".rstrip("0") if moment.microsecond else "") + "+00"
        if name == "io.debezium.time.Interval":
            return interval_text(str(value))
        if name == "io.debezium.time.MicroDuration":
            return interval_text(f"PT{Decimal(int(value)).scaleb(-6)}S")
        if kind == "bytes" and not name:
            return "\\x" + _bytes(value).hex()
        if kind == "array":
            return [pg_text(schema.get("items"), v) for v in value]
    except (ValueError, TypeError, ArithmeticError, KeyError):
        return value  # not what the schema says: shown as it came
    if isinstance(value, float) and value != value:
        return "NaN"
    return value


def row_text(schema: dict[str, Any] | None, row: Any) -> Any:
    """A before/after struct (or a key) with each field rendered by its own schema."""
    if not isinstance(row, dict) or not isinstance(schema, dict):
        return row
    fields = {f.get("field"): f for f in schema.get("fields") or []}
    return {k: pg_text(fields.get(k), v) for k, v in row.items()}

