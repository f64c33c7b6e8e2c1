"""Issue 18, "Schema changes that rewrite existing rows": DDL that changes existing rows'
values without a single WAL row event (an added column's default, constant or volatile; a
rename; a type change with USING), and a dropped column, on a 100k-row table while writes
go on. Without any command from the user, the stream converges (the applier re-snapshots
it through the cut), `mallard status` shows it `converging` until then, and `mallard
verify` ends equal."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import psycopg2
import pytest

pytestmark = pytest.mark.integration

ROWS = 100_000
STREAM = "public.ddl_items"


def converging(stack, stream: str = STREAM) -> str | None:
    tables = {t["stream"]: t for t in stack.applier_state().get("tables") or []}
    return (tables.get(stream) or {}).get("converging")


def writer(dsn: str, stop: threading.Event, done: list[int]) -> None:
    """An application writing on: updates and inserts through columns no DDL here renames or drops."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    i = 0
    while not stop.is_set():
        i += 1
        cur.execute("UPDATE ddl_items SET price = price + 1 WHERE id = %s", ((i * 7919) % ROWS + 1,))
        if i % 5 == 0:
            cur.execute("INSERT INTO ddl_items (id, price) VALUES (%s, %s)", (ROWS + i, i))
        time.sleep(0.01)
    done.append(i)
    conn.close()


