"""Batches applied through DuckDB's C API (one call, the GIL free) against the same
batches applied through its Python client: the same replica, whole transactions only,
nothing of the batch's Arrow views left behind, and a failed batch rolled back whole."""
from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mallard.adapters.duckdb_native import TESTED_VERSIONS, NativeConnection
from mallard.adapters.duckdb_replica import DuckDBReplica, Script
from mallard.core.merge import reduce
from tests.integration.test_snapshot_merge import replica_rows, transaction

WRITES = st.lists(st.tuples(st.sampled_from("uuuudt"), st.integers(0, 6)), min_size=1, max_size=6)


def apply_all(replica: DuckDBReplica, batches: list[list]) -> None:
    for txs in batches:
        replica.apply(reduce(txs, replica.snapshot_cuts()), txs)


def test_the_c_api_is_used_on_the_pinned_duckdb(tmp_path):
    assert duckdb.__version__ in TESTED_VERSIONS
    replica = DuckDBReplica(str(tmp_path / "r.duckdb"))
    try:
        assert replica.native is not None
    finally:
        replica.close()


def test_the_c_api_connection_knows_whose_database_it_is(tmp_path):
    a, b = duckdb.connect(str(tmp_path / "a.duckdb")), duckdb.connect(str(tmp_path / "b.duckdb"))
    native = NativeConnection(a, str(tmp_path / "a.duckdb"))
    try:
        assert native._shares(a) and not native._shares(b)
    finally:
        native.close()
        a.close()
        b.close()


def test_an_in_memory_replica_is_applied_through_the_client():
    replica = DuckDBReplica(":memory:")
    try:
        assert replica.native is None
        apply_all(replica, [[transaction(0, 100, [("u", 1, 10)])]])
        assert replica_rows(replica) == {1: 10}
    finally:
        replica.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(WRITES, min_size=1, max_size=4), min_size=1, max_size=5))
def test_the_c_api_and_the_client_leave_the_same_replica(tmp_path_factory, batches):
    xid = 100
    txs_batches = []
    for batch in batches:
        txs = []
        for writes in batch:
            txs.append(transaction(xid - 100, xid, [(op, key, xid * 10 + i) for i, (op, key) in enumerate(writes)]))
            xid += 1
        txs_batches.append(txs)
    results = []
    for native in (True, False):
        replica = DuckDBReplica(str(tmp_path_factory.mktemp("native") / "r.duckdb"), native=native)
        try:
            assert (replica.native is not None) == native
            apply_all(replica, txs_batches)
            apply_all(replica, txs_batches[-1:])  # a replay changes nothing
            exists = replica.con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 't'").fetchone()[0]
            results.append((replica_rows(replica) if exists else None, replica.progress()["tx_id"],
                            replica.applied_position(), replica.table_report()))
        finally:
            replica.close()
    assert results[0] == results[1]


def test_no_view_of_a_batch_is_left_and_a_failed_batch_leaves_nothing(tmp_path):
    path = str(tmp_path / "r.duckdb")
    replica = DuckDBReplica(path)
    try:
        apply_all(replica, [[transaction(0, 100, [("u", 1, 10), ("u", 2, 20)])]])
        script = Script()
        script.add("DELETE FROM main.t WHERE id = 1")
        script.add(f"SELECT * FROM {script.scan(pa.table({'x': [1, 2, 3]}))}")
        script.add("SELECT no_such_column FROM main.t")  # fails after the delete
        with pytest.raises(duckdb.Error, match="no_such_column"):
            replica._run(script)
        assert replica_rows(replica) == {1: 10, 2: 20}
        apply_all(replica, [[transaction(1, 101, [("d", 2, 0)])]])  # the connection goes on
        assert replica_rows(replica) == {1: 10}
    finally:
        replica.close()
    con = duckdb.connect(path, read_only=True)
    try:
        assert con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall() == []
    finally:
        con.close()
