"""The applier's /query endpoint and its replica under a hostile caller, and a source
column named like mallard's own: against real DuckDB (the adapter) and the real stack.

/query runs one read only (mallard.core.read_query), on a DuckDB instance confined
from the file system and from configuration changes (DuckDBReplica.confine), within a
time and row limit, for callers that send the X-Mallard-Client header only."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import psycopg2
import pytest

from mallard.adapters.duckdb_replica import NEEDS_RESNAPSHOT, OK, REFUSED, DuckDBReplica
from mallard.core.arrow_rows import snapshot_table
from mallard.core.changes import ChangeEvent, TableSchema
from mallard.core.cut import Cut
from mallard.core.merge import reduce
from mallard.core.pgtypes import column_type
from mallard.core.read_query import QueryRefused
from mallard.core.snapshots import SnapshotFrame
from mallard.core.transactions import Transaction
from mallard.runtime.health import CLIENT_HEADER
from tests.conftest import Stack, all_tables_connector_config, new_home

pytestmark = pytest.mark.integration

INT, TEXT = column_type({"type": "int32"}), column_type({"type": "string"})


def attacks(tmp: Path) -> list[tuple[str, str]]:
    """(SQL, a word the refusal must contain): each attack of the issue, and kin."""
    return [
        ("COMMIT; DELETE FROM hq_orders WHERE id < 5", "2 statements"),
        ("ROLLBACK; DELETE FROM hq_orders; BEGIN", "3 statements"),
        (f"COPY hq_orders TO '{tmp / 'copied.csv'}'", "COPY"),
        (f"COPY (SELECT 1) TO '{tmp / 'copied.parquet'}' (FORMAT parquet)", "COPY"),
        (f"ATTACH '{tmp / 'attached.db'}' AS pwned", "ATTACH"),
        (f"EXPORT DATABASE '{tmp / 'exported'}'", "EXPORT"),
        ("SELECT * FROM read_csv('/etc/passwd')", "read_csv"),
        ("SELECT * FROM '/etc/passwd'", "does not exist"),  # no file scan by name: the confinement turns it off
        ("SELECT * FROM glob('/etc/*')", "glob"),
        ("SET GLOBAL threads=1", "SET"),
        ("SET threads=1", "SET"),
        ("INSTALL httpfs", "LOAD"),
        ("LOAD httpfs", "LOAD"),
        ("PRAGMA enable_profiling", "PRAGMA"),
        ("CALL pragma_version()", "CALL"),
        ("CHECKPOINT", "CALL"),
        ("CREATE TABLE pwned AS SELECT 1", "CREATE"),
        ("DROP TABLE hq_orders", "DROP"),
        ("DELETE FROM hq_orders", "DELETE"),
        # Would abort the whole applier process (DuckDB terminates on the refused file access).
        (f"SELECT * FROM enable_logging(storage := 'file', storage_path := '{tmp}/')", "enable_logging"),
        ("SELECT * FROM query('SELECT * FROM read_csv(''/etc/passwd'')')", "query()"),
    ]


# -- the adapter, on real DuckDB --------------------------------------------------------

@pytest.fixture
def replica(tmp_path):
    (tmp_path / "replica").mkdir()
    r = DuckDBReplica(str(tmp_path / "replica" / "r.duckdb"))
    r.con.execute("CREATE TABLE hq_orders AS SELECT range::INT AS id, 'o' || range AS status FROM range(100)")
    r.confine(str(tmp_path / "copy" / "read.duckdb"))
    yield r
    r.close()


def files_under(root: Path) -> set[str]:
    """Besides the replica's own files and the read copy's."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.relative_to(root).parts[0] not in ("replica", "copy")}


def test_each_attack_is_refused_and_nothing_changes(replica, tmp_path):
    before = files_under(tmp_path)
    rows = replica.query("SELECT * FROM hq_orders ORDER BY id")["rows"]
    settings = replica.query("SELECT name, value FROM duckdb_settings() ORDER BY name")["rows"]
    for sql, word in attacks(tmp_path):
        with pytest.raises((QueryRefused, duckdb.Error)) as e:
            replica.query(sql)
        assert word in str(e.value), (sql, str(e.value))
    assert files_under(tmp_path) == before
    assert replica.query("SELECT * FROM hq_orders ORDER BY id")["rows"] == rows
    assert replica.query("SELECT name, value FROM duckdb_settings() ORDER BY name")["rows"] == settings


