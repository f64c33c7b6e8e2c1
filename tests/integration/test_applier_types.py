"""Every supported Postgres type, written in Postgres, read back from DuckDB: the same value."""
from __future__ import annotations

import json
import math
import os
import signal
import struct
import time
import uuid
from decimal import Decimal

import duckdb
import psycopg2
import pytest

from mallard.adapters.postgres import table_columns
from mallard.core.verify import Column, canon
from mallard.stack.processes import is_alive

pytestmark = pytest.mark.integration

COLUMNS = {
    "c_smallint": "smallint", "c_int": "integer", "c_bigint": "bigint",
    "c_numeric": "numeric(12,2)", "c_numeric_free": "numeric",
    "c_real": "real", "c_double": "double precision", "c_bool": "boolean",
    "c_text": "text", "c_varchar": "varchar(20)", "c_char": "char(4)",
    "c_date": "date", "c_time": "time", "c_timestamp": "timestamp", "c_timestamptz": "timestamptz",
    "c_interval": "interval", "c_uuid": "uuid", "c_json": "json", "c_jsonb": "jsonb", "c_bytea": "bytea",
    "c_int_array": "integer[]", "c_text_array": "text[]", "c_enum": "mood", "c_point": "point",
}
ROWS = {
    1: ["-32768", "2147483647", "-9223372036854775808", "1234567890.12", "12.345", "3.14", "2.718281828459045",
        "true", "héllo ☃ \"quoted\"", "varchar", "ab", "2024-02-29", "13:45:56.123456",
        "2024-02-29 13:45:56.123456", "2025-06-01 10:00:00.5+02", "1 year 2 mons 3 days 04:05:06.78",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", '{"b": [1, 2], "a": null}', '{"b": [1, 2], "a": {"x": 1.5}}',
        "\\x00ff10", "{1,NULL,3}", '{"a","b c",NULL}', "happy", "(1.5,2)"],
    3: ["0", "-1", "0", "-0.01", "-98765432109876543210.000000000000000001", "-0", "NaN",
        "false", "", "", "", "1970-01-01", "00:00:00", "1970-01-01 00:00:00", "1969-12-31 23:59:59.999999+00",
        "-1 mons +2 days -00:00:01", "00000000-0000-0000-0000-000000000000", "[]", "{}",
        "\\x", "{}", "{}", "sad", "(0,0)"],
}
INTERVAL_PG = ("(extract(year from c_interval) * 12 + extract(month from c_interval))::int, "
               "extract(day from c_interval)::int, (extract(hour from c_interval) * 3600000000 + "
               "extract(minute from c_interval) * 60000000 + extract(microseconds from c_interval))::bigint")
INTERVAL_DUCK = ("datepart('year', c_interval) * 12 + datepart('month', c_interval), datepart('day', c_interval), "
                 "datepart('hour', c_interval) * 3600000000::BIGINT + datepart('minute', c_interval) * 60000000::BIGINT"
                 " + datepart('microseconds', c_interval)")


