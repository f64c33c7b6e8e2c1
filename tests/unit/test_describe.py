import json
from datetime import datetime, timezone
from pathlib import Path

from mallard.core.describe import describe, key_matches
from mallard.schemas.control import ResnapshotRequest, StateReset
from mallard.schemas.deadletter import DeadLetter
from mallard.schemas.snapshot import SnapshotBegin, SnapshotEnd, SnapshotRows

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
    assert describe("mallard.dead-letter", 0, 3, None, letter.model_dump_json().encode()).splitlines()[0] == \
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


def test_every_kind_says_what_it_is_and_its_essentials():
    enc = lambda m: m.model_dump_json().encode()  # noqa: E731
    fire = ResnapshotRequest(request_id="daily@2026-01-01T06:00:00+00:00", streams=["public.orders"],
                             reason="schedule daily (0 6 * * *)", requested_by="scheduler:daily", requested_at=NOW)
    assert "schedule fire id=daily@2026-01-01T06:00:00+00:00 streams=['public.orders']" in describe("c", 0, 0, b"k", enc(fire))
    subset = ResnapshotRequest(request_id="r2", streams=["public.orders"], reason="repair", requested_by="cli:me",
                               requested_at=NOW, where="id < 10", full=False)
    assert "where='id < 10'" in describe("c", 0, 1, b"r2", enc(subset))
    reset = StateReset(reset_id="reset-1", streams=["public.orders"], to_value="2026-01-01", requested_by="cli:me",
                       requested_at=NOW)
    assert "state reset id=reset-1 streams=['public.orders'] resume after '2026-01-01'" in describe("c", 0, 2, None, enc(reset))
    forget = StateReset(reset_id="reset-2", streams=["public.orders"], requested_by="cli:me", requested_at=NOW)
    assert "forget (read every row)" in describe("c", 0, 3, None, enc(forget))
    end = SnapshotEnd(snapshot_id="s1", stream="public.orders", batches=2, row_count=5, finished_at=NOW,
                      update_key="updated_at", max_update_key="2026-01-01 00:00:00")
    assert "updated_at up to '2026-01-01 00:00:00'" in describe("mallard.snapshots", 0, 9, b"public.orders", enc(end))
    begin = SnapshotBegin(snapshot_id="s2", stream="public.orders", cut={"xmin": 5, "xmax": 9, "xip": []},
                          columns=[{"name": "id", "pg_type": "bigint"}], started_at=NOW, where="id > 3",
                          incremental=True, request_id="r9")
    out = describe("mallard.snapshots", 0, 10, b"public.orders", enc(begin))
    assert "where='id > 3' incremental request=r9" in out
    letter = DeadLetter(error="not JSON", service="applier", source_topic="mallard.public.t", source_partition=1,
                        source_offset=7, key='{"id":1}', value="garbage" * 100, failed_at=NOW)
    out = describe("mallard.dead-letter", 0, 0, b'{"id":1}', enc(letter)).splitlines()
    assert "original (utf-8) key '{\"id\":1}'" in out[1] and out[2].endswith("…'") and len(out[2]) < 240
    heartbeat = (b'{"schema":{"type":"struct","fields":[{"type":"int64","optional":false,"field":"ts_ms"}],'
                 b'"optional":false,"name":"io.debezium.connector.common.Heartbeat","version":1},'
                 b'"payload":{"ts_ms":1767225600000}}')
    key = b'{"schema":{"type":"struct","fields":[],"name":"io.debezium.connector.common.ServerNameKey"},' \
          b'"payload":{"serverName":"mallard"}}'
    assert describe("__debezium-heartbeat.mallard", 0, 0, key, heartbeat) == \
        "__debezium-heartbeat.mallard[0]@0 heartbeat mallard ts=2026-01-01T00:00:00.000Z"
    begin_tx = b'{"schema":{},"payload":{"status":"BEGIN","id":"7:1","event_count":null,"ts_ms":1767225600000}}'
    assert describe("mallard.transaction", 0, 0, None, begin_tx) == \
        "mallard.transaction[0]@0 transaction BEGIN id=7:1 ts=2026-01-01T00:00:00.000Z"


def test_change_events_show_their_commit_time_also_without_schemas():
    event = {"before": None, "after": {"id": 1}, "op": "r", "ts_ms": 1,
             "source": {"schema": "public", "table": "t", "txId": 9, "lsn": 10, "ts_ms": 1767225600000}}
    out = describe("mallard.public.t", 0, 0, b'{"id":1}', json.dumps(event).encode())
    assert out.startswith("mallard.public.t[0]@0 read public.t txId=9 lsn=10") and "committed=2026-01-01T00:00:00.000Z" in out


def test_key_matches_the_keys_value_a_json_object_or_plain_text():
    debezium = EVENTS[0]["key"].encode()  # {"schema": ..., "payload": {"id": 5001}}
    assert key_matches(debezium, "5001") and key_matches(debezium, '{"id": 5001}') and key_matches(debezium, '{"id":5001}')
    assert not key_matches(debezium, "5002") and not key_matches(debezium, '{"id": 1}') and not key_matches(debezium, "{}")
    composite = b'{"schema":{},"payload":{"shop":"a","id":7}}'
    assert key_matches(composite, '{"id": 7}') and key_matches(composite, '{"shop": "a", "id": 7}')
    assert not key_matches(composite, "7")  # one value does not name a two-column key
    assert key_matches(b'{"payload":{"code":"abc"},"schema":{}}', "abc")
    assert key_matches(b'{"payload":{"code":"42"},"schema":{}}', "42")  # a text key that looks like a number
    assert key_matches(b"public.orders", "public.orders") and not key_matches(b"public.orders", "public.order")
    assert not key_matches(None, "1")


def test_arrow_rows_are_rendered():
    import pyarrow as pa

    from mallard.schemas.snapshot import SnapshotRowsHeader, arrow_rows_message

    value = arrow_rows_message(SnapshotRowsHeader(snapshot_id="s1", stream="public.orders", batch=3),
                               pa.record_batch({"c0": pa.array([7, 8]), "c1": pa.array(["a", None])}))
    out = describe("mallard.snapshots", 0, 5, b"public.orders", value)
    assert out.startswith("mallard.snapshots[0]@5 snapshot ROWS public.orders id=s1 batch=3 rows=2 (Arrow")
    assert out.endswith('first=[7,"a"]')
    assert "undecodable Arrow value" in describe("t", 0, 0, None, b"\xff\xff\xff\xffnot arrow")
