"""The DuckDB replica: tables mirrored from Postgres plus mallard's bookkeeping.

Naming convention (documented in the README):
- A Postgres table ``public.t`` is ``main.t`` in DuckDB; ``s.t`` is ``s.t``.
- Every replicated row carries ``_mallard_position`` (HUGEINT: commit LSN << 32 |
  event order — where in Postgres' commit order the write happened),
  ``_mallard_tx_id`` (Postgres xid), ``_mallard_source`` ('cdc'),
  ``_mallard_committed_at`` (commit time in Postgres) and ``_mallard_applied_at``.
- Schema ``_mallard`` holds ``tables`` (per stream: status, columns, dropped and
  unknown columns, why a re-snapshot is needed), ``progress`` (the last applied
  Postgres transaction: commit LSN, xid, commit time) and ``recent_transactions``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import duckdb
import pyarrow as pa

from mallard.core.changes import TableSchema
from mallard.core.merge import TableChanges
from mallard.core.pgtypes import ColumnType
from mallard.core.schema_diff import diff
from mallard.core.transactions import Transaction

log = logging.getLogger("mallard.duckdb")

META_COLUMNS = [
    ("_mallard_position", "HUGEINT"),
    ("_mallard_tx_id", "BIGINT"),
    ("_mallard_source", "VARCHAR"),
    ("_mallard_committed_at", "TIMESTAMPTZ"),
    ("_mallard_applied_at", "TIMESTAMPTZ"),
]
RECENT_TRANSACTIONS = 100_000

OK, NEEDS_RESNAPSHOT, REFUSED = "ok", "needs_resnapshot", "refused"
ABSENT = "absent"  # a truncate of a table DuckDB never had: nothing to do


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def target_name(stream: str) -> str:
    schema, _, table = stream.partition(".")
    return f"{q('main' if schema == 'public' else schema)}.{q(table)}"


def value_sql(ct: ColumnType, ref: str) -> str:
    """SQL turning a loaded transport column into the DuckDB value."""
    return ref if ct.sql is None else ct.sql.format(ref)


def position_arrays(positions: list[int]) -> dict[str, pa.Array]:
    """Positions exceed 64 bits: they travel as two halves (see ``position_sql``)."""
    return {"pos_hi": pa.array([p >> 32 for p in positions], pa.int64()),
            "pos_lo": pa.array([p & 0xFFFFFFFF for p in positions], pa.int64())}


def position_sql(alias: str) -> str:
    return f"(({alias}.pos_hi::HUGEINT << 32) + {alias}.pos_lo)"


def arrow_type(ct: ColumnType) -> pa.DataType:
    t = ct.transport
    if t.startswith("list:"):
        return pa.list_(arrow_type(ColumnType("", t[5:], decode=None, precision=ct.precision)))
    if t == "decimal":
        return pa.decimal128(*ct.precision)
    return _ARROW[t]


_ARROW = {
    "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "float32": pa.float32(), "float64": pa.float64(), "bool": pa.bool_(), "string": pa.string(),
    "binary": pa.binary(), "date32": pa.date32(), "time_ms": pa.time32("ms"), "time_us": pa.time64("us"),
    "time_ns": pa.time64("ns"), "ts_ms": pa.timestamp("ms"), "ts_us": pa.timestamp("us"),
    "ts_ns": pa.timestamp("ns"), "tstz_us": pa.timestamp("us", tz="UTC"),
    "interval": pa.month_day_nano_interval(),
}


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


@dataclass
class ApplyStats:
    transactions: int = 0
    events: int = 0
    upserts: int = 0
    deletes: int = 0
    truncates: int = 0
    skipped: int = 0
    dead: int = 0


class DuckDBReplica:
    def __init__(self, path: str, memory_limit: str | None = None):
        self.path = path
        self.con = duckdb.connect(path)
        if memory_limit:
            self.con.execute(f"SET memory_limit = '{memory_limit}'")
        self.tables: dict[str, TableState] = {}
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
        for row in self.con.execute(
            "SELECT stream, target, status, reason, columns, key_columns, dropped_columns, unknown_columns FROM _mallard.tables"
        ).fetchall():
            self.tables[row[0]] = TableState(row[0], row[1], row[2], row[3], [tuple(c) for c in json.loads(row[4])],
                                             json.loads(row[5]), json.loads(row[6] or "[]"), json.loads(row[7] or "[]"))

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
        self.con.execute(
            "INSERT OR REPLACE INTO _mallard.tables VALUES (?, ?, ?, ?, ?, ?, ?, ?, now())",
            [t.stream, t.target, t.status, t.reason, json.dumps(t.columns), json.dumps(t.key_columns),
             json.dumps(t.dropped), json.dumps(t.unknown)],
        )

    def table_report(self) -> list[dict[str, Any]]:
        return [{"stream": t.stream, "target": t.target, "status": t.status, "reason": t.reason,
                 "dropped_columns": t.dropped, "unknown_type_columns": t.unknown} for t in self.tables.values()]

    # -- tables ----------------------------------------------------------------------

    def ensure_table(self, schema: TableSchema) -> TableState:
        """Create the table on its first event, or evolve it; returns its state."""
        state = self.tables.get(schema.stream)
        if not schema.key_known:  # a truncate: it changes no schema
            return state or TableState(schema.stream, target_name(schema.stream), ABSENT, None, [], [])
        fingerprint = schema.fingerprint
        if state is not None and fingerprint in state.fingerprints:
            return state
        columns = [(c, t.duckdb) for c, t in zip(schema.columns, schema.types)]
        unknown = [c for c, t in zip(schema.columns, schema.types) if not t.known]
        target = target_name(schema.stream)
        if state is None:
            state = self.tables[schema.stream] = TableState(schema.stream, target, OK, None, columns,
                                                            list(schema.key_columns), unknown=unknown)
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

    def _create(self, state: TableState) -> None:
        schema = state.target.split(".")[0]
        self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        cols = ", ".join(f"{q(c)} {t}" for c, t in [*state.columns, *META_COLUMNS])
        key = ", ".join(q(c) for c in state.key_columns)
        self.con.execute(f"CREATE TABLE IF NOT EXISTS {state.target} ({cols}, PRIMARY KEY ({key}))")
        log.info("created %s for %s (%d columns, key %s)", state.target, state.stream, len(state.columns), key)

    # -- applying --------------------------------------------------------------------

    def apply(self, steps: list[dict[str, TableChanges]], transactions: list[Transaction]) -> ApplyStats:
        """Apply whole transactions in one DuckDB transaction, with the position they reach."""
        stats = ApplyStats(transactions=len(transactions), dead=sum(t.dead for t in transactions))
        now = datetime.now(timezone.utc)
        self.con.execute("BEGIN TRANSACTION")
        try:
            for step in steps:
                for stream, changes in step.items():
                    state = self.ensure_table(changes.schema)
                    stats.events += changes.events
                    if state.status != OK:
                        stats.skipped += changes.events
                        continue
                    self._apply_table(state, changes, now, stats)
            last = transactions[-1]
            self.con.execute(
                """INSERT OR REPLACE INTO _mallard.progress
                   SELECT 1, ?, ?, make_timestamp(?::BIGINT * 1000)::TIMESTAMPTZ, ?,
                          coalesce((SELECT transactions FROM _mallard.progress WHERE id = 1), 0) + ?,
                          coalesce((SELECT events FROM _mallard.progress WHERE id = 1), 0) + ?""",
                [last.commit_lsn, last.tx_id, last.committed_at_ms, now, len(transactions), stats.events],
            )
            recent = pa.table({"tx_id": [t.tx_id for t in transactions], "commit_lsn": [t.commit_lsn for t in transactions]})
            self.con.register("_mallard_recent", recent)
            self.con.execute("INSERT OR REPLACE INTO _mallard.recent_transactions SELECT * FROM _mallard_recent")
            self.con.unregister("_mallard_recent")
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return stats

    def prune_recent(self) -> None:
        self.con.execute(f"""DELETE FROM _mallard.recent_transactions WHERE commit_lsn <
            (SELECT min(commit_lsn) FROM (SELECT commit_lsn FROM _mallard.recent_transactions
             ORDER BY commit_lsn DESC LIMIT {RECENT_TRANSACTIONS}))""")

    def _apply_table(self, state: TableState, changes: TableChanges, now: datetime, stats: ApplyStats) -> None:
        target, schema = state.target, changes.schema
        if changes.truncated:
            self.con.execute(f"DELETE FROM {target}")
            stats.truncates += 1
        upserts = [(k, s) for k, s in changes.states.items() if s.row is not None]
        deletes = [(k, s) for k, s in changes.states.items() if s.row is None]
        key_idx = schema.key_indexes
        if upserts:
            self._upsert(state, schema, [s for _, s in upserts], now)
            stats.upserts += len(upserts)
        if deletes:
            key_types = [schema.types[i] for i in key_idx]
            data = {f"k{j}": pa.array([k[j] for k, _ in deletes], arrow_type(t)) for j, t in enumerate(key_types)}
            data.update(position_arrays([s.position for _, s in deletes]))
            self.con.register("_mallard_deletes", pa.table(data))
            match = " AND ".join(f"{target}.{q(schema.columns[i])} = {value_sql(t, f'd.k{j}')}"
                                 for j, (i, t) in enumerate(zip(key_idx, key_types)))
            self.con.execute(f"""DELETE FROM {target} USING _mallard_deletes d WHERE {match}
                AND {target}._mallard_position < {position_sql('d')}""")
            self.con.unregister("_mallard_deletes")
            stats.deletes += len(deletes)

    def _upsert(self, state: TableState, schema: TableSchema, states: list, now: datetime) -> None:
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
        self.con.register("_mallard_upserts", pa.table(data))
        exprs = []
        for i, (name, ct) in enumerate(zip(schema.columns, schema.types)):
            e = value_sql(ct, f"b.c{i}")
            if i in toasted:
                e = f"CASE WHEN b.u{i} THEN t.{q(name)} ELSE {e} END"
            exprs.append(e)
        exprs += [position_sql("b"), "b.tx_id", "'cdc'", "b.committed_at", "?::TIMESTAMPTZ"]
        names = [*schema.columns, *(c for c, _ in META_COLUMNS)]
        key_cols = [q(c) for c in schema.key_columns]
        join = ""
        if toasted:
            on = " AND ".join(f"t.{q(schema.columns[i])} = {exprs[i]}" for i in schema.key_indexes)
            join = f"LEFT JOIN {target} t ON {on}"
        updates = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in names if c not in schema.key_columns)
        table_ref = target.split(".")[-1]
        self.con.execute(
            f"""INSERT INTO {target} ({', '.join(q(c) for c in names)})
                SELECT {', '.join(exprs)} FROM _mallard_upserts b {join}
                ON CONFLICT ({', '.join(key_cols)}) DO UPDATE SET {updates}
                WHERE excluded._mallard_position > {table_ref}._mallard_position""",
            [now],
        )
        self.con.unregister("_mallard_upserts")

    # -- reading -------------------------------------------------------------------

    def query(self, sql: str, limit: int = 10_000) -> dict[str, Any]:
        """Run a read on a cursor of its own: it sees only committed transactions."""
        cur = self.con.cursor()
        try:
            cur.execute("BEGIN TRANSACTION")
            result = cur.execute(sql)
            columns = [d[0] for d in result.description or []]
            rows = result.fetchmany(limit)
            return {"columns": columns, "rows": rows}
        finally:
            cur.execute("ROLLBACK")
            cur.close()

    def close(self) -> None:
        self.con.close()
