"""The DuckDB replica: tables mirrored from Postgres plus mallard's bookkeeping.

One class over one DuckDB connection, put together from its jobs, each in a module of
its own:

- ``duckdb_bookkeeping``: ``_mallard``'s tables, each stream's table and state;
- ``duckdb_cdc``: batches of change events (the SQL: ``mallard/core/replica_sql.py``);
- ``duckdb_snapshot``: staging and merging snapshots with the cut rule;
- ``duckdb_read``: the read-only copy, and confined reads (/query);
- ``duckdb_writer``: the writer process that alone opens the file (every read and write goes
  through it), and how a batch's script reaches it;
- ``duckdb_errors``: DuckDB's errors as transient or terminal.

The naming convention is in ``mallard/core/replica_sql.py`` and docs/applier.md.
"""
from __future__ import annotations

from mallard.adapters import duckdb_writer
from mallard.adapters.duckdb_bookkeeping import Bookkeeping
from mallard.adapters.duckdb_cdc import CdcApply
from mallard.adapters.duckdb_read import ConfinedQuery, ReadCopy
from mallard.adapters.duckdb_snapshot import SnapshotMerge
from mallard.adapters.duckdb_writer import ScriptRunner
# The names callers have always imported from here:
from mallard.core.replica_sql import (ABSENT, META_COLUMNS, NEEDS_RESNAPSHOT, OK, RECENT_TRANSACTIONS, REFUSED,  # noqa: F401
                                      RESERVED_PREFIX, RESERVED_REASON, STAGING_PREFIX, ApplyStats, PreparedBatch,
                                      Script, SnapshotResult, TableState, covered_sql, position_arrays, position_sql,
                                      reserved_columns, target_name, tombstones_name, value_sql)


class DuckDBReplica(Bookkeeping, CdcApply, SnapshotMerge, ReadCopy, ConfinedQuery):
    def __init__(self, path: str, memory_limit: str | None = None, targets: dict[str, str] | None = None,
                 threads: int = 0, checkpoint_threshold: str | None = None, snapshot_merge: str = "swap"):
        self.path = path
        self.merge_by_swap = snapshot_merge == "swap"
        self.targets = targets or {}
        """stream -> DuckDB table ('table' in main, or 'schema.table') where the replication config names one."""
        self.con = duckdb_writer.connect(path)
        """A connection of the writer process (see duckdb_writer): the only process that opens the file."""
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        self.writer = ScriptRunner(self.con, path)
        if memory_limit:
            self.con.execute(f"SET memory_limit = '{memory_limit}'")
        if checkpoint_threshold:
            self.con.execute(f"SET checkpoint_threshold = '{checkpoint_threshold}'")
        self.tables: dict[str, TableState] = {}
        self.confined = False
        """Whether ``confine`` ran: ``query`` serves only a confined instance."""
        self.needing_resnapshot: list[str] = []
        self._staging: dict[str, str] = {}
        """snapshot_id -> its staging table, fixed when it begins (the merge may create or rebuild the table)."""
        self._refused_snapshots: dict[str, str] = {}
        """snapshot_id -> why its stream is refused: nothing of it is staged or merged."""
        self._bootstrap()

    @property
    def commits_apart(self) -> bool:
        """Whether ``commit`` runs on a connection of its own: the client's (everything else) stays free."""
        return self.writer.apart

    def _run(self, script: Script) -> None:
        """A script as one DuckDB transaction, DuckDB's own error unchanged (``commit`` translates it)."""
        self.writer.run(script)

    def close(self) -> None:
        self.writer.close()
        self.con.close()
