"""Reduce a run of whole transactions to one final state per key and table. Pure.

DuckDB checks keys eagerly and set-based statements want one row per key, so
what reaches DuckDB is, per table: whether it was truncated, and per key the
last state (a row, or deleted) with the position of the write that made it.
Columns Debezium did not send (unchanged TOAST) are filled from an earlier
state in the same run, else left for the adapter to keep from the stored row.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mallard.core.changes import ChangeEvent, TableSchema
from mallard.core.cut import Cut
from mallard.core.transactions import Transaction, position


@dataclass(slots=True)
class RowState:
    row: tuple | None
    """None: the key was deleted."""
    position: int
    tx_id: int
    committed_at_ms: int
    unavailable: frozenset[int] = frozenset()
    source_key: tuple | None = None
    """Where the stored values of ``unavailable`` columns are: another key's row (the old
    key of a primary-key update); None: this key's own row."""


@dataclass
class TableChanges:
    schema: TableSchema
    truncated: bool = False
    truncated_tx_id: int | None = None
    states: dict[tuple, RowState] = field(default_factory=dict)
    events: int = 0
    covered: int = 0
    """Events skipped because a completed snapshot of the table already holds them."""
    last_tx_id: int | None = None
    """xid of the last event folded in (commit order)."""
    last_delete: tuple | None = None
    """(tx_id, total_order, key, state before) of the last delete: the first half of a
    primary-key update, whose second half may need the old row's values."""


def apply_event(changes: TableChanges, event: ChangeEvent, pos: int) -> None:
    """Fold one event into a table's pending state (events arrive in commit order)."""
    changes.events += 1
    changes.last_tx_id = event.tx_id
    if event.op == "t":
        changes.truncated = True
        changes.truncated_tx_id = event.tx_id
        changes.states.clear()
        return
    key = event.key
    previous = changes.states.get(key)
    if previous is not None and pos <= previous.position:
        return  # a replay of something already folded in
    if event.op == "d":
        changes.states[key] = RowState(None, pos, event.tx_id, event.committed_at_ms)
        changes.last_delete = (event.tx_id, event.total_order, key, previous)
        return
    row, unavailable, source_key = event.row, event.unavailable, None
    previous_key = key
    if unavailable and event.op == "c" and (previous is None or previous.row is None):
        # An insert never lacks a value: this is the new key of a primary-key update, which
        # Debezium sends as a delete of the old key right before it. Unchanged TOASTed
        # values are the old row's.
        last = changes.last_delete
        if last is not None and last[0] == event.tx_id and last[1] == event.total_order - 1:
            previous_key, previous = last[2], last[3]
            if previous is None or previous.row is None:
                source_key = previous_key  # the old row is stored, not in this batch
    if unavailable and previous is not None and previous.row is not None:
        filled = list(row)
        still = set()
        for i in unavailable:
            if i in previous.unavailable:
                still.add(i)
            else:
                filled[i] = previous.row[i]
        row, unavailable = tuple(filled), frozenset(still)
        if still:
            source_key = previous.source_key if previous.source_key is not None else \
                (previous_key if previous_key != key else None)
    changes.states[key] = RowState(row, pos, event.tx_id, event.committed_at_ms, unavailable, source_key)


def reduce(transactions: list[Transaction], snapshot_cuts: dict[str, Cut] | None = None) -> list[dict[str, TableChanges]]:
    """Final state per table and key, as a list of steps to apply in order (in one
    DuckDB transaction): a new step starts where a table's schema changes, so each
    step holds rows of one layout per table and the table evolves between steps.

    ``snapshot_cuts``: per stream, the cut of the last full snapshot merged into the
    table. An event that cut covers is older than the table's content (the snapshot
    already holds its effect): it is counted and skipped, whatever the key's state,
    so a lagging CDC stream never briefly brings back an older state."""
    steps: list[dict[str, TableChanges]] = [{}]
    cuts = snapshot_cuts or {}
    for tx in transactions:
        covered: dict[str, bool] = {}
        for event in tx.events:
            changes = steps[-1].get(event.stream)
            if changes is not None and event.op != "t" and changes.schema is not event.schema \
                    and changes.schema != event.schema:
                steps.append({})
                changes = None
            if changes is None:
                changes = steps[-1][event.stream] = TableChanges(event.schema)
            is_covered = covered.get(event.stream)
            if is_covered is None:
                cut = cuts.get(event.stream)
                is_covered = covered[event.stream] = cut is not None and cut.covers(tx.tx_id)
            if is_covered:
                changes.events += 1
                changes.covered += 1
                continue
            apply_event(changes, event, position(tx.commit_lsn, event.total_order))
    return [step for step in steps if step]
