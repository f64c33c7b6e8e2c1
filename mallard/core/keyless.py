"""Tables without a primary key in the publication. Pure.

Postgres refuses every UPDATE and DELETE on a table that a publication publishes updates or
deletes of, unless the table has a replica identity (a primary key, an index, or FULL):
replication must never break the source's writes. So a table without one enters the
publication in one of two ways, said to the user before it does:

- **inserts only** (the default): it goes into a second publication that publishes inserts
  and truncates only (``<publication>_inserts``); Postgres keeps accepting its UPDATE and
  DELETE, which are not replicated.
- **REPLICA IDENTITY FULL** (``replica_identity: full`` in the replication config, or set in
  Postgres already): updates and deletes are published with the whole old row, and the
  applier applies each to ONE row equal to it (a multiset).

Debezium reads one ``publication.name``, which it hands to pgoutput as its
``publication_names`` option as it is; pgoutput reads that as a comma-separated list. So the
local stack names both publications there, and creates an empty publication under that
literal name, which Debezium checks exists (``publication.autocreate.mode=disabled``).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


INSERTS_ONLY = "inserts only"
IDENTITY_FULL = "replica identity full"
IDENTITY_INDEX = "replica identity index"
INSERTS_SUFFIX = "_inserts"
INSERTS_PUBLISH = "insert, truncate"
"""What the inserts-only publication publishes: neither needs a replica identity."""


def inserts_publication(publication: str) -> str:
    return publication + INSERTS_SUFFIX


@dataclass(frozen=True)
class TableIdentity:
    """What Postgres says of a table: whether it has a primary key, and its REPLICA IDENTITY
    (pg_class.relreplident: 'd' default, 'n' nothing, 'f' full, 'i' index)."""

    has_key: bool
    replica_identity: str


@dataclass(frozen=True)
class KeylessMode:
    stream: str
    mode: str
    """INSERTS_ONLY, IDENTITY_FULL or IDENTITY_INDEX."""
    set_full: bool = False
    """mallard sets REPLICA IDENTITY FULL on it (the config asks, Postgres has not yet)."""

    def describe(self, publication: str) -> str:
        """One line for the user: what is replicated, and what would add the rest."""
        table = self.stream  # its one spelling is SQL (mallard/core/names.py)
        if self.mode == INSERTS_ONLY:
            return (f"{self.stream} has no primary key: inserts only (in publication "
                    f"{inserts_publication(publication)}, which publishes no update or delete, so Postgres keeps "
                    f"accepting them); its UPDATEs and DELETEs are not replicated. ALTER TABLE {table} REPLICA "
                    "IDENTITY FULL (or replica_identity: full in the replication config) would add them, each "
                    "applied to one row equal to the old one")
        if self.mode == IDENTITY_INDEX:
            return (f"{self.stream} has no primary key and REPLICA IDENTITY USING INDEX: its updates and deletes "
                    f"carry the index's columns only, and mallard finds a row by all its columns; set "
                    f"replica_identity: full (ALTER TABLE {table} REPLICA IDENTITY FULL)")
        how = "mallard sets REPLICA IDENTITY FULL (replica_identity: full)" if self.set_full else \
            "REPLICA IDENTITY FULL"
        return (f"{self.stream} has no primary key: {how}, so updates and deletes are replicated, each applied to "
                f"one row equal to the old one (all columns); Postgres writes whole old rows to its WAL for them")


def keyless_modes(tables: Mapping[str, TableIdentity], full: Iterable[str] = ()) -> list[KeylessMode]:
    """The mode of each table without a primary key. ``full``: streams the config gives
    ``replica_identity: full``."""
    wanted = set(full)
    out = []
    for stream, t in sorted(tables.items()):
        if t.has_key:
            continue
        if t.replica_identity == "f":
            out.append(KeylessMode(stream, IDENTITY_FULL))
        elif stream in wanted:
            out.append(KeylessMode(stream, IDENTITY_FULL, set_full=True))
        elif t.replica_identity == "i":
            out.append(KeylessMode(stream, IDENTITY_INDEX))
        else:
            out.append(KeylessMode(stream, INSERTS_ONLY))
    return out


@dataclass(frozen=True)
class PublicationPlan:
    main: list[str]
    """Tables in the publication that publishes everything (keyed, or with a replica identity)."""
    inserts: list[str]
    """Tables in the inserts-only publication."""
    set_full: list[str]
    """Tables to ALTER ... REPLICA IDENTITY FULL before they enter ``main``."""
    modes: list[KeylessMode]


def plan_publications(tables: Mapping[str, TableIdentity], full: Iterable[str] = ()) -> PublicationPlan:
    """Which publication each existing stream table goes into (order kept)."""
    modes = keyless_modes(tables, full)
    inserts = {m.stream for m in modes if m.mode == INSERTS_ONLY}
    return PublicationPlan([s for s in tables if s not in inserts], [s for s in tables if s in inserts],
                           [m.stream for m in modes if m.set_full], modes)


def publication_names(publication: str) -> str:
    """Debezium's ``publication.name`` for both publications: pgoutput's list."""
    return f"{publication},{inserts_publication(publication)}"


def publication_statements(plan: PublicationPlan, publication: str, inserts: str | None,
                           held: Iterable[str], held_inserts: Iterable[str] = (),
                           keep: Iterable[str] = ()) -> list[str]:
    """The SQL that brings table-list publications from what they hold to ``plan``, for
    whoever holds the rights (mallard prints it where it has no admin role): REPLICA
    IDENTITY FULL first, where the config asks, then tables added, then dropped. ``keep``:
    tables left in ``publication`` whatever the plan (the heartbeat table). Without an
    inserts-only publication (``inserts`` None), the tables planned for it are not added."""
    from mallard.core.names import quote_ident, quoted

    held, held_inserts, keep = set(held), set(held_inserts), set(keep)
    out = [f"ALTER TABLE {quoted(t)} REPLICA IDENTITY FULL;" for t in plan.set_full]
    for pub, want, has in ((publication, plan.main, held), (inserts, plan.inserts, held_inserts)):
        if pub is None:
            continue
        out += [f"ALTER PUBLICATION {quote_ident(pub)} ADD TABLE {quoted(t)};" for t in want if t not in has]
        out += [f"ALTER PUBLICATION {quote_ident(pub)} DROP TABLE {quoted(t)};" for t in sorted(has)
                if t not in want and t not in keep]
    return out
