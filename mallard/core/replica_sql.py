"""The replica's SQL, built without DuckDB: names, the bookkeeping DDL, the statements a
batch of change events becomes, the cut rule as SQL. Pure: the adapters
(mallard/adapters/duckdb_*.py) run what is built here.

Naming convention (docs/applier.md):
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
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa

from mallard.core.arrow_rows import arrow_type
from mallard.core.changes import TableSchema
from mallard.core.cut import Cut
from mallard.core.merge import TableChanges
from mallard.core.names import parse_stream, split_quoted
from mallard.core.pgtypes import ColumnType
from mallard.core.sql import quote_ident as q
from mallard.core.sql import sql_int, sql_text, sql_time
from mallard.core.transactions import Transaction

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
    schema, table = parse_stream(stream)
    return f"{q('main' if schema == 'public' else schema)}.{q(table)}"


def target_schema(target: str) -> str:
    """The quoted schema of a quoted ``"schema"."table"`` (names may hold dots and quotes)."""
    return q(split_quoted(target)[0])


def target_table(target: str) -> str:
    """The quoted table of a quoted ``"schema"."table"``, without its schema."""
    return q(split_quoted(target)[1])


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
    converging: str | None = None
    """Why existing rows may differ from Postgres' (a schema change that rewrites rows without
    row events): the table is re-snapshotted, its changes still applied, until then."""
    converging_tx_id: int | None = None
    """xid of a CDC transaction after that schema change: a full snapshot whose cut covers it
    holds the rewritten rows, and ends the convergence."""
    converging_ddl_tx_id: int | None = None
    """xid of the last DDL that signalled a rewrite (mallard/core/schema_signal.py): the cut
    must cover it too. Kept apart from ``converging_tx_id``: the signal and the row events
    come on different topics, so neither can tell which of the two committed later."""

    @property
    def converging_covered_by(self) -> list[int]:
        """The transactions a full snapshot's cut must cover to end the convergence."""
        return [x for x in (self.converging_tx_id, self.converging_ddl_tx_id) if x is not None]


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



BOOKKEEPING_DDL = (
    "CREATE SCHEMA IF NOT EXISTS _mallard",
    """CREATE TABLE IF NOT EXISTS _mallard.tables (
            stream VARCHAR PRIMARY KEY, target VARCHAR, status VARCHAR, reason VARCHAR,
            columns JSON, key_columns JSON, dropped_columns JSON, unknown_columns JSON, updated_at TIMESTAMPTZ)""",
    """CREATE TABLE IF NOT EXISTS _mallard.progress (
            id INTEGER PRIMARY KEY, commit_lsn BIGINT, tx_id BIGINT, committed_at TIMESTAMPTZ,
            applied_at TIMESTAMPTZ, transactions BIGINT, events BIGINT)""",
    """CREATE TABLE IF NOT EXISTS _mallard.recent_transactions (
            tx_id BIGINT PRIMARY KEY, commit_lsn BIGINT)""",
    *(f"ALTER TABLE _mallard.tables ADD COLUMN IF NOT EXISTS {column} {duck_type}"
      for column, duck_type in (("snapshot_cut", "JSON"), ("truncated_tx_id", "BIGINT"), ("held_back_tx_id", "BIGINT"),
                                ("converging", "VARCHAR"), ("converging_tx_id", "BIGINT"),
                                ("converging_ddl_tx_id", "BIGINT"))),
    """CREATE TABLE IF NOT EXISTS _mallard.snapshots (
            snapshot_id VARCHAR PRIMARY KEY, stream VARCHAR, request_id VARCHAR, where_sql VARCHAR, cut VARCHAR,
            started_at TIMESTAMPTZ, status VARCHAR, reason VARCHAR, rows_staged BIGINT, rows_applied BIGINT,
            rows_deleted BIGINT, finished_at TIMESTAMPTZ)""",
    # A snapshot's phases: request -> read (started_at .. read_finished_at, by the snapshotter)
    # -> transfer (.. merge_started_at, when its end reached DuckDB) -> merge (.. finished_at).
    *(f"ALTER TABLE _mallard.snapshots ADD COLUMN IF NOT EXISTS {column} TIMESTAMPTZ"
      for column in ("requested_at", "read_finished_at", "merge_started_at")),
)
"""The bookkeeping tables, created (or brought up to date) when the replica opens."""


