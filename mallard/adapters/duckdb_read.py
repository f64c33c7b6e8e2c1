"""Reading the replica while the applier writes it: a read-only copy published now and
then, and one confined read at a time (/query)."""
from __future__ import annotations

import os
import threading
import time
from typing import Any

import duckdb

from mallard.core import read_query
from mallard.core.replica_sql import STAGING_PREFIX
from mallard.core.sql import quote_ident as q
from mallard.core.sql import quote_literal


def _interrupt(cur: duckdb.DuckDBPyConnection) -> None:
    try:
        cur.interrupt()
    except duckdb.Error:
        pass  # the read ended (and its cursor closed) meanwhile


class ReadCopy:
    """Mixed into DuckDBReplica: needs ``con``."""

    con: duckdb.DuckDBPyConnection

    def publish_copy(self, path: str) -> dict[str, Any]:
        """Write the replica's tables to a new DuckDB file and rename it to ``path``.

        One DuckDB transaction reads every table, so the copy holds whole applied
        transactions only; the rename is atomic, so a reader opening ``path`` sees the
        previous copy or this one, never part of one. Staged snapshot rows and the
        applier's own replay bookkeeping are left out; ``_mallard.progress``,
        ``_mallard.tables`` and ``_mallard.snapshots`` are in, and ``_mallard.read_copy``
        says when the copy was taken."""
        started = time.monotonic()
        target = os.path.abspath(path)
        staging = self._copy_staging(path)
        tmp = os.path.join(staging, "copy.duckdb")
        os.makedirs(staging, exist_ok=True)
        for leftover in os.listdir(staging):
            os.remove(os.path.join(staging, leftover))
        alias = "_mallard_read_copy"
        self.con.execute(f"ATTACH {quote_literal(tmp)} AS {alias}")
        try:
            self.con.execute("BEGIN TRANSACTION")
            try:
                tables = [(schema, name) for schema, name in self.con.execute(
                    "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = current_database() "
                    "ORDER BY 1, 2").fetchall() if self._copied(schema, name)]
                for schema in sorted({schema for schema, _ in tables}):
                    self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {alias}.{q(schema)}")
                for schema, name in tables:
                    self.con.execute(f"CREATE TABLE {alias}.{q(schema)}.{q(name)} AS SELECT * FROM {q(schema)}.{q(name)}")
                self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {alias}._mallard")
                self.con.execute(
                    f"CREATE TABLE {alias}._mallard.read_copy AS SELECT now() AS copied_at, "
                    "(SELECT printf('%X/%X', commit_lsn >> 32, commit_lsn & 4294967295) FROM _mallard.progress WHERE id = 1) "
                    "AS commit_lsn, "
                    "(SELECT committed_at FROM _mallard.progress WHERE id = 1) AS committed_at")
                self.con.execute("COMMIT")
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            self.con.execute(f"CHECKPOINT {alias}")
        finally:
            self.con.execute(f"DETACH {alias}")
        if os.path.exists(tmp + ".wal"):
            raise RuntimeError(f"the copy {tmp} was not checkpointed whole")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        os.rmdir(staging)  # nothing left beside the copy
        return {"path": target, "bytes": os.path.getsize(target), "tables": len(tables),
                "seconds": time.monotonic() - started}

    @staticmethod
    def _copy_staging(path: str) -> str:
        """The directory a copy is written in before its rename: the only one ``confine`` leaves
        reachable besides the replica's own files (same file system as ``path``: the rename is atomic)."""
        target = os.path.abspath(path)
        return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.staging")

    @staticmethod
    def _copied(schema: str, name: str) -> bool:
        if name.startswith(STAGING_PREFIX):
            return False
        if schema == "_mallard":
            return name in ("progress", "tables", "snapshots")
        return True


class ConfinedQuery:
    """Mixed into DuckDBReplica: needs ``con``."""

    con: duckdb.DuckDBPyConnection
    confined: bool

    def confine(self, read_copy_path: str | None = None) -> None:
        """From now on the database instance cannot reach the file system (read_csv,
        COPY TO, ATTACH of a file, INSTALL/LOAD) nor change its configuration (SET
        GLOBAL): what ``query`` runs is a read of the replica and nothing more.

        Chosen over a read-only attach or the read copy: /query must see the live
        replica (verify and status read it there), and DuckDB lets one process open the
        file with one configuration only. Call it once the applier has set DuckDB up
        (threads, memory limit): both settings are global and one-way. The replica's
        own file, WAL and spill directory stay reachable to DuckDB; the read copy is
        written in a directory of its own, the only other one allowed."""
        if read_copy_path:
            staging = self._copy_staging(read_copy_path)
            self.con.execute(f"SET allowed_directories = [{quote_literal(staging + os.sep)}]")
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET lock_configuration = true")
        self.confined = True

    def query(self, sql: str, limit: int = 10_000, timeout_s: float = 60.0) -> dict[str, Any]:
        """Run one read on a cursor of its own: it sees only committed transactions, is
        interrupted after ``timeout_s`` (DuckDB has no statement timeout) and returns at
        most ``limit`` rows. Raises QueryRefused for anything but one read."""
        try:
            statements = [(s.type.name, s.query) for s in duckdb.extract_statements(sql)]
            toks = read_query.tokens(sql, [(o, t.name) for o, t in duckdb.tokenize(sql)])
        except duckdb.Error as e:
            raise read_query.QueryRefused(str(e).splitlines()[0]) from None
        refused = read_query.refusal(sql, statements, toks)
        if refused:
            raise read_query.QueryRefused(f"refused: {refused}")
        if not self.confined:  # a writable, unconfined instance never serves a caller's SQL
            raise read_query.QueryRefused("refused: the replica is not confined (DuckDBReplica.confine)")
        cur = self.con.cursor()
        timer = threading.Timer(timeout_s, _interrupt, (cur,))
        timer.daemon = True
        timer.start()
        try:
            cur.execute("BEGIN TRANSACTION")
            result = cur.execute(sql)
            columns = [d[0] for d in result.description or []]
            rows = result.fetchmany(limit + 1)
            return {"columns": columns, "rows": rows[:limit], "truncated": len(rows) > limit}
        except duckdb.InterruptException:
            raise read_query.QueryRefused(
                f"stopped at the time limit ({timeout_s:g} s): narrow the query, or raise "
                "MALLARD_QUERY_TIMEOUT_S") from None
        finally:
            timer.cancel()
            try:  # an interrupt that fired just as the read ended may hit the rollback: the cursor goes anyway
                cur.execute("ROLLBACK")
            except duckdb.Error:
                pass
            cur.close()



class ReplicaFile(ConfinedQuery):
    """A copy of the replica (the applier's read copy) opened read-only from the CLI and
    confined as the applier's /query is: one read, no file system, no configuration change."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no replica file at {path}")
        self.con = duckdb.connect(path, read_only=True)
        self.confined = False
        self.confine()

    def close(self) -> None:
        self.con.close()
