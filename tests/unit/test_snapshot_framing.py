"""The snapshotter's hand-built batch messages are valid SnapshotRows, and requests
waiting together are coalesced per stream."""
from __future__ import annotations

import threading
from datetime import datetime, timezone
from decimal import Decimal

import orjson
import pytest

from mallard.core.snapshot_encoding import PY_MARKER, PgColumn, encode
from mallard.schemas.control import ResnapshotRequest
from mallard.schemas.snapshot import SnapshotRows, is_arrow_rows, read_arrow_rows, snapshot_message_adapter
from mallard.services.snapshotter.config import SnapshotterSettings
from mallard.services.snapshotter.service import SnapshotAborted, SnapshotterService, _Batcher, _RowSink


class FakeProducer:
    def __init__(self):
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.headers: list = []

    def produce(self, topic, key, value, headers=None):
        self.sent.append((topic, key, value))
        self.headers.append(headers)

    def flush(self, timeout=None):
        return 0


def service() -> SnapshotterService:
    svc = SnapshotterService(SnapshotterSettings(health_port=0, progress_interval_s=0))
    svc.producer = FakeProducer()
    return svc


COLUMNS = [PgColumn("id", "int8"), PgColumn("note", "text"), PgColumn("n", "numeric")]


def test_arrow_batches_carry_their_header_and_rows_numbered_in_send_order():
    import pyarrow as pa

    svc = service()
    batcher = _Batcher(svc, "public.t", "snap-1", COLUMNS, 1000, fix_numerics=False)
    for start in (0, 3, 6):
        batcher.emit_arrow(pa.record_batch({"c0": pa.array(range(start, min(start + 3, 7)), pa.int64())}))
    values = [v for _, _, v in svc.producer.sent]
    assert all(is_arrow_rows(v) for v in values)
    decoded = [read_arrow_rows(v) for v in values]
    assert [(h.snapshot_id, h.stream, h.batch) for h, _ in decoded] == [("snap-1", "public.t", b) for b in (1, 2, 3)]
    assert [x for _, t in decoded for x in t.column("c0").to_pylist()] == list(range(7))
    assert all(t.schema.metadata is None for _, t in decoded)  # the header is not a column's business
    assert svc.producer.headers == [[("content-type", b"application/vnd.apache.arrow.stream")]] * 3
    assert batcher.rows == 7 and batcher.batches == 3
    assert not is_arrow_rows(b'{"kind":"rows"}') and not is_arrow_rows(None)
    with pytest.raises(ValueError, match="not an Arrow rows batch"):
        read_arrow_rows(b"\xff\xff\xff\xffgarbage")


def test_batches_are_valid_snapshot_rows_numbered_in_send_order():
    svc = service()
    batcher = _Batcher(svc, "public.t", 'id "quoted" \\ é', COLUMNS, 1000, fix_numerics=False)
    sink = _RowSink(batcher, max_rows=3, max_bytes=10_000)
    rows = [orjson.dumps([i, f'n{i} "x"', None]) + b"\n" for i in range(7)]
    for r in rows:  # as COPY hands them over: JSON text and a newline
        sink.write(r)
    sink.flush()
    messages = [snapshot_message_adapter.validate_json(v) for _, _, v in svc.producer.sent]
    assert all(isinstance(m, SnapshotRows) for m in messages)
    assert [m.batch for m in messages] == [1, 2, 3] and [len(m.rows) for m in messages] == [3, 3, 1]
    assert messages[0].snapshot_id == 'id "quoted" \\ é' and messages[0].stream == "public.t"
    assert [r for m in messages for r in m.rows] == [[i, f'n{i} "x"', None] for i in range(7)]
    assert {k for _, k, _ in svc.producer.sent} == {b"public.t"} and batcher.rows == 7 and batcher.batches == 3


def test_batches_are_cut_by_bytes_too():
    svc = service()
    sink = _RowSink(_Batcher(svc, "public.t", "s", COLUMNS, 0, False), max_rows=1000, max_bytes=25)
    for i in range(10):
        sink.write(b'[1,"0123456789",null]\n')
    sink.flush()
    assert [len(snapshot_message_adapter.validate_json(v).rows) for _, _, v in svc.producer.sent] == [2] * 5


def test_marked_numerics_are_encoded_in_python():
    svc = service()
    batcher = _Batcher(svc, "public.t", "s", COLUMNS, 0, fix_numerics=True)
    huge = "123456789012345678901234567890123456789012345678901234567890.5"
    batcher.emit([b'[1,"a",{"' + PY_MARKER.encode() + b'":"' + huge.encode() + b'"}]\n', b'[2,"b",null]\n'])
    m = snapshot_message_adapter.validate_json(svc.producer.sent[0][2])
    assert m.rows[0][2] == encode(COLUMNS[2], Decimal(huge)) == huge  # Debezium's text of it
    assert m.rows[1] == [2, "b", None]


def test_parallel_readers_get_unique_increasing_batch_numbers():
    svc = service()
    batcher = _Batcher(svc, "public.t", "s", COLUMNS, 0, False)

    def reader(k):
        sink = _RowSink(batcher, max_rows=5, max_bytes=10**6)
        for i in range(500):
            sink.write(f'[{k * 1000 + i},null,null]'.encode())
        sink.flush()

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    messages = [snapshot_message_adapter.validate_json(v) for _, _, v in svc.producer.sent]
    assert [m.batch for m in messages] == list(range(1, 401))
    assert sorted(r[0] for m in messages for r in m.rows) == sorted(k * 1000 + i for k in range(4) for i in range(500))


