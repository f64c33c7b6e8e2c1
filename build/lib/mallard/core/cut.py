"""The cut rule: merging a snapshot with CDC so that nothing is lost or applied twice. Pure.

A snapshot S records ``pg_current_snapshot()`` of its reading transaction. A CDC
event is *covered* by S when its transaction was visible to S: it committed
before S was taken, so S's rows already include it (see ../shared/DESIGN.md).
Per key the replica remembers what wrote the current row: S (a snapshot id) or
a CDC event (its transaction id). These functions decide, per row or event,
whether it is applied.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_SNAPSHOT_TEXT = re.compile(r"^(\d+):(\d+):([\d,]*)$")
_HALF = 1 << 31
_EPOCH = 1 << 32


def widen(xid32: int, reference: int) -> int:
    """The 64-bit transaction id (epoch << 32 | xid) of a 32-bit xid, taken from the
    epoch that puts it within 2^31 of ``reference`` (a 64-bit id of the same era),
    as Postgres itself compares xids."""
    candidate = (reference & ~0xFFFFFFFF) | (xid32 & 0xFFFFFFFF)
    if candidate > reference + _HALF:
        candidate -= _EPOCH
    elif candidate < reference - _HALF:
        candidate += _EPOCH
    return candidate


@dataclass(frozen=True)
class Cut:
    """``pg_current_snapshot()``: xids below xmin committed before it; xids from xmax on
    started after it; those in xip were in progress."""

    xmin: int
    xmax: int
    xip: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, text: str) -> Cut:
        """From Postgres' text form 'xmin:xmax:xip1,xip2,...'."""
        m = _SNAPSHOT_TEXT.match(text.strip())
        if not m:
            raise ValueError(f"not a pg_snapshot: {text!r}")
        xip = frozenset(int(x) for x in m.group(3).split(",") if x)
        cut = cls(int(m.group(1)), int(m.group(2)), xip)
        if not (cut.xmin <= cut.xmax and all(cut.xmin <= x < cut.xmax for x in xip)):
            raise ValueError(f"inconsistent pg_snapshot: {text!r}")
        return cut

    def covers(self, tx_id: int) -> bool:
        """Whether the transaction (a 32-bit Debezium txId or a 64-bit xid8) was
        visible to the snapshot, i.e. the snapshot's rows already include it."""
        tx = widen(tx_id, self.xmax) if tx_id < _EPOCH else tx_id
        return tx < self.xmin or (tx < self.xmax and tx not in self.xip)


@dataclass(frozen=True)
class Origin:
    """What wrote a key's current state (a row, or its deletion)."""

    snapshot_id: str | None = None
    cdc_tx_id: int | None = None


def snapshot_row_applies(current: Origin | None, cut: Cut) -> bool:
    """A snapshot row replaces the key's state unless that state came from a CDC event
    the snapshot did not see (which is newer than the snapshot)."""
    return current is None or current.cdc_tx_id is None or cut.covers(current.cdc_tx_id)


def cdc_event_applies(current: Origin | None, tx_id: int, cuts: dict[str, Cut], completed: list[Cut]) -> bool:
    """A CDC event is skipped when a snapshot that wrote the key's state already saw it,
    or when any completed snapshot (of a range holding the key) saw it: the table's
    content is newer than the event then. Otherwise it is applied (events of one key
    arrive in commit order)."""
    if any(cut.covers(tx_id) for cut in completed):
        return False
    if current is not None and current.snapshot_id is not None:
        cut = cuts.get(current.snapshot_id)
        if cut is not None and cut.covers(tx_id):
            return False
    return True


def survives_snapshot_end(current: Origin | None, snapshot_id: str, cut: Cut) -> bool:
    """When snapshot S ends, a row of its range stays only if S wrote it or a CDC event
    S did not see wrote it; anything else no longer exists in Postgres."""
    if current is None:
        return False
    if current.snapshot_id == snapshot_id:
        return True
    return current.cdc_tx_id is not None and not cut.covers(current.cdc_tx_id)
