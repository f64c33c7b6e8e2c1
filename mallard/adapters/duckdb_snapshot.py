"""Snapshots into the replica: staged apart from the table as their batches arrive,
then merged with the cut rule in one DuckDB transaction (docs/applier.md)."""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import datetime, timezone

import duckdb
import pyarrow as pa

from mallard.adapters.duckdb_errors import translate
from mallard.core.names import split_quoted
from mallard.core.replica_sql import (ABSENT, META_COLUMNS, OK, REFUSED, STAGING_PREFIX, SnapshotResult, TableState,
                                      covered_sql, keyless_rebuild_sql, reserved_columns, target_schema, target_table,
                                      tombstones_name, value_sql)
from mallard.core.snapshots import SnapshotFrame
from mallard.core.sql import quote_ident as q

log = logging.getLogger("mallard.duckdb")
_SNAPSHOT_COLUMNS = ("snapshot_id, stream, request_id, where_sql, cut, started_at, status, reason, rows_staged, "
                     "rows_applied, rows_deleted, finished_at, requested_at")


def _translated(method: Callable) -> Callable:
    """DuckDB's errors as transient or terminal: the applier abandons a snapshot DuckDB refuses."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception as e:
            translated = translate(e)
            if translated is e:
                raise
            raise translated from e
    return wrapper


class SnapshotMerge:
    """Mixed into DuckDBReplica (with Bookkeeping): needs ``con``, ``tables``, ``merged_snapshots``,
    ``_staging``, ``_refused_snapshots``."""

    con: duckdb.DuckDBPyConnection
    tables: dict[str, TableState]
    merged_snapshots: set[str]
    _staging: dict[str, str]
    _refused_snapshots: dict[str, str]
    merge_by_swap: bool = True
    """A full snapshot of a keyed table is staged under its primary key and merged by a swap
    (``_swap_keyed``); False: by a rewrite of the table at its end (``_rebuild_keyed``, the
    older way, kept for the benchmark that compares them)."""

    def staging_name(self, frame: SnapshotFrame) -> str:
        """Beside the target table (a first copy becomes the table by a rename); chosen once,
        when the snapshot begins."""
        name = self._staging.get(frame.snapshot_id)
        if name is None:
            state = self.tables.get(frame.stream)
            target = state.target if state is not None and state.status != ABSENT else self.target_of(frame.stream)
            name = self._staging[frame.snapshot_id] = f"{target_schema(target)}.{q(STAGING_PREFIX + frame.snapshot_id)}"
        return name

    # -- snapshots -------------------------------------------------------------------

    @_translated
    def begin_snapshot(self, frame: SnapshotFrame) -> None:
        """Stage a snapshot's rows apart from the table until its end has arrived."""
        if frame.snapshot_id in self.merged_snapshots:
            return  # re-read after a restart: already merged
        schema = frame.schema
        clash = reserved_columns(schema.columns)
        if clash:  # nothing is staged; its end is refused (and the snapshot abandoned with the reason)
            self._refused_snapshots[frame.snapshot_id] = self._refuse_reserved(
                schema, self.tables.get(frame.stream), clash).reason
        cols = ", ".join(f"{q(c)} {t}" for c, t in [*((c, t.duckdb) for c, t in zip(schema.columns, schema.types)),
                                                    *META_COLUMNS])
        self._staging.pop(frame.snapshot_id, None)  # a re-read after a restart chooses again
        staging = self.staging_name(frame)
        if self._keyed_staging(frame):
            # The index is built as the rows are staged, between CDC batches: the merge at
            # the end then only swaps the table in (with what CDC wrote after the cut).
            cols += f", PRIMARY KEY ({', '.join(q(c) for c in schema.key_columns)})"
        if not clash:
            self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {target_schema(staging)}")
            self.con.execute(f"DROP TABLE IF EXISTS {staging}")
            self.con.execute(f"CREATE TABLE {staging} ({cols})")
        cut = frame.cut
        self.con.execute(
            f"INSERT OR REPLACE INTO _mallard.snapshots ({_SNAPSHOT_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, 'staging', NULL, 0, NULL, NULL, NULL, ?)",
            [frame.snapshot_id, frame.stream, frame.request_id, frame.where,
             f"{cut.xmin}:{cut.xmax}:{','.join(str(x) for x in sorted(cut.xip))}", frame.started_at,
             frame.requested_at])

    def _keyed_staging(self, frame: SnapshotFrame) -> bool:
        """Whether the snapshot is staged under its primary key (to be merged by a swap)."""
        return self.merge_by_swap and frame.full and bool(frame.schema.key_columns)

    @_translated
    def stage_rows(self, frame: SnapshotFrame, rows: pa.Table) -> None:
        """``rows``: from ``snapshot_table``."""
        if frame.snapshot_id in self.merged_snapshots or frame.snapshot_id in self._refused_snapshots \
                or not rows.num_rows:
            return
        schema = frame.schema
        # One contiguous batch: DuckDB then writes whole row groups straight to the file; from
        # many small batches (Kafka messages) it merges its collections and rewrites them at
        # the next checkpoint — three times the CPU.
        self.con.register("_mallard_snapshot_rows", rows.combine_chunks())
        try:
            # Already as the table's rows: position 0 (any CDC write the cut did not see is newer).
            self.con.execute(f"""INSERT INTO {self.staging_name(frame)} SELECT
                {', '.join(value_sql(ct, f'c{i}') for i, ct in enumerate(schema.types))},
                0, NULL, 'snapshot', $started, now(), $snapshot_id FROM _mallard_snapshot_rows""",
                {"started": frame.started_at, "snapshot_id": frame.snapshot_id})
        finally:
            self.con.unregister("_mallard_snapshot_rows")

    def has_snapshot(self, stream: str) -> bool:
        """Whether a snapshot of the stream was ever merged or is on its way."""
        return bool(self.con.execute("SELECT count(*) FROM _mallard.snapshots WHERE stream = ? AND status <> 'abandoned'",
                                     [stream]).fetchone()[0])

    def abandon_snapshot(self, frame: SnapshotFrame, reason: str) -> None:
        if frame.snapshot_id in self.merged_snapshots:
            return
        self._refused_snapshots.pop(frame.snapshot_id, None)
        if frame.snapshot_id in self._staging:  # staged here (a request refused before its begin never was)
            self.con.execute(f"DROP TABLE IF EXISTS {self._staging.pop(frame.snapshot_id)}")
        if not self.con.execute("UPDATE _mallard.snapshots SET status = 'abandoned', reason = ?, finished_at = now() "
                                "WHERE snapshot_id = ? RETURNING snapshot_id", [reason, frame.snapshot_id]).fetchall():
            # Failed before its begin reached the replica: recorded all the same, so that
            # `mallard status` and `resnapshot --wait` say why.
            self.con.execute(f"INSERT INTO _mallard.snapshots ({_SNAPSHOT_COLUMNS}) VALUES (?, ?, ?, ?, NULL, ?, "
                             "'abandoned', ?, 0, NULL, NULL, now(), ?)",
                             [frame.snapshot_id, frame.stream, frame.request_id, frame.where, frame.started_at, reason,
                              frame.requested_at])

    def finish_snapshot(self, frame: SnapshotFrame) -> SnapshotResult:
        """Merge a complete snapshot into its table with the cut rule, in one DuckDB
        transaction: a reader sees the table before or after, never in between."""
        if frame.snapshot_id in self.merged_snapshots:
            return SnapshotResult(status="already merged")
        if frame.snapshot_id in self._refused_snapshots:
            raise ValueError(f"{frame.stream} refused: {self._refused_snapshots.pop(frame.snapshot_id)}")
        staging = self.staging_name(frame)
        now = datetime.now(timezone.utc)  # the merge starts: its end reached DuckDB
        state = self.tables.get(frame.stream)
        # Checked outside the transaction: a failed statement would abort it.
        subset = self._subset_sql(state, frame.where) if frame.where is not None and state is not None else ""
        self.con.execute("BEGIN TRANSACTION")
        try:
            result = SnapshotResult(staged=self.con.execute(f"SELECT count(*) FROM {staging}").fetchone()[0])
            state = self._table_for_snapshot(frame)
            if not state.key_columns and not frame.full:
                raise ValueError(f"{frame.stream} has no primary key: only a full snapshot can replace its rows "
                                 f"(mallard resnapshot {frame.stream}, without a filter)")
            if self._replace_with_staging(state, frame):
                result.applied = result.staged
            elif not state.key_columns:
                self._rebuild_keyless(state, frame, result)
            elif frame.full:
                if not self._swap_keyed(state, frame, result):
                    self._rebuild_keyed(state, frame, result)
            else:
                self._merge_keyed(state, frame, result, subset)
            if frame.full:
                state.snapshot_cut = frame.cut
                # Deleted keys (rows, without a key) the cut saw: the table's content holds them now.
                self.con.execute(f"DELETE FROM {tombstones_name(state.stream)} "
                                 f"WHERE {covered_sql(frame.cut, '_mallard_tx_id')}")
                if state.truncated_tx_id is not None and frame.cut.covers(state.truncated_tx_id):
                    state.truncated_tx_id = None
            if state.converging_covered_by:
                if frame.full and all(frame.cut.covers(x) for x in state.converging_covered_by):
                    # It saw the schema change and the rows Postgres rewrote: the table holds them now.
                    log.info("%s converged: snapshot %s saw the schema change (%s)", frame.stream,
                             frame.snapshot_id, state.converging)
                    state.converging, state.converging_tx_id, state.converging_ddl_tx_id = None, None, None
                elif frame.full:  # its cut came before the change: the next one brings the rewritten rows
                    result.resnapshot_again = True
            if state.held_back_tx_id is not None:
                # CDC changes were held back while the table needed a re-snapshot: those the cut
                # did not see are missing still, and only another snapshot can bring them.
                result.resnapshot_again = not frame.cut.covers(state.held_back_tx_id)
                state.held_back_tx_id = None
            self._save_table(state)
            self.con.execute(f"DROP TABLE IF EXISTS {staging}")
            self.con.execute("UPDATE _mallard.snapshots SET status = 'merged', rows_staged = ?, rows_applied = ?, "
                             "rows_deleted = ?, merge_started_at = ?, read_finished_at = ?, "
                             "finished_at = ? WHERE snapshot_id = ?",
                             [result.staged, result.applied, result.deleted, now, frame.read_finished_at,
                              datetime.now(timezone.utc), frame.snapshot_id])
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.merged_snapshots.add(frame.snapshot_id)
        self._staging.pop(frame.snapshot_id, None)
        return result

    def _table_for_snapshot(self, frame: SnapshotFrame) -> TableState:
        """The table as the snapshot describes it: created, evolved, or rebuilt when it
        needed a re-snapshot or no longer fits the snapshot's columns."""
        schema = frame.schema
        state = self.tables.get(frame.stream)
        if state is not None and state.status == OK:
            state = self.ensure_table(schema)  # evolves in place, or marks it for a rebuild
            if state.status == OK:
                return state
        columns = [(c, t.duckdb) for c, t in zip(schema.columns, schema.types)]
        if state is not None and state.status == REFUSED and state.columns == columns \
                and state.key_columns == list(schema.key_columns) and self._exists(state.target):
            return state
        if state is not None and state.status == ABSENT:
            pass  # no table yet, but a truncate to remember (kept below)
        elif state is not None:
            if not frame.full:
                raise ValueError(f"{state.target} must be rebuilt ({state.reason or 'its columns changed'}) and a "
                                 f"subset cannot rebuild it: take a full snapshot (mallard resnapshot {frame.stream})")
            log.warning("%s: rebuilding %s from snapshot %s (%s)", frame.stream, state.target, frame.snapshot_id,
                        state.reason or "its columns changed")
            self.con.execute(f"DROP TABLE IF EXISTS {state.target}")
            self.con.execute(f"DROP TABLE IF EXISTS {tombstones_name(frame.stream)}")
        rebuilt = TableState(frame.stream, self.target_of(frame.stream), OK, None, columns, list(schema.key_columns),
                             unknown=[c for c, t in zip(schema.columns, schema.types) if not t.known],
                             truncated_tx_id=state.truncated_tx_id if state else None,
                             held_back_tx_id=state.held_back_tx_id if state else None,
                             converging=state.converging if state else None,
                             converging_tx_id=state.converging_tx_id if state else None,
                             converging_ddl_tx_id=state.converging_ddl_tx_id if state else None)
        self._create(rebuilt)
        self.tables[frame.stream] = rebuilt
        if rebuilt.status == OK:
            rebuilt.fingerprints.add(schema.fingerprint)
        return rebuilt

    def _replace_with_staging(self, state: TableState, frame: SnapshotFrame) -> bool:
        """A full snapshot of a table with nothing to merge with (a first copy, or a table
        without a primary key) becomes the table by a rename: no copy."""
        if not frame.full or state.columns != [(c, t.duckdb) for c, t in zip(frame.schema.columns, frame.schema.types)]:
            return False
        if state.truncated_tx_id is not None and not frame.cut.covers(state.truncated_tx_id):
            return False  # emptied by a truncate after the cut: the snapshot's rows are gone
        if self.con.execute(f"SELECT EXISTS (SELECT 1 FROM {state.target}) OR EXISTS "
                            f"(SELECT 1 FROM {tombstones_name(state.stream)})").fetchone()[0]:
            return False
        table = target_table(state.target)
        self.con.execute(f"DROP TABLE {state.target}")
        self.con.execute(f"ALTER TABLE {self.staging_name(frame)} RENAME TO {table}")
        if state.key_columns and not self._keyed_staging(frame):
            self.con.execute(f"ALTER TABLE {state.target} ADD PRIMARY KEY ({', '.join(q(c) for c in state.key_columns)})")
        return True

    def _exists(self, target: str) -> bool:
        schema, table = split_quoted(target)
        return bool(self.con.execute("SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?",
                                     [schema, table]).fetchone()[0])

    @staticmethod
    def _staged_columns(frame: SnapshotFrame) -> list[str]:
        """The staging table's columns: the snapshot's, then mallard's (already filled in)."""
        return [q(c) for c in [*frame.schema.columns, *(c for c, _ in META_COLUMNS)]]

    def _insert_snapshot_rows(self, state: TableState, frame: SnapshotFrame) -> int:
        names = ", ".join(self._staged_columns(frame))
        return self.con.execute(f"INSERT INTO {state.target} ({names}) SELECT {names} FROM {self.staging_name(frame)}"
                                ).fetchone()[0]

    def _rebuild_keyed(self, state: TableState, frame: SnapshotFrame, result: SnapshotResult) -> None:
        """The cut rule for a full snapshot, as a rewrite: the table's new content is the
        snapshot's rows, but where CDC wrote a key after the cut (a row or a deletion), plus
        the rows CDC wrote after the cut. Built by joins that spill to disk, then swapped in:
        a row-by-row upsert of millions of rows would not fit in memory."""
        target, cut, staging = state.target, frame.cut, self.staging_name(frame)
        keys = [q(c) for c in state.key_columns]
        newer = f"(t._mallard_source = 'cdc' AND {covered_sql(cut, 't._mallard_tx_id')} = false)"
        snapshot_columns = set(frame.schema.columns)
        types = dict(state.columns)
        names = [q(c) for c, _ in state.columns] + [q(c) for c, _ in META_COLUMNS]
        # A column the snapshot lacks (dropped in Postgres, kept here) keeps the value it had.
        lacking = [c for c, _ in state.columns if c not in snapshot_columns]
        # (named: CREATE TABLE AS names its columns after the first SELECT's expressions)
        from_snapshot = [f"x.{q(c)}" if c in snapshot_columns else f"k.{q(c)}::{types[c]} AS {q(c)}"
                         for c, _ in state.columns]
        from_snapshot += [f"x.{q(c)}" for c, _ in META_COLUMNS]
        with_kept = (f" LEFT JOIN {target} k ON {' AND '.join(f'k.{k} = x.{k}' for k in keys)}" if lacking else "")
        key_match = " AND ".join(f"t.{k} = x.{k}" for k in keys)
        tomb_match = " AND ".join(f"d.{k} = x.{k}" for k in keys)
        rebuilt = f"{target_schema(target)}.{q(STAGING_PREFIX + frame.snapshot_id + ':merged')}"
        snapshot_rows = "" if state.truncated_tx_id is not None and not cut.covers(state.truncated_tx_id) else f"""
            SELECT {', '.join(from_snapshot)} FROM {staging} x{with_kept}
             WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE {key_match} AND {newer})
               AND NOT EXISTS (SELECT 1 FROM {tombstones_name(state.stream)} d
                               WHERE {tomb_match} AND NOT {covered_sql(cut, 'd._mallard_tx_id')})
            UNION ALL"""  # else: truncated after the cut — every row the snapshot holds was removed since
        result.deleted = self.con.execute(
            f"SELECT count(*) FROM {target} t WHERE NOT {newer} AND NOT EXISTS "
            f"(SELECT 1 FROM {staging} x WHERE {key_match})").fetchone()[0]
        kept = self.con.execute(f"SELECT count(*) FROM {target} t WHERE {newer}").fetchone()[0]
        self.con.execute(f"""CREATE TABLE {rebuilt} AS {snapshot_rows}
            SELECT {', '.join(f't.{n}' for n in names)} FROM {target} t WHERE {newer}""")
        result.applied = self.con.execute(f"SELECT count(*) FROM {rebuilt}").fetchone()[0] - kept
        self.con.execute(f"DROP TABLE {target}")
        self.con.execute(f"ALTER TABLE {rebuilt} RENAME TO {target_table(target)}")
        self.con.execute(f"ALTER TABLE {target} ADD PRIMARY KEY ({', '.join(keys)})")

    def _swap_keyed(self, state: TableState, frame: SnapshotFrame, result: SnapshotResult) -> bool:
        """The cut rule for a full snapshot staged under its key (``_keyed_staging``): the
        staging table becomes the table's new content, fixed up with what CDC wrote after the
        cut (per key: its row wins, or its deletion stands), then swapped in. The cost is in
        the changes since the cut, not in the table's size, so CDC waits little for it. The
        same content as ``_rebuild_keyed``; False (nothing done) where that one must do it."""
        if not self._keyed_staging(frame) or state.key_columns != list(frame.schema.key_columns) \
                or state.columns != [(c, t.duckdb) for c, t in zip(frame.schema.columns, frame.schema.types)] \
                or (state.truncated_tx_id is not None and not frame.cut.covers(state.truncated_tx_id)):
            return False
        target, cut, staging = state.target, frame.cut, self.staging_name(frame)
        keys = [q(c) for c in state.key_columns]
        names = self._staged_columns(frame)
        newer = f"(t._mallard_source = 'cdc' AND {covered_sql(cut, 't._mallard_tx_id')} = false)"
        key_match = " AND ".join(f"t.{k} = x.{k}" for k in keys)
        tomb_match = " AND ".join(f"d.{k} = x.{k}" for k in keys)
        result.deleted = self.con.execute(
            f"SELECT count(*) FROM {target} t WHERE NOT {newer} AND NOT EXISTS "
            f"(SELECT 1 FROM {staging} x WHERE {key_match})").fetchone()[0]
        kept = self.con.execute(f"SELECT count(*) FROM {target} t WHERE {newer}").fetchone()[0]
        # Swapped first, fixed up after, under the table's own name: DuckDB before 2.0.1 logs a
        # delete or update made before a table's rename, in the same transaction, under the new
        # name, and its WAL then fails to replay ("Conflict on tuple deletion"), or replays into
        # the wrong table (duckdb/duckdb#22124; docs/applier.md).
        replaced = f"{target_schema(target)}.{q(STAGING_PREFIX + frame.snapshot_id + ':replaced')}"
        self.con.execute(f"ALTER TABLE {target} RENAME TO {target_table(replaced)}")
        self.con.execute(f"ALTER TABLE {staging} RENAME TO {target_table(target)}")
        # Deleted after the cut (and not written again since): the snapshot's row is gone.
        # Keys CDC wrote again are left to the upsert: DuckDB refuses a key deleted and
        # inserted again in one transaction.
        self.con.execute(f"""DELETE FROM {target} x
            WHERE EXISTS (SELECT 1 FROM {tombstones_name(state.stream)} d
                          WHERE {tomb_match} AND NOT {covered_sql(cut, 'd._mallard_tx_id')})
              AND NOT EXISTS (SELECT 1 FROM {replaced} t WHERE {key_match} AND {newer})""")
        if kept:  # written after the cut: CDC's row wins over the snapshot's
            updates = ", ".join(f"{c} = excluded.{c}" for c in names if c not in keys)
            self.con.execute(f"""INSERT INTO {target} ({', '.join(names)})
                SELECT {', '.join(f't.{c}' for c in names)} FROM {replaced} t WHERE {newer}
                ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}""")
        result.applied = self.con.execute(f"SELECT count(*) FROM {target}").fetchone()[0] - kept
        self.con.execute(f"DROP TABLE {replaced}")
        return True

    def _rebuild_keyless(self, state: TableState, frame: SnapshotFrame, result: SnapshotResult) -> None:
        """A table without a primary key, as a multiset at the snapshot's cut (keyless_rebuild_sql),
        built apart and swapped in, in the snapshot's transaction: a reader sees the old rows or
        the new, never a mix."""
        target, cut = state.target, frame.cut
        rebuilt = f"{target_schema(target)}.{q(STAGING_PREFIX + frame.snapshot_id + ':merged')}"
        truncated_after = state.truncated_tx_id is not None and not cut.covers(state.truncated_tx_id)
        newer = f"(t._mallard_source = 'cdc' AND {covered_sql(cut, 't._mallard_tx_id')} = false)"
        before, kept = self.con.execute(f"SELECT count(*), count(*) FILTER (WHERE {newer}) FROM {target} t").fetchone()
        self.con.execute(keyless_rebuild_sql(state, list(frame.schema.columns), self.staging_name(frame), rebuilt, cut,
                                             truncated_after))
        after = self.con.execute(f"SELECT count(*) FROM {rebuilt}").fetchone()[0]
        result.applied, result.deleted = after - kept, before - kept
        self.con.execute(f"DROP TABLE {target}")
        self.con.execute(f"ALTER TABLE {rebuilt} RENAME TO {target_table(target)}")

    def _merge_keyed(self, state: TableState, frame: SnapshotFrame, result: SnapshotResult, subset: str | None) -> None:
        """The cut rule, set-based. Per key, the state CDC wrote after the cut (a row, or a
        deletion) stays; anything older gives way to the snapshot's row, or, for a key the
        snapshot does not hold, is deleted (inside the snapshot's subset only)."""
        target, cut, staging = state.target, frame.cut, self.staging_name(frame)
        table_ref = target_table(target)
        keys = [q(c) for c in state.key_columns]
        newer_row = f"({table_ref}._mallard_source = 'cdc' AND {covered_sql(cut, f'{table_ref}._mallard_tx_id')} = false)"
        if state.truncated_tx_id is None or cut.covers(state.truncated_tx_id):
            names = self._staged_columns(frame)
            key_match = " AND ".join(f"d.{k} = x.{k}" for k in keys)
            updates = ", ".join(f"{c} = excluded.{c}" for c in names if c not in keys)
            result.applied = self.con.execute(
                f"""INSERT INTO {target} ({', '.join(names)})
                    SELECT {', '.join(f'x.{c}' for c in names)} FROM {staging} x
                    WHERE NOT EXISTS (SELECT 1 FROM {tombstones_name(state.stream)} d
                                      WHERE {key_match} AND NOT {covered_sql(cut, 'd._mallard_tx_id')})
                    ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}
                    WHERE NOT {newer_row}""").fetchone()[0]
        # else: truncated after the cut — every row the snapshot holds was removed since.
        if subset is None or frame.incremental:  # an incremental run holds only changed rows: it deletes nothing
            return
        gone = " AND ".join(f"x.{k} = {table_ref}.{k}" for k in keys)
        result.deleted = self.con.execute(
            f"""DELETE FROM {target} WHERE NOT EXISTS (SELECT 1 FROM {staging} x WHERE {gone})
                AND NOT {newer_row}{subset}""").fetchone()[0]

    def _subset_sql(self, state: TableState, where: str) -> str | None:
        """The subset filter as DuckDB evaluates it on the table, or None (and no
        end-of-snapshot delete) when DuckDB cannot evaluate that Postgres SQL."""
        if not self._exists(state.target):
            return ""
        try:
            self.con.execute(f"SELECT count(*) FROM {state.target} WHERE ({where}) LIMIT 0")
        except duckdb.Error as e:
            log.warning("%s: the snapshot's filter %r does not run on DuckDB (%s); rows the subset no longer "
                        "holds are not deleted", state.stream, where, str(e).splitlines()[0])
            return None
        return f" AND ({where})"