def save_table_sql(t: TableState) -> str:
    cut = t.snapshot_cut
    values = [t.stream, t.target, t.status, t.reason, json.dumps(t.columns), json.dumps(t.key_columns),
              json.dumps(t.dropped), json.dumps(t.unknown)]
    return ("INSERT OR REPLACE INTO _mallard.tables (stream, target, status, reason, columns, key_columns, "
            "dropped_columns, unknown_columns, updated_at, snapshot_cut, truncated_tx_id, held_back_tx_id, "
            "converging, converging_tx_id, converging_ddl_tx_id) "
            f"VALUES ({', '.join(sql_text(v) for v in values)}, now(), "
            f"{sql_text(json.dumps({'xmin': cut.xmin, 'xmax': cut.xmax, 'xip': sorted(cut.xip)}) if cut else None)}, "
            f"{sql_int(t.truncated_tx_id)}, {sql_int(t.held_back_tx_id)}, {sql_text(t.converging)}, "
            f"{sql_int(t.converging_tx_id)}, {sql_int(t.converging_ddl_tx_id)})")


def create_table_sql(state: TableState) -> list[str]:
    """The table (with its primary key, if it has one), and its deleted keys (or rows)."""
    cols = ", ".join(f"{q(c)} {t}" for c, t in [*state.columns, *META_COLUMNS])
    key = ", ".join(q(c) for c in state.key_columns)
    return [f"CREATE SCHEMA IF NOT EXISTS {target_schema(state.target)}",
            f"CREATE TABLE IF NOT EXISTS {state.target} ({cols}{f', PRIMARY KEY ({key})' if key else ''})",
            create_tombstones_sql(state)]


KEYLESS_LOG_COLUMNS = [("_mallard_tx_id", "BIGINT"), ("_mallard_position", "HUGEINT"),
                       ("_mallard_deleted_at", "TIMESTAMPTZ"), ("_mallard_removed_source", "VARCHAR"),
                       ("_mallard_removed_tx_id", "BIGINT")]
"""A table without a primary key keeps, per row an update or delete removed: the row's
columns, the remover's xid and position, and what wrote the row it removed (its source and
xid; NULL: no row matched). A full snapshot merged later subtracts those its cut did not see
from its rows, unless the removed row was itself written after the cut (docs/applier.md)."""


def create_tombstones_sql(state: TableState) -> str:
    types = dict(state.columns)
    if not state.key_columns:
        cols = ", ".join(f"{q(c)} {t}" for c, t in [*state.columns, *KEYLESS_LOG_COLUMNS])
        return f"CREATE TABLE IF NOT EXISTS {tombstones_name(state.stream)} ({cols})"
    cols = ", ".join(f"{q(c)} {types[c]}" for c in state.key_columns)
    return f"""CREATE TABLE IF NOT EXISTS {tombstones_name(state.stream)} ({cols},
            _mallard_tx_id BIGINT, _mallard_position HUGEINT, _mallard_deleted_at TIMESTAMPTZ,
            PRIMARY KEY ({', '.join(q(c) for c in state.key_columns)}))"""


def prune_recent_sql() -> str:
    return f"""DELETE FROM _mallard.recent_transactions WHERE commit_lsn <
            (SELECT min(commit_lsn) FROM (SELECT commit_lsn FROM _mallard.recent_transactions
             ORDER BY commit_lsn DESC LIMIT {RECENT_TRANSACTIONS}))"""


# -- a batch of change events as statements ----------------------------------------------

def add_progress(script: Script, transactions: list[Transaction], events: int, now: datetime) -> None:
    """The position the batch reaches, and its transactions (replay detection)."""
    last = transactions[-1]
    committed_at = "NULL" if last.committed_at_ms is None else f"make_timestamp({int(last.committed_at_ms)} * 1000)::TIMESTAMPTZ"
    script.add(f"""INSERT OR REPLACE INTO _mallard.progress
            SELECT 1, {sql_int(last.commit_lsn)}, {sql_int(last.tx_id)}, {committed_at}, {sql_time(now)},
                   coalesce((SELECT transactions FROM _mallard.progress WHERE id = 1), 0) + {len(transactions)},
                   coalesce((SELECT events FROM _mallard.progress WHERE id = 1), 0) + {events}""")
    recent = script.scan(pa.table({"tx_id": pa.array([t.tx_id for t in transactions], pa.int64()),
                                   "commit_lsn": pa.array([t.commit_lsn for t in transactions], pa.int64())}))
    script.add(f"INSERT OR REPLACE INTO _mallard.recent_transactions SELECT * FROM {recent}")


