"""Compare a table as DuckDB holds it with the schema Debezium now sends. Pure.

Debezium sends a table's columns (in Postgres' attribute order) with every event, but
nothing of the DDL that changed them. Postgres rewrites existing rows without a single
row event in three cases, all invisible in that schema: an added column's default fills
them (a constant or a volatile one like ``now()``), a type change's ``USING`` recomputes
them, and a rename moves their values to another name. So any added, retyped or renamed
column means existing rows may now differ from the replica's: the table is re-snapshotted
through the cut while its changes go on (``rewrite_reason``). A dropped column changes
no other column's values; the replica keeps it (docs/limits.md, "Schema changes").
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mallard.core.pgtypes import widens


@dataclass
class SchemaChange:
    add: list[tuple[str, str]] = field(default_factory=list)
    """New columns: (name, DuckDB type)."""
    widen: list[tuple[str, str, str]] = field(default_factory=list)
    """(name, old type, new type) changes DuckDB can apply in place."""
    rename: list[tuple[str, str]] = field(default_factory=list)
    """(old name, new name): a column that kept its place and type under another name."""
    dropped: list[str] = field(default_factory=list)
    """Columns no longer in Postgres: kept in DuckDB (nullable), reported."""
    readded: list[str] = field(default_factory=list)
    """Columns kept after their drop that Postgres has again (added anew: their old values are stale)."""
    incompatible: str | None = None
    """Why the table cannot follow in place (it needs a re-snapshot)."""

    @property
    def empty(self) -> bool:
        return not (self.add or self.widen or self.rename or self.dropped or self.readded or self.incompatible)

    @property
    def rewrite_reason(self) -> str | None:
        """Why existing rows may have changed without row events (then the table is
        re-snapshotted through the cut), or None. A rename is applied in place, and its
        values with it; it is re-snapshotted all the same, because the schema cannot tell it
        from a drop and an add of a column with a default at the same place."""
        if self.incompatible:
            return None  # rebuilt by a snapshot anyway
        why = []
        if self.add or self.readded:
            added = [n for n, _ in self.add] + self.readded
            why.append(f"column(s) added ({', '.join(added)}): a default may have filled existing rows")
        if self.widen:
            why.append(f"type changed ({', '.join(n for n, _, _ in self.widen)}): a USING clause may have rewritten "
                       "existing values")
        if self.rename:
            why.append(f"column(s) renamed ({', '.join(f'{a} -> {b}' for a, b in self.rename)})")
        return "; ".join(why) or None


def renames(old: list[tuple[str, str]], new: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Columns of ``old`` that are in ``new`` under another name: between the same surviving
    neighbours (columns in both, in order), the k-th column gone and the k-th column new,
    when their types are equal. Postgres keeps a renamed column's place and appends an
    added one, so a rename sits exactly where the old name was."""
    new_names = {n for n, _ in new}
    old_names = {n for n, _ in old}

    def runs(columns: list[tuple[str, str]], common: set[str], anchors: list[str]) -> list[list[tuple[str, str]]]:
        out: list[list[tuple[str, str]]] = [[] for _ in range(len(anchors) + 1)]
        i = 0
        for name, duck_type in columns:
            if name in common:
                i = anchors.index(name) + 1
            else:
                out[i].append((name, duck_type))
        return out

    anchors = [n for n, _ in old if n in new_names]
    if anchors != [n for n, _ in new if n in old_names]:
        return []  # columns reordered: no place to go by (Postgres never does this)
    common = set(anchors)
    pairs = []
    for gone, came in zip(runs(old, common, anchors), runs(new, common, anchors)):
        for (a, a_type), (b, b_type) in zip(gone, came):
            if a_type != b_type:
                break
            pairs.append((a, b))
    return pairs


def diff(stored: list[tuple[str, str]], stored_key: list[str], columns: list[tuple[str, str]], key: list[str],
         kept: list[str] = ()) -> SchemaChange:
    """``stored`` and ``columns`` are (name, DuckDB type) lists; keys are column names;
    ``kept``: stored columns already known as dropped in Postgres (not renamed from)."""
    change = SchemaChange()
    if list(stored_key) != list(key):
        change.incompatible = f"primary key changed from ({', '.join(stored_key)}) to ({', '.join(key) or 'none'})"
        return change
    old = dict(stored)
    new = dict(columns)
    kept_set = set(kept)
    live = [(n, t) for n, t in stored if n not in kept_set or n in new]
    change.rename = renames(live, columns)
    renamed_from = {a for a, _ in change.rename}
    renamed_to = {b for _, b in change.rename}
    for name, new_type in columns:
        if name in renamed_to:
            continue
        if name not in old:
            change.add.append((name, new_type))
        elif old[name] != new_type:
            if name in key:
                change.incompatible = f"key column {name!r} changed type {old[name]} -> {new_type}"
                return change
            if not widens(old[name], new_type):
                change.incompatible = f"column {name!r} changed type {old[name]} -> {new_type}, which does not widen"
                return change
            change.widen.append((name, old[name], new_type))
    change.dropped = [name for name, _ in stored if name not in new and name not in renamed_from]
    change.readded = [name for name, _ in columns if name in kept_set]
    return change
