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


@dataclass(slots=True)
class Removal:
    """An update's or delete's removal of one row of a table without a primary key, found
    by all its columns (``row``: the before image)."""

    row: tuple
    position: int
    tx_id: int
    matched_tx_id: int | None = None
    """The xid of the insert earlier in the same batch that it removed; None: it removes a
    stored row (the adapter finds one)."""


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
    keyless: bool = False
    """The table has no primary key: its changes are a multiset's, in ``inserted`` and
    ``removed`` (``states`` stays empty)."""
    inserted: list[RowState] = field(default_factory=list)
    """Rows appended, in commit order (a table without a primary key)."""
    removed: list[Removal] = field(default_factory=list)
    """Rows removed by updates and deletes, one matching row each (a table without a primary key)."""
    _pending: dict = field(default_factory=dict)
    """row -> indexes in ``inserted`` of the inserts still there (to find an update's or delete's row)."""


def _truncate(changes: TableChanges, event: ChangeEvent) -> None:
    """A TRUNCATE: whatever the batch held for the table before it is gone (keyed states, or
    a keyless table's inserts and removals)."""
    changes.truncated = True
    changes.truncated_tx_id = event.tx_id
    changes.states.clear()
    changes.inserted.clear()
    changes.removed.clear()
    changes._pending.clear()


def apply_event(changes: TableChanges, event: ChangeEvent, pos: int) -> None:
    """Fold one event into a table's pending state (events arrive in commit order)."""
    changes.events += 1
    changes.last_tx_id = event.tx_id
    if event.op == "t":
        _truncate(changes, event)
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


def _row_id(row: tuple) -> object:
    """A row as a dict key (a value may be a list or dict, which do not hash)."""
    try:
        hash(row)
        return row
    except TypeError:
        return repr(row)


def apply_keyless_event(changes: TableChanges, event: ChangeEvent, pos: int) -> None:
    """Fold one event of a table without a primary key (a multiset: rows are found by all
    their columns). An insert appends; an update or delete removes ONE row equal to its
    before image: an insert earlier in the batch if there is one (it never reaches DuckDB),
    else a stored row. An update then appends its after image."""
    changes.events += 1
    changes.last_tx_id = event.tx_id
    if event.op == "t":
        _truncate(changes, event)
        return
    if event.op in ("u", "d"):
        before = event.key
        if before is None:  # the decoder refuses these; a caller's event without its before image
            raise ValueError(f"{event.stream}: an update or delete without its before image")
        ident = _row_id(before)
        pending = changes._pending.get(ident)
        if pending:
            earlier = changes.inserted[pending.pop()]
            changes.removed.append(Removal(before, pos, event.tx_id, earlier.tx_id))
            earlier.row = None  # gone: dropped from ``inserted`` at the end (``finish_keyless``)
        else:
            changes.removed.append(Removal(before, pos, event.tx_id))
        if event.op == "d":
            return
    changes._pending.setdefault(_row_id(event.row), []).append(len(changes.inserted))
    changes.inserted.append(RowState(event.row, pos, event.tx_id, event.committed_at_ms))


def finish_keyless(changes: TableChanges) -> None:
    """Drop the inserts that a later update or delete of the same batch removed."""
    if any(s.row is None for s in changes.inserted):
        changes.inserted = [s for s in changes.inserted if s.row is not None]
    changes._pending.clear()


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
                changes = steps[-1][event.stream] = TableChanges(
                    event.schema, keyless=event.schema.key_known and not event.schema.key_columns)
            is_covered = covered.get(event.stream)
            if is_covered is None:
                cut = cuts.get(event.stream)
                is_covered = covered[event.stream] = cut is not None and cut.covers(tx.tx_id)
            if is_covered:
                changes.events += 1
                changes.covered += 1
                continue
            if changes.keyless:
                apply_keyless_event(changes, event, position(tx.commit_lsn, event.total_order))
            else:
                apply_event(changes, event, position(tx.commit_lsn, event.total_order))
    for step in steps:
        for changes in step.values():
            if changes.keyless:
                finish_keyless(changes)
    return [step for step in steps if step]
