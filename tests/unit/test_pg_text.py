"""Debezium's wire values as Postgres prints them (mallard tail); Postgres' own text is
the reference (tests/integration/test_applier_types.py checks every type against it)."""
import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mallard.core.pg_text import interval_text, pg_text, row_text

DECIMAL = {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "2"}}


def b64(n: int) -> str:
    return base64.b64encode(n.to_bytes((n.bit_length() + 8) // 8, "big", signed=True)).decode()


@pytest.mark.parametrize("unscaled,text", [(64940, "649.40"), (-1, "-0.01"), (0, "0.00"), (123456789012, "1234567890.12"),
                                           (-9876543210987654321000, "-98765432109876543210.00")])
def test_decimals(unscaled, text):
    assert pg_text(DECIMAL, b64(unscaled)) == text


def test_variable_scale_decimal():
    schema = {"type": "struct", "name": "io.debezium.data.VariableScaleDecimal"}
    assert pg_text(schema, {"scale": 3, "value": b64(12345)}) == "12.345"
    # 38 digits: exact, not rounded to Decimal's default 28.
    assert pg_text(schema, {"scale": 18, "value": b64(-98765432109876543210_000000000000000001)}) == \
        "-98765432109876543210.000000000000000001"


@pytest.mark.parametrize("iso,text", [
    ("P0Y0M364DT2H33M2.278032999S", "364 days 02:33:02.278033"),  # pgjdbc's double: rounded, not truncated
    ("P1Y2M3DT4H5M6.78S", "1 year 2 mons 3 days 04:05:06.78"),
    ("P0Y-1M2DT0H0M-1S", "-1 mons +2 days -00:00:01"),
    ("P0Y1M0DT0H0M0S", "1 mon"),
    ("P0Y-14M0DT0H0M0S", "-1 years -2 mons"),
    ("P0Y0M-1DT1H0M0S", "-1 days +01:00:00"),
    ("P0Y0M0DT100H0M0S", "100:00:00"),
    ("P0Y0M0DT0H0M0S", "00:00:00"),
    ("P0Y0M0DT0H0M0.0000005S", "00:00:00"),  # half a microsecond: to even
    ("P0Y0M0DT0H0M0.0000015S", "00:00:00.000002"),
    ("P0Y0M1DT0H0M0S", "1 day"),
    ("P2Y0M0DT0H0M0S", "2 years"),
])
def test_intervals(iso, text):
    assert interval_text(iso) == text


@given(st.integers(-10**6, 10**6), st.integers(1, 86_399_999_999))
def test_interval_time_part_round_trips_microseconds(days, micros):
    h, rest = divmod(micros, 3_600_000_000)
    m, rest = divmod(rest, 60_000_000)
    iso = f"P0Y0M{days}DT{h}H{m}M{rest / 1e6:.9f}S"
    text = interval_text(iso)
    clock = text.split(" ")[-1]
    hh, mm, ss = clock.split(":")
    assert int(hh) * 3_600_000_000 + int(mm) * 60_000_000 + round(float(ss) * 1e6) == micros


NUMERIC_TEXT = {"type": "string", "parameters": {"__debezium.source.column.type": "NUMERIC"}}


@pytest.mark.parametrize("schema,value,text", [
    ({"type": "int32", "name": "io.debezium.time.Date"}, 0, "1970-01-01"),
    ({"type": "int32", "name": "io.debezium.time.Date"}, -1, "1969-12-31"),
    ({"type": "int64", "name": "io.debezium.time.MicroTime"}, 49_556_123_456, "13:45:56.123456"),
    ({"type": "int64", "name": "io.debezium.time.MicroTimestamp"}, -1, "1969-12-31 23:59:59.999999"),
    ({"type": "int64", "name": "io.debezium.time.Timestamp"}, 1_000, "1970-01-01 00:00:01"),
    ({"type": "string", "name": "io.debezium.time.ZonedTimestamp"}, "2025-06-01T08:00:00.5Z", "2025-06-01 08:00:00.5+00"),
    ({"type": "bytes"}, "AP8Q", "\\x00ff10"),
    ({"type": "array", "items": DECIMAL}, [b64(5), None], ["0.05", None]),
    ({"type": "string", "name": "io.debezium.data.Uuid"}, "a0ee", "a0ee"),
    ({"type": "int32"}, 7, 7),
    (None, "as it came", "as it came"),
    (NUMERIC_TEXT, "NAN", "NaN"), (NUMERIC_TEXT, "POSITIVE_INFINITY", "Infinity"),
    (NUMERIC_TEXT, "NEGATIVE_INFINITY", "-Infinity"), (NUMERIC_TEXT, "12.3450", "12.3450"),
    (NUMERIC_TEXT, "nope", "nope"),
])
def test_values(schema, value, text):
    assert pg_text(schema, value) == text


def test_a_value_unlike_its_schema_is_shown_as_it_came():
    assert pg_text({"type": "int32", "name": "io.debezium.time.Date"}, "soon") == "soon"


def test_rows_render_each_field_by_its_schema():
    schema = {"type": "struct", "fields": [{"field": "total", **DECIMAL}, {"field": "id", "type": "int32"}]}
    assert row_text(schema, {"id": 1, "total": b64(64940)}) == {"id": 1, "total": "649.40"}
