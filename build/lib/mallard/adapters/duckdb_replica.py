"""The DuckDB replica: tables mirrored from Postgres plus mallard's bookkeeping.

Naming convention (documented in the README):
- A Postgres table ``public.t`` is ``main.t`` in DuckDB; ``s.t`` is ``s.t``.
- Every replicated row carries ``_mallard_position`` (HUGEINT: commit LSN << 32 |
  event order — where in Postgres' commit order the write happened),
  ``_mallard_tx_id`` (Postgres xid; NULL for a snapshot row), ``_mallard_source``
  ('cdc' or 'snapshot'), ``_mallard_snapshot_id`` (the snapshot that wrote it),
  ``_mallard_committed_at`` (commit time in Postgres, or the snapshot's start) and
  ``_mallard_applied_at``.
- Schema ``_mallard`` holds ``tables`` (per stream: status, columns, dropped and
  unknown columns, why a re-snapshot is needed, the last full snapshot's cut),
  ``progress`` (the last applied Postgres transaction: commit LSN, xid, commit
  time), ``recent_transactions``, ``snapshots`` (every snapshot seen and what came
  of it), ``"deleted:<stream>"`` (keys CDC deleted, with the xid: a snapshot taken
  before the delete must not bring them back). ``"_mallard_staging:<snapshot id>"``,
  beside the table, holds the rows of a snapshot whose end has not been merged yet.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import duckdb
import pyarrow as pa

from mallard.adapters.duckdb_native import NativeConnection, NativeUnavailable
from mallard.core.changes import PoisonMessage, TableSchema
from mallard.core.cut import Cut
from mallard.core.merge import TableChanges
from mallard.core import read_query
from mallard.core.arrow_rows import arrow_type
from mallard.core.pgtypes import ColumnType
from mallard.core.schema_diff import diff
from mallard.core.snapshots import SnapshotFrame
from mallard.core.sql import quote_ident as q
from mallard.core.sql import quote_literal, sql_int, sql_text, sql_time
from mallard.core.transactions import Transaction

log = logging.getLogger("mallard.duckdb")

META_COLUMNS = [
    ("_mallard_position", "HUGEINT"),
    ("_mallard_tx_id", "BIGINT"),
    ("_mallard_source", "VARCHAR"),
    ("_mallard_committed_at", "TIMESTAMPTZ"),
    ("_mallard_applied_at", "TIMESTAMPTZ"),
    ("_mallard_snapshot_id", "VARCHAR"),
]
_HALF, _EPOCH = 1 << 31, 1 << 32
RECENT_TRANSACTIONS = 100_000

OK, NEEDS_RESNAPSHOT, REFUSED = "ok", "needs_resnapshot", "refused"
ABSENT = "absent"
"""A table DuckDB does not have yet, truncated by CDC: a snapshot whose cut came before
the truncate must not bring its rows back."""


def target_name(stream: str) -> str:
    schema, _, table = stream.partition(".")
    return f"{q('main' if schema == 'public' else schema)}.{q(table)}"


def value_sql(ct: ColumnType, ref: str) -> str:
    """SQL turning a loaded transport column into the DuckDB value."""
    return ref if ct.sql is None else ct.sql.format(ref)


def tombstones_name(stream: str) -> str:
    return f"_mallard.{q('deleted:' + stream)}"


STAGING_PREFIX = "_mallard_staging:"

RESERVED_PREFIX = "_mallard_"
"""Mallard's own columns (META_COLUMNS, and ``_mallard_deleted_at`` of the deleted keys) and any
it may add later: a source column may not use it."""
RESERVED_REASON = "columns named like mallard's own:"


def reserved_columns(columns: list[str]) -> list[str]:
    """Source columns that would collide with mallard's (DuckDB matches names case-insensitively)."""
    return [c for c in columns if c.lower().startswith(RESERVED_PREFIX)]





def covered_sql(cut: Cut, tx: str) -> str:
    """SQL: whether the transaction whose 32-bit xid is ``tx`` is visible to ``cut``
    (mallard.core.cut.Cut.covers, with the xid widened to the cut's epoch)."""
    base = cut.xmax & ~0xFFFFFFFF
    w = (f"(CASE WHEN {base} + {tx} > {cut.xmax + _HALF} THEN {base} + {tx} - {_EPOCH} "
         f"WHEN {base} + {tx} < {cut.xmax - _HALF} THEN {base} + {tx} + {_EPOCH} ELSE {base} + {tx} END)")
    in_progress = f" AND {w} NOT IN ({', '.join(str(x) for x in sorted(cut.xip))})" if cut.xip else ""
    return f"({tx} IS NOT NULL AND ({w} < {cut.xmin} OR ({w} < {cut.xmax}{in_progress})))"


