"""Incremental state, recovered from Kafka (the edge around mallard/core/incremental.py):
the last snapshot end of each stream on the snapshot topic, and resets on the control topic."""
from __future__ import annotations

import orjson

from mallard.adapters import kafka
from mallard.core.incremental import StateEvent, StreamState, end_event, fold_states, reset_events
from mallard.schemas.snapshot import is_arrow_rows

_END = b'"kind":"end"'
_RESET = b'"kind":"state-reset"'
_ROWS = b'"kind":"rows"'


def read_states(bootstrap_servers: str, snapshot_topic: str, control_topic: str) -> dict[str, StreamState]:
    """stream -> its state. Rows batches are skipped unparsed (only ends and resets are read)."""
    events: list[StateEvent] = []
    for msg in kafka.read_to_end(bootstrap_servers, snapshot_topic):
        value = msg.value() or b""
        if is_arrow_rows(value):
            continue
        if _ROWS not in value[:64] and _END in value:  # rows batches start with their kind (hand-framed)
            e = end_event(orjson.loads(value))
            if e is not None:
                events.append(e)
    for msg in kafka.read_to_end(bootstrap_servers, control_topic):
        value = msg.value() or b""
        if _RESET in value:
            events += reset_events(orjson.loads(value))
    return fold_states(events)
