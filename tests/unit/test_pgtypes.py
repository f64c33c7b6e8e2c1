from decimal import Decimal

import pytest

from mallard.core.pgtypes import UNAVAILABLE, UNAVAILABLE_B64, column_type, is_unavailable, widens


def b64_unscaled(n: int) -> str:
    import base64

    return base64.b64encode(n.to_bytes((n.bit_length() + 8) // 8 or 1, "big", signed=True)).decode()


@pytest.mark.parametrize("schema, duck", [
    ({"type": "int16"}, "SMALLINT"),
    ({"type": "int32"}, "INTEGER"),
    ({"type": "int64"}, "BIGINT"),
    ({"type": "float32"}, "REAL"),
    ({"type": "float64"}, "DOUBLE"),
    ({"type": "float"}, "REAL"),
    ({"type": "double"}, "DOUBLE"),
    ({"type": "boolean"}, "BOOLEAN"),
    ({"type": "string"}, "VARCHAR"),
    ({"type": "bytes"}, "BLOB"),
    ({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
      "parameters": {"scale": "2", "connect.decimal.precision": "12"}}, "DECIMAL(12,2)"),
    ({"type": "struct", "name": "io.debezium.data.VariableScaleDecimal"}, "DECIMAL(38,18)"),
    ({"type": "int32", "name": "io.debezium.time.Date"}, "DATE"),
    ({"type": "int64", "name": "io.debezium.time.MicroTime"}, "TIME"),
    ({"type": "int64", "name": "io.debezium.time.MicroTimestamp"}, "TIMESTAMP"),
    ({"type": "int64", "name": "io.debezium.time.Timestamp"}, "TIMESTAMP"),
    ({"type": "string", "name": "io.debezium.time.ZonedTimestamp"}, "TIMESTAMPTZ"),
    ({"type": "string", "name": "io.debezium.time.Interval"}, "INTERVAL"),
    ({"type": "string", "name": "io.debezium.data.Uuid"}, "UUID"),
    ({"type": "string", "name": "io.debezium.data.Json"}, "JSON"),
    ({"type": "string", "name": "io.debezium.data.Enum", "parameters": {"allowed": "a,b"}}, "VARCHAR"),
    ({"type": "array", "items": {"type": "int32"}}, "INTEGER[]"),
    ({"type": "array", "items": {"type": "string"}}, "VARCHAR[]"),
    ({"type": "struct", "name": "io.debezium.data.geometry.Point"}, "VARCHAR"),
])
def test_type_map(schema, duck):
    assert column_type(schema).duckdb == duck


def test_unknown_types_are_text_and_flagged():
    ct = column_type({"type": "struct", "name": "io.debezium.data.geometry.Point"})
    assert not ct.known
    assert ct.decode({"x": 1.5, "y": 2}) == '{"x":1.5,"y":2}'


def in_duckdb(ct, value):
    """What DuckDB ends up holding for a decoded value (the adapter's SQL, run for real)."""
    import duckdb

    con = duckdb.connect()
    expr = "?" if ct.sql is None else ct.sql.format("?")
    return con.execute(f"SELECT CAST({expr} AS {ct.duckdb})", [value]).fetchone()[0]


def test_decimals_are_exact_or_refused():
    ct = column_type({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
                      "parameters": {"scale": "2", "connect.decimal.precision": "5"}})
    assert in_duckdb(ct, ct.decode(b64_unscaled(-99999))) == Decimal("-999.99")
    assert in_duckdb(ct, ct.decode(b64_unscaled(12))) == Decimal("0.12")
    big = column_type({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
                       "parameters": {"scale": "4", "connect.decimal.precision": "18"}})
    assert in_duckdb(big, big.decode(b64_unscaled(-(10**18 - 1)))) == Decimal("-99999999999999.9999")


@pytest.mark.parametrize("precision", [4, 30])
def test_decimal_that_does_not_fit_raises(precision):
    ct = column_type({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
                      "parameters": {"scale": "2", "connect.decimal.precision": str(precision)}})
    with pytest.raises(ValueError, match="digits"):
        ct.decode(b64_unscaled(10 ** (precision + 2)))


def test_variable_scale_numeric():
    ct = column_type({"type": "struct", "name": "io.debezium.data.VariableScaleDecimal"})
    assert ct.decode({"scale": 3, "value": b64_unscaled(-12345)}) == Decimal("-12.345")
    with pytest.raises(ValueError, match="decimal places"):
        ct.decode({"scale": 20, "value": b64_unscaled(1)})
    with pytest.raises(ValueError):
        ct.decode("nope")


@pytest.mark.parametrize("iso, expected", [
    ("P1Y2M3DT4H5M6.78S", (14, 3, (4 * 3600 + 5 * 60) * 10**9 + 6_780_000_000)),
    ("P-1Y-2M3DT-4H-5M-6.78S", (-14, 3, -(4 * 3600 + 5 * 60) * 10**9 - 6_780_000_000)),
    ("PT0S", (0, 0, 0)),
    ("P2W", (0, 14, 0)),
])
def test_intervals_keep_months_days_and_time_apart(iso, expected):
    assert column_type({"type": "string", "name": "io.debezium.time.Interval"}).decode(iso) == expected


def test_zoned_timestamps_become_utc_microseconds():
    ct = column_type({"type": "string", "name": "io.debezium.time.ZonedTimestamp"})
    assert ct.decode("1970-01-01T00:00:01.000001Z") == 1_000_001
    assert ct.decode("2025-06-01T08:00:00.000000Z") == 1748764800 * 1_000_000
    with pytest.raises(ValueError):
        ct.decode("yesterday")


@pytest.mark.parametrize("schema, value", [
    ({"type": "int32"}, "12"),
    ({"type": "int16"}, 40_000),  # wider than the column: it could not be loaded
    ({"type": "int32"}, -(2**31) - 1),
    ({"type": "int64"}, 2**63),
    ({"type": "int32", "name": "io.debezium.time.Date"}, 2**31),
    ({"type": "boolean"}, 1),
    ({"type": "string"}, 5),
    ({"type": "bytes"}, "!!not base64!!"),
    ({"type": "array", "items": {"type": "int32"}}, "[1]"),
])
def test_values_that_do_not_fit_their_type_raise(schema, value):
    with pytest.raises(ValueError):
        column_type(schema).decode(value)


def test_toast_placeholder_per_type():
    assert is_unavailable(column_type({"type": "string"}), UNAVAILABLE)
    assert is_unavailable(column_type({"type": "bytes"}), UNAVAILABLE_B64)
    assert is_unavailable(column_type({"type": "array", "items": {"type": "string"}}), [UNAVAILABLE])
    assert is_unavailable(column_type({"type": "string", "name": "io.debezium.data.Json"}), UNAVAILABLE)
    assert not is_unavailable(column_type({"type": "int32"}), UNAVAILABLE)
    assert not is_unavailable(column_type({"type": "string"}), "text")


@pytest.mark.parametrize("old, new, ok", [
    ("INTEGER", "BIGINT", True), ("SMALLINT", "INTEGER", True), ("BIGINT", "INTEGER", False),
    ("REAL", "DOUBLE", True), ("DOUBLE", "REAL", False),
    ("DECIMAL(10,2)", "DECIMAL(12,2)", True), ("DECIMAL(10,2)", "DECIMAL(12,4)", True),
    ("DECIMAL(10,2)", "DECIMAL(10,4)", False), ("DECIMAL(10,2)", "DECIMAL(10,1)", False),
    ("INTEGER", "DECIMAL(12,2)", True), ("INTEGER", "DECIMAL(5,0)", False),
    ("VARCHAR", "VARCHAR", True), ("INTEGER", "VARCHAR", False), ("VARCHAR", "INTEGER", False),
])
def test_widening(old, new, ok):
    assert widens(old, new) is ok


def test_zero_fits_a_decimal_without_integer_digits():
    ct = column_type({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
                      "parameters": {"scale": "2", "connect.decimal.precision": "2"}})
    assert in_duckdb(ct, ct.decode(b64_unscaled(0))) == Decimal("0.00")
    assert in_duckdb(ct, ct.decode(b64_unscaled(-5))) == Decimal("-0.05")


def test_wide_decimals_are_not_rounded():
    ct = column_type({"type": "struct", "name": "io.debezium.data.VariableScaleDecimal"})
    value = ct.decode({"scale": 18, "value": b64_unscaled(-98765432109876543210_000000000000000001)})
    assert value == Decimal("-98765432109876543210.000000000000000001")
    ct38 = column_type({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
                        "parameters": {"scale": "0", "connect.decimal.precision": "38"}})
    assert in_duckdb(ct38, ct38.decode(b64_unscaled(10**37 + 1))) == Decimal(10**37 + 1)


def test_the_column_wise_decimal_decoder_agrees_with_the_per_value_one():
    import random

    from mallard.core.snapshot_encoding import _unscaled_b64 as b64

    ct = column_type({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
                      "parameters": {"scale": "2", "connect.decimal.precision": "5"}})
    rng = random.Random(3)
    values = [None if rng.random() < 0.2 else b64(rng.randint(-99_999, 99_999)) for _ in range(2000)]
    values += [b64(0), b64(-1), b64(99_999), b64(-99_999), b64(128), b64(-129)]
    assert ct.decode_column(values) == [None if v is None else ct.decode(v) for v in values]
    for bad in ([b64(100_000)], [None, b64(-100_000)], ["not base64!"], [12]):
        with pytest.raises((ValueError, TypeError)):
            ct.decode_column(bad)
        with pytest.raises((ValueError, TypeError)):
            [ct.decode(v) for v in bad]


@pytest.mark.parametrize("iso, micros", [
    ("P0Y0M364DT2H33M2.278032999S", (2 * 3600 + 33 * 60 + 2) * 10**6 + 278_033),  # pgjdbc's double
    ("PT2.2780325S", 2_278_032),  # half a microsecond: to even (never sent; Postgres holds whole ones)
    ("PT2.2780335S", 2_278_034),
    ("PT-0.0000009S", -1),
    ("PT-1.999999999S", -2_000_000),
    ("PT59.9999995S", 60_000_000),
    ("PT0.000001S", 1),
    ("P-2M-3DT-4H-5M-6.699999999S", -(4 * 3600 + 5 * 60) * 10**6 - 6_700_000),
    ("-P1DT1.0000004S", -1_000_000),
])
def test_interval_seconds_round_to_the_microsecond_postgres_holds(iso, micros):
    months, days, nanos = column_type({"type": "string", "name": "io.debezium.time.Interval"}).decode(iso)
    assert nanos == micros * 1000


def test_interval_decoder_names_what_is_not_a_duration():
    ct = column_type({"type": "string", "name": "io.debezium.time.Interval"})
    for bad in ("P1.5D", "1 day", "PT1,5S", ""):
        with pytest.raises(ValueError, match="ISO-8601 duration"):
            ct.decode(bad)


P = "__debezium.source.column."


def numeric_schema(length, scale):
    """What Debezium declares for a numeric column (decimal.handling.mode=string, its type propagated)."""
    return {"type": "string", "parameters": {P + "type": "NUMERIC", P + "length": str(length), P + "scale": str(scale),
                                             P + "name": "n"}}


@pytest.mark.parametrize("length, scale, duckdb", [
    (12, 2, "DECIMAL(12,2)"), (38, 38, "DECIMAL(38,38)"), (1, 0, "DECIMAL(1,0)"),
    (131089, 0, "VARCHAR"),  # numeric without precision
    (39, 0, "VARCHAR"), (1000, 500, "VARCHAR"),  # wider than DuckDB's DECIMAL
    (2, -3, "VARCHAR"), (2, 5, "VARCHAR"),  # Postgres 15's negative scale, scale above precision
])
def test_a_numeric_column_is_a_decimal_duckdb_has_or_its_exact_text(length, scale, duckdb):
    assert column_type(numeric_schema(length, scale)).duckdb == duckdb


@pytest.mark.parametrize("text", ["1.50", "-9999999999.99", "0.01", "0", "-0.10", "12", "0.5"])
def test_numeric_text_that_fits_loads_as_it_is_and_is_cast_in_sql(text):
    ct = column_type(numeric_schema(12, 2))
    assert (ct.transport, ct.sql, ct.wire) == ("string", "CAST({} AS DECIMAL(12,2))", "str")
    assert ct.decode(text) == ct.from_wire(text) == text


@pytest.mark.parametrize("text, why", [
    ("1.505", "not a value DECIMAL\\(12,2\\) holds"),  # DuckDB's cast would round it: refused
    ("99999999999.99", "not a value"), ("1e3", "not a value"), (" 1.5", "not a value"), ("", "not a value"),
    ("NAN", "NaN cannot be held by DECIMAL\\(12,2\\)"), (1.5, "expected a string"),
])
def test_numeric_text_that_a_decimal_cannot_hold_exactly_is_refused_naming_why(text, why):
    with pytest.raises(ValueError, match=why):
        column_type(numeric_schema(12, 2)).decode(text)


def test_a_decimal_of_only_places_takes_no_integer_digit_but_zero():
    ct = column_type(numeric_schema(3, 3))
    assert ct.decode("0.123") == "0.123" and ct.decode("-0.5") == "-0.5"
    with pytest.raises(ValueError):
        ct.decode("1.000")


@pytest.mark.parametrize("sent, held", [
    ("123456789012345678901234567890123456789", "123456789012345678901234567890123456789"),
    ("-0.000000000000000000000000000000000000001", "-0.000000000000000000000000000000000000001"),
    ("12.3450", "12.3450"),  # the scale Postgres keeps
    ("NAN", "NaN"), ("POSITIVE_INFINITY", "Infinity"), ("NEGATIVE_INFINITY", "-Infinity"),
    ("NaN", "NaN"), ("-Infinity", "-Infinity"),  # Postgres' own spelling is taken as well
])
def test_an_unconstrained_numeric_is_postgres_text_exactly(sent, held):
    ct = column_type(numeric_schema(131089, 0))
    assert ct.decode(sent) == ct.from_wire(sent) == held


@pytest.mark.parametrize("sent", ["1e5", "1.", ".5", "+1", "inf", "nan", "1 2", "", "0x10"])
def test_an_unconstrained_numeric_refuses_what_is_not_a_numeric_text(sent):
    with pytest.raises(ValueError, match="not the text of a numeric"):
        column_type(numeric_schema(131089, 0)).decode(sent)


def test_a_string_with_another_source_type_stays_text():
    ct = column_type({"type": "string", "parameters": {P + "type": "VARCHAR", P + "length": "10"}})
    assert (ct.duckdb, ct.decode("NAN")) == ("VARCHAR", "NAN")


@pytest.mark.parametrize("text, micros", [
    ("2024-01-01T00:00:00.123456Z", 1704067200_123456), ("2024-01-01T00:00:00.5Z", 1704067200_500000),
    ("0001-01-01T00:00:00.000001Z", -62135596799_999999), ("2024-01-01T05:30:00.000001+05:30", 1704067200_000001),
])
def test_zoned_timestamps_keep_every_microsecond(text, micros):
    assert column_type({"type": "string", "name": "io.debezium.time.ZonedTimestamp"}).decode(text) == micros


@pytest.mark.parametrize("text", ["2024-01-01T00:00:00.1234567Z", "2024-01-01T00:00:00.123456999+00:00"])
def test_zoned_timestamps_finer_than_postgres_are_refused_not_truncated(text):
    with pytest.raises(ValueError, match="finer than a microsecond"):
        column_type({"type": "string", "name": "io.debezium.time.ZonedTimestamp"}).decode(text)
