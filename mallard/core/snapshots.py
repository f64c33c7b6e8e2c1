"""Follow framed snapshots on the snapshot topic and turn them into work for the
replica. Pure.

A snapshot is begin, rows batches 1..n, end (schemas/snapshot.py), all on one
partition. The replica stages rows as they come and acts on the table only when
the end has arrived and checks out (batches and row count), so a snapshot cut
short by a crash or a lost batch is never merged. The snapshot topic's committable
offset stays at the begin of every snapshot not yet merged: after a restart the
applier re-reads (and re-stages) it from its begin.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

from mallard.core.changes import PoisonMessage, TableSchema
from mallard.core.cut import Cut
from mallard.core.pgtypes import ColumnType, column_type, decode_values

TopicPartition = tuple[str, int]


@dataclass
class SnapshotFrame:
    """What a begin message says, decoded."""

    snapshot_id: str
    stream: str
    cut: Cut
    schema: TableSchema
    where: str | None
    started_at: datetime
    request_id: str | None = None
    offset: tuple[TopicPartition, int] = (("", 0), 0)
    incremental: bool = False
    """An incremental run: upsert its rows, delete nothing at its end."""
    requested_at: datetime | None = None
    """When its request was made (the begin says)."""
    read_finished_at: datetime | None = None
    """When the snapshotter had read and published its last row (the end says)."""
    rows_format: str = "json"
    """How its rows batches are written (schemas/snapshot.py): json or arrow."""
    batches: int = 0
    rows: int = 0
    """Rows received so far."""
    staged: int = 0
    """Rows the replica has staged so far (for its log)."""

    @property
    def full(self) -> bool:
        return self.where is None


@dataclass
class SnapshotWork:
    """One step for the replica: ``kind`` is begin (create staging), rows (stage
    ``columns``: one list of transport values per column), end (merge into the table)
    or abandon (drop staging; ``reason`` says why); the applier reports work of a snapshot
    it abandoned before as ``skip``."""

    kind: str
    frame: SnapshotFrame
    columns: Any = None
    """For rows: the decoded columns (an Arrow table in the service)."""
    row_count: int = 0
    reason: str | None = None


def frame_schema(stream: str, columns: list[dict[str, Any]]) -> TableSchema:
    """The table as a snapshot's begin describes it, typed as CDC events type it."""
    names = tuple(c["name"] for c in columns)
    types = tuple(column_type({**c["connect_schema"], "field": c["name"]}) for c in columns)
    keyed = sorted((c["primary_key_position"], c["name"]) for c in columns if c.get("primary_key_position"))
    return TableSchema(stream, names, types, tuple(name for _, name in keyed))


def decode_columns(types: tuple[ColumnType, ...], rows: list[list[Any]]) -> list[Sequence[Any]]:
    """Rows of encoded values -> one sequence of transport values per column. Values whose
    encoding is their transport value (integers, text, booleans, days) pass as they are:
    loading them into typed Arrow arrays checks them (``CHECK_ONLY``); so do timestamps
    with offset, which Arrow parses (``ARROW_PARSED``)."""
    width = len(types)
    try:
        widths = set(map(len, rows))
    except TypeError:
        widths = {-1}
    if widths - {width}:
        raise PoisonMessage(f"a snapshot row is not a list of {width} values (the columns its begin declares)")
    columns: list[Sequence[Any]] = list(zip(*rows)) if rows else [() for _ in types]
    for i, ct in enumerate(types):
        try:
            columns[i] = decode_values(ct, columns[i])
        except (ValueError, TypeError, ArithmeticError) as e:
            raise PoisonMessage(f"snapshot column {i + 1} ({ct.duckdb}): {e}") from None
    return columns


