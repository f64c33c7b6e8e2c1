"""Large transactions: what the assembler needs to hold a transaction's events outside
memory, and to take them back in bounded pieces. Pure (the files: mallard/adapters/spill_files.py).

A Postgres transaction is applied whole, in one DuckDB transaction, and its events are
held until its END and all of them have come. Past a memory bound, the assembler moves
the biggest transaction it holds to a ``SpilledEvents`` store (its events so far, then
every later one as it comes) and keeps in memory only which ``total_order`` it has seen
(a bitmap: a duplicate delivery still counts once) and how many. The applier then reads
it back in chunks, in commit order, and sends them to DuckDB inside one transaction.
"""
from __future__ import annotations

import heapq
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from mallard.core.changes import ChangeEvent, TableSchema


class SpilledEvents(Protocol):
    """The events of one transaction, held outside memory (written by the applier only)."""

    count: int
    """Events added."""
    schemas: list[TableSchema]
    """Each table layout its events have, in order of first appearance (tables and columns
    are created or altered for them before the transaction's rows are applied)."""

    def add(self, total_order: int, event: ChangeEvent) -> None: ...
    def events(self) -> Iterator[ChangeEvent]:
        """Every event added, in ``total_order`` (commit order); may be read again."""
        ...
    def discard(self) -> None: ...


SpillFactory = Callable[[int], SpilledEvents]
"""A new store for the transaction with this xid."""


class SeenOrders:
    """The set of ``total_order`` values seen, as a bitmap in pages: about one bit per event
    of a big transaction (5M events: 640 KB), and one small page per outlier a forged
    message may claim."""

    PAGE_BITS = 1 << 16

    def __init__(self, orders: Iterable[int] = ()):
        self._pages: dict[int, bytearray] = {}
        for order in orders:
            self.add(order)

    def __contains__(self, order: int) -> bool:
        page = self._pages.get(order >> 16)
        return page is not None and bool(page[(order & 0xFFFF) >> 3] & (1 << (order & 7)))

    def add(self, order: int) -> bool:
        """True if ``order`` was not there yet."""
        page = self._pages.get(order >> 16)
        if page is None:
            page = self._pages[order >> 16] = bytearray(self.PAGE_BITS >> 3)
        i, bit = (order & 0xFFFF) >> 3, 1 << (order & 7)
        if page[i] & bit:
            return False
        page[i] |= bit
        return True


class MemorySpill:
    """A ``SpilledEvents`` kept in a list: for tests of the logic around it."""

    def __init__(self, tx_id: int = 0):
        self.tx_id = tx_id
        self._events: list[tuple[int, ChangeEvent]] = []
        self.count = 0
        self.schemas: list[TableSchema] = []
        self.discarded = False
        self.reads = 0

    def add(self, total_order: int, event: ChangeEvent) -> None:
        note_schema(self.schemas, event.schema)
        self._events.append((total_order, event))
        self.count += 1

    def events(self) -> Iterator[ChangeEvent]:
        self.reads += 1
        return (e for _, e in sorted(self._events, key=lambda x: x[0]))

    def discard(self) -> None:
        self.discarded = True
        self._events = []


def note_schema(schemas: list[TableSchema], schema: TableSchema) -> None:
    """Keep each layout once (by identity first: the decoder shares one object per layout)."""
    if schemas and schemas[-1] is schema:
        return
    if not any(s is schema or s == schema for s in schemas):
        schemas.append(schema)


def merge_runs(runs: list[Iterator[tuple[int, ChangeEvent]]]) -> Iterator[ChangeEvent]:
    """Runs each in ``total_order`` (a partition gives a transaction's events in commit
    order) merged into one, in ``total_order``."""
    if len(runs) == 1:
        return (e for _, e in runs[0])
    return (e for _, e in heapq.merge(*runs, key=lambda x: x[0]))


def chunks(events: Iterable[ChangeEvent], size: int) -> Iterator[list[ChangeEvent]]:
    """``events`` in lists of about ``size``. A chunk never ends on a delete: the next event
    may be the new key of a primary-key update (Debezium sends a delete then a create),
    which takes its unchanged TOASTed values from the delete's row (mallard/core/merge.py)."""
    chunk: list[ChangeEvent] = []
    for event in events:
        chunk.append(event)
        if len(chunk) >= size and event.op != "d":
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def event_bytes(event: ChangeEvent) -> int:
    """Roughly what a held event costs in memory: the event, its row and key and their
    values, and its place in the transaction's dict. Sampled (it walks the values)."""
    size = sys.getsizeof(event) + 300  # its dict slot, its order and offset ints (measured: ~700 B a 3-column row)
    for values in (event.row, event.key):
        if values is not None:
            size += sys.getsizeof(values) + sum(sys.getsizeof(v) for v in values)
    return size
