"""Incremental streams, pure: the state (the last update_key value) folded from what
Kafka holds, the filter of an incremental run, and which requests are incremental.

The state is not kept in a file: it is the ``max_update_key`` of the stream's last
snapshot end on the snapshot topic, unless a newer ``StateReset`` on the control
topic rewinds it (to a value, or to nothing: the next run reads every row).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from mallard.core.sql import quote_ident, quote_literal


@dataclass(frozen=True)
class StreamState:
    stream: str
    value: str | None
    """Resume after this update_key value (Postgres text form); None: read every row."""
    at: datetime
    source: str
    """'snapshot <id>' or 'reset <id> by <who>'."""
    update_key: str | None = None


@dataclass(frozen=True)
class StateEvent:
    at: datetime
    stream: str
    value: str | None
    source: str
    update_key: str | None = None


def fold_states(events: Iterable[StateEvent]) -> dict[str, StreamState]:
    """The latest event per stream wins (by time; ties: the later in the sequence)."""
    out: dict[str, StreamState] = {}
    for e in sorted(events, key=lambda e: e.at):
        out[e.stream] = StreamState(e.stream, e.value, e.at, e.source,
                                    e.update_key if e.update_key is not None or e.stream not in out
                                    else out[e.stream].update_key)
    return out


def end_event(end: dict[str, Any]) -> StateEvent | None:
    """A snapshot end (as parsed JSON) that carries a state, as an event; else None."""
    if end.get("kind") != "end" or not end.get("update_key"):
        return None
    return StateEvent(datetime.fromisoformat(end["finished_at"]), end["stream"], end.get("max_update_key"),
                      f"snapshot {end['snapshot_id']}", end["update_key"])


def reset_events(reset: dict[str, Any]) -> list[StateEvent]:
    if reset.get("kind") != "state-reset":
        return []
    at = datetime.fromisoformat(reset["requested_at"])
    return [StateEvent(at, s, reset.get("to_value"), f"reset {reset['reset_id']} by {reset['requested_by']}")
            for s in reset["streams"]]


def incremental_filter(update_key: str, value: str | None) -> str | None:
    """The SQL filter of an incremental run after ``value`` (None: no filter, every row)."""
    if value is None:
        return None
    return f"{quote_ident(update_key)} > {quote_literal(value)}"


def and_filters(*filters: str | None) -> str | None:
    parts = [f for f in filters if f]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else " AND ".join(f"({f})" for f in parts)


def is_incremental_run(mode: str | None, full: bool, where: str | None, requested_by: str) -> bool:
    """A request reads incrementally when the stream is incremental, unless it forces a
    full refresh (``--full``), asks for a subset (``--where``), or comes from the applier
    (first snapshots and rebuilds need the whole table)."""
    return mode == "incremental" and not full and where is None and requested_by != "applier"
