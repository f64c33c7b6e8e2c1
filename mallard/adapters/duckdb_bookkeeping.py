"""The replica's bookkeeping: ``_mallard``'s tables, each stream's table and its state
(created on its first event, evolved by schema changes, refused or marked for a
re-snapshot), the position applied so far. The SQL is built in mallard/core/replica_sql.py."""
from __future__ import annotations

import json
import logging
from typing import Any

import duckdb

from mallard.core.changes import TableSchema
from mallard.core.cut import Cut
from mallard.core.replica_sql import (ABSENT, BOOKKEEPING_DDL, NEEDS_RESNAPSHOT, OK, REFUSED, RESERVED_PREFIX,
                                      RESERVED_REASON, STAGING_PREFIX, TableState, create_table_sql,
                                      create_tombstones_sql, prune_recent_sql, reserved_columns, save_table_sql,
                                      target_name, tombstones_name)
from mallard.core.names import parse_table, split_quoted
from mallard.core.schema_diff import diff
from mallard.core.sql import quote_ident as q

log = logging.getLogger("mallard.duckdb")

NO_KEY_REASON = "no primary key:"
"""How versions before tables without a primary key were replicated began the reason they were refused."""


class Bookkeeping:
    """Mixed into DuckDBReplica: needs ``con``, ``targets``, ``tables``, ``needing_resnapshot``."""

    con: duckdb.DuckDBPyConnection
    targets: dict[str, str]
    tables: dict[str, TableState]
    needing_resnapshot: list[str]

    def _bootstrap(self) -> None:
        for sql in BOOKKEEPING_DDL:
            self.con.execute(sql)
        for row in self.con.execute(
            "SELECT stream, target, status, reason, columns, key_columns, dropped_columns, unknown_columns, "
            "snapshot_cut, truncated_tx_id, held_back_tx_id, converging, converging_tx_id, converging_ddl_tx_id "
            "FROM _mallard.tables"
        ).fetchall():
            cut = json.loads(row[8]) if row[8] else None
            self.tables[row[0]] = TableState(
                row[0], row[1], row[2], row[3], [tuple(c) for c in json.loads(row[4])], json.loads(row[5]),
                json.loads(row[6] or "[]"), json.loads(row[7] or "[]"),
                snapshot_cut=Cut(cut["xmin"], cut["xmax"], frozenset(cut["xip"])) if cut else None,
                truncated_tx_id=row[9], held_back_tx_id=row[10], converging=row[11], converging_tx_id=row[12],
                converging_ddl_tx_id=row[13])
            if row[11] is not None and row[2] == OK:
                # Converging when the applier stopped: its snapshot may never have come. Asked again.
                self.needing_resnapshot.append(row[0])
        existing = {r[0] for r in self.con.execute(
            "SELECT '\"' || schema_name || '\".\"' || table_name || '\"' FROM duckdb_tables()").fetchall()}
        for state in self.tables.values():
            if state.target in existing:  # a replica from before snapshots
                self.con.execute(f"ALTER TABLE {state.target} ADD COLUMN IF NOT EXISTS _mallard_snapshot_id VARCHAR")
                if state.key_columns or state.status == OK:
                    self._create_tombstones(state)
            if state.status == REFUSED and not state.key_columns and (state.reason or "").startswith(NO_KEY_REASON):
                # Refused by an earlier version (no primary key): now replicated as a multiset.
                state.status, state.reason = NEEDS_RESNAPSHOT, "no primary key: now replicated as a multiset"
                self.needing_resnapshot.append(state.stream)
                self._save_table(state)
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
        self.con.execute(save_table_sql(t))

    def snapshot_cuts(self) -> dict[str, Cut]:
        """Per stream, the cut of the last full snapshot merged (see merge.reduce)."""
        return {s: t.snapshot_cut for s, t in self.tables.items() if t.snapshot_cut is not None and t.status == OK}

    def table_report(self) -> list[dict[str, Any]]:
        return [{"stream": t.stream, "target": t.target, "status": t.status, "reason": t.reason,
                 "dropped_columns": t.dropped, "unknown_type_columns": t.unknown, "converging": t.converging}
                for t in self.tables.values() if t.status != ABSENT]

    # -- tables ----------------------------------------------------------------------

    def ensure_table(self, schema: TableSchema, tx_id: int | None = None) -> TableState:
        """Create the table on its first event, or evolve it; returns its state. ``tx_id``: a
        CDC transaction with ``schema`` (None: a snapshot's schema, which needs no convergence:
        the snapshot brings every row as it is now)."""
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
            self._create(state)
            if unknown:
                log.warning("%s: columns of unknown type kept as text: %s", schema.stream, ", ".join(unknown))
            self._save_table(state)
        elif state.status == OK:
            change = diff(state.columns, state.key_columns, columns, list(schema.key_columns), state.dropped)
            if change.incompatible:
                state.status, state.reason = NEEDS_RESNAPSHOT, change.incompatible
                if state.converging is None:
                    self.needing_resnapshot.append(schema.stream)
                # else: a snapshot is asked for already; one whose cut came before this change is
                # followed by another (the changes held back from now on are not covered by it).
                log.error("%s needs a re-snapshot: %s; its changes are held back until it is rebuilt",
                          schema.stream, change.incompatible)
            else:
                keyless_log = [] if state.key_columns else [tombstones_name(state.stream)]  # rows, not keys
                for name, duck_type in change.add:
                    for table in (target, *keyless_log):
                        self.con.execute(f"ALTER TABLE {table} ADD COLUMN {q(name)} {duck_type}")
                    state.columns.append((name, duck_type))
                    log.info("%s: added column %s %s", schema.stream, name, duck_type)
                for old, new in change.rename:
                    for table in (target, *keyless_log):
                        self.con.execute(f"ALTER TABLE {table} RENAME COLUMN {q(old)} TO {q(new)}")
                    state.columns = [(new if c == old else c, t) for c, t in state.columns]
                    state.unknown = [new if c == old else c for c in state.unknown]
                    log.info("%s: renamed column %s -> %s", schema.stream, old, new)
                if change.rename:  # an earlier layout seen again (a column renamed back) is compared anew
                    state.fingerprints.clear()
                for name, old, new in change.widen:
                    for table in (target, *keyless_log):
                        self.con.execute(f"ALTER TABLE {table} ALTER COLUMN {q(name)} TYPE {new}")
                    state.columns = [(c, new if c == name else t) for c, t in state.columns]
                    log.info("%s: widened column %s %s -> %s", schema.stream, name, old, new)
                newly_dropped = [c for c in change.dropped if c not in state.dropped]
                if newly_dropped:
                    log.warning("%s: columns dropped in Postgres, kept in DuckDB (NULL from now on): %s",
                                schema.stream, ", ".join(newly_dropped))
                state.dropped = sorted((set(state.dropped) | set(change.dropped)) - set(dict(columns)))
                state.unknown = sorted(set(state.unknown) | set(unknown))
                rewrite = change.rewrite_reason
                if rewrite and tx_id is not None and self._converging(state, rewrite, tx_id, signalled=False):
                    self.needing_resnapshot.append(schema.stream)
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
        for sql in create_table_sql(state):
            self.con.execute(sql)
        log.info("created %s for %s (%d columns, key %s)", state.target, state.stream, len(state.columns),
                 ", ".join(q(c) for c in state.key_columns) or "none")

    def _create_tombstones(self, state: TableState) -> None:
        self.con.execute(create_tombstones_sql(state))

    def _settled(self, schema: TableSchema) -> bool:
        """Whether ``schema`` is one its table was already checked against (nothing to do)."""
        state = self.tables.get(schema.stream)
        return state is not None and schema.fingerprint in state.fingerprints

    def target_of(self, stream: str) -> str:
        """The quoted DuckDB table of a new stream: the config's name for it, else main.<t> / <s>.<t>."""
        name = self.targets.get(stream)
        if name is None:
            return target_name(stream)
        schema, table = parse_table(name)  # as the replication config writes it (quoted where needed)
        return f"{q(schema or 'main')}.{q(table)}"


    def _exists(self, target: str) -> bool:
        schema, table = split_quoted(target)
        return bool(self.con.execute("SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?",
                                     [schema, table]).fetchone()[0])

    def prune_recent(self) -> None:
        self.con.execute(prune_recent_sql())

    def _converging(self, state: TableState, reason: str, tx_id: int, signalled: bool) -> bool:
        """Rows Postgres rewrote sent no events (``reason``; ``tx_id``: the DDL's transaction if
        ``signalled``, else the first row event's after it): a snapshot through the cut brings
        them, while CDC goes on. Until one whose cut saw the latest such transactions is merged,
        the stream is converging. True: a snapshot is to be asked for (one request out at a
        time: a snapshot whose cut came before this change is followed by another when it is
        merged, finish_snapshot)."""
        asked = state.converging is not None
        # Every cause seen since the stream began converging, not only the last: the snapshot
        # asked for covers them all.
        causes = state.converging.split("; ") if asked and state.converging else []
        causes += [c for c in reason.split("; ") if c not in causes]
        state.converging = "; ".join(causes)
        if signalled:  # each kind comes in commit order: its latest is the one to cover
            state.converging_ddl_tx_id = tx_id
        else:
            state.converging_tx_id = tx_id
        log.warning("%s is converging: %s; re-snapshot requested, its changes are applied meanwhile",
                    state.stream, reason, extra={"kind": "schema_rewrite", "stream": state.stream, "reason": reason})
        return not asked and state.stream not in self.needing_resnapshot

    def converge(self, stream: str, tx_id: int, reason: str) -> bool:
        """The DDL signal (mallard/core/schema_signal.py): transaction ``tx_id`` changed
        ``stream``'s existing rows without row events. True: a snapshot is to be asked for. A
        stream without a table yet, or already waiting for a rebuild, needs nothing more."""
        state = self.tables.get(stream)
        if state is None or state.status != OK:
            return False
        ask = self._converging(state, reason, tx_id, signalled=True)
        self._save_table(state)
        return ask

    def mark_for_resnapshot(self, stream: str, reason: str, tx_id: int | None) -> None:
        """A stream one of whose events cannot be applied (it was dead-lettered): its changes
        are held back from now on, and a snapshot rebuilds the table (the re-snapshot path of
        a schema change that cannot be applied in place)."""
        state = self.tables.get(stream)
        if state is None or state.status == ABSENT:  # no table yet: the snapshot creates it
            state = self.tables[stream] = TableState(stream, self.target_of(stream), NEEDS_RESNAPSHOT, reason, [], [],
                                                     truncated_tx_id=state.truncated_tx_id if state else None)
        elif state.status == OK:
            state.status, state.reason = NEEDS_RESNAPSHOT, reason
        state.held_back_tx_id = tx_id if tx_id is not None else state.held_back_tx_id
        log.error("%s needs a re-snapshot: %s; its changes are held back until it is rebuilt", stream, reason)
        self._save_table(state)