@dataclass
class SnapshotTracker:
    """Snapshots in flight, per stream, and what may be committed of the snapshot topic."""

    in_flight: dict[str, SnapshotFrame] = field(default_factory=dict)
    """stream -> the snapshot being staged."""
    _unmerged: dict[str, tuple[TopicPartition, int]] = field(default_factory=dict)
    """snapshot_id -> offset of its begin, until its end has been merged (or it is dropped)."""
    _next: dict[TopicPartition, int] = field(default_factory=dict)

    def _seen(self, tp: TopicPartition, offset: int) -> None:
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def begin(self, frame: SnapshotFrame, tp: TopicPartition, offset: int) -> list[SnapshotWork]:
        """A begin: a snapshot of the same stream still in flight was cut short (its
        end will never come: the snapshotter redoes interrupted snapshots) and is dropped."""
        self._seen(tp, offset)
        work = []
        old = self.in_flight.pop(frame.stream, None)
        if old is not None:
            work.append(self.abandon(old, f"superseded by snapshot {frame.snapshot_id} before its end arrived"))
        frame.offset = (tp, offset)
        self.in_flight[frame.stream] = frame
        self._unmerged[frame.snapshot_id] = (tp, offset)
        work.append(SnapshotWork("begin", frame))
        return work

    def frame(self, stream: str, snapshot_id: str) -> SnapshotFrame | None:
        frame = self.in_flight.get(stream)
        return frame if frame is not None and frame.snapshot_id == snapshot_id else None

    def rows(self, frame: SnapshotFrame, batch: int, columns: Any, tp: TopicPartition,
             offset: int) -> list[SnapshotWork]:
        self._seen(tp, offset)
        if batch != frame.batches + 1:
            return [self.abandon(frame, f"batch {batch} arrived after batch {frame.batches}: a batch is missing")]
        frame.batches = batch
        count = len(columns[0]) if columns else 0
        frame.rows += count
        return [SnapshotWork("rows", frame, columns=columns, row_count=count)]

    def end(self, frame: SnapshotFrame, batches: int, row_count: int, tp: TopicPartition,
            offset: int) -> list[SnapshotWork]:
        self._seen(tp, offset)
        if (batches, row_count) != (frame.batches, frame.rows):
            return [self.abandon(frame, f"its end declares {row_count} rows in {batches} batches, "
                                        f"{frame.rows} rows in {frame.batches} batches arrived")]
        del self.in_flight[frame.stream]
        return [SnapshotWork("end", frame, row_count=row_count)]

    def abandon(self, frame: SnapshotFrame, reason: str) -> SnapshotWork:
        """Never merged: the table keeps what it had; the snapshot must be taken again."""
        if self.in_flight.get(frame.stream) is frame:
            del self.in_flight[frame.stream]
        return SnapshotWork("abandon", frame, reason=reason)

    def failed(self, stream: str, snapshot_id: str | None, request_id: str, where: str | None, reason: str,
               failed_at: datetime, tp: TopicPartition, offset: int) -> list[SnapshotWork]:
        """The snapshotter's answer that a request failed (or was refused): the snapshot it
        began, if any, is abandoned (its end will never come: nothing stays staging); one
        it never began is recorded as abandoned all the same, with the reason."""
        self._seen(tp, offset)
        why = f"the snapshotter failed it: {reason}"
        frame = self.in_flight.get(stream)
        if frame is not None and snapshot_id is not None and frame.snapshot_id == snapshot_id:
            return [self.abandon(frame, why)]
        placeholder = SnapshotFrame(snapshot_id or f"failed:{request_id}:{stream}", stream, Cut(0, 0, frozenset()),
                                    TableSchema(stream, (), (), ()), where, failed_at, request_id)
        return [SnapshotWork("abandon", placeholder, reason=why)]

    def skip(self, tp: TopicPartition, offset: int) -> None:
        """A message that needs nothing (a batch of an abandoned or unknown snapshot)."""
        self._seen(tp, offset)

    def done(self, work: SnapshotWork) -> None:
        """After the replica committed ``work``: an end or abandon releases its begin's offset."""
        if work.kind in ("end", "abandon"):
            self._unmerged.pop(work.frame.snapshot_id, None)

    def committable(self) -> dict[TopicPartition, int]:
        held: dict[TopicPartition, int] = {}
        for tp, offset in self._unmerged.values():
            held[tp] = min(held.get(tp, offset), offset)
        return {tp: held.get(tp, nxt) for tp, nxt in self._next.items()}