def test_a_stopping_service_leaves_the_snapshot_without_its_end():
    svc = service()
    svc.stop()
    with pytest.raises(SnapshotAborted):
        _Batcher(svc, "public.t", "s", COLUMNS, 0, False).emit([b"[1,null,null]"])


class Msg:
    def __init__(self, value: bytes):
        self._value = value

    def value(self):
        return self._value

    def topic(self):
        return "mallard.control"

    def partition(self):
        return 0

    def offset(self):
        return 0


def request(rid: str, streams: list[str], where: str | None = None) -> Msg:
    return Msg(ResnapshotRequest(request_id=rid, streams=streams, reason="t", requested_by="t",
                                 requested_at=datetime.now(timezone.utc), where=where).model_dump_json().encode())


def test_requests_waiting_together_are_coalesced_per_stream():
    svc = service()
    todo = svc.coalesce([request("a", ["public.x", "public.y"]), request("b", ["public.x"]), Msg(b"not json"),
                         request("c", ["public.z"], where="id < 5"), request("d", ["public.z"], where="id > 9"),
                         request("e", ["public.w"], where="id < 5"), request("f", ["public.w"]),
                         request("g", ["public.w"], where="id < 7")])
    assert [(s, r.request_id, r.where) for s, r in todo] == [
        ("public.x", "a", None), ("public.y", "a", None),
        ("public.z", "c", "id < 5"), ("public.z", "d", "id > 9"),  # two different subsets: both are taken
        ("public.w", "f", None),  # a full snapshot covers the subsets asked for with it
    ]


def test_resets_are_not_requests_a_forced_full_refresh_wins_and_a_fire_is_served_once():
    from mallard.schemas.control import StateReset

    def req(rid, streams, by="t", full=False):
        return Msg(ResnapshotRequest(request_id=rid, streams=streams, reason="t", requested_by=by, full=full,
                                     requested_at=datetime.now(timezone.utc)).model_dump_json().encode())

    reset = Msg(StateReset(reset_id="r", streams=["public.o"], requested_by="cli:me",
                           requested_at=datetime.now(timezone.utc)).model_dump_json().encode())
    svc = service()
    todo = svc.coalesce([reset, req("a", ["public.o"]), req("b", ["public.o"], full=True),
                         req("daily@2026-01-01T06:00:00+00:00", ["public.c"], by="scheduler:daily")])
    assert [(s, r.request_id, r.full) for s, r in todo] == [
        ("public.o", "b", True), ("public.c", "daily@2026-01-01T06:00:00+00:00", False)]
    # the same fire published again (two schedulers racing) is not snapshotted twice
    assert svc.coalesce([req("daily@2026-01-01T06:00:00+00:00", ["public.c"], by="scheduler:daily")]) == []


def test_untrusted_requests_are_refused_before_anything_runs():
    """A malformed request, a filter that is not one allowed expression, a stream that is
    not replicated: refused, dead-lettered with the reason, and answered per stream."""
    from mallard.schemas.deadletter import DeadLetter
    from mallard.schemas.snapshot import SnapshotFailed

    svc = service()
    svc.streams = frozenset({"public.orders", "public.customers"})
    refused = []
    todo = svc.coalesce([
        Msg(b"not json"),
        request("a", ["public.orders"], where="1=1); CREATE TABLE public.pwned AS SELECT current_user; --"),
        request("b", ["public.orders"], where="COPY (SELECT 1) TO PROGRAM 'touch /tmp/x'"),
        request("c", ["public.pwned", "public.customers"]),
        request("d", ["no-schema"]),
        request("e", ["public.orders"], where='"id" % 5 = 0'),
    ], refused)
    assert [(s, r.request_id, r.where) for s, r in todo] == [("public.customers", "c", None),
                                                            ("public.orders", "e", "id % 5 = 0")]
    reasons = [r.reason for r in refused]
    assert reasons[0].startswith("malformed control message")
    assert reasons[1].startswith("bad filter") and "';'" in reasons[1]
    assert reasons[2].startswith("bad filter") and "not a valid SQL expression" in reasons[2]
    assert reasons[3].startswith("stream(s) not replicated 'public.pwned'")
    assert reasons[4].startswith("bad stream name(s) 'no-schema'")
    for refusal in refused:
        svc._refuse(refusal)
    letters = [DeadLetter.model_validate_json(v) for t, _, v in svc.producer.sent if t == svc.settings.dead_letter_topic]
    assert [x.error for x in letters] == reasons and {x.service for x in letters} == {"snapshotter"}
    answers = [SnapshotFailed.model_validate_json(v) for t, _, v in svc.producer.sent if t == svc.settings.snapshot_topic]
    assert [(a.stream, a.request_id, a.snapshot_id) for a in answers] == [
        ("public.orders", "a", None), ("public.orders", "b", None), ("public.pwned", "c", None)]
    assert svc.counts["failed"] == 5


def test_a_failure_is_answered_with_the_snapshot_it_began():
    from mallard.schemas.snapshot import SnapshotFailed

    svc = service()
    req = ResnapshotRequest(request_id="r1", streams=["public.t"], reason="t", requested_by="t",
                            requested_at=datetime.now(timezone.utc))
    svc.begun = "public.t@1"
    svc._fail("public.t", req, "precision not supported by type")
    (topic, key, value), = svc.producer.sent
    failed = SnapshotFailed.model_validate_json(value)
    assert (topic, key) == (svc.settings.snapshot_topic, b"public.t")
    assert (failed.snapshot_id, failed.request_id, failed.reason) == ("public.t@1", "r1", "precision not supported by type")
