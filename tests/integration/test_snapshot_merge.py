"""The DuckDB adapter's set-based snapshot merge against a simulated Postgres:
concurrent transactions (some begin before a snapshot's cut and commit after it, some
truncate the table),
CDC that lags or leads the snapshot, and a replica that may hold older snapshot rows
already. Whatever the interleaving, once CDC has passed a point at or after the
snapshot, the replica equals Postgres at that point — and stays equal after."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mallard.adapters.duckdb_replica import DuckDBReplica
from mallard.core.arrow_rows import snapshot_table
from mallard.core.changes import ChangeEvent, TableSchema
from mallard.core.cut import Cut
from mallard.core.merge import reduce
from mallard.core.pgtypes import column_type
from mallard.core.snapshots import SnapshotFrame
from mallard.core.transactions import Transaction

# The DuckDB adapter against real DuckDB (no server, but not pure): the integration tier.
pytestmark = pytest.mark.integration

STREAM = "public.t"
SCHEMA = TableSchema(STREAM, ("id", "v"), (column_type({"type": "int32"}), column_type({"type": "int32"})), ("id",))
KEYS = st.integers(0, 5)
# After a restart the decoder has not seen the table's key yet when a truncate comes.
TRUNCATE_SCHEMA = TableSchema(STREAM, SCHEMA.columns, SCHEMA.types, (), key_known=False)
WRITE = st.tuples(st.sampled_from("uuuuddt"), KEYS)  # upserts, deletes, now and then a truncate


@st.composite
def histories(draw):
    """Steps of a simulated Postgres: start / write / commit of transactions, and one snapshot."""
    steps, open_txs, next_xid = [], [], 100
    for _ in range(draw(st.integers(4, 30))):
        choice = draw(st.integers(0, 3)) if open_txs else 0
        if choice == 0 and len(open_txs) < 3:
            steps.append(("start", next_xid))
            open_txs.append(next_xid)
            next_xid += 1
        elif choice in (1, 2):
            tx = draw(st.sampled_from(open_txs))
            steps.append(("write", tx, *draw(WRITE)))
        else:
            tx = draw(st.sampled_from(open_txs))
            steps.append(("commit", tx))
            open_txs.remove(tx)
    steps += [("commit", tx) for tx in open_txs]
    steps.insert(draw(st.integers(0, len(steps))), ("snapshot",))
    return steps, draw(st.integers(0, 100)), draw(st.booleans()), draw(st.sampled_from([None, "id <= 2"]))


def simulate(steps):
    """Commit-ordered transactions (xid, writes, state after), the snapshot's cut and rows,
    and how many transactions had committed when it was taken."""
    table: dict[int, int] = {}
    pending: dict[int, list] = {}
    committed, snapshot = [], None
    value = 0
    next_xid = 100
    for step in steps:
        if step[0] == "start":
            pending[step[1]] = []
            next_xid = step[1] + 1
        elif step[0] == "write":
            value += 1
            pending[step[1]].append((step[2], step[3], value))
        elif step[0] == "commit":
            writes = pending.pop(step[1])
            for op, key, v in writes:
                if op == "u":
                    table[key] = v
                elif op == "t":
                    table.clear()
                else:
                    table.pop(key, None)
            committed.append((step[1], writes, dict(table)))
        else:
            xip = frozenset(pending)
            cut = Cut(min(xip) if xip else next_xid, next_xid, xip)
            snapshot = (cut, dict(table), len(committed))
    return committed, snapshot


def transaction(n: int, xid: int, writes: list) -> Transaction:
    events = []
    for order, (op, key, v) in enumerate(writes, start=1):
        if op == "t":
            events.append(ChangeEvent("t", 0, 0, STREAM, "t", xid, order, 0, None, None, frozenset(), TRUNCATE_SCHEMA))
            continue
        events.append(ChangeEvent("t", 0, 0, STREAM, "c" if op == "u" else "d", xid, order, 0, (key,),
                                  (key, v) if op == "u" else None, frozenset(), SCHEMA))
    return Transaction(xid, 1000 + n, 0, events)


def replica_rows(replica: DuckDBReplica) -> dict[int, int]:
    return dict(replica.con.execute("SELECT id, v FROM t").fetchall())


def apply_cdc(replica: DuckDBReplica, txs: list[Transaction]) -> None:
    if txs:
        replica.apply(reduce(txs, replica.snapshot_cuts()), txs)


def merge_snapshot(replica: DuckDBReplica, snapshot_id: str, cut: Cut, rows: dict[int, int],
                   where: str | None = None) -> None:
    frame = SnapshotFrame(snapshot_id, STREAM, cut, SCHEMA, where, datetime.now(timezone.utc))
    replica.begin_snapshot(frame)
    if rows:
        replica.stage_rows(frame, snapshot_table(SCHEMA.types, [list(rows), list(rows.values())]))
    replica.finish_snapshot(frame)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.sampled_from(["swap", "rewrite"]))
@example(([("start", 100), ("write", 100, "u", 1), ("commit", 100), ("snapshot",), ("start", 101),
           ("write", 101, "t", 0), ("commit", 101)], 100, False, None), "swap")  # a truncate after the cut
def test_the_merge_converges_to_postgres_whatever_the_order(tmp_path_factory, history, snapshot_merge):
    """Both ways of merging a full snapshot (MALLARD_SNAPSHOT_MERGE) give the same table."""
    steps, lag_pct, older_snapshot_first, where = history
    committed, (cut, rows, at) = simulate(steps)
    txs = [transaction(n, xid, writes) for n, (xid, writes, _) in enumerate(committed)]
    replica = DuckDBReplica(str(tmp_path_factory.mktemp("merge") / "r.duckdb"), snapshot_merge=snapshot_merge)
    try:
        if older_snapshot_first:  # the replica already holds an older full snapshot (of nothing yet)
            merge_snapshot(replica, "s0", Cut(100, 100), {})
        # CDC has applied some prefix when the snapshot's end is merged: behind or past the cut.
        applied = len(txs) * lag_pct // 100
        apply_cdc(replica, txs[:applied])
        if where is not None:  # a subset (of keys): CDC may replay older states inside it, then converges
            merge_snapshot(replica, "s1", cut, {k: v for k, v in rows.items() if k <= 2}, where)
            apply_cdc(replica, txs[applied:])
            assert replica_rows(replica) == (committed[-1][2] if committed else {}), f"subset, cut {cut}"
            return
        merge_snapshot(replica, "s1", cut, rows)
        expected_at = max(applied, at)
        if expected_at == applied:
            assert replica_rows(replica) == (committed[applied - 1][2] if applied else {}), \
                f"right after the merge (cut {cut}, CDC at {applied}/{len(txs)})"
        for n in range(applied, len(txs)):
            apply_cdc(replica, [txs[n]])
            if n + 1 >= expected_at:
                assert replica_rows(replica) == committed[n][2], f"after tx {n + 1} (cut {cut}, merged at {applied})"
    finally:
        replica.close()


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 3), st.integers(0, 2**32 - 1), st.lists(st.integers(0, 200), max_size=5), st.data())
def test_the_sql_visibility_rule_is_the_cut_rule(epoch, base, offsets, data):
    """covered_sql (what the merge runs) agrees with Cut.covers for 32-bit xids around a
    64-bit cut, across epochs and wraparound."""
    import duckdb

    from mallard.adapters.duckdb_replica import covered_sql

    xmin = epoch * 2**32 + base
    xmax = xmin + data.draw(st.integers(0, 300))
    cut = Cut(xmin, xmax, frozenset(x for x in (xmin + o for o in offsets) if x < xmax))
    xids = data.draw(st.lists(st.integers(-400, 400), min_size=1, max_size=20))
    txs = [(xmin + d) % 2**32 for d in xids]
    con = duckdb.connect()
    got = [con.execute(f"SELECT {covered_sql(cut, '$tx')}", {"tx": tx}).fetchone()[0] for tx in txs]
    assert got == [cut.covers(tx) for tx in txs]


@pytest.mark.parametrize("table_seen_before", [True, False])
def test_a_truncate_after_the_cut_voids_the_snapshots_rows(tmp_path, table_seen_before):
    """Found by the torture test: a table emptied by a truncate the cut did not see took the
    snapshot whole (the first-copy rename), bringing back rows Postgres no longer has. Also
    when DuckDB has no table yet (the truncate is CDC's first event of it)."""
    replica = DuckDBReplica(str(tmp_path / "r.duckdb"))
    try:
        if table_seen_before:
            apply_cdc(replica, [transaction(0, 100, [("u", 1, 10)])])
        apply_cdc(replica, [transaction(1, 101, [("t", 0, None)])])
        replica.close()
        replica = DuckDBReplica(str(tmp_path / "r.duckdb"))  # remembered across a restart
        merge_snapshot(replica, "s1", Cut(101, 101), {1: 10, 2: 20})
        assert replica_rows(replica) == {}
        assert [t["status"] for t in replica.table_report()] == ["ok"]
        apply_cdc(replica, [transaction(2, 102, [("u", 3, 30)])])
        merge_snapshot(replica, "s2", Cut(103, 103), {3: 30, 4: 40})  # a cut after the truncate: taken whole
        assert replica_rows(replica) == {3: 30, 4: 40}
    finally:
        replica.close()


def test_an_incremental_snapshot_upserts_and_deletes_nothing(tmp_path):
    """The real DuckDB adapter: a subset snapshot deletes inside its subset what it does not
    hold; the same snapshot flagged incremental only upserts."""
    replica = DuckDBReplica(str(tmp_path / "r.duckdb"))
    try:
        merge_snapshot(replica, "s0", Cut(100, 100), {1: 10, 2: 20, 3: 30})

        def subset(snapshot_id: str, incremental: bool) -> None:
            frame = SnapshotFrame(snapshot_id, STREAM, Cut(101, 101), SCHEMA, "v >= 20", datetime.now(timezone.utc),
                                  incremental=incremental)
            replica.begin_snapshot(frame)
            replica.stage_rows(frame, snapshot_table(SCHEMA.types, [[2, 4], [21, 40]]))
            replica.finish_snapshot(frame)

        subset("inc", incremental=True)
        assert replica_rows(replica) == {1: 10, 2: 21, 3: 30, 4: 40}  # 3 (v >= 20, not held) stays
        subset("sub", incremental=False)
        assert replica_rows(replica) == {1: 10, 2: 21, 4: 40}  # a plain subset deletes it
    finally:
        replica.close()


def test_a_stream_goes_to_the_table_the_config_names(tmp_path):
    replica = DuckDBReplica(str(tmp_path / "r.duckdb"), targets={STREAM: "analytics.t_copy"})
    try:
        merge_snapshot(replica, "s0", Cut(100, 100), {1: 10, 2: 20})
        apply_cdc(replica, [transaction(0, 100, [("u", 3, 30), ("d", 1, None)])])
        assert dict(replica.con.execute("SELECT id, v FROM analytics.t_copy").fetchall()) == {2: 20, 3: 30}
        assert replica.con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 't'").fetchone() == (0,)
    finally:
        replica.close()


def test_a_snapshot_duckdb_refuses_raises_a_terminal_error_and_phases_are_recorded(tmp_path):
    """What the applier abandons a snapshot for (a TerminalError, not the driver's error),
    and the times `mallard status` splits a merged snapshot's phases by."""
    from datetime import timedelta

    from mallard.core.errors import TerminalError

    replica = DuckDBReplica(str(tmp_path / "r.duckdb"), snapshot_merge="swap")  # staged under its key
    try:
        t0 = datetime.now(timezone.utc)
        frame = SnapshotFrame("bad", STREAM, Cut(100, 100), SCHEMA, None, t0)
        replica.begin_snapshot(frame)
        with pytest.raises(TerminalError, match="Constraint Error"):  # one key twice: DuckDB refuses it
            replica.stage_rows(frame, snapshot_table(SCHEMA.types, [[1, 1], [10, 11]]))
        replica.abandon_snapshot(frame, "DuckDB refused it while staging")
        frame = SnapshotFrame("good", STREAM, Cut(100, 100), SCHEMA, None, t0, requested_at=t0 - timedelta(seconds=3),
                              read_finished_at=t0 + timedelta(seconds=1))
        replica.begin_snapshot(frame)
        replica.stage_rows(frame, snapshot_table(SCHEMA.types, [[1, 2], [10, 20]]))
        replica.finish_snapshot(frame)
        assert replica_rows(replica) == {1: 10, 2: 20}
        (status, requested, read, merging, finished), = replica.con.execute(
            "SELECT status, requested_at, read_finished_at, merge_started_at, finished_at FROM _mallard.snapshots "
            "WHERE snapshot_id = 'good'").fetchall()
        assert status == "merged" and requested == t0 - timedelta(seconds=3) and read == t0 + timedelta(seconds=1)
        assert t0 <= merging <= finished
        assert replica.con.execute("SELECT status, reason FROM _mallard.snapshots WHERE snapshot_id = 'bad'"
                                   ).fetchall() == [("abandoned", "DuckDB refused it while staging")]
    finally:
        replica.close()


@pytest.mark.parametrize("snapshot_merge", ["swap", "rewrite"])
def test_a_crash_right_after_a_merge_replays_to_the_merged_table(tmp_path, snapshot_merge):
    """The DuckDB file and WAL as a crash right after the merge leaves them (copied while the
    replica is open, nothing checkpointed) open to the merged table. DuckDB before 2.0.1 logs a
    delete or update made before a table's rename, in the same transaction, under the new
    name (duckdb/duckdb#22124): a swap that fixed the staging table up before renaming it left
    a WAL that failed to replay ("Conflict on tuple deletion") or replayed into another table."""
    import shutil

    import duckdb

    replica = DuckDBReplica(str(tmp_path / "r.duckdb"), checkpoint_threshold="1GB", snapshot_merge=snapshot_merge)
    try:
        keys = range(2000)
        merge_snapshot(replica, "s0", Cut(100, 100), {k: 0 for k in keys})
        # After the next snapshot's cut (110): deletes, updates and inserts, some of keys it holds.
        writes = [("d", k, 0) for k in range(0, 600, 3)] + [("u", k, 7) for k in range(1, 900, 3)] \
            + [("u", k, 9) for k in range(2000, 2100)]
        apply_cdc(replica, [transaction(0, 120, writes)])
        merge_snapshot(replica, "s1", Cut(110, 110), {k: 1 for k in keys})
        expected = replica_rows(replica)
        assert expected == {**{k: 1 for k in keys if not (k < 600 and k % 3 == 0)},
                            **{k: 7 for k in range(1, 900, 3)}, **{k: 9 for k in range(2000, 2100)}}
        crashed = tmp_path / "crashed"
        crashed.mkdir()
        for name in ("r.duckdb", "r.duckdb.wal"):
            shutil.copy(tmp_path / name, crashed / name)
    finally:
        replica.close()
    con = duckdb.connect(str(crashed / "r.duckdb"))
    try:
        assert dict(con.execute("SELECT id, v FROM t").fetchall()) == expected
    finally:
        con.close()
