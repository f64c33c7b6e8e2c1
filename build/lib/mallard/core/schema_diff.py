"""Compare a table as DuckDB holds it with the schema Debezium now sends. Pure."""
from __future__ import annotations

from dataclasses import dataclass, field

from mallard.core.pgtypes import widens


@dataclass
class SchemaChange:
    add: list[tuple[str, str]] = field(default_factory=list)
    """New columns: (name, DuckDB type)."""
    widen: list[tuple[str, str, str]] = field(default_factory=list)
    """(name, old type, new type) changes DuckDB can apply in place."""
    dropped: list[str] = field(default_factory=list)
    """Columns no longer in Postgres: kept in DuckDB (nullable), reported."""
    incompatible: str | None = None
    """Why the table cannot follow in place (it needs a re-snapshot)."""

    @property
    def empty(self) -> bool:
        return not (self.add or self.widen or self.dropped or self.incompatible)


def diff(stored: list[tuple[str, str]], stored_key: list[str], columns: list[tuple[str, str]], key: list[str]) -> SchemaChange:
    """``stored`` and ``columns`` are (name, DuckDB type) lists; keys are column names."""
    change = SchemaChange()
    if list(stored_key) != list(key):
        change.incompatible = f"primary key changed from ({', '.join(stored_key)}) to ({', '.join(key) or 'none'})"
        return change
    old = dict(stored)
    new = dict(columns)
    for name, new_type in columns:
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
    change.dropped = [name for name, _ in stored if name not in new]
    return change