def add_table_changes(script: Script, state: TableState, changes: TableChanges, now: datetime,
                      stats: ApplyStats) -> None:
    """One table's share of a batch: a truncate, then one upsert and one delete, set-based."""
    target, schema = state.target, changes.schema
    if changes.truncated:
        script.add(f"DELETE FROM {target}")
        if changes.keyless:  # the rows removed before it no longer matter to any snapshot
            script.add(f"DELETE FROM {tombstones_name(state.stream)}")
        state.truncated_tx_id = changes.truncated_tx_id
        script.add(save_table_sql(state))
        stats.truncates += 1
    if changes.keyless:
        add_keyless_changes(script, state, changes, now, stats)
        return
    upserts = [s for s in changes.states.values() if s.row is not None]
    deleted = [(k, s) for k, s in changes.states.items() if s.row is None]
    if upserts:
        add_upsert(script, state, schema, upserts, now)
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


def add_upsert(script: Script, state: TableState, schema: TableSchema, states: list, now: datetime) -> None:
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
    table_ref = target_table(target)
    script.add(
        f"""INSERT INTO {target} ({', '.join(q(c) for c in names)})
            SELECT {', '.join(exprs)} FROM {script.scan(pa.table(data))} b {join}
            ON CONFLICT ({', '.join(q(c) for c in schema.key_columns)}) DO UPDATE SET {updates}
            WHERE excluded._mallard_position > {table_ref}._mallard_position""")


# -- tables without a primary key: a multiset ------------------------------------------------

def same_row_sql(columns: list[str], left: str, right: str) -> str:
    """Two rows are the same when every column is (NULL equal to NULL)."""
    return " AND ".join(f"{left}.{q(c)} IS NOT DISTINCT FROM {right}.{q(c)}" for c in columns) or "TRUE"


def _row_arrays(schema: TableSchema, rows: list[tuple]) -> dict[str, pa.Array]:
    columns = list(zip(*rows)) if rows else [[] for _ in schema.columns]
    return {f"c{i}": pa.array(columns[i], arrow_type(ct)) for i, ct in enumerate(schema.types)}


def add_keyless_changes(script: Script, state: TableState, changes: TableChanges, now: datetime,
                        stats: ApplyStats) -> None:
    """A table without a primary key, a multiset: each update or delete removes ONE row equal
    to its before image (the newest such row), logged with what wrote that row; then the
    batch's inserts (and updates' after images) are appended."""
    target, schema, log = state.target, changes.schema, tombstones_name(state.stream)
    names = list(schema.columns)
    cols = ", ".join(q(c) for c in names)
    stored = [r for r in changes.removed if r.matched_tx_id is None]
    in_batch = [r for r in changes.removed if r.matched_tx_id is not None]
    if stored:
        data = _row_arrays(schema, [r.row for r in stored])
        data.update(position_arrays([r.position for r in stored]))
        data["tx_id"] = pa.array([r.tx_id for r in stored], pa.int64())
        table = pa.table(data)

        # Each removal paired with the stored row it removes (by rank among equal rows: the
        # newest first), or with none; worked out once, before anything is removed.
        scan = script.scan(table)
        pairs = f"temp.{q('_mallard_pairs' + scan.removeprefix('_mallard_scan'))}"
        values = ", ".join(f"{value_sql(ct, f's.c{i}')} AS {q(c)}" for i, (c, ct) in enumerate(zip(names, schema.types)))
        t_cols = ", ".join(f"t.{q(c)}" for c in names)
        script.add(f"""CREATE TEMP TABLE {pairs} AS
            WITH d AS MATERIALIZED (SELECT *, row_number() OVER (PARTITION BY {cols} ORDER BY pos) AS rn FROM
                     (SELECT {values}, {position_sql('s')} AS pos, s.tx_id FROM {scan} s)),
                 r AS (SELECT t.rowid AS rid, {t_cols}, t._mallard_source AS src, t._mallard_tx_id AS txid,
                              row_number() OVER (PARTITION BY {t_cols} ORDER BY t._mallard_position DESC, t.rowid DESC) AS rn
                       FROM {target} t WHERE EXISTS (SELECT 1 FROM d WHERE {same_row_sql(names, 't', 'd')}))
            SELECT {', '.join(f'd.{q(c)}' for c in names)}, d.pos, d.tx_id, r.rid, r.src, r.txid
            FROM d LEFT JOIN r ON {same_row_sql(names, 'd', 'r')} AND d.rn = r.rn""")
        script.add(f"""INSERT INTO {log} ({cols}, _mallard_tx_id, _mallard_position, _mallard_deleted_at,
                _mallard_removed_source, _mallard_removed_tx_id)
            SELECT {cols}, tx_id, pos, {sql_time(now)}, src, txid FROM {pairs}""")
        script.add(f"DELETE FROM {target} WHERE rowid IN (SELECT rid FROM {pairs} WHERE rid IS NOT NULL)")
        script.add(f"DROP TABLE {pairs}")
    if in_batch:
        data = _row_arrays(schema, [r.row for r in in_batch])
        data.update(position_arrays([r.position for r in in_batch]))
        data["tx_id"] = pa.array([r.tx_id for r in in_batch], pa.int64())
        data["matched"] = pa.array([r.matched_tx_id for r in in_batch], pa.int64())
        values = ", ".join(value_sql(ct, f"b.c{i}") for i, ct in enumerate(schema.types))
        script.add(f"""INSERT INTO {log} ({cols}, _mallard_tx_id, _mallard_position, _mallard_deleted_at,
                _mallard_removed_source, _mallard_removed_tx_id)
            SELECT {values}, b.tx_id, {position_sql('b')}, {sql_time(now)}, 'cdc', b.matched
            FROM {script.scan(pa.table(data))} b""")
    stats.deletes += len(changes.removed)
    if changes.inserted:
        rows = changes.inserted
        data = _row_arrays(schema, [s.row for s in rows])
        data.update(position_arrays([s.position for s in rows]))
        data["tx_id"] = pa.array([s.tx_id for s in rows], pa.int64())
        data["committed_at"] = pa.array([s.committed_at_ms for s in rows], pa.timestamp("ms", tz="UTC"))
        values = ", ".join(value_sql(ct, f"b.c{i}") for i, ct in enumerate(schema.types))
        meta = ", ".join(q(c) for c, _ in META_COLUMNS)
        script.add(f"""INSERT INTO {target} ({cols}, {meta})
            SELECT {values}, {position_sql('b')}, b.tx_id, 'cdc', b.committed_at, {sql_time(now)}, NULL
            FROM {script.scan(pa.table(data))} b""")
        stats.upserts += len(rows)