def test_ddl_that_rewrites_rows_converges_by_itself(cdc_stack):
    stack = cdc_stack
    conn = psycopg2.connect(stack.dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE TABLE ddl_items (id integer PRIMARY KEY, email text, price integer, note text)")
    cur.execute(f"INSERT INTO ddl_items SELECT g, 'user' || g || '@example.com', g % 1000, 'n' || g "
                f"FROM generate_series(1, {ROWS}) g")
    stack.wait_for("SELECT count(*) FROM ddl_items", [[ROWS]], timeout=180)

    stop, done = threading.Event(), []
    thread = threading.Thread(target=writer, args=(stack.dsn, stop, done), daemon=True)
    thread.start()
    # The snapshotter is paused while the DDL runs, so that the window in which the stream is
    # converging (between the DDL and the merge of its re-snapshot) is long enough to look at.
    snapshotter = stack.status()["components"]["snapshotter"]["pid"]
    os.kill(snapshotter, signal.SIGSTOP)
    try:
        cur.execute("ALTER TABLE ddl_items ADD COLUMN in_stock boolean NOT NULL DEFAULT true")
        cur.execute("ALTER TABLE ddl_items ADD COLUMN seen_at timestamptz DEFAULT now()")  # volatile: a rewrite
        cur.execute("ALTER TABLE ddl_items RENAME COLUMN email TO email_address")
        cur.execute("ALTER TABLE ddl_items ALTER COLUMN price TYPE bigint USING price * 10")
        cur.execute("ALTER TABLE ddl_items DROP COLUMN note")
        cur.execute("SELECT txid_current()")  # a transaction after every DDL: its writes carry the final schema
        after_ddl = cur.fetchone()[0]
        try:
            stack.wait_for(f"SELECT count(*) > 0 FROM ddl_items WHERE _mallard_tx_id > {after_ddl}", [[True]])
        except AssertionError:  # what the applier made of the schema changes, beyond the log's tail
            said = [line for line in (stack.home / "logs" / "applier.log").read_text().splitlines()
                    if STREAM in line and "applied" not in line]
            raise AssertionError("\n".join(said[-40:])) from None
        assert converging(stack), stack.applier_state().get("tables")
        report = json.loads(stack.mallard("status", "--json", check=False).stdout)
        item = report["streams"][STREAM]
        assert item["status"] == "converging" and "added" in item["reason"], item
        # A rename is a rename in the replica: email's values are under email_address at once.
        columns = [r[0] for r in stack.query("SELECT column_name FROM information_schema.columns WHERE "
                                             "table_name = 'ddl_items' AND NOT starts_with(column_name, '_mallard')"
                                             " ORDER BY ordinal_position")]
        assert columns == ["id", "email_address", "price", "note", "in_stock", "seen_at"], columns
        assert stack.query("SELECT email_address FROM ddl_items WHERE id = 42") == [["user42@example.com"]]
    finally:
        os.kill(snapshotter, signal.SIGCONT)

    deadline = time.monotonic() + 180
    while converging(stack):
        assert time.monotonic() < deadline, f"still converging\n{stack.log_tails()}"
        time.sleep(0.5)
    stop.set()
    thread.join(timeout=30)
    assert done and done[0] > 0
    out = stack.mallard("verify", "--json", STREAM, check=False, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    (item,) = json.loads(out.stdout)["streams"]
    assert item["equal"] and item["columns"] == ["id", "email_address", "price", "in_stock", "seen_at"], item
    assert "dropped in Postgres, kept in the replica (not hashed): note" in item["notes"]
    log = (stack.home / "logs" / "applier.log").read_text()
    assert "renamed column email -> email_address" in log
    assert STREAM + " converged" in log
    # No command did it: the snapshots merged were the applier's own requests.
    assert stack.query(f"SELECT count(*) > 0, bool_and(request_id LIKE 'applier-%') FROM _mallard.snapshots "
                       f"WHERE stream = '{STREAM}' AND status = 'merged'") == [[True, True]]
    conn.close()


# -- the DuckDB adapter alone (no stack): what a schema change does to the replica -------------

def _schema(*columns: tuple[str, str]):
    from mallard.core.changes import TableSchema
    from mallard.core.pgtypes import column_type

    return TableSchema("public.t", tuple(c for c, _ in columns), tuple(column_type({"type": t}) for _, t in columns),
                       ("id",))


def _tx(n: int, xid: int, schema, rows: list[tuple]):
    from mallard.core.changes import ChangeEvent
    from mallard.core.transactions import Transaction

    events = [ChangeEvent("t", 0, 0, "public.t", "c", xid, order, 0, (row[0],), row, frozenset(), schema)
              for order, row in enumerate(rows, 1)]
    return Transaction(xid, 1000 + n, 0, events)


def _apply(replica, txs):
    """Whole transactions into the replica, as the applier's pipeline applies a batch."""
    from mallard.core.merge import reduce

    return replica.apply(reduce(txs, replica.snapshot_cuts()), txs)


def test_the_replica_renames_in_place_and_converges_when_a_snapshot_that_saw_the_change_is_merged(tmp_path):
    from datetime import datetime, timezone

    from mallard.adapters.duckdb_replica import DuckDBReplica
    from mallard.core.arrow_rows import snapshot_table
    from mallard.core.cut import Cut
    from mallard.core.snapshots import SnapshotFrame

    v1 = _schema(("id", "int32"), ("email", "string"), ("price", "int32"), ("note", "string"))
    v2 = _schema(("id", "int32"), ("email_address", "string"), ("price", "int64"), ("in_stock", "boolean"))

    def merge(replica, snapshot_id, cut, rows):
        frame = SnapshotFrame(snapshot_id, "public.t", cut, v2, None, datetime.now(timezone.utc))
        replica.begin_snapshot(frame)
        replica.stage_rows(frame, snapshot_table(v2.types, [list(c) for c in zip(*rows)]))
        return replica.finish_snapshot(frame)

    def state(replica):
        return {t["stream"]: t for t in replica.table_report()}["public.t"]

    replica = DuckDBReplica(str(tmp_path / "r.duckdb"))
    try:
        assert _apply(replica, [_tx(1, 100, v1, [(i, f"u{i}", i, f"n{i}") for i in (1, 2, 3)])]).needs_resnapshot == []
        # Postgres: ADD COLUMN in_stock ... DEFAULT true, RENAME email, price TYPE bigint USING price * 10,
        # DROP note — then one row written.
        stats = _apply(replica, [_tx(2, 105, v2, [(1, "u1", 10, True)])])
        assert stats.needs_resnapshot == ["public.t"]  # the applier asks for the snapshot
        why = state(replica)["converging"]
        assert "in_stock" in why and "email -> email_address" in why and "price" in why
        assert state(replica)["status"] == "ok" and state(replica)["dropped_columns"] == ["note"]
        rows = replica.con.execute("SELECT id, email_address, price, note, in_stock FROM main.t ORDER BY id").fetchall()
        assert rows == [(1, "u1", 10, "n1", True), (2, "u2", 2, "n2", None), (3, "u3", 3, "n3", None)]
        # More events of the new schema: no second request while one is out.
        assert _apply(replica, [_tx(3, 106, v2, [(2, "u2", 20, True)])]).needs_resnapshot == []

        now = [(1, "u1", 10, True), (2, "u2", 20, True), (3, "u3", 30, True)]
        early = merge(replica, "s-early", Cut(104, 104), now)  # taken before the change: not enough
        assert early.resnapshot_again and state(replica)["converging"]
        late = merge(replica, "s-late", Cut(107, 107), now)
        assert not late.resnapshot_again and state(replica)["converging"] is None
        rows = replica.con.execute("SELECT id, email_address, price, note, in_stock FROM main.t ORDER BY id").fetchall()
        # the kept column keeps what it had; the rest is Postgres' rewritten rows
        assert rows == [(1, "u1", 10, "n1", True), (2, "u2", 20, "n2", True), (3, "u3", 30, "n3", True)]
    finally:
        replica.close()

    replica = DuckDBReplica(str(tmp_path / "r.duckdb"))  # converged: nothing asked again on restart
    try:
        assert state(replica)["converging"] is None and replica.needing_resnapshot == []
    finally:
        replica.close()


def test_rows_written_before_a_rename_go_in_under_the_new_name_when_one_batch_holds_both(tmp_path):
    """Under a backlog, one batch holds transactions from before a rename and after it. The
    table is altered when the batch is prepared, before any of its rows are written, so the
    earlier rows must go in under the column's name now (DuckDB: "Referenced update column
    email not found"), also when a new column takes the old name in the same batch. A layout
    that comes back later (a column replaced: renamed aside, added anew, the old one dropped)
    is written as it is now."""
    from mallard.adapters.duckdb_replica import DuckDBReplica

    v1 = _schema(("id", "int32"), ("email", "string"), ("n", "int32"))
    v2 = _schema(("id", "int32"), ("email_address", "string"), ("n", "int32"))
    v3 = _schema(("id", "int32"), ("mail", "string"), ("n", "int32"), ("email", "string"))
    v4 = _schema(("id", "int32"), ("n", "int32"), ("email", "string"))  # mail dropped
    replica = DuckDBReplica(str(tmp_path / "r.duckdb"))

    def rows():
        return replica.con.execute("SELECT id, mail, n, email FROM main.t ORDER BY id").fetchall()

    try:
        _apply(replica, [_tx(0, 100, v1, [(1, "a", 1), (2, "b", 2)])])
        _apply(replica, [_tx(1, 101, v1, [(1, "a2", 10)]), _tx(2, 102, v2, [(2, "b2", 20)]),
               _tx(3, 103, v2, [(3, "c", 3)]), _tx(4, 104, v3, [(4, "d", 4, "new")])])
        assert rows() == [(1, "a2", 10, None), (2, "b2", 20, None), (3, "c", 3, None), (4, "d", 4, "new")]
        _apply(replica, [_tx(5, 105, v4, [(5, 5, "e")])])
        _apply(replica, [_tx(6, 106, v4, [(4, 40, "new2")])])
        assert rows()[3:] == [(4, "d", 40, "new2"), (5, None, 5, "e")]
    finally:
        replica.close()


def test_a_column_replaced_comes_back_to_the_first_layout_and_is_written_as_it_is_now(tmp_path):
    """The usual way to replace a column: renamed aside, added anew, the old one dropped. The
    last layout is the first one again (the same fingerprint); its rows go to the new column,
    in one batch with the rest or in batches apart."""
    from mallard.adapters.duckdb_replica import DuckDBReplica

    v1 = _schema(("id", "int32"), ("a", "string"))
    v2 = _schema(("id", "int32"), ("a_old", "string"))
    v3 = _schema(("id", "int32"), ("a_old", "string"), ("a", "string"))
    for together in (False, True):
        replica = DuckDBReplica(str(tmp_path / f"r{together}.duckdb"))
        try:
            txs = [_tx(0, 100, v1, [(1, "one")]), _tx(1, 101, v2, [(2, "two")]),
                   _tx(2, 102, v3, [(3, "three", "new3")]), _tx(3, 103, v1, [(4, "new4")])]
            for batch in ([txs] if together else [[tx] for tx in txs]):
                _apply(replica, batch)
            rows = replica.con.execute("SELECT id, a_old, a FROM main.t ORDER BY id").fetchall()
            assert rows == [(1, "one", None), (2, "two", None), (3, "three", "new3"), (4, None, "new4")], (together, rows)
        finally:
            replica.close()


def test_a_column_renamed_back_is_renamed_back_in_the_replica(tmp_path):
    """a -> b, then b -> a: the first layout again, which the applier has seen before; the
    replica follows (it once wrote to ``a`` while DuckDB called it ``b``)."""
    from mallard.adapters.duckdb_replica import DuckDBReplica

    v1 = _schema(("id", "int32"), ("a", "string"))
    v2 = _schema(("id", "int32"), ("b", "string"))
    for together in (False, True):
        replica = DuckDBReplica(str(tmp_path / f"r{together}.duckdb"))
        try:
            txs = [_tx(0, 100, v1, [(1, "one")]), _tx(1, 101, v2, [(2, "two")]), _tx(2, 102, v1, [(3, "three")])]
            for batch in ([txs] if together else [[tx] for tx in txs]):
                _apply(replica, batch)
            rows = replica.con.execute("SELECT id, a FROM main.t ORDER BY id").fetchall()
            assert rows == [(1, "one"), (2, "two"), (3, "three")], (together, rows)
            assert [c for c, _ in replica.tables["public.t"].columns] == ["id", "a"]
        finally:
            replica.close()


def test_each_schema_change_seen_while_converging_stays_named_in_the_reason(tmp_path):
    """DDLs that land between a stream's row events arrive as several schema changes: the
    converging reason names them all, whichever order the events came in."""
    from mallard.adapters.duckdb_replica import DuckDBReplica

    v1 = _schema(("id", "int32"), ("email", "string"))
    v2 = _schema(("id", "int32"), ("email", "string"), ("in_stock", "boolean"))
    v3 = _schema(("id", "int32"), ("email_address", "string"), ("in_stock", "boolean"))
    replica = DuckDBReplica(str(tmp_path / "r.duckdb"))
    try:
        asked = []
        for n, (schema, row) in enumerate([(v1, (1, "a")), (v2, (1, "a", True)), (v3, (1, "a", True))]):
            txs = [_tx(n, 100 + n, schema, [row])]
            asked += _apply(replica, txs).needs_resnapshot
        assert asked == ["public.t"]  # one request out, for all of it
        why = {t["stream"]: t for t in replica.table_report()}["public.t"]["converging"]
        assert "added (in_stock)" in why and "email -> email_address" in why, why
    finally:
        replica.close()


def test_a_ddl_signal_and_the_row_events_after_it_must_both_be_covered_to_converge(tmp_path):
    """The signal and the table's row events come on different topics: neither says which
    transaction committed later, so a snapshot ends the convergence only if its cut saw both."""
    from datetime import datetime, timezone

    from mallard.adapters.duckdb_replica import DuckDBReplica
    from mallard.core.arrow_rows import snapshot_table
    from mallard.core.cut import Cut
    from mallard.core.snapshots import SnapshotFrame

    v1 = _schema(("id", "int32"), ("email", "string"))
    v2 = _schema(("id", "int32"), ("email", "string"), ("in_stock", "boolean"))
    replica = DuckDBReplica(str(tmp_path / "r.duckdb"))

    def merge(snapshot_id, cut):
        frame = SnapshotFrame(snapshot_id, "public.t", cut, v2, None, datetime.now(timezone.utc))
        replica.begin_snapshot(frame)
        replica.stage_rows(frame, snapshot_table(v2.types, [[1], ["a"], [True]]))
        return replica.finish_snapshot(frame)

    def converging():
        return {t["stream"]: t for t in replica.table_report()}["public.t"]["converging"]

    try:
        txs = [_tx(0, 100, v1, [(1, "a")])]
        _apply(replica, txs)
        assert replica.converge("public.nothing", 130, "column x added with a default") is False  # no table
        assert replica.converge("public.t", 130, "column in_stock added with a default") is True  # ask
        assert replica.converge("public.t", 131, "column in_stock added with a default") is False  # asked already
        txs = [_tx(1, 120, v2, [(1, "a", True)])]  # committed after the DDL, whatever its xid
        assert _apply(replica, txs).needs_resnapshot == []
        assert "in_stock" in converging()
        assert merge("s1", Cut(125, 125)).resnapshot_again and converging()  # saw the row event, not the DDL
        assert merge("s2", Cut(120, 132, frozenset({120}))).resnapshot_again and converging()  # the DDL only
        assert not merge("s3", Cut(132, 132)).resnapshot_again and converging() is None
    finally:
        replica.close()


def test_ddl_without_a_row_event_after_it_converges_by_its_own_signal(cdc_stack):
    # Issue 18's demo: ADD COLUMN ... DEFAULT and RENAME COLUMN on a table nobody writes to
    # afterwards. The event trigger's signal, in the DDL's transaction, is all the applier gets.
    stack = cdc_stack
    conn = psycopg2.connect(stack.dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE TABLE quiet (id integer PRIMARY KEY, email text, n integer)")
    cur.execute("INSERT INTO quiet SELECT g, 'u' || g || '@example.com', g FROM generate_series(1, 500) g")
    stack.wait_for("SELECT count(*) FROM quiet", [[500]])
    # Neither changes a row: no signal, no re-snapshot.
    cur.execute("ALTER TABLE quiet ADD CONSTRAINT quiet_n CHECK (n > 0), ALTER COLUMN n SET DEFAULT 7")
    cur.execute("ALTER TABLE quiet ADD COLUMN in_stock boolean NOT NULL DEFAULT true")
    stack.wait_for("SELECT count(*) FROM quiet WHERE in_stock", [[500]], timeout=120)
    cur.execute("ALTER TABLE quiet RENAME COLUMN email TO email_address")
    stack.wait_for("SELECT count(email_address) FROM quiet", [[500]], timeout=120)
    deadline = time.monotonic() + 60
    while converging(stack, "public.quiet") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert converging(stack, "public.quiet") is None
    out = stack.mallard("verify", "--json", "public.quiet", check=False, timeout=240)
    assert out.returncode == 0 and json.loads(out.stdout)["equal"] is True, out.stdout + out.stderr
    snapshots = [line for line in (stack.home / "logs" / "applier.log").read_text().splitlines()
                 if "public.quiet is converging" in line]
    assert snapshots and not any("quiet_n" in line or "column n " in line for line in snapshots), snapshots
    conn.close()



def test_the_trigger_signals_exactly_the_alter_tables_that_may_rewrite_rows(cdc_stack):
    """What the trigger sends, read back from a slot of its own: one signal per ALTER TABLE
    that may have changed existing rows, none for one that cannot."""
    admin = psycopg2.connect(cdc_stack.role_dsn("admin"))
    admin.autocommit = True
    cur = admin.cursor()
    cur.execute("CREATE TABLE signalled (id integer PRIMARY KEY, name text, qty integer)")
    cur.execute("SELECT pg_create_logical_replication_slot('mallard_test_signals', 'test_decoding')")
    try:
        ddl = {
            "ADD COLUMN note text": None,
            "ADD COLUMN in_stock boolean NOT NULL DEFAULT true": "column in_stock added with a default",
            "ADD COLUMN seen timestamptz DEFAULT clock_timestamp()": "column seen added with a default",
            "ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY": "column n added with a default",
            "ADD CONSTRAINT qty_positive CHECK (qty > 0)": None,
            "ALTER COLUMN qty SET DEFAULT 1": None,
            "ALTER COLUMN name SET NOT NULL": None,
            "DROP COLUMN note": None,
            "RENAME COLUMN name TO title": "column name renamed to title",
            "ALTER COLUMN qty TYPE bigint": "column qty changed type to bigint",
            "ALTER COLUMN qty TYPE numeric(12,2) USING qty / 2.0": "column qty changed type to numeric(12,2)",
        }
        for change in ddl:
            cur.execute(f"ALTER TABLE signalled {change}")
        cur.execute("SELECT data FROM pg_logical_slot_get_changes('mallard_test_signals', NULL, NULL) "
                    "WHERE data LIKE 'message: transactional: 1 prefix: mallard.ddl%'")
        sent = [json.loads(row[0].split("content:", 1)[1]) for row in cur.fetchall()]
    finally:
        cur.execute("SELECT pg_drop_replication_slot('mallard_test_signals')")
        admin.close()
    assert [(s["schema"], s["table"]) for s in sent] == [("public", "signalled")] * len(sent)
    assert [s["changes"] for s in sent] == [why for why in ddl.values() if why]
