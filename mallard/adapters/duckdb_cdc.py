"""Change events into the replica: a batch of whole transactions, reduced per key
(mallard/core/merge.py), becomes one script (mallard/core/replica_sql.py) that runs as
one DuckDB transaction (mallard/adapters/duckdb_writer.py)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timezone

from mallard.adapters.duckdb_errors import translate
from mallard.adapters.duckdb_writer import ScriptRunner
from mallard.core.errors import TerminalError, TransientError
from mallard.core.merge import TableChanges
from mallard.core.replica_sql import (ABSENT, NEEDS_RESNAPSHOT, OK, ApplyStats, PreparedBatch, Script, TableState,
                                      add_progress, add_table_changes, save_table_sql)
from mallard.core.transactions import Transaction

PROBE = "mallard probe: rolled back"


class CdcApply:
    """Mixed into DuckDBReplica (with Bookkeeping): needs ``writer``, ``tables``, ``ensure_table``."""

    writer: ScriptRunner
    tables: dict[str, TableState]
    needing_resnapshot: list[str]

    def apply(self, steps: list[dict[str, TableChanges]], transactions: list[Transaction]) -> ApplyStats:
        """Apply whole transactions in one DuckDB transaction, with the position they reach."""
        return self.commit(self.prepare(steps, transactions))

    def changes_schema(self, steps: list[dict[str, TableChanges]]) -> bool:
        """Whether preparing ``steps`` would create or alter a table (statements of their own)."""
        return any(changes.schema.key_known and not self._settled(changes.schema)
                   for step in steps for changes in step.values())

    def commit(self, batch: PreparedBatch) -> ApplyStats:
        """Run a prepared batch: one DuckDB transaction. Raises TransientError or
        TerminalError for what DuckDB refused (rolled back: nothing of it is applied)."""
        try:
            self.writer.run(batch.script)
        except Exception as e:
            raise translate(e) from e
        return batch.stats

    def commit_chunks(self, batches: Iterable[PreparedBatch]) -> None:
        """Run prepared batches, in turn, as ONE DuckDB transaction (a spilled Postgres
        transaction's chunks, each prepared as the one before it is sent: memory holds one).
        Raises like ``commit``; nothing of it is applied then."""
        try:
            self.writer.run_chunks(batch.script for batch in batches)
        except (TransientError, TerminalError):
            raise
        except Exception as e:
            raise translate(e) from e

    def probe(self, batch: PreparedBatch) -> Exception | None:
        """Run a prepared batch and roll it back: the error it raises (translated), or None.
        How the applier finds the one event of a batch that DuckDB refuses without applying
        part of a Postgres transaction."""
        batch.script.add(f"SELECT error('{PROBE}')")  # the last statement: everything before it ran
        try:
            self.writer.run(batch.script)
        except Exception as e:
            if PROBE in str(e):
                return None
            return translate(e)
        raise AssertionError("a probe committed")  # unreachable: its last statement fails

    def prepare(self, steps: list[dict[str, TableChanges]], transactions: list[Transaction],
                progress_events: int | None = None) -> PreparedBatch:
        """The DuckDB transaction that applies whole transactions, with the position they reach.
        A table's creation or schema change is applied here, on its own (applying it again is a no-op).
        Raises TerminalError for values that do not go into their table's Arrow types.
        ``transactions`` empty: no position (a chunk of a spilled transaction; its last script
        gives the position, with ``progress_events`` events for the whole)."""
        try:
            return self._prepare(steps, transactions, progress_events)
        except (TransientError, TerminalError):
            raise
        except Exception as e:
            raise translate(e) from e

    def _prepare(self, steps: list[dict[str, TableChanges]], transactions: list[Transaction],
                 progress_events: int | None = None) -> PreparedBatch:
        stats = ApplyStats(transactions=len(transactions), dead=sum(t.dead for t in transactions))
        now = datetime.now(timezone.utc)
        script = Script()
        # Every table is created or altered first (those statements run now, on their own), and
        # only then are the rows written: the rows of a step before a column's rename in the
        # same batch are written under the name the column has now.
        tables = []
        for step in steps:
            for stream, changes in step.items():
                before = self.tables.get(stream)
                names = [c for c, _ in before.columns] if before is not None else []
                state = self.ensure_table(changes.schema, changes.last_tx_id)
                if state.status == ABSENT and changes.truncated:
                    state.truncated_tx_id = changes.truncated_tx_id
                    self.tables[stream] = state
                    script.add(save_table_sql(state))
                # A rename keeps the column's place (schema_diff.renames).
                renamed = {old: new for old, (new, _) in zip(names, state.columns) if old != new} \
                    if state is before else {}
                tables.append((stream, changes, state, state.status, renamed))
        for i, (stream, changes, state, status, _) in enumerate(tables):
            stats.events += changes.events
            stats.events_by_stream[stream] = stats.events_by_stream.get(stream, 0) + changes.events
            stats.covered += changes.covered
            if status != OK:
                stats.skipped += changes.events
                if status == NEEDS_RESNAPSHOT and changes.last_tx_id is not None:
                    state.held_back_tx_id = changes.last_tx_id
                    script.add(save_table_sql(state))
                continue
            columns = changes.schema.columns
            for later, _, _, _, renamed in tables[i + 1:]:
                if later == stream and renamed:
                    columns = tuple(renamed.get(c, c) for c in columns)
            if columns != changes.schema.columns:
                changes = replace(changes, schema=replace(changes.schema, columns=columns))
            add_table_changes(script, state, changes, now, stats)
        if transactions:
            add_progress(script, transactions, stats.events if progress_events is None else progress_events, now)
        stats.needs_resnapshot, self.needing_resnapshot = self.needing_resnapshot, []
        return PreparedBatch(script, stats)