def keyless_rebuild_sql(state: TableState, snapshot_columns: list[str], staging: str, rebuilt: str, cut: Cut,
                        truncated_after_cut: bool) -> str:
    """A full snapshot of a table without a primary key, merged at its cut, as a multiset:
    the snapshot's rows, plus the rows CDC wrote after the cut, minus the rows removed after
    the cut that were older than it (one per removal; the removal of a row itself written
    after the cut is already in the table). ``truncated_after_cut``: the snapshot's rows are
    all gone."""
    types = dict(state.columns)
    snapshot = set(snapshot_columns)
    names = [q(c) for c, _ in state.columns] + [q(c) for c, _ in META_COLUMNS]
    from_snapshot = [f"x.{q(c)}" if c in snapshot else f"NULL::{types[c]}" for c, _ in state.columns]
    from_snapshot += [f"x.{q(c)}" for c, _ in META_COLUMNS]
    newer = f"(t._mallard_source = 'cdc' AND {covered_sql(cut, 't._mallard_tx_id')} = false)"
    pool = f"SELECT {', '.join(f't.{n}' for n in names)} FROM {state.target} t WHERE {newer}"
    if not truncated_after_cut:
        pool = f"SELECT {', '.join(from_snapshot)} FROM {staging} x UNION ALL {pool}"
    cols = ", ".join(q(c) for c in snapshot_columns)
    older_removed = (f"NOT {covered_sql(cut, 'd._mallard_tx_id')} AND NOT (coalesce(d._mallard_removed_source, '') = "
                     f"'cdc' AND NOT {covered_sql(cut, 'd._mallard_removed_tx_id')})")
    gone = ("(SELECT NULL::BIGINT AS n WHERE FALSE)" if truncated_after_cut else
            f"(SELECT {cols}, count(*) AS n FROM {tombstones_name(state.stream)} d WHERE {older_removed} GROUP BY ALL)")
    match = same_row_sql(snapshot_columns, "p", "g") if not truncated_after_cut else "FALSE"
    return f"""CREATE TABLE {rebuilt} AS SELECT {', '.join(f'p.{n}' for n in names)} FROM
        (SELECT *, row_number() OVER (PARTITION BY {cols} ORDER BY _mallard_position) AS _mallard_rank
         FROM ({pool})) p LEFT JOIN {gone} g ON {match}
        WHERE p._mallard_rank > coalesce(g.n, 0)"""