def test_the_confinement_alone_stops_files_and_settings(replica, tmp_path):
    """Beneath the statement check: SQL that reached DuckDB unchecked still cannot touch a
    file or a setting."""
    cur = replica.con.cursor()
    with pytest.raises(duckdb.CatalogException):
        cur.execute("SELECT * FROM '/etc/passwd'")
    for sql in ["SELECT * FROM read_csv('/etc/passwd')",
                f"COPY hq_orders TO '{tmp_path / 'x.csv'}'", f"ATTACH '{tmp_path / 'x.db'}' AS x",
                "INSTALL httpfs", "LOAD httpfs"]:
        with pytest.raises(duckdb.PermissionException):
            cur.execute(sql)
    for sql in ["SET GLOBAL threads = 1", "SET GLOBAL enable_external_access = true", "RESET lock_configuration"]:
        with pytest.raises(duckdb.Error, match="locked"):
            cur.execute(sql)
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.db").exists()


def test_the_read_copy_is_still_published_after_the_confinement(replica, tmp_path):
    target = tmp_path / "copy" / "read.duckdb"
    for _ in range(2):  # the second over the first
        assert replica.publish_copy(str(target))["tables"] >= 1
    con = duckdb.connect(str(target), read_only=True)
    assert con.execute("SELECT count(*) FROM hq_orders").fetchone() == (100,)
    con.close()


def test_a_slow_read_stops_at_the_time_limit_and_the_next_one_runs(replica):
    started = time.monotonic()
    with pytest.raises(QueryRefused, match="time limit"):
        replica.query("SELECT count(*) FROM range(100000000) a, range(100000) b", timeout_s=1.0)
    assert time.monotonic() - started < 5
    assert replica.query("SELECT count(*) FROM hq_orders")["rows"] == [(100,)]


def test_rows_beyond_the_limit_are_cut_and_said_so(replica):
    got = replica.query("SELECT * FROM hq_orders", limit=10)
    assert len(got["rows"]) == 10 and got["truncated"] is True
    assert replica.query("SELECT * FROM hq_orders", limit=100)["truncated"] is False


def test_an_unconfined_replica_serves_no_query(tmp_path):
    r = DuckDBReplica(str(tmp_path / "r.duckdb"))
    with pytest.raises(QueryRefused, match="confine"):
        r.query("SELECT 1")
    r.close()


# -- metadata columns, on real DuckDB ---------------------------------------------------

CLASH = TableSchema("public.clash", ("id", "_mallard_position", "v"), (INT, INT, TEXT), ("id",))
FINE = TableSchema("public.fine", ("id", "v"), (INT, TEXT), ("id",))


def tx(xid: int, *events: tuple[TableSchema, tuple]) -> Transaction:
    return Transaction(xid, 1000 + xid, 0, [
        ChangeEvent("t", 0, 0, schema.stream, "c", xid, order, 0, (row[0],), row, frozenset(), schema)
        for order, (schema, row) in enumerate(events, start=1)])


def apply(replica: DuckDBReplica, *txs: Transaction):
    return replica.apply(reduce(list(txs), replica.snapshot_cuts()), list(txs))


def test_a_cdc_column_named_like_mallards_own_refuses_that_stream_only(tmp_path):
    replica = DuckDBReplica(str(tmp_path / "r.duckdb"))
    stats = apply(replica, tx(100, (CLASH, (1, 7, "x")), (FINE, (1, "a"))))
    assert stats.skipped == 1
    state = replica.tables["public.clash"]
    assert state.status == REFUSED and "_mallard_position" in state.reason
    assert replica.con.execute("SELECT v FROM fine").fetchall() == [("a",)]
    assert not replica.con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'clash'").fetchone()[0]
    apply(replica, tx(101, (CLASH, (2, 8, "y")), (FINE, (2, "b"))))  # later transactions flow
    assert replica.con.execute("SELECT count(*) FROM fine").fetchone() == (2,)
    # A column of any case with the prefix, added to a table that was fine: refused too, its rows kept.
    grown = TableSchema("public.fine", ("id", "v", "_MALLARD_Source"), (INT, TEXT, TEXT), ("id",))
    apply(replica, tx(102, (grown, (3, "c", "z"))))
    assert replica.tables["public.fine"].status == REFUSED
    assert replica.con.execute("SELECT count(*) FROM fine").fetchone() == (2,)
    # Renamed in Postgres: the stream asks for a re-snapshot, which rebuilds it.
    renamed = TableSchema("public.clash", ("id", "position", "v"), (INT, INT, TEXT), ("id",))
    stats = apply(replica, tx(103, (renamed, (3, 9, "z"))))
    assert replica.tables["public.clash"].status == NEEDS_RESNAPSHOT and stats.needs_resnapshot == ["public.clash"]
    snapshot(replica, "s-renamed", renamed, [[1, 2, 3], [7, 8, 9], ["x", "y", "z"]])
    assert replica.tables["public.clash"].status == OK
    assert replica.con.execute("SELECT count(*) FROM clash").fetchone() == (3,)
    replica.close()
    reopened = DuckDBReplica(str(tmp_path / "r.duckdb"))  # the refusal is remembered
    assert reopened.tables["public.fine"].status == REFUSED
    reopened.close()


