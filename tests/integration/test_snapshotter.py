"""The snapshotter publishes framed, Debezium-encoded snapshots of a consistent cut."""
from __future__ import annotations

import json
import time

import psycopg2
import pytest
from confluent_kafka import Consumer, TopicPartition

from mallard.core.cut import Cut
from mallard.core.pgtypes import column_type
from schemas.snapshot import SnapshotBegin, SnapshotEnd, SnapshotRows, snapshot_message_adapter

pytestmark = pytest.mark.integration


def read_snapshot(stack, stream: str, timeout: float = 90) -> tuple[SnapshotBegin, list[SnapshotRows], SnapshotEnd]:
    """The last complete snapshot of ``stream`` on the snapshot topic."""
    consumer = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": "snap-test", "enable.auto.commit": False})
    deadline = time.monotonic() + timeout
    try:
        while "mallard.snapshots" not in consumer.list_topics(timeout=5).topics:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        consumer.assign([TopicPartition("mallard.snapshots", 0, 0)])
        begin, rows = None, []
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() or msg.key() != stream.encode():
                continue
            m = snapshot_message_adapter.validate_json(msg.value())
            if isinstance(m, SnapshotBegin):
                begin, rows = m, []
            elif isinstance(m, SnapshotRows) and begin and m.snapshot_id == begin.snapshot_id:
                rows.append(m)
            elif isinstance(m, SnapshotEnd) and begin and m.snapshot_id == begin.snapshot_id:
                return begin, rows, m
        raise AssertionError(f"no complete snapshot of {stream} within {timeout}s")
    finally:
        consumer.close()


def test_a_requested_snapshot_is_framed_complete_and_decodable(stack):
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), pg_current_xact_id()::text::bigint FROM customers")
        count, xid = cur.fetchone()
        cur.execute("SELECT id FROM customers ORDER BY id")
        source_ids = [r[0] for r in cur.fetchall()]
    out = stack.mallard("resnapshot", "public.customers", "--reason", "test").stdout
    assert out.startswith("requested cli-")
    begin, batches, end = read_snapshot(stack, "public.customers")
    cut = Cut(begin.cut.xmin, begin.cut.xmax, frozenset(begin.cut.xip))
    assert cut.covers(xid)  # everything committed before the request is in the snapshot
    assert end.row_count == count == sum(len(b.rows) for b in batches)
    assert [b.batch for b in batches] == list(range(1, len(batches) + 1)) and end.batches == len(batches)
    names = [c.name for c in begin.columns]
    assert names == ["id", "email", "full_name", "country", "created_at"]
    assert begin.columns[0].primary_key_position == 1 and begin.columns[1].primary_key_position is None
    types = [column_type(c.connect_schema) for c in begin.columns]
    assert [t.duckdb for t in types] == ["INTEGER", "VARCHAR", "VARCHAR", "VARCHAR", "TIMESTAMPTZ"]
    ids = sorted(types[0].decode(r[0]) for b in batches for r in b.rows)
    assert ids == source_ids


def test_a_filtered_snapshot_holds_only_its_subset(stack):
    stack.mallard("resnapshot", "public.products", "--where", "id <= 25", "--reason", "subset")
    begin, batches, end = read_snapshot(stack, "public.products")
    assert begin.where == "id <= 25" and end.row_count == 25
    assert sorted(r[0] for b in batches for r in b.rows) == list(range(1, 26))
    state = json.loads(stack.mallard("stack", "status", "--json").stdout)["components"]["snapshotter"]["detail"]
    assert state["snapshots"] >= 1 and state["failed"] == 0


def test_no_cut_is_taken_while_the_replication_slot_does_not_exist(stack):
    from datetime import datetime, timezone

    from schemas.control import ResnapshotRequest
    from services.snapshotter.config import SnapshotterSettings
    from services.snapshotter.service import SnapshotError, SnapshotterService

    settings = SnapshotterSettings(pg_port=int(stack.ports["MALLARD_PG_PORT"]),
                                   pg_password=stack.env["MALLARD_PG_PASSWORD"],
                                   kafka_bootstrap_servers=stack.bootstrap_servers)
    service = SnapshotterService(settings)
    service.slot_name = "no_such_slot"  # as if Debezium had not created its slot yet
    request = ResnapshotRequest(request_id="r", streams=["public.customers"], reason="test", requested_by="test",
                                requested_at=datetime.now(timezone.utc))
    with pytest.raises(SnapshotError, match="replication slot 'no_such_slot' does not exist.*start the CDC publisher"):
        service.snapshot("public.customers", request)
