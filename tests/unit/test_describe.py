import json
from datetime import datetime, timezone
from pathlib import Path

from mallard.core.describe import describe
from schemas.control import ResnapshotRequest
from schemas.deadletter import DeadLetter
from schemas.snapshot import SnapshotBegin, SnapshotEnd, SnapshotRows

EVENTS = json.loads((Path(__file__).parent.parent / "fixtures" / "debezium" / "orders_events.json").read_text())
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def render(e):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    return describe(e["topic"], e["partition"], e["offset"], enc(e["key"]), enc(e["value"]))


def test_every_debezium_message_kind_is_rendered():
    lines = [render(e).splitlines()[0] for e in EVENTS]
    kinds = [line.split()[1] for line in lines]
    assert kinds == ["insert", "update", "delete", "tombstone", "truncate"] + ["transaction"] * 8
    insert = render(EVENTS[0])
    assert "public.orders txId=" in insert and '"status":"placed"' in insert and "key    {\"id\":" in insert
    assert "before" in render(EVENTS[2])  # a delete shows what was deleted
    end = render(next(e for e in EVENTS if '"END"' in (e["value"] or "")))
    assert "events=1 (public.orders=1)" in end


def test_mallard_messages_are_rendered():
    begin = SnapshotBegin(snapshot_id="s1", stream="public.orders", cut={"xmin": 5, "xmax": 9, "xip": [6]},
                          columns=[{"name": "id", "pg_type": "bigint"}], started_at=NOW)
    rows = SnapshotRows(snapshot_id="s1", stream="public.orders", batch=1, rows=[[1], [2]])
    end = SnapshotEnd(snapshot_id="s1", stream="public.orders", batches=1, row_count=2, finished_at=NOW)
    letter = DeadLetter(error="not JSON", service="applier", source_topic="mallard.public.t", source_partition=1,
                        source_offset=7, value="x", failed_at=NOW)
    assert describe("mallard.dead-letter", 0, 3, None, letter.model_dump_json().encode()) == \
        "mallard.dead-letter[0]@3 dead letter from mallard.public.t[1]@7 by applier: not JSON"
    req = ResnapshotRequest(request_id="r1", streams=["public.orders"], reason="repair", requested_by="cli:me",
                            requested_at=NOW)
    out = [describe("t", 0, i, b"k", m.model_dump_json().encode()) for i, m in enumerate((begin, rows, end, req))]
    assert "snapshot BEGIN public.orders id=s1" in out[0] and '"xip":[6]' in out[0]
    assert "batch=1 rows=2" in out[1]
    assert "snapshot END public.orders id=s1 rows=2" in out[2]
    assert "resnapshot request id=r1 streams=['public.orders']" in out[3]


def test_garbage_is_shown_not_hidden():
    assert "undecodable" in describe("t", 0, 0, None, b"\xff\x00not json")
