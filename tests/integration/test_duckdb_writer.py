"""The replica's DuckDB database in a writer process of its own (mallard.adapters.duckdb_writer):
batches committed whole or not at all, nothing of a batch's Arrow views left behind, and
the writer's death (or its parent's) never a silent loss."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import duckdb
import pyarrow as pa
import pytest

from mallard.adapters import duckdb_writer
from mallard.adapters.duckdb_replica import DuckDBReplica, Script
from mallard.core.merge import reduce
from tests.integration.test_snapshot_merge import replica_rows, transaction


def apply_all(replica: DuckDBReplica, batches: list[list]) -> None:
    for txs in batches:
        replica.apply(reduce(txs, replica.snapshot_cuts()), txs)


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


def test_duckdb_errors_keep_their_type_and_a_closed_replica_frees_the_file(tmp_path):
    path = str(tmp_path / "r.duckdb")
    replica = DuckDBReplica(path)
    try:
        with pytest.raises(duckdb.CatalogException):
            replica.con.execute("SELECT * FROM no_such_table")
        replica.con.execute("CREATE TABLE x AS SELECT * FROM range(5) r(i)")
        assert replica.con.execute("SELECT sum(i) FROM x WHERE i > ?", [1]).fetchone() == (9,)
        assert replica.con.execute("SELECT i FROM x ORDER BY i").fetchmany(2) == [(0,), (1,)]
    finally:
        replica.close()
    con = duckdb.connect(path)  # the writer has closed the file: it can be opened at once
    try:
        assert con.execute("SELECT count(*) FROM x").fetchone() == (5,)
    finally:
        con.close()


def test_a_dead_writer_is_an_error_never_a_silent_loss(tmp_path):
    path = str(tmp_path / "r.duckdb")
    replica = DuckDBReplica(path)
    try:
        apply_all(replica, [[transaction(0, 100, [("u", 1, 10)])]])
        os.kill(replica.con._writer.proc.pid, signal.SIGKILL)
        with pytest.raises(duckdb_writer.WriterDied):
            apply_all(replica, [[transaction(1, 101, [("u", 2, 20)])]])
        with pytest.raises(duckdb_writer.WriterDied):
            replica.progress()
    finally:
        replica.close()
    reopened = DuckDBReplica(path)  # what was committed before the death is there
    try:
        assert replica_rows(reopened) == {1: 10}
        assert reopened.applied_position()[0] == 1000
    finally:
        reopened.close()


def test_the_writer_goes_with_its_parent_and_leaves_the_file_to_the_next(tmp_path):
    path = str(tmp_path / "r.duckdb")
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from mallard.adapters.duckdb_replica import DuckDBReplica
        from tests.integration.test_duckdb_writer import apply_all
        from tests.integration.test_snapshot_merge import transaction
        if __name__ == "__main__":
            replica = DuckDBReplica({path!r})
            apply_all(replica, [[transaction(0, 100, [("u", 1, 10), ("u", 2, 20)])]])
            print("applied", flush=True)
            sys.stdin.read()  # until killed (its stdin stays open)
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert parent.stdout.readline().strip() == "applied"
        parent.kill()  # no close: the writer must notice by itself
        parent.wait()
    finally:
        parent.kill()
    started = time.monotonic()
    replica = DuckDBReplica(path)  # waits for the old writer's lock, if it has not exited yet
    try:
        assert replica_rows(replica) == {1: 10, 2: 20}
        assert time.monotonic() - started < duckdb_writer.LOCK_WAIT_S
    finally:
        replica.close()


def test_an_unclosed_replica_does_not_keep_its_process_from_exiting(tmp_path):
    path = str(tmp_path / "r.duckdb")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from mallard.adapters.duckdb_replica import DuckDBReplica
        if __name__ == "__main__":
            replica = DuckDBReplica({path!r})
            replica.con.execute("CREATE TABLE x AS SELECT 1 AS a")
        """)], timeout=120, cwd=os.getcwd())
    assert done.returncode == 0
    con = duckdb.connect(path)
    try:
        assert con.execute("SELECT a FROM x").fetchall() == [(1,)]
    finally:
        con.close()


def test_a_batch_commits_while_another_connection_reads(tmp_path):
    replica = DuckDBReplica(str(tmp_path / "r.duckdb"))
    try:
        apply_all(replica, [[transaction(0, 100, [("u", 1, 10)])]])
        replica.confine()
        errors: list[BaseException] = []

        def read() -> None:
            try:
                for _ in range(20):
                    assert replica.query("SELECT count(*) FROM t")["rows"][0][0] >= 1
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        reader = threading.Thread(target=read)
        reader.start()
        apply_all(replica, [[transaction(n, 100 + n, [("u", n + 1, n)])] for n in range(1, 20)])
        reader.join()
        assert errors == []
        assert len(replica_rows(replica)) == 20
    finally:
        replica.close()


@pytest.mark.parametrize("threshold", [None, "default"])
def test_a_batch_of_scattered_updates_checkpoints_only_at_duckdbs_own_threshold(tmp_path, threshold):
    """DuckDB weighs a commit's updates at about 100 times the WAL they write: at its 16MB
    default, a few hundred updates spread over a big table checkpoint (rewrite the table)
    at every commit. The applier's threshold keeps them in the WAL (bench/RESULTS.md)."""
    from mallard.services.applier.config import ApplierSettings

    path = str(tmp_path / "r.duckdb")
    setting = ApplierSettings.model_fields["duckdb_checkpoint_threshold"].default if threshold else None
    replica = DuckDBReplica(path, checkpoint_threshold=setting)
    try:
        replica.con.execute("CREATE TABLE big AS SELECT i AS id, 0 AS v, 0::BIGINT AS pos, 'snapshot' AS src, "
                            "now() AS applied_at, repeat('x', 84) AS filler FROM range(500000) r(i)")
        replica.con.execute("CHECKPOINT")
        script = Script()
        script.add("UPDATE big SET v = v + 1, pos = 1, src = 'cdc', applied_at = now(), filler = repeat('y', 84) "
                   "WHERE id % 1000 = 7")  # 500 rows, one in every vector
        replica._run(script)
        wal = os.path.getsize(path + ".wal") if os.path.exists(path + ".wal") else 0
        assert (wal > 0) == bool(setting), f"WAL of {wal} bytes after the commit"
    finally:
        replica.close()