@pytest.fixture(scope="module")
def both_sides(cdc_stack):
    """(Postgres rows, DuckDB rows, DuckDB column types), read after the applier caught up."""
    conn = psycopg2.connect(cdc_stack.dsn)
    conn.autocommit = True
    cols = ", ".join(f"{c} {t}" for c, t in COLUMNS.items())
    with conn.cursor() as cur:
        cur.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
        cur.execute(f"CREATE TABLE type_probe (id integer PRIMARY KEY, {cols})")
        for key, values in ROWS.items():
            cur.execute(f"INSERT INTO type_probe VALUES (%s, {', '.join(['%s'] * len(values))})", [key, *values])
        cur.execute("INSERT INTO type_probe (id) VALUES (2)")  # NULL in every column
        cur.execute(f"SELECT id, {', '.join(COLUMNS)} FROM type_probe ORDER BY id")
        pg = {r[0]: dict(zip(COLUMNS, r[1:])) for r in cur.fetchall()}
        cur.execute(f"SELECT id, {INTERVAL_PG} FROM type_probe ORDER BY id")
        pg_intervals = {r[0]: r[1:] for r in cur.fetchall()}
    conn.close()
    cdc_stack.wait_for("SELECT count(*) FROM type_probe", [[3]])
    log = (cdc_stack.home / "logs" / "applier.log").read_text()
    # Stop the applier to open its DuckDB file here, then start it again.
    pid = cdc_stack.status()["components"]["applier"]["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    db = duckdb.connect(str(cdc_stack.home / "duckdb" / "mallard.duckdb"), read_only=True)
    try:
        rows = db.execute(f"SELECT id, {', '.join(COLUMNS)} FROM type_probe ORDER BY id").fetchall()
        duck = {r[0]: dict(zip(COLUMNS, r[1:])) for r in rows}
        duck_intervals = {r[0]: r[1:] for r in db.execute(f"SELECT id, {INTERVAL_DUCK} FROM type_probe ORDER BY id").fetchall()}
        types = dict(db.execute("SELECT column_name, data_type FROM information_schema.columns "
                                "WHERE table_name = 'type_probe'").fetchall())
    finally:
        db.close()
        cdc_stack.mallard("stack", "up")
    return pg, duck, types, pg_intervals, duck_intervals, log


def normalise(column: str, value):
    if value is None:
        return None
    if column == "c_real":
        return struct.unpack("f", struct.pack("f", value))[0]  # Postgres real is binary32
    if column in ("c_json", "c_jsonb"):
        return json.loads(value) if isinstance(value, str) else value
    if column == "c_uuid":
        return str(uuid.UUID(str(value)))
    if column == "c_bytea":
        return bytes(value)
    if column == "c_numeric_free" and isinstance(value, Decimal):
        return format(value, "f")  # Postgres' text, which DuckDB holds
    return value


EXPECTED_TYPES = {
    "c_smallint": "SMALLINT", "c_int": "INTEGER", "c_bigint": "BIGINT", "c_numeric": "DECIMAL(12,2)",
    "c_numeric_free": "VARCHAR", "c_real": "FLOAT", "c_double": "DOUBLE", "c_bool": "BOOLEAN",
    "c_text": "VARCHAR", "c_varchar": "VARCHAR", "c_char": "VARCHAR", "c_date": "DATE", "c_time": "TIME",
    "c_timestamp": "TIMESTAMP", "c_timestamptz": "TIMESTAMP WITH TIME ZONE", "c_interval": "INTERVAL",
    "c_uuid": "UUID", "c_json": "JSON", "c_jsonb": "JSON", "c_bytea": "BLOB", "c_int_array": "INTEGER[]",
    "c_text_array": "VARCHAR[]", "c_enum": "VARCHAR", "c_point": "VARCHAR",
}


@pytest.mark.parametrize("column", [c for c in COLUMNS if c not in ("c_interval", "c_point")])
def test_value_is_exactly_what_postgres_holds(both_sides, column):
    pg, duck, types, *_ = both_sides
    assert types[column] == EXPECTED_TYPES[column]
    for key in (1, 2, 3):
        p, d = normalise(column, pg[key][column]), normalise(column, duck[key][column])
        if isinstance(p, float) and math.isnan(p):
            assert isinstance(d, float) and math.isnan(d)
            continue
        assert d == p, f"row {key}: DuckDB {d!r} != Postgres {p!r}"
        assert type(d) is type(p) or p is None, f"row {key}: {type(d)} vs {type(p)}"
    assert duck[2][column] is None


def test_decimals_stay_decimals_and_timestamptz_is_an_instant(both_sides):
    pg, duck, *_ = both_sides
    assert duck[1]["c_numeric"] == Decimal("1234567890.12") and isinstance(duck[1]["c_numeric"], Decimal)
    assert duck[3]["c_numeric_free"] == "-98765432109876543210.000000000000000001"  # exact text
    assert duck[1]["c_timestamptz"].utcoffset() is not None
    assert duck[1]["c_timestamptz"] == pg[1]["c_timestamptz"]  # 10:00:00.5+02 is 08:00:00.5 UTC


def test_interval_keeps_months_days_and_time(both_sides):
    *_, pg_intervals, duck_intervals, _ = both_sides
    assert duck_intervals == pg_intervals
    assert duck_intervals[1] == (14, 3, 14_706_780_000)


def test_unknown_type_is_kept_as_text_with_a_warning(both_sides):
    pg, duck, types, *_, log = both_sides
    assert types["c_point"] == "VARCHAR"
    point = json.loads(duck[1]["c_point"])
    assert (point["x"], point["y"]) == (1.5, 2.0)
    assert "columns of unknown type kept as text: c_point" in log


def test_the_snapshot_path_gives_the_very_same_duckdb_values(both_sides, cdc_stack):
    """The rows CDC wrote, then the same rows as a snapshot wrote them: equal, column by column,
    for every supported type (an unknown type is text in both, but Debezium's text of it, e.g.
    a point's struct as JSON, is not Postgres' own)."""
    supported = [c for c in COLUMNS if c != "c_point"]
    texts = ", ".join(f"CAST({c} AS VARCHAR)" for c in supported)
    sql = f"SELECT id, _mallard_source, {texts} FROM type_probe ORDER BY id"
    from_cdc = cdc_stack.query(sql)
    assert {r[1] for r in from_cdc} == {"cdc"}
    merged = "SELECT count(*) FROM _mallard.snapshots WHERE stream = 'public.type_probe' AND status = 'merged'"
    cdc_stack.mallard("resnapshot", "public.type_probe", "--wait", "--timeout", "90")
    assert cdc_stack.query(merged) == [[1]]
    from_snapshot = cdc_stack.query(sql)
    assert {r[1] for r in from_snapshot} == {"snapshot"}
    for cdc_row, snapshot_row in zip(from_cdc, from_snapshot):
        for column, a, b in zip(["id", "source", *supported], cdc_row, snapshot_row):
            if column != "source":
                assert a == b, f"row {cdc_row[0]}, {column}: CDC wrote {a!r}, the snapshot {b!r}"


def test_tail_prints_every_value_as_postgres_does(both_sides, cdc_stack):
    """`mallard tail --json` decodes each change event from its own schema: every column
    as Postgres' own text prints it (numbers, booleans and arrays as JSON values)."""
    conn = psycopg2.connect(cdc_stack.dsn)
    with conn.cursor() as cur:
        cur.execute("SET TimeZone = 'UTC'; SET IntervalStyle = 'postgres'")
        # (char(n) as its output function prints it, padded: ::text would trim it.)
        cur.execute(f"SELECT id, {', '.join(c if c == 'c_char' else f'{c}::text' for c in COLUMNS)} "
                    "FROM type_probe ORDER BY id")
        texts = {r[0]: dict(zip(COLUMNS, r[1:])) for r in cur.fetchall()}
    conn.close()
    out = cdc_stack.mallard("tail", "mallard.public.type_probe", "--from-beginning", "--json", "--timeout", "10")
    events = {}
    for line in out.stdout.splitlines():
        doc = json.loads(line)
        if doc["value"] and doc["value"].get("op") == "c":
            events[doc["key"]["id"]] = doc["value"]["after"]
    assert set(events) == {1, 2, 3}
    wrong = []
    for key, row in texts.items():
        for column, text in row.items():
            shown = events[key][column]
            if column == "c_point" or text is None:
                ok = text is None and shown is None or column == "c_point"
            elif column in ("c_smallint", "c_int", "c_bigint"):
                ok = shown == int(text)
            elif column in ("c_real", "c_double"):
                ok = (math.isnan(float(text)) and shown == "NaN") or shown == float(text)
            elif column == "c_bool":
                ok = shown == (text == "true")
            elif column.endswith("_array"):
                with psycopg2.connect(cdc_stack.dsn) as c2, c2.cursor() as cur:
                    cur.execute(f"SELECT {column} FROM type_probe WHERE id = %s", (key,))
                    ok = shown == cur.fetchone()[0]
                c2.close()
            else:
                ok = shown == text
            if not ok:
                wrong.append((key, column, text, shown))
    assert not wrong, wrong


# -- Edge values, each compared with Postgres' own text through both paths ------------------

EDGE_COLUMNS = {"n_free": "numeric", "n_wide": "numeric(40,0)", "n_money": "numeric(12,2)", "n_tiny": "numeric(38,38)",
                "iv": "interval", "d": "date", "ts": "timestamp", "tstz": "timestamptz"}
# Intervals with 6-digit fractions: pgjdbc keeps the seconds as a double, so Debezium sends
# e.g. 2.278032999 for 2.278033 in about 1% of them; these 400 include such values.
_FRACTIONS = [f"{(i * 7919 + 13) % 60:02d}.{(i * 104729 + 278033) % 1_000_000:06d}" for i in range(400)]
EDGE_VALUES = {
    "n_free": ["123456789012345678901234567890123456789", "-123456789012345678901234567890123456789",
               "NaN", "Infinity", "-Infinity", "12.3450", "0.000000000000000000000000000000000000001",
               "-98765432109876543210.0000000000000000001", "0", "1e-6", "1e100"],
    "n_wide": ["9999999999999999999999999999999999999999", "-1"],
    "n_money": ["-9999999999.99", "0.01", "0.10", "-0.01", "0"],
    "n_tiny": ["0.00000000000000000000000000000000000001", "-0.99999999999999999999999999999999999999"],
    "iv": ["364 days 02:33:02.278033", "-00:00:00.000001", "1 day 23:59:59.999999", "-178000000 years -00:00:00.999999",
           "2 mons -1 days 00:00:59.999999", "-1 mons +2 days -00:00:01.000001", "00:00:00.5",
           *(f"{i % 5} mons {i % 400} days {i % 24:02d}:{i % 60:02d}:{f}" for i, f in enumerate(_FRACTIONS))],
    "d": ["0001-01-01", "9999-12-31", "1969-12-31", "2000-02-29"],
    "ts": ["0001-01-01 00:00:00", "9999-12-31 23:59:59.999999", "1969-12-31 23:59:59.999999", "1970-01-01 00:00:00.000001"],
    "tstz": ["1969-12-31 23:59:59.999999+00", "2024-01-01 00:00:00+14", "9999-12-31 23:59:59.999999+00",
             "1901-12-13 20:45:52.000001+00"],
}
EDGE_ROWS = max(len(v) for v in EDGE_VALUES.values())
EDGE_DUCK_TYPES = {"n_free": "VARCHAR", "n_wide": "VARCHAR", "n_money": "DECIMAL(12,2)", "n_tiny": "DECIMAL(38,38)",
                   "iv": "INTERVAL", "d": "DATE", "ts": "TIMESTAMP", "tstz": "TIMESTAMP WITH TIME ZONE"}


def _edges_as_written(cdc_stack, cur, source: str) -> None:
    """Every edge column, as the replica holds it (all rows written by ``source``), equals
    Postgres: its canonical text (what `mallard verify` hashes) and, for the numerics held
    as text, Postgres' own text of it."""
    assert {r[0] for r in cdc_stack.query("SELECT DISTINCT _mallard_source FROM type_edges")} == {source}
    duck_types = dict(cdc_stack.query("SELECT column_name, data_type FROM information_schema.columns "
                                      "WHERE table_name = 'type_edges'"))
    assert {c: duck_types[c] for c in EDGE_COLUMNS} == EDGE_DUCK_TYPES
    for col in table_columns(cur.connection, "public.type_edges")[1:]:
        c = canon(Column(col.name, col.type_name, duck_types[col.name]))
        assert not isinstance(c, str), c
        cur.execute(f"SELECT id, {c.pg.format(col.name)} FROM type_edges ORDER BY id")
        in_pg = [list(r) for r in cur.fetchall()]
        in_duck = cdc_stack.query(f"SELECT id, {c.duck.format(col.name)} FROM type_edges ORDER BY id")
        wrong = [(p, d) for p, d in zip(in_pg, in_duck) if p != d]
        assert not wrong and len(in_duck) == len(in_pg), f"{source}, {col.name}: (Postgres, DuckDB) {wrong[:5]}"
    cur.execute("SELECT id, n_free::text, n_wide::text FROM type_edges ORDER BY id")
    assert cdc_stack.query("SELECT id, n_free, n_wide FROM type_edges ORDER BY id") == [list(r) for r in cur.fetchall()]


def test_edge_values_equal_postgres_through_cdc_then_a_snapshot_and_tail(cdc_stack):
    """39- and 40-digit numerics, NaN and ±Infinity (numeric without precision, or wider than
    DuckDB's 38 digits: Postgres' text), DECIMAL's own bounds, intervals with 6-digit fractions,
    the first and last dates and timestamps: written by CDC, then by a snapshot, each equal to
    Postgres; `mallard verify` finds the table equal; `mallard tail` prints Postgres' text."""
    conn = psycopg2.connect(cdc_stack.dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SET TimeZone = 'UTC'; SET IntervalStyle = 'postgres'; SET DateStyle = 'ISO, YMD'")
    cur.execute(f"CREATE TABLE type_edges (id integer PRIMARY KEY, {', '.join(f'{c} {t}' for c, t in EDGE_COLUMNS.items())})")
    rows = [[i, *(v[i] if i < len(v) else None for v in EDGE_VALUES.values())] for i in range(EDGE_ROWS)]
    cur.execute("BEGIN")
    cur.executemany(f"INSERT INTO type_edges VALUES ({', '.join(['%s'] * (len(EDGE_COLUMNS) + 1))})", rows)
    cur.execute("COMMIT")
    cdc_stack.wait_for("SELECT count(*) FROM type_edges", [[EDGE_ROWS]])
    _edges_as_written(cdc_stack, cur, "cdc")

    out = cdc_stack.mallard("tail", "mallard.public.type_edges", "--from-beginning", "--json", "--timeout", "10")
    shown = {doc["value"]["after"]["id"]: doc["value"]["after"] for doc in map(json.loads, out.stdout.splitlines())
             if doc["value"] and doc["value"].get("op") == "c"}
    cur.execute(f"SELECT id, {', '.join(f'{c}::text' for c in EDGE_COLUMNS)} FROM type_edges ORDER BY id")
    texts = {r[0]: dict(zip(EDGE_COLUMNS, r[1:])) for r in cur.fetchall()}
    assert len(shown) == EDGE_ROWS
    wrong = [(k, c, t, shown[k][c]) for k, row in texts.items() for c, t in row.items()
             if c in ("n_free", "n_wide", "n_money", "n_tiny", "iv") and shown[k][c] != t]
    assert not wrong, wrong[:10]

    cdc_stack.mallard("resnapshot", "public.type_edges", "--wait", "--timeout", "90")
    _edges_as_written(cdc_stack, cur, "snapshot")
    verified = cdc_stack.mallard("verify", "public.type_edges", check=False, timeout=240)
    assert verified.returncode == 0 and "equal" in verified.stdout, verified.stdout + verified.stderr
    conn.close()