def position_arrays(positions: list[int]) -> dict[str, pa.Array]:
    """Positions exceed 64 bits: they travel as two halves (see ``position_sql``)."""
    return {"pos_hi": pa.array([p >> 32 for p in positions], pa.int64()),
            "pos_lo": pa.array([p & 0xFFFFFFFF for p in positions], pa.int64())}


def position_sql(alias: str) -> str:
    return f"(({alias}.pos_hi::HUGEINT << 32) + {alias}.pos_lo)"


def _interrupt(cur: duckdb.DuckDBPyConnection) -> None:
    try:
        cur.interrupt()
    except duckdb.Error:
        pass  # the read ended (and its cursor closed) meanwhile


class Script:
    """The statements of one DuckDB transaction, and the Arrow tables they read."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.scans: list[tuple[str, pa.Table]] = []

    def add(self, sql: str) -> None:
        self.statements.append(sql)

    def scan(self, table: pa.Table) -> str:
        """The name one statement reads ``table`` by (once: a name per reading)."""
        name = f"_mallard_scan_{len(self.scans)}"
        self.scans.append((name, table))
        return name


@dataclass
class PreparedBatch:
    script: Script
    stats: ApplyStats


@dataclass
class TableState:
    stream: str
    target: str
    status: str
    reason: str | None
    columns: list[tuple[str, str]]
    key_columns: list[str]
    dropped: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    fingerprints: set[str] = field(default_factory=set)
    snapshot_cut: Cut | None = None
    """Cut of the last full snapshot merged: CDC events it covers are older than the table."""
    truncated_tx_id: int | None = None
    """xid of the last truncate CDC applied."""
    held_back_tx_id: int | None = None
    """xid of the last CDC transaction held back while the table needed a re-snapshot."""


@dataclass
class SnapshotResult:
    staged: int = 0
    applied: int = 0
    deleted: int = 0
    status: str = "merged"
    resnapshot_again: bool = False
    """The table still misses changes (held back before the snapshot's cut... or after it):
    another snapshot is needed."""


@dataclass
class ApplyStats:
    transactions: int = 0
    events: int = 0
    events_by_stream: dict[str, int] = field(default_factory=dict)
    upserts: int = 0
    deletes: int = 0
    truncates: int = 0
    skipped: int = 0
    covered: int = 0
    dead: int = 0
    needs_resnapshot: list[str] = field(default_factory=list)
    """Streams this batch found needing a re-snapshot (a schema change that cannot be applied in place)."""


class DuckDBReplica:
    def __init__(self, path: str, memory_limit: str | None = None, targets: dict[str, str] | None = None,
                 native: bool = True, threads: int = 0):
        self.path = path
        self.targets = targets or {}
        """stream -> DuckDB table ('table' in main, or 'schema.table') where the replication config names one."""
        self.con = duckdb.connect(path)
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        self.native: NativeConnection | None = None
        """Where batches are applied, if DuckDB's C API can be had (see duckdb_native); else the client does it."""
        if native:
            try:
                self.native = NativeConnection(self.con, path)
            except NativeUnavailable as e:
                log.warning("%s; batches are applied through DuckDB's Python client (slower under load)", e)
        if memory_limit:
            self.con.execute(f"SET memory_limit = '{memory_limit}'")
        self.tables: dict[str, TableState] = {}
        self.confined = False
        """Whether ``confine`` ran: ``query`` serves only a confined instance."""
        self.needing_resnapshot: list[str] = []
        self._staging: dict[str, str] = {}
        self._refused_snapshots: dict[str, str] = {}
        """snapshot_id -> why its stream is refused: nothing of it is staged or merged."""
        """snapshot_id -> its staging table, fixed when it begins (the merge may create or rebuild the table)."""
        self._bootstrap()

    # -- bookkeeping ---------------------------------------------------------------

    def _bootstrap(self) -> None:
        self.con.execute("CREATE SCHEMA IF NOT EXISTS _mallard")
        self.con.execute("""CREATE TABLE IF NOT EXISTS _mallard.tables (
            stream VARCHAR PRIMARY KEY, target VARCHAR, status VARCHAR, reason VARCHAR,
            columns JSON, key_columns JSON, dropped_columns JSON, unknown_columns JSON, updated_at TIMESTAMPTZ)""")
        self.con.execute("""CREATE TABLE IF NOT EXISTS _mallard.progress (
            id INTEGER PRIMARY KEY, commit_lsn BIGINT, tx_id BIGINT, committed_at TIMESTAMPTZ,
            applied_at TIMESTAMPTZ, transactions BIGINT, events BIGINT)""")
        self.con.execute("""CREATE TABLE IF NOT EXISTS _mallard.recent_transactions (
            tx_id BIGINT PRIMARY KEY, commit_lsn BIGINT)""")
        for column, duck_type in (("snapshot_cut", "JSON"), ("truncated_tx_id", "BIGINT"), ("held_back_tx_id", "BIGINT")):
            self.con.execute(f"ALTER TABLE _mallard.tables ADD COLUMN IF NOT EXISTS {column} {duck_type}")
        self.con.execute("""CREATE TABLE IF NOT EXISTS _mallard.snapshots (
            snapshot_id VARCHAR PRIMARY KEY, stream VARCHAR, request_id VARCHAR, where_sql VARCHAR, cut VARCHAR,
            started_at TIMESTAMPTZ, status VARCHAR, reason VARCHAR, rows_staged BIGINT, rows_applied BIGINT,
            rows_deleted BIGINT, finished_at TIMESTAMPTZ)""")
        for row in self.con.execute(
            "SELECT stream, target, status, reason, columns, key_columns, dropped_columns, unknown_columns, "
            "snapshot_cut, truncated_tx_id, held_back_tx_id FROM _mallard.tables"
        ).fetchall():
            cut = json.loads(row[8]) if row[8] else None
            self.tables[row[0]] = TableState(
                row[0], row[1], row[2], row[3], [tuple(c) for c in json.loads(row[4])], json.loads(row[5]),
                json.loads(row[6] or "[]"), json.loads(row[7] or "[]"),
                snapshot_cut=Cut(cut["xmin"], cut["xmax"], frozenset(cut["xip"])) if cut else None,
                truncated_tx_id=row[9], held_back_tx_id=row[10])
        existing = {r[0] for r in self.con.execute(
            "SELECT '\"' || schema_name || '\".\"' || table_name || '\"' FROM duckdb_tables()").fetchall()}
        for state in self.tables.values():
            if state.target in existing:  # a replica from before snapshots
                self.con.execute(f"ALTER TABLE {state.target} ADD COLUMN IF NOT EXISTS _mallard_snapshot_id VARCHAR")
                if state.key_columns:
                    self._create_tombstones(state)
        # Staging of snapshots whose end was not merged before a stop: the snapshot topic's
        # offsets were held at their begin, so they are re-read and staged again.
        for schema, name in self.con.execute("SELECT schema_name, table_name FROM duckdb_tables() "
                                             "WHERE starts_with(table_name, ?)", [STAGING_PREFIX]).fetchall():
            self.con.execute(f"DROP TABLE {q(schema)}.{q(name)}")
        self.con.execute("UPDATE _mallard.snapshots SET status = 'interrupted' WHERE status = 'staging'")
        self.merged_snapshots = {r[0] for r in self.con.execute(
            "SELECT snapshot_id FROM _mallard.snapshots WHERE status = 'merged'").fetchall()}

    def applied_position(self) -> tuple[int, dict[int, int]]:
        """(commit LSN of the last applied transaction, recent tx_id -> commit LSN)."""
        row = self.con.execute("SELECT commit_lsn FROM _mallard.progress WHERE id = 1").fetchone()
        recent = dict(self.con.execute(
            "SELECT tx_id, commit_lsn FROM _mallard.recent_transactions ORDER BY commit_lsn").fetchall())
        return (row[0] if row else 0), recent

    def progress(self) -> dict[str, Any] | None:
        cur = self.con.cursor()  # its own connection: callable from any thread
        try:
            row = cur.execute("SELECT commit_lsn, tx_id, committed_at, applied_at, transactions, events "
                              "FROM _mallard.progress WHERE id = 1").fetchone()
        finally:
            cur.close()
        if not row:
            return None
        lsn = row[0]
        return {"commit_lsn": f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}", "tx_id": row[1],
                "committed_at": row[2].isoformat() if row[2] else None,
                "applied_at": row[3].isoformat() if row[3] else None, "transactions": row[4], "events": row[5]}

    def _save_table(self, t: TableState) -> None:
        self.con.execute(self._save_table_sql(t))

    @staticmethod
    def _save_table_sql(t: TableState) -> str:
        cut = t.snapshot_cut
        values = [t.stream, t.target, t.status, t.reason, json.dumps(t.columns), json.dumps(t.key_columns),
                  json.dumps(t.dropped), json.dumps(t.unknown)]
        return ("INSERT OR REPLACE INTO _mallard.tables (stream, target, status, reason, columns, key_columns, "
                "dropped_columns, unknown_columns, updated_at, snapshot_cut, truncated_tx_id, held_back_tx_id) "
                f"VALUES ({', '.join(sql_text(v) for v in values)}, now(), "
                f"{sql_text(json.dumps({'xmin': cut.xmin, 'xmax': cut.xmax, 'xip': sorted(cut.xip)}) if cut else None)}, "
                f"{sql_int(t.truncated_tx_id)}, {sql_int(t.held_back_tx_id)})")

    def snapshot_cuts(self) -> dict[str, Cut]:
        """Per stream, the cut of the last full snapshot merged (see merge.reduce)."""
        return {s: t.snapshot_cut for s, t in self.tables.items() if t.snapshot_cut is not None and t.status == OK}

    def table_report(self) -> list[dict[str, Any]]:
        return [{"stream": t.stream, "target": t.target, "status": t.status, "reason": t.reason,
                 "dropped_columns": t.dropped, "unknown_type_columns": t.unknown}
                for t in self.tables.values() if t.status != ABSENT]

    # -- tables ----------------------------------------------------------------------

    def ensure_table(self, schema: TableSchema) -> TableState:
        """Create the table on its first event, or evolve it; returns its state."""
        state = self.tables.get(schema.stream)
        if not schema.key_known:  # a truncate: it changes no schema
            return state or TableState(schema.stream, self.target_of(schema.stream), ABSENT, None, [], [])
        if self._settled(schema):
            return state
        clash = reserved_columns(schema.columns)
        if clash:
            return self._refuse_reserved(schema, state, clash)
        if state is not None and state.status == REFUSED and (state.reason or "").startswith(RESERVED_REASON):
            # The column was renamed in Postgres: changes were skipped meanwhile, a snapshot rebuilds the table.
            state.status, state.reason = NEEDS_RESNAPSHOT, "its columns no longer use mallard's reserved names"
            self.needing_resnapshot.append(schema.stream)
            log.warning("%s: %s; re-snapshot requested", schema.stream, state.reason)
            self._save_table(state)
            return state
        fingerprint = schema.fingerprint
        columns = [(c, t.duckdb) for c, t in zip(schema.columns, schema.types)]
        unknown = [c for c, t in zip(schema.columns, schema.types) if not t.known]
        target = self.target_of(schema.stream)
        if state is None or state.status == ABSENT:
            state = self.tables[schema.stream] = TableState(
                schema.stream, target, OK, None, columns, list(schema.key_columns), unknown=unknown,
                truncated_tx_id=state.truncated_tx_id if state else None)
            if not schema.key_columns:
                state.status, state.reason = REFUSED, (
                    "no primary key: CDC needs one to apply changes per row; replicate this table "
                    "by full refresh instead (mode: full-refresh)")
                log.error("%s refused for CDC: %s", schema.stream, state.reason)
            else:
                self._create(state)
            if unknown:
                log.warning("%s: columns of unknown type kept as text: %s", schema.stream, ", ".join(unknown))
            self._save_table(state)
        elif state.status == OK:
            change = diff(state.columns, state.key_columns, columns, list(schema.key_columns))
            if change.incompatible:
                state.status, state.reason = NEEDS_RESNAPSHOT, change.incompatible
                self.needing_resnapshot.append(schema.stream)
                log.error("%s needs a re-snapshot: %s; its changes are held back until it is rebuilt",
                          schema.stream, change.incompatible)
            else:
                for name, duck_type in change.add:
                    self.con.execute(f"ALTER TABLE {target} ADD COLUMN {q(name)} {duck_type}")
                    state.columns.append((name, duck_type))
                    log.info("%s: added column %s %s", schema.stream, name, duck_type)
                for name, old, new in change.widen:
                    self.con.execute(f"ALTER TABLE {target} ALTER COLUMN {q(name)} TYPE {new}")
                    state.columns = [(c, new if c == name else t) for c, t in state.columns]
                    log.info("%s: widened column %s %s -> %s", schema.stream, name, old, new)
                newly_dropped = [c for c in change.dropped if c not in state.dropped]
                if newly_dropped:
                    log.warning("%s: columns dropped in Postgres, kept in DuckDB (NULL from now on): %s",
                                schema.stream, ", ".join(newly_dropped))
                state.dropped = sorted((set(state.dropped) | set(change.dropped)) - set(dict(columns)))
                state.unknown = sorted(set(state.unknown) | set(unknown))
            self._save_table(state)
        if state.status == OK:
            state.fingerprints.add(fingerprint)
        return state

    def _refuse_reserved(self, schema: TableSchema, state: TableState | None, clash: list[str]) -> TableState:
        """A source column named like mallard's own (``_mallard_position``...): the table cannot
        hold both. That one stream is refused (its changes skipped), the others go on."""
        reason = (f"{RESERVED_REASON} {', '.join(clash)} (mallard keeps its own columns under the prefix "
                  f"{RESERVED_PREFIX}): rename the column in Postgres (the table is then re-snapshotted), "
                  "or leave the table out of the replication config")
        if state is not None and state.status == REFUSED and state.reason == reason:
            return state
        if state is None or state.status == ABSENT:
            state = self.tables[schema.stream] = TableState(
                schema.stream, self.target_of(schema.stream), REFUSED, reason,
                [(c, t.duckdb) for c, t in zip(schema.columns, schema.types)], list(schema.key_columns),
                truncated_tx_id=state.truncated_tx_id if state else None)
        else:  # its table keeps the columns and rows it had
            state.status, state.reason = REFUSED, reason
        log.error("%s refused: %s", schema.stream, reason)
        self._save_table(state)
        return state

    def _create(self, state: TableState) -> None:
        """The table (with its primary key, if it has one) and its deleted keys."""
        schema = state.target.split(".")[0]
        self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        cols = ", ".join(f"{q(c)} {t}" for c, t in [*state.columns, *META_COLUMNS])
        key = ", ".join(q(c) for c in state.key_columns)
        self.con.execute(f"CREATE TABLE IF NOT EXISTS {state.target} ({cols}{f', PRIMARY KEY ({key})' if key else ''})")
        if key:
            self._create_tombstones(state)
        log.info("created %s for %s (%d columns, key %s)", state.target, state.stream, len(state.columns), key or "none")

    def _create_tombstones(self, state: TableState) -> None:
        types = dict(state.columns)
        cols = ", ".join(f"{q(c)} {types[c]}" for c in state.key_columns)
        self.con.execute(f"""CREATE TABLE IF NOT EXISTS {tombstones_name(state.stream)} ({cols},
            _mallard_tx_id BIGINT, _mallard_position HUGEINT, _mallard_deleted_at TIMESTAMPTZ,
            PRIMARY KEY ({', '.join(q(c) for c in state.key_columns)}))""")

    # -- applying --------------------------------------------------------------------

    def apply(self, steps: list[dict[str, TableChanges]], transactions: list[Transaction]) -> ApplyStats:
        """Apply whole transactions in one DuckDB transaction, with the position they reach."""
        return self.commit(self.prepare(steps, transactions))

    def _settled(self, schema: TableSchema) -> bool:
        """Whether ``schema`` is one its table was already checked against (nothing to do)."""
        state = self.tables.get(schema.stream)
        return state is not None and schema.fingerprint in state.fingerprints

    def changes_schema(self, steps: list[dict[str, TableChanges]]) -> bool:
        """Whether preparing ``steps`` would create or alter a table (statements of their own)."""
        return any(changes.schema.key_known and not self._settled(changes.schema)
                   for step in steps for changes in step.values())

    def commit(self, batch: PreparedBatch) -> ApplyStats:
        """Run a prepared batch: one DuckDB transaction."""
        self._run(batch.script)
        return batch.stats

    def prepare(self, steps: list[dict[str, TableChanges]], transactions: list[Transaction]) -> PreparedBatch:
        """The DuckDB transaction that applies whole transactions, with the position they reach.
        A table's creation or schema change is applied here, on its own (applying it again is a no-op)."""
        stats = ApplyStats(transactions=len(transactions), dead=sum(t.dead for t in transactions))
        now = datetime.now(timezone.utc)
        script = Script()
        for step in steps:
            for stream, changes in step.items():
                state = self.ensure_table(changes.schema)
                stats.events += changes.events
                stats.events_by_stream[stream] = stats.events_by_stream.get(stream, 0) + changes.events
                stats.covered += changes.covered
                if state.status == ABSENT and changes.truncated:
                    state.truncated_tx_id = changes.truncated_tx_id
                    self.tables[stream] = state
                    script.add(self._save_table_sql(state))
                if state.status != OK:
                    stats.skipped += changes.events
                    if state.status == NEEDS_RESNAPSHOT and changes.last_tx_id is not None:
                        state.held_back_tx_id = changes.last_tx_id
                        script.add(self._save_table_sql(state))
                    continue
                self._apply_table(script, state, changes, now, stats)
        last = transactions[-1]
        committed_at = "NULL" if last.committed_at_ms is None else f"make_timestamp({int(last.committed_at_ms)} * 1000)::TIMESTAMPTZ"
        script.add(f"""INSERT OR REPLACE INTO _mallard.progress
            SELECT 1, {sql_int(last.commit_lsn)}, {sql_int(last.tx_id)}, {committed_at}, {sql_time(now)},
                   coalesce((SELECT transactions FROM _mallard.progress WHERE id = 1), 0) + {len(transactions)},
                   coalesce((SELECT events FROM _mallard.progress WHERE id = 1), 0) + {stats.events}""")
        recent = script.scan(pa.table({"tx_id": pa.array([t.tx_id for t in transactions], pa.int64()),
                                       "commit_lsn": pa.array([t.commit_lsn for t in transactions], pa.int64())}))
        script.add(f"INSERT OR REPLACE INTO _mallard.recent_transactions SELECT * FROM {recent}")
        stats.needs_resnapshot, self.needing_resnapshot = self.needing_resnapshot, []
        return PreparedBatch(script, stats)

    def _run(self, script: Script) -> None:
        """One DuckDB transaction: through the C API where it can be had (one call, the GIL free)."""
        if self.native is not None:
            self.native.run_transaction(script.statements, script.scans)
            return
        for name, table in script.scans:
            self.con.register(name, table)
        try:
            self.con.execute("BEGIN TRANSACTION")
            try:
                for sql in script.statements:
                    self.con.execute(sql)
                self.con.execute("COMMIT")
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
        finally:
            for name, _ in script.scans:
                self.con.unregister(name)

    def prune_recent(self) -> None:
        self.con.execute(f"""DELETE FROM _mallard.recent_transactions WHERE commit_lsn <
            (SELECT min(commit_lsn) FROM (SELECT commit_lsn FROM _mallard.recent_transactions
             ORDER BY commit_lsn DESC LIMIT {RECENT_TRANSACTIONS}))""")

    def _apply_table(self, script: Script, state: TableState, changes: TableChanges, now: datetime,
                     stats: ApplyStats) -> None:
        target, schema = state.target, changes.schema
        if changes.truncated:
            script.add(f"DELETE FROM {target}")
            state.truncated_tx_id = changes.truncated_tx_id
            script.add(self._save_table_sql(state))
            stats.truncates += 1
        upserts = [s for s in changes.states.values() if s.row is not None]
        deleted = [(k, s) for k, s in changes.states.items() if s.row is None]
        if upserts:
            self._upsert(script, state, schema, upserts, now)
            stats.upserts += len(upserts)
        if deleted:
            key_types = [schema.types[i] for i in schema.key_indexes]
            data = {f"k{j}": pa.array([k[j] for k, _ in deleted], arrow_type(t)) for j, t in enumerate(key_types)}
            data.update(position_arrays([s.position for _, s in deleted]))
            data["tx_id"] = pa.array([s.tx_id for _, s in deleted], pa.int64())
            table = pa.table(data)
            keys = [value_sql(t, f"d.k{j}") for j, t in enumerate(key_types)]
            match = " AND ".join(f"{target}.{q(schema.columns[i])} = {k}" for i, k in zip(schema.key_indexes, keys))
            script.add(f"""DELETE FROM {target} USING {script.scan(table)} d WHERE {match}
                AND {target}._mallard_position < {position_sql('d')}""")
            # Remembered so that a snapshot taken before the delete cannot bring the key back.
            script.add(f"""INSERT OR REPLACE INTO {tombstones_name(state.stream)}
                SELECT {', '.join(keys)}, d.tx_id, {position_sql('d')}, {sql_time(now)} FROM {script.scan(table)} d""")
            stats.deletes += len(deleted)

    def _upsert(self, script: Script, state: TableState, schema: TableSchema, states: list, now: datetime) -> None:
        target = state.target
        columns = list(zip(*(s.row for s in states)))
        data: dict[str, pa.Array] = {}
        for i, (name, ct) in enumerate(zip(schema.columns, schema.types)):
            data[f"c{i}"] = pa.array(columns[i], arrow_type(ct))
        data.update(position_arrays([s.position for s in states]))
        data["tx_id"] = pa.array([s.tx_id for s in states], pa.int64())
        data["committed_at"] = pa.array([s.committed_at_ms for s in states], pa.timestamp("ms", tz="UTC"))
        toasted = sorted({i for s in states for i in s.unavailable})
        for i in toasted:  # keep the stored value where Debezium did not send one
            data[f"u{i}"] = pa.array([i in s.unavailable for s in states], pa.bool_())
        if toasted:  # ... from the row's own key, or the old key of a primary-key update
            for j, i in enumerate(schema.key_indexes):
                data[f"s{j}"] = pa.array([s.row[i] if s.source_key is None else s.source_key[j] for s in states],
                                         arrow_type(schema.types[i]))
        exprs = []
        for i, (name, ct) in enumerate(zip(schema.columns, schema.types)):
            e = value_sql(ct, f"b.c{i}")
            if i in toasted:
                e = f"CASE WHEN b.u{i} THEN t.{q(name)} ELSE {e} END"
            exprs.append(e)
        exprs += [position_sql("b"), "b.tx_id", "'cdc'", "b.committed_at", sql_time(now), "NULL"]
        names = [*schema.columns, *(c for c, _ in META_COLUMNS)]
        join = ""
        if toasted:
            on = " AND ".join(f"t.{q(schema.columns[i])} = {value_sql(schema.types[i], f'b.s{j}')}"
                              for j, i in enumerate(schema.key_indexes))
            join = f"LEFT JOIN {target} t ON {on}"
        updates = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in names if c not in schema.key_columns)
        table_ref = target.split(".")[-1]
        script.add(
            f"""INSERT INTO {target} ({', '.join(q(c) for c in names)})
                SELECT {', '.join(exprs)} FROM {script.scan(pa.table(data))} b {join}
                ON CONFLICT ({', '.join(q(c) for c in schema.key_columns)}) DO UPDATE SET {updates}
                WHERE excluded._mallard_position > {table_ref}._mallard_position""")

    def target_of(self, stream: str) -> str:
        """The quoted DuckDB table of a new stream: the config's name for it, else main.<t> / <s>.<t>."""
        name = self.targets.get(stream)
        if name is None:
            return target_name(stream)
        schema, _, table = name.rpartition(".")
        return f"{q(schema or 'main')}.{q(table)}"

    def staging_name(self, frame: SnapshotFrame) -> str:
        """Beside the target table (a first copy becomes the table by a rename); chosen once,
        when the snapshot begins."""
        name = self._staging.get(frame.snapshot_id)
        if name is None:
            state = self.tables.get(frame.stream)
            target = state.target if state is not None and state.status != ABSENT else self.target_of(frame.stream)
            name = self._staging[frame.snapshot_id] = f"{target.split('.')[0]}.{q(STAGING_PREFIX + frame.snapshot_id)}"
        return name

    # -- snapshots -------------------------------------------------------------------

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
        if not clash:
            self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {staging.split('.')[0]}")
            self.con.execute(f"DROP TABLE IF EXISTS {staging}")
            self.con.execute(f"CREATE TABLE {staging} ({cols})")
        cut = frame.cut
        self.con.execute(
            "INSERT OR REPLACE INTO _mallard.snapshots VALUES (?, ?, ?, ?, ?, ?, 'staging', NULL, 0, NULL, NULL, NULL)",
            [frame.snapshot_id, frame.stream, frame.request_id, frame.where,
             f"{cut.xmin}:{cut.xmax}:{','.join(str(x) for x in sorted(cut.xip))}", frame.started_at])

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
            self.con.execute("INSERT INTO _mallard.snapshots VALUES (?, ?, ?, ?, NULL, ?, 'abandoned', ?, 0, NULL, "
                             "NULL, now())", [frame.snapshot_id, frame.stream, frame.request_id, frame.where,
                                              frame.started_at, reason])

    def finish_snapshot(self, frame: SnapshotFrame) -> SnapshotResult:
        """Merge a complete snapshot into its table with the cut rule, in one DuckDB
        transaction: a reader sees the table before or after, never in between."""
        if frame.snapshot_id in self.merged_snapshots:
            return SnapshotResult(status="already merged")
        if frame.snapshot_id in self._refused_snapshots:
            raise ValueError(f"{frame.stream} refused: {self._refused_snapshots.pop(frame.snapshot_id)}")
        staging = self.staging_name(frame)
        now = datetime.now(timezone.utc)
        state = self.tables.get(frame.stream)
        # Checked outside the transaction: a failed statement would abort it.
        subset = self._subset_sql(state, frame.where) if frame.where is not None and state is not None else ""
        self.con.execute("BEGIN TRANSACTION")
        try:
            result = SnapshotResult(staged=self.con.execute(f"SELECT count(*) FROM {staging}").fetchone()[0])
            state = self._table_for_snapshot(frame)
            if self._replace_with_staging(state, frame):
                result.applied = result.staged
            elif not state.key_columns:
                # Full refresh only: the snapshot is the table's new content, whole.
                self.con.execute(f"DELETE FROM {state.target}")
                result.applied = self._insert_snapshot_rows(state, frame)
            elif frame.full:
                self._rebuild_keyed(state, frame, result)
            else:
                self._merge_keyed(state, frame, result, subset)
            if frame.full and state.key_columns:
                state.snapshot_cut = frame.cut
                self.con.execute(f"DELETE FROM {tombstones_name(state.stream)} "
                                 f"WHERE {covered_sql(frame.cut, '_mallard_tx_id')}")
                if state.truncated_tx_id is not None and frame.cut.covers(state.truncated_tx_id):
                    state.truncated_tx_id = None
            if state.held_back_tx_id is not None:
                # CDC changes were held back while the table needed a re-snapshot: those the cut
                # did not see are missing still, and only another snapshot can bring them.
                result.resnapshot_again = not frame.cut.covers(state.held_back_tx_id)
                state.held_back_tx_id = None
            self._save_table(state)
            self.con.execute(f"DROP TABLE IF EXISTS {staging}")
            self.con.execute("UPDATE _mallard.snapshots SET status = 'merged', rows_staged = ?, rows_applied = ?, "
                             "rows_deleted = ?, finished_at = ? WHERE snapshot_id = ?",
                             [result.staged, result.applied, result.deleted, now, frame.snapshot_id])
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
        if state is not None and state.status == OK and state.key_columns:
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
                             held_back_tx_id=state.held_back_tx_id if state else None)
        if not schema.key_columns:
            rebuilt.status, rebuilt.reason = REFUSED, (
                "no primary key: replicated by full refresh only (each snapshot replaces the table); "
                "CDC changes are not applied")
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
        if state.key_columns and self.con.execute(
                f"SELECT EXISTS (SELECT 1 FROM {state.target}) OR EXISTS "
                f"(SELECT 1 FROM {tombstones_name(state.stream)})").fetchone()[0]:
            return False
        table = state.target.split(".", 1)[1]
        self.con.execute(f"DROP TABLE {state.target}")
        self.con.execute(f"ALTER TABLE {self.staging_name(frame)} RENAME TO {table}")
        if state.key_columns:
            self.con.execute(f"ALTER TABLE {state.target} ADD PRIMARY KEY ({', '.join(q(c) for c in state.key_columns)})")
        return True

    def _exists(self, target: str) -> bool:
        schema, table = (part.strip('"') for part in target.split(".", 1))
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
        from_snapshot = [f"x.{q(c)}" if c in snapshot_columns else f"NULL::{types[c]}" for c, _ in state.columns]
        from_snapshot += [f"x.{q(c)}" for c, _ in META_COLUMNS]
        key_match = " AND ".join(f"t.{k} = x.{k}" for k in keys)
        tomb_match = " AND ".join(f"d.{k} = x.{k}" for k in keys)
        rebuilt = f"{target.split('.')[0]}.{q(STAGING_PREFIX + frame.snapshot_id + ':merged')}"
        snapshot_rows = "" if state.truncated_tx_id is not None and not cut.covers(state.truncated_tx_id) else f"""
            SELECT {', '.join(from_snapshot)} FROM {staging} x
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
        self.con.execute(f"ALTER TABLE {rebuilt} RENAME TO {target.split('.', 1)[1]}")
        self.con.execute(f"ALTER TABLE {target} ADD PRIMARY KEY ({', '.join(keys)})")

    def _merge_keyed(self, state: TableState, frame: SnapshotFrame, result: SnapshotResult, subset: str | None) -> None:
        """The cut rule, set-based. Per key, the state CDC wrote after the cut (a row, or a
        deletion) stays; anything older gives way to the snapshot's row, or, for a key the
        snapshot does not hold, is deleted (inside the snapshot's subset only)."""
        target, cut, staging = state.target, frame.cut, self.staging_name(frame)
        table_ref = target.split(".")[-1]
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

    # -- the read-only copy ----------------------------------------------------------

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

    # -- reading -------------------------------------------------------------------

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

    def close(self) -> None:
        if self.native is not None:
            self.native.close()
        self.con.close()