def snapshot(replica: DuckDBReplica, snapshot_id: str, schema: TableSchema, columns: list[list]):
    frame = SnapshotFrame(snapshot_id, schema.stream, Cut(200, 200, frozenset()), schema, None,
                          datetime.now(timezone.utc))
    replica.begin_snapshot(frame)
    replica.stage_rows(frame, snapshot_table(schema.types, columns))
    return frame, replica.finish_snapshot(frame)


def test_a_snapshot_column_named_like_mallards_own_refuses_that_stream_only(tmp_path):
    replica = DuckDBReplica(str(tmp_path / "r.duckdb"))
    with pytest.raises(ValueError, match="_mallard_position") as e:
        snapshot(replica, "s-clash", CLASH, [[1], [7], ["x"]])
    frame = SnapshotFrame("s-clash", CLASH.stream, Cut(200, 200, frozenset()), CLASH, None, datetime.now(timezone.utc))
    replica.abandon_snapshot(frame, f"merging it failed: {e.value}")  # what the applier does with the error
    assert replica.con.execute("SELECT status, reason FROM _mallard.snapshots WHERE snapshot_id = 's-clash'"
                               ).fetchone()[0] == "abandoned"
    assert replica.tables["public.clash"].status == REFUSED
    assert not replica.con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '%clash%'").fetchone()[0]
    _, result = snapshot(replica, "s-fine", FINE, [[1, 2], ["a", "b"]])
    assert result.status == "merged" and replica.con.execute("SELECT count(*) FROM fine").fetchone() == (2,)
    replica.close()


# -- the real stack ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def hq_stack():
    """A stack of its own: every table captured, a short time limit and row limit, a read copy."""
    home = new_home()
    s = Stack(home, MALLARD_CONNECTOR_CONFIG=str(all_tables_connector_config(home)), MALLARD_TOPIC_REFRESH_MS="1000",
              MALLARD_QUERY_TIMEOUT_S="3", MALLARD_QUERY_MAX_ROWS="100",
              MALLARD_READ_COPY_PATH=str(home / "copy" / "read.duckdb"), MALLARD_READ_COPY_INTERVAL_S="1")
    try:
        s.mallard("stack", "up")
        yield s
    finally:
        s.teardown()


