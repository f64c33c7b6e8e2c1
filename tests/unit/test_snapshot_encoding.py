from datetime import date, datetime, time, timezone
from decimal import Decimal

from mallard.core.pgtypes import column_type
from mallard.core.snapshot_encoding import PgColumn, connect_schema, encode


def roundtrip(col: PgColumn, value):
    """What the applier decodes from the snapshot's encoding of a value."""
    return column_type(connect_schema(col)).decode(encode(col, value))


def test_numeric_with_typmod_is_a_decimal_of_that_precision():
    col = PgColumn("n", "numeric", typmod=((12 << 16) | 2) + 4)
    assert column_type(connect_schema(col)).duckdb == "DECIMAL(12,2)"
    assert roundtrip(col, Decimal("-1234.50")) == "-1234.50"  # the text, cast exactly in SQL


def test_numeric_without_typmod_keeps_its_scale():
    col = PgColumn("n", "numeric")
    assert roundtrip(col, Decimal("12.3450")) == "12.3450"  # Postgres' own text: VARCHAR
    assert roundtrip(col, Decimal("-7")) == "-7"


def test_times_dates_and_intervals():
    assert roundtrip(PgColumn("d", "date"), date(2024, 2, 29)) == 19782
    assert roundtrip(PgColumn("t", "time"), time(13, 45, 56, 123456)) == 49556123456
    assert roundtrip(PgColumn("t", "time", typmod=3), time(0, 0, 1, 500000)) == 1500
    assert roundtrip(PgColumn("ts", "timestamp"), datetime(1970, 1, 1, 0, 0, 1)) == 1_000_000
    assert roundtrip(PgColumn("tz", "timestamptz"), datetime(2025, 6, 1, 8, 0, 0, 500000, tzinfo=timezone.utc)) == \
        1748764800_500000
    assert roundtrip(PgColumn("i", "interval"), [14, 3, 14706780000]) == (14, 3, 14706780000000)
    assert roundtrip(PgColumn("i", "interval"), [0, 0, 0]) == (0, 0, 0)
    assert roundtrip(PgColumn("i", "interval"), [-1, 2, -1000000]) == (-1, 2, -1000000000)


def test_specials_arrays_and_text_types():
    assert encode(PgColumn("f", "float8"), float("nan")) == "NaN"
    assert roundtrip(PgColumn("b", "bytea"), memoryview(b"\x00\xff")) == b"\x00\xff"
    assert roundtrip(PgColumn("a", "_int4", element="int4"), [1, None, 3]) == [1, None, 3]
    assert column_type(connect_schema(PgColumn("e", "mood", is_enum=True))).duckdb == "VARCHAR"
    assert column_type(connect_schema(PgColumn("j", "jsonb"))).duckdb == "JSON"


def test_wide_numerics_are_not_rounded():
    col = PgColumn("n", "numeric")
    wide = Decimal("-98765432109876543210.000000000000000001")
    assert roundtrip(col, wide) == str(wide)
    typed = PgColumn("n", "numeric", typmod=((38 << 16) | 18) + 4)
    assert column_type(connect_schema(typed)).decode(encode(typed, wide)) == str(wide)


def test_numerics_are_encoded_as_debezium_sends_them_in_string_mode():
    free, money = PgColumn("n", "numeric"), PgColumn("m", "numeric", typmod=((12 << 16) | 2) + 4)
    params = connect_schema(money)["parameters"]
    assert (params["__debezium.source.column.length"], params["__debezium.source.column.scale"]) == ("12", "2")
    assert connect_schema(free)["parameters"]["__debezium.source.column.length"] == "131089"
    for text, sent in [("NaN", "NAN"), ("Infinity", "POSITIVE_INFINITY"), ("-Infinity", "NEGATIVE_INFINITY"),
                       ("123456789012345678901234567890123456789", "123456789012345678901234567890123456789")]:
        assert encode(free, text) == sent and roundtrip(free, text) == text
    assert encode(free, Decimal("1E-30")) == "0.000000000000000000000000000001"  # never an exponent
    assert encode(money, "-0.01") == roundtrip(money, "-0.01") == "-0.01"
