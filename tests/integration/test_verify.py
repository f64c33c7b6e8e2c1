"""`mallard verify` against the real stack: clean on a caught-up demo replica, exactly the
keys edited behind the applier's back, `--repair` fixes them; Postgres and DuckDB write
the same canonical text for every supported type; and the read-only copy of the replica
that other processes open while the applier runs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import duckdb
import psycopg2
import pytest

from mallard.core.verify import (
    DUCK, PG, Column, KeyType, TableSql, canon, compare, field_sql, key_type, parse_split, parse_summaries, row_hash_sql,
)
from mallard.stack.processes import is_alive

pytestmark = pytest.mark.integration

FIRST = "SELECT count(*) FROM _mallard.snapshots WHERE request_id LIKE 'applier-%' AND status = 'merged'"


def stop_applier(stack) -> str:
    """SIGTERM the applier and wait until it (and its lock on the DuckDB file) is gone."""
    status = stack.status()
    pid = status["components"]["applier"]["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while is_alive(pid):
        assert time.monotonic() < deadline, "the applier did not stop"
        time.sleep(0.1)
    return status["duckdb"]["path"]


def verify_json(stack, *args: str) -> tuple[int, dict]:
    out = stack.mallard("verify", "--json", *args, check=False, timeout=240)
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, json.loads(out.stdout)


def test_verify_reports_exactly_the_keys_edited_behind_the_applier_and_repair_fixes_them(make_stack):
    stack = make_stack()
    stack.mallard("stack", "up")
    stack.wait_for(FIRST, [[3]], timeout=120)

    clean = stack.mallard("verify", check=False, timeout=240)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "3 of 3 stream(s) equal" in clean.stdout and "caught up" in clean.stdout
    assert "public.orders" in clean.stdout and "5,000 rows" in clean.stdout
    # Progress per stream, as plain lines off a terminal (a bar on one).
    assert "verify: public.orders equal: 5,000 rows compared in" in clean.stderr, clean.stderr

    path = stop_applier(stack)
    con = duckdb.connect(path)
    try:
        con.execute("UPDATE orders SET status = 'tampered' WHERE id = 17")
        con.execute("DELETE FROM orders WHERE id = 42")
        con.execute("INSERT INTO orders SELECT * REPLACE (100000 AS id) FROM orders WHERE id = 1")
        con.execute("UPDATE customers SET created_at = created_at + INTERVAL 1 MICROSECOND WHERE id = 1999")
    finally:
        con.close()
    # With the applier stopped, verify reads the file itself.
    code, report = verify_json(stack, "public.customers")
    assert code == 1 and "read-only" in report["via"] and report["caught_up"] is None
    stack.mallard("stack", "up", "--no-demo")

    code, report = verify_json(stack)
    assert code == 1 and report["caught_up"] is True
    streams = {s["stream"]: s for s in report["streams"]}
    assert streams["public.orders"]["differences"] == [
        {"key": "17", "kind": "changed"}, {"key": "42", "kind": "missing"}, {"key": "100000", "kind": "extra"}]
    assert streams["public.orders"]["rows"] == {"postgres": 5000, "replica": 5000}
    assert streams["public.customers"]["differences"] == [{"key": "1999", "kind": "changed"}]
    assert streams["public.products"]["equal"] and streams["public.products"]["differences"] == []
    human = stack.mallard("verify", check=False, timeout=240).stdout
    assert "id = 42: missing in the replica" in human and "id = 100000: only in the replica" in human

    repaired = stack.mallard("verify", "--repair", "--wait", "--timeout", "120", check=False, timeout=300)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert 'public.orders where "id" IN (17, 42, 100000)' in repaired.stdout
    assert 'public.customers where "id" IN (1999)' in repaired.stdout
    assert repaired.stdout.rstrip().endswith("2 of 2 stream(s) equal")
    code, report = verify_json(stack)
    assert code == 0 and all(s["equal"] for s in report["streams"])
    assert stack.query("SELECT count(*) FROM orders WHERE id IN (42, 100000) OR status = 'tampered'") == [[1]]


# -- the canonical text, per type -------------------------------------------------------------

PROBE = {
    "c_smallint": "smallint", "c_int": "integer", "c_bigint": "bigint",
    "c_numeric": "numeric(12,2)", "c_numeric_free": "numeric", "c_real": "real", "c_double": "double precision",
    "c_bool": "boolean", "c_text": "text", "c_varchar": "varchar(20)", "c_char": "char(4)", "c_date": "date",
    "c_time": "time", "c_timestamp": "timestamp", "c_timestamptz": "timestamptz", "c_interval": "interval",
    "c_uuid": "uuid", "c_json": "json", "c_jsonb": "jsonb", "c_bytea": "bytea", "c_int_array": "integer[]",
    "c_text_array": "text[]", "c_enum": "verify_mood", "c_point": "point",
}
PROBE_ROWS = [
    ["-32768", "2147483647", "-9223372036854775808", "1234567890.12", "12.345", "3.14", "2.718281828459045",
     "true", "héllo ☃ \"quoted\"", "varchar", "ab", "2024-02-29", "13:45:56.123456", "2024-02-29 13:45:56.123456",
     "2025-06-01 10:00:00.5+02", "1 year 2 mons 3 days 04:05:06.78", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
     '{"b": [1, 2], "a": null}', '{"b": [1, 2], "a": {"x": 1.5}}', "\\x00ff10", "{1,NULL,3}", '{"a","b c",NULL}',
     "happy", "(1.5,2)"],
    ["0", "-1", "0", "-0.01", "-98765432109876543210.000000000000000001", "-0", "NaN", "false", "", "", "",
     "1970-01-01", "00:00:00", "1970-01-01 00:00:00", "1969-12-31 23:59:59.999999+00", "-1 mons +2 days -00:00:01",
     "00000000-0000-0000-0000-000000000000", "[]", "{}", "\\x", "{}", "{}", "sad", "(0,0)"],
    ["1", "2", "3", "999999.99", "0.000000000000000001", "1.17549435e-38", "1e-310", "true", "x'y\\z|:-", "'", "a b ",
     "0044-03-15 BC", "24:00:00", "1900-06-01 12:00:00", "2262-04-11 23:47:16.854775+00", "-1 years -2 mons",
     "ffffffff-ffff-ffff-ffff-ffffffffffff", '{"a": 1,   "b": [true]}', '{"zz": 1, "a": "é"}', "\\xdeadbeef", "{NULL}",
     '{"",NULL,"x"}', "ok", "(1,1)"],
    ["5", "6", "7", "100.10", "1000000", "-Infinity", "Infinity", "false", "日本語", "v", "abcd", "5874897-12-31",
     "23:59:59.999999", "0001-01-01 00:00:00", "1900-01-01 00:00:00+05:30", "1 day -1 second",
     "123e4567-e89b-12d3-a456-426614174000", '"just a string"', '[1, "2", 3.0]', "\\x00", "{1}", '{"{}"}', "sad",
     "(2,2)"],
]


def pg_columns(cur, table: str) -> dict[str, tuple[str, bool, str | None]]:
    cur.execute("""SELECT a.attname, t.typname, t.typtype = 'e', e.typname FROM pg_attribute a
                   JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
                   WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""", (table,))
    return {name: (typ, enum, elem) for name, typ, enum, elem in cur.fetchall()}


class PgSide:
    def __init__(self, cur, table: str, key: KeyType, columns):
        self.cur, self.sql = cur, TableSql(PG, table, key, row_hash_sql(PG, columns))

    def _run(self, sql):
        self.cur.execute(sql)
        return self.cur.fetchall()

    def summarize(self, ranges):
        return parse_summaries(self._run(self.sql.summarize(ranges)), len(ranges))

    def split(self, cuts):
        return parse_split(self._run(self.sql.split(cuts)), len(cuts))

    def rows(self, ranges):
        return {str(k): int(v) for k, v in self._run(self.sql.rows(ranges))}


def test_postgres_and_duckdb_write_the_same_canonical_text_for_every_type(cdc_stack):
    conn = psycopg2.connect(cdc_stack.dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE TYPE verify_mood AS ENUM ('sad', 'ok', 'happy')")
    cur.execute(f"CREATE TABLE verify_probe (id integer PRIMARY KEY, "
                f"{', '.join(f'{c} {t}' for c, t in PROBE.items())})")
    for i, values in enumerate(PROBE_ROWS, start=1):
        cur.execute(f"INSERT INTO verify_probe VALUES (%s, {', '.join(['%s'] * len(values))})", [i, *values])
    cur.execute("INSERT INTO verify_probe (id) VALUES (0)")  # NULL in every column
    cdc_stack.wait_for("SELECT count(*) FROM verify_probe", [[len(PROBE_ROWS) + 1]])

    duck_types = dict(cdc_stack.query("SELECT column_name, data_type FROM information_schema.columns "
                                      "WHERE table_name = 'verify_probe'"))
    columns = []
    for name, (typ, enum, elem) in pg_columns(cur, "verify_probe").items():
        col = Column(name, typ, duck_types[name], enum, elem)
        c = canon(col)
        if name == "c_point":
            assert isinstance(c, str)  # kept as text of unknown type: not hashed
            continue
        assert not isinstance(c, str), f"{name}: {c}"
        columns.append((col, c))
        cur.execute(f"SELECT id, {field_sql(PG, c.pg.format(name), name)} FROM verify_probe ORDER BY 1")
        in_pg = [list(r) for r in cur.fetchall()]
        in_duck = cdc_stack.query(f"SELECT id, {field_sql(DUCK, c.duck.format(name), name)} FROM verify_probe ORDER BY 1")
        assert in_duck == in_pg, f"{name} ({typ} -> {duck_types[name]})"
    cur.execute(f"SELECT id, {row_hash_sql(PG, columns)} FROM verify_probe ORDER BY 1")
    hashes = [list(r) for r in cur.fetchall()]
    assert len({h for _, h in hashes}) == len(hashes)
    assert cdc_stack.query(f"SELECT id, {row_hash_sql(DUCK, columns)} FROM verify_probe ORDER BY 1") == hashes

    # The command, on this table: equal, saying what it does not hash.
    out = cdc_stack.mallard("verify", "public.verify_probe", check=False, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "equal" in out.stdout and "c_point" in out.stdout and "15 significant digits" in out.stdout

    # A composite key: refused for ranges, the whole table compared.
    cur.execute("CREATE TABLE verify_pairs (a int, b text, v text, PRIMARY KEY (a, b))")
    cur.execute("INSERT INTO verify_pairs SELECT g % 7, g::text, 'v' || g FROM generate_series(1, 50) g")
    cdc_stack.wait_for("SELECT count(*) FROM verify_pairs", [[50]])
    out = cdc_stack.mallard("verify", "public.verify_pairs", check=False, timeout=240)
    assert out.returncode == 0 and "composite primary key (a, b)" in out.stdout, out.stdout
    conn.close()


def test_verify_compares_the_column_sets_not_only_the_common_columns(cdc_stack):
    """Issue 18: a column added in Postgres is in the replica only after the table's next
    change event; until then verify hashed the common columns and said equal."""
    conn = psycopg2.connect(cdc_stack.dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE TABLE verify_columns (id integer PRIMARY KEY, name text)")
    cur.execute("INSERT INTO verify_columns SELECT g, 'n' || g FROM generate_series(1, 30) g")
    cdc_stack.wait_for("SELECT count(*) FROM verify_columns", [[30]])
    code, report = verify_json(cdc_stack, "public.verify_columns")
    assert code == 0, report

    cur.execute("ALTER TABLE verify_columns ADD COLUMN note text")  # no row event yet
    code, report = verify_json(cdc_stack, "public.verify_columns")
    (item,) = report["streams"]
    assert code == 1 and not item["equal"] and item["differences"] == [], report
    assert item["columns_missing"] == ["note"] and item["columns_extra"] == []
    human = cdc_stack.mallard("verify", "public.verify_columns", check=False, timeout=240).stdout
    assert "DIFFERENT 30 rows: columns not in the replica: note" in human, human

    cur.execute("UPDATE verify_columns SET note = 'x' WHERE id = 3")  # the replica adds the column
    cdc_stack.wait_for("SELECT note FROM verify_columns WHERE id = 3", [["x"]])
    code, report = verify_json(cdc_stack, "public.verify_columns")
    assert code == 0 and report["streams"][0]["columns"] == ["id", "name", "note"], report

    cur.execute("ALTER TABLE verify_columns DROP COLUMN name")  # the replica has not seen the drop
    code, report = verify_json(cdc_stack, "public.verify_columns")
    assert code == 1 and report["streams"][0]["columns_extra"] == ["name"], report
    cur.execute("UPDATE verify_columns SET note = 'y' WHERE id = 4")  # it records it: dropped, kept
    cdc_stack.wait_for("SELECT note FROM verify_columns WHERE id = 4", [["y"]])
    code, report = verify_json(cdc_stack, "public.verify_columns")
    (item,) = report["streams"]
    assert code == 0 and item["columns_extra"] == [] and item["columns"] == ["id", "note"], report
    assert "dropped in Postgres, kept in the replica (not hashed): name" in item["notes"]
    conn.close()


DUCK_TYPES = {"int": "BIGINT", "numeric": "DECIMAL(12,3)", "text": "VARCHAR", "uuid": "UUID", "date": "DATE",
              "timestamp": "TIMESTAMP", "timestamptz": "TIMESTAMPTZ"}


class DuckSide(PgSide):
    def __init__(self, con, table: str, key: KeyType, columns):
        self.con, self.sql = con, TableSql(DUCK, table, key, row_hash_sql(DUCK, columns))

    def _run(self, sql):
        return self.con.execute(sql).fetchall()


@pytest.mark.parametrize("kind,pg_type,value", [
    ("int", "bigint", "g * 3 - 500"),
    ("numeric", "numeric(12,3)", "g * 1.5 - 100"),
    ("text", "text", "chr(65 + g % 58) || lpad((g * 7919 % 10007)::text, 5, '0') || "
                     "(ARRAY['', ' ', 'é', '_', 'Z', 'a', '-', '~', ' ', '日'])[1 + g % 10]"),
    ("uuid", "uuid", "md5(g::text)::uuid"),
    ("date", "date", "DATE '1970-01-01' + (g * 37 - 5000)"),
    ("timestamp", "timestamp", "TIMESTAMP '1969-12-31 23:00:00' + g * INTERVAL '61 minutes 1 microsecond'"),
    ("timestamptz", "timestamptz", "TIMESTAMPTZ '2020-01-01 00:00:00+00' + g * INTERVAL '61 minutes 1 microsecond'"),
])
def test_postgres_and_duckdb_agree_on_key_ranges_for_every_key_type(cdc_stack, kind, pg_type, value):
    """Postgres on one side, DuckDB on the other (a copy of the rows, then edited): the two
    engines cut ranges at the same keys (text in byte order) and the bisection finds exactly
    the changed, missing and extra keys."""
    conn = psycopg2.connect(cdc_stack.dsn)
    cur = conn.cursor()
    con = duckdb.connect()
    try:
        cur.execute("SET TimeZone = 'UTC'")
        con.execute("SET TimeZone = 'UTC'")
        cur.execute(f"CREATE TEMP TABLE src (k {pg_type} PRIMARY KEY, v int, s text)")
        cur.execute(f"INSERT INTO src SELECT {value}, g, CASE WHEN g % 5 = 0 THEN NULL ELSE 's' || g END "
                    "FROM generate_series(1, 2000) g")
        cur.execute(f"SELECT k::text, v, s FROM src UNION ALL "
                    f"SELECT ({value.replace('g', '5000')})::{pg_type}::text, -1, NULL")
        rows = cur.fetchall()
        con.execute(f"CREATE TABLE rep (k {DUCK_TYPES[kind]} PRIMARY KEY, v INTEGER, s VARCHAR)")
        con.executemany("INSERT INTO rep VALUES (CAST(? AS " + DUCK_TYPES[kind] + "), ?, ?)", rows)
        con.execute("UPDATE rep SET s = 'x' WHERE v = 10")
        con.execute("DELETE FROM rep WHERE v = 700")
        key_col = Column("k", {"int": "int8", "numeric": "numeric"}.get(kind, kind), DUCK_TYPES[kind])
        key = key_type([key_col])
        assert isinstance(key, KeyType), key
        cols = [(c, canon(c)) for c in (key_col, Column("v", "int4", "INTEGER"), Column("s", "text", "VARCHAR"))]
        result = compare(PgSide(cur, "src", key, cols), DuckSide(con, "rep", key, cols), fanout=8, leaf_rows=30)
        by_v = {v: k for k, v, _ in rows if v in (10, 700, -1)}
        found = {}
        for d in result.differences:
            cur.execute(f"SELECT ({key.literal(d.key)})::{pg_type}::text")
            found[d.kind] = cur.fetchone()[0]
        assert found == {"changed": by_v[10], "missing": by_v[700], "extra": by_v[-1]}, result.differences
        assert result.round_trips > 4  # it did narrow down
    finally:
        conn.rollback()
        conn.close()
        con.close()


# -- the read-only copy -----------------------------------------------------------------------

def read_copy(path, sql: str) -> list[tuple]:
    """What another process (a BI tool) reads from the copy: opened read-only, queried, closed."""
    code = ("import duckdb, json, sys\n"
            "con = duckdb.connect(sys.argv[1], read_only=True)\n"
            "print(json.dumps(con.execute(sys.argv[2]).fetchall(), default=str))\n")
    out = subprocess.run([sys.executable, "-c", code, str(path), sql], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return [("error", out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode)]
    return [tuple(r) for r in json.loads(out.stdout)]


def test_a_read_only_copy_of_the_replica_is_published_for_readers_while_the_applier_runs(make_stack, tmp_path):
    copy = tmp_path / "bi" / "replica.duckdb"
    stack = make_stack(MALLARD_READ_COPY_PATH=str(copy), MALLARD_READ_COPY_INTERVAL_S="1")
    stack.mallard("stack", "up")
    stack.wait_for(FIRST, [[3]], timeout=120)
    deadline = time.monotonic() + 60
    while not (copy.exists() and read_copy(copy, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'orders'")
               == [(1,)] and read_copy(copy, "SELECT count(*) FROM orders") == [(5000,)]):
        assert time.monotonic() < deadline, "no read-only copy with the demo's orders"
        time.sleep(0.5)
    assert is_alive(stack.status()["components"]["applier"]["pid"])
    assert read_copy(copy, "SELECT count(*) FROM customers") == [(2000,)]

    # A reader holding the copy open (here, this process) keeps its whole view while newer copies replace it.
    held = duckdb.connect(str(copy), read_only=True)
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        cur.execute("UPDATE customers SET full_name = 'Copied Over' WHERE id = 7")
        cur.execute("INSERT INTO orders (customer_id, product_id, quantity, total, status, order_date, updated_at) "
                    "SELECT 7, 1, 1, 9.99, 'placed', current_date, now() FROM generate_series(1, 3)")
    stack.wait_for("SELECT count(*) FROM orders", [[5003]])
    deadline = time.monotonic() + 30
    while read_copy(copy, "SELECT (SELECT count(*) FROM orders), (SELECT full_name FROM customers WHERE id = 7)") \
            != [(5003, "Copied Over")]:
        assert time.monotonic() < deadline, "the copy did not follow the replica"
        time.sleep(0.3)
    assert held.execute("SELECT count(*) FROM orders").fetchall() == [(5000,)]
    held.close()
    (lsn,) = read_copy(copy, "SELECT commit_lsn FROM _mallard.read_copy")[0]
    assert lsn == stack.applier_state()["progress"]["commit_lsn"]
    assert not [p for p in copy.parent.iterdir() if p.name != copy.name]  # no temporary file left behind
    log = (stack.home / "logs" / "applier.log").read_text()
    assert "read-only copy published: " + str(copy) in log and " MB, " in log
    state = stack.applier_state()["read_copy"]
    assert state["path"] == str(copy) and state["bytes"] == copy.stat().st_size