@pytest.fixture(scope="module")
def pg(hq_stack):
    conn = psycopg2.connect(hq_stack.dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE TABLE hq_orders (id int PRIMARY KEY, status text)")
    cur.execute("INSERT INTO hq_orders SELECT g, 'o' || g FROM generate_series(1, 20) g")
    hq_stack.wait_for("SELECT count(*) FROM hq_orders", [[20]])
    yield cur
    conn.close()


def get(stack: Stack, path: str, header: bool = True, **params: str) -> tuple[int, dict]:
    url = f"http://127.0.0.1:{stack.ports['MALLARD_APPLIER_HEALTH_PORT']}{path}"
    req = urllib.request.Request(url + ("?" + urllib.parse.urlencode(params) if params else ""),
                                 headers={CLIENT_HEADER: "tests"} if header else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_a_request_without_the_client_header_is_refused(hq_stack, pg):
    for path in ("/query", "/tables"):
        code, body = get(hq_stack, path, header=False, sql="SELECT count(*) FROM hq_orders")
        assert code == 403 and CLIENT_HEADER in body["error"]
    assert get(hq_stack, "/query", sql="SELECT count(*) FROM hq_orders") == (
        200, {"columns": ["count_star()"], "rows": [[20]], "truncated": False})
    assert get(hq_stack, "/healthz", header=False)[0] == 200  # probes need no header


def test_each_attack_is_refused_no_file_is_touched_and_the_replica_is_unchanged(hq_stack, pg, tmp_path):
    tmp_path.chmod(0o777)  # were anything written, the applier (maybe another user) could
    rows = hq_stack.query("SELECT * FROM hq_orders ORDER BY id")
    threads = hq_stack.query("SELECT current_setting('threads')")
    for sql, word in attacks(tmp_path):
        code, body = get(hq_stack, "/query", sql=sql)
        assert code == 400 and word in body["error"], (sql, code, body)
        assert "root:" not in json.dumps(body)  # nothing of /etc/passwd
    assert list(tmp_path.iterdir()) == []
    assert hq_stack.query("SELECT * FROM hq_orders ORDER BY id") == rows
    assert hq_stack.query("SELECT current_setting('threads')") == threads
    assert hq_stack.query("SELECT count(*) FROM duckdb_databases() WHERE database_name = 'pwned'") == [[0]]
    assert hq_stack.applier_state()["ready"]
    pg.execute("UPDATE hq_orders SET status = 'after the attacks' WHERE id = 1")
    hq_stack.wait_for("SELECT status FROM hq_orders WHERE id = 1", [["after the attacks"]], timeout=15)


def test_reads_answer_within_the_row_limit(hq_stack, pg):
    for sql in ["SELECT id FROM hq_orders ORDER BY id LIMIT 2",
                "WITH x AS (SELECT id FROM hq_orders) SELECT min(id) FROM x",
                "FROM hq_orders SELECT max(id)"]:
        code, body = get(hq_stack, "/query", sql=sql)
        assert code == 200 and body["rows"] in ([[1], [2]], [[1]], [[20]]), (sql, body)
    code, body = get(hq_stack, "/query", sql="SHOW TABLES")
    assert code == 200 and ["hq_orders"] in body["rows"]
    code, body = get(hq_stack, "/query", sql="DESCRIBE hq_orders")
    assert code == 200 and [r[0] for r in body["rows"]][:2] == ["id", "status"]
    code, body = get(hq_stack, "/query", sql="SELECT * FROM range(1000)")
    assert code == 200 and len(body["rows"]) == 100 and body["truncated"] is True


def test_a_slow_read_is_interrupted_at_the_time_limit(hq_stack, pg):
    started = time.monotonic()
    code, body = get(hq_stack, "/query", sql="SELECT count(*) FROM range(100000000) a, range(100000) b")
    assert code == 400 and "time limit (3 s)" in body["error"]
    assert time.monotonic() - started < 15
    assert hq_stack.query("SELECT count(*) FROM hq_orders") == [[20]]


def test_the_read_copy_is_published_by_the_confined_applier(hq_stack, pg):
    copy = hq_stack.home / "copy" / "read.duckdb"
    deadline = time.monotonic() + 30
    while not (copy.exists() and hq_stack.applier_state().get("read_copy")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert copy.exists(), hq_stack.applier_state()


def test_a_column_named_like_mallards_own_refuses_that_table_and_the_others_go_on(hq_stack, pg):
    pg.execute('CREATE TABLE hq_clash (id int PRIMARY KEY, "_mallard_position" int, v text)')
    pg.execute("CREATE TABLE hq_fine (id int PRIMARY KEY, v text)")
    pg.execute("BEGIN; INSERT INTO hq_clash VALUES (1, 7, 'x'); INSERT INTO hq_fine VALUES (1, 'a'); COMMIT")
    hq_stack.wait_for("SELECT v FROM hq_fine", [["a"]], timeout=30)
    tables = {t["stream"]: t for t in get(hq_stack, "/tables")[1]["tables"]}
    assert tables["public.hq_clash"]["status"] == "refused"
    assert "_mallard_position" in tables["public.hq_clash"]["reason"]
    assert hq_stack.applier_state()["ready"]
    pg.execute("INSERT INTO hq_clash VALUES (2, 8, 'y')")
    started = time.monotonic()
    pg.execute("INSERT INTO hq_fine VALUES (2, 'b')")
    hq_stack.wait_for("SELECT count(*) FROM hq_fine", [[2]], timeout=15)
    assert time.monotonic() - started < 15
    assert hq_stack.query("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'hq_clash'") == [[0]]
    assert hq_stack.applier_state()["ready"]
