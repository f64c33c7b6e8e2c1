"""The snapshotter publishes framed, Debezium-encoded snapshots of a consistent cut."""
from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime, timezone

import psycopg2
import pytest
from confluent_kafka import Consumer, TopicPartition

from mallard.adapters import kafka
from mallard.core.cut import Cut
from mallard.core.pgtypes import column_type
from mallard.schemas.snapshot import (SnapshotBegin, SnapshotEnd, SnapshotRows, is_arrow_rows, read_arrow_rows,
                              snapshot_message_adapter)

pytestmark = pytest.mark.integration


def request(stack, *args: str) -> datetime:
    """`mallard resnapshot ARGS`; when it was requested."""
    requested_at = datetime.now(timezone.utc)
    out = stack.mallard("resnapshot", *args).stdout
    assert out.startswith("requested cli-"), out
    return requested_at


def parse(value: bytes) -> SnapshotBegin | SnapshotRows | SnapshotEnd:
    """A snapshot message; an Arrow rows batch as SnapshotRows of its (transport) values."""
    if is_arrow_rows(value):
        header, table = read_arrow_rows(value)
        return SnapshotRows(snapshot_id=header.snapshot_id, stream=header.stream, batch=header.batch,
                            rows=[list(r.values()) for r in table.to_pylist()])
    return snapshot_message_adapter.validate_json(value)


def read_snapshot(stack, stream: str, requested_at: datetime, timeout: float = 90) -> tuple[SnapshotBegin, list[SnapshotRows], SnapshotEnd]:
    """The first complete snapshot of ``stream`` begun after ``requested_at`` (the applier asks
    for snapshots too, e.g. the first ones, and waiting requests are coalesced)."""
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
            m = parse(msg.value())
            if isinstance(m, SnapshotBegin):
                begin, rows = (m, []) if m.started_at >= requested_at else (None, [])
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
    requested_at = request(stack, "public.customers", "--reason", "test")
    begin, batches, end = read_snapshot(stack, "public.customers", requested_at)
    cut = Cut(begin.cut.xmin, begin.cut.xmax, frozenset(begin.cut.xip))
    assert cut.covers(xid)  # everything committed before the request is in the snapshot
    assert begin.rows_format == "arrow"
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
    def snapshotter_counts() -> tuple[int, int]:
        state = json.loads(stack.mallard("stack", "status", "--json").stdout)["components"]["snapshotter"]["detail"]
        return state["snapshots"], state["failed"]

    done_before, failed_before = snapshotter_counts()  # the session's stack: other tests fail requests on purpose
    requested_at = request(stack, "public.products", "--where", "id <= 25", "--reason", "subset")
    begin, batches, end = read_snapshot(stack, "public.products", requested_at)
    assert begin.where == "id <= 25" and end.row_count == 25
    assert sorted(r[0] for b in batches for r in b.rows) == list(range(1, 26))
    done, failed = snapshotter_counts()
    assert done >= done_before + 1 and failed == failed_before


def test_no_cut_is_taken_while_the_replication_slot_does_not_exist(stack):
    from datetime import datetime, timezone

    from mallard.schemas.control import ResnapshotRequest
    from mallard.services.snapshotter.config import SnapshotterSettings
    from mallard.services.snapshotter.service import SnapshotError, SnapshotterService

    settings = SnapshotterSettings(pg_port=int(stack.ports["MALLARD_PG_PORT"]),
                                   pg_password=stack.env["MALLARD_PG_PASSWORD"],
                                   kafka_bootstrap_servers=stack.bootstrap_servers)
    service = SnapshotterService(settings)
    service.slot_name = "no_such_slot"  # as if Debezium had not created its slot yet
    request = ResnapshotRequest(request_id="r", streams=["public.customers"], reason="test", requested_by="test",
                                requested_at=datetime.now(timezone.utc))
    with pytest.raises(SnapshotError, match="replication slot 'no_such_slot' does not exist.*start the CDC publisher"):
        service.snapshot("public.customers", request)


def direct_service(stack, topic: str, **overrides):
    """The snapshotter's snapshot function, run here against the stack (its own topic)."""
    from mallard.services.snapshotter.config import SnapshotterSettings
    from mallard.services.snapshotter.service import SnapshotterService

    settings = SnapshotterSettings(pg_port=int(stack.ports["MALLARD_PG_PORT"]), pg_password=stack.env["MALLARD_PG_PASSWORD"],
                                   kafka_bootstrap_servers=stack.bootstrap_servers, snapshot_topic=topic, health_port=0,
                                   **overrides)
    service = SnapshotterService(settings)
    service.open()
    return service


def topic_messages(stack, topic: str, idle: float = 3.0) -> list:
    consumer = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": "snap-test-read",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    out, last = [], time.monotonic()
    try:
        while time.monotonic() - last < idle:
            msg = consumer.poll(0.3)
            if msg is None or msg.error():
                continue
            last = time.monotonic()
            out.append(parse(msg.value()))
        return out
    finally:
        consumer.close()


def request_for(stream: str, where: str | None = None):
    from datetime import datetime, timezone

    from mallard.schemas.control import ResnapshotRequest

    return ResnapshotRequest(request_id=f"test-{time.monotonic_ns()}", streams=[stream], reason="test",
                             requested_by="test", requested_at=datetime.now(timezone.utc), where=where)


def test_parallel_readers_share_one_cut_under_concurrent_writes(stack):
    """Three connections read disjoint page ranges of one exported snapshot while a writer
    inserts and deletes rows: the snapshot holds exactly the rows of the cut, in one frame."""
    import threading

    conn = psycopg2.connect(stack.dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS par_rows")
        cur.execute("CREATE TABLE par_rows (id bigint PRIMARY KEY, pad text)")
        cur.execute("INSERT INTO par_rows SELECT g, repeat('x', 200) FROM generate_series(1, 60000) g")
        cur.execute("ANALYZE par_rows")
    initial = set(range(1, 60001))
    done, log = threading.Event(), []

    def writer():
        w = psycopg2.connect(stack.dsn)
        next_id, gone = 100_000, 1
        while not done.is_set():
            with w, w.cursor() as cur:  # one transaction: insert one row, delete one, note the xid
                cur.execute("INSERT INTO par_rows VALUES (%s, 'new') RETURNING pg_current_xact_id()::text::bigint",
                            (next_id,))
                xid = cur.fetchone()[0]
                cur.execute("DELETE FROM par_rows WHERE id = %s", (gone,))
            log.append((xid, next_id, gone))
            next_id, gone = next_id + 1, gone + 7
        w.close()

    t = threading.Thread(target=writer)
    t.start()
    deadline = time.monotonic() + 30
    while len(log) < 20 and time.monotonic() < deadline:  # writes before the cut too
        time.sleep(0.05)
    try:
        service = direct_service(stack, "test.parallel", parallel_readers=3, parallel_min_rows=0, batch_rows=1000)
        end = service.snapshot("public.par_rows", request_for("public.par_rows"))
    finally:
        done.set()
        t.join()
    messages = topic_messages(stack, "test.parallel")
    begin = messages[0]
    assert isinstance(begin, SnapshotBegin) and isinstance(messages[-1], SnapshotEnd)
    rows = [m for m in messages if isinstance(m, SnapshotRows)]
    assert {m.snapshot_id for m in messages} == {begin.snapshot_id}
    assert [m.batch for m in rows] == list(range(1, len(rows) + 1)) and end.batches == len(rows)
    cut = Cut(begin.cut.xmin, begin.cut.xmax, frozenset(begin.cut.xip))
    expected = set(initial)
    for xid, inserted, deleted in log:
        if cut.covers(xid):
            expected.add(inserted)
            expected.discard(deleted)
    ids = [r[0] for m in rows for r in m.rows]
    assert len(ids) == len(set(ids)) == end.row_count
    assert set(ids) == expected
    assert log, "no concurrent writes"
    assert any(cut.covers(x) for x, _, _ in log) and not all(cut.covers(x) for x, _, _ in log)  # writes on both sides


def test_bad_requests_are_refused_by_name_and_the_service_goes_on(cdc_stack):
    """On a stack capturing every table (any existing table may be asked for)."""
    stack = cdc_stack
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS no_key; CREATE TABLE no_key (a int); INSERT INTO no_key VALUES (1), (2)")
    stack.mallard("resnapshot", "public.no_key", "--where", "a = 1")
    stack.mallard("resnapshot", "public.no_such_table")
    out = stack.mallard("resnapshot", "public.products", "--where", "id <<>> 3", check=False)
    assert out.returncode == 1 and "--where: operator <<>> is not allowed in a filter" in out.stderr, out
    stack.mallard("resnapshot", "public.products", "--where", "no_such_column = 3")
    requested_at = request(stack, "public.no_key")  # a full snapshot of a table without a key is fine
    begin, batches, end = read_snapshot(stack, "public.no_key", requested_at)
    assert begin.where is None and end.row_count == 2
    log = (stack.home / "logs" / "snapshotter.log").read_text()
    assert "table public.no_key has no primary key: a subset (--where) cannot be snapshotted" in log
    assert "table public.no_such_table does not exist in Postgres" in log
    assert "bad filter for public.products ('no_such_column = 3')" in log
    state = json.loads(stack.mallard("stack", "status", "--json").stdout)["components"]["snapshotter"]
    assert state["state"] == "running"


def signal_once_rows_are_out(stack, stream: str, sig: int, end_too: bool = False) -> tuple[datetime, str, int]:
    """Request a snapshot of ``stream`` and send the snapshotter ``sig`` once its first rows are
    in Kafka (or its end, with ``end_too``; else that end fails the test): (when it was
    requested, the snapshot's id, the snapshotter's pid)."""
    pid = stack.status()["components"]["snapshotter"]["pid"]
    consumer = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": "snap-signal",
                         "enable.auto.commit": False})
    _, high = consumer.get_watermark_offsets(TopicPartition("mallard.snapshots", 0), timeout=10)
    consumer.assign([TopicPartition("mallard.snapshots", 0, high)])
    requested_at = request(stack, stream, "--reason", f"signal {sig}")
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() or msg.key() != stream.encode():
                continue
            m = parse(msg.value())
            assert end_too or not isinstance(m, SnapshotEnd), "the snapshot finished before the signal"
            if isinstance(m, (SnapshotRows, SnapshotEnd)):
                os.kill(pid, sig)
                return requested_at, m.snapshot_id, pid
    finally:
        consumer.close()
    raise AssertionError(f"no rows of a snapshot of {stream} within 120 s")


def test_a_snapshotter_killed_mid_snapshot_redoes_the_request_after_restart(cdc_stack):
    stack = cdc_stack  # capturing every table: big_orders may be asked for
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS big_orders")
        # UNLOGGED: never decoded from the WAL. The snapshotter reads it as any table, but the
        # 1.5M-row INSERT does not become one 1.5M-event CDC transaction on this shared stack,
        # which every later transaction would wait behind (whole transactions, commit order)
        # for many minutes: the next tests' tables would not appear in the replica in time.
        cur.execute("CREATE UNLOGGED TABLE big_orders (id bigint PRIMARY KEY, total numeric(12,2), note text, "
                    "created_at timestamptz)")
        cur.execute("INSERT INTO big_orders SELECT g, g / 100.0, md5(g::text), now() FROM generate_series(1, 1500000) g")
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        cur.execute("ANALYZE big_orders")
    requested_at, killed_id, _ = signal_once_rows_are_out(stack, "public.big_orders", signal.SIGKILL)
    stack.mallard("stack", "up")  # restarts the dead snapshotter; the request was not committed
    begin, batches, end = read_snapshot(stack, "public.big_orders", requested_at, timeout=180)
    assert begin.snapshot_id != killed_id
    assert end.row_count == 1_500_000 == sum(len(b.rows) for b in batches)
    assert [b.batch for b in batches] == list(range(1, len(batches) + 1))


def test_a_snapshotter_paused_beyond_its_group_session_serves_the_next_requests(cdc_stack):
    """A snapshotter stalled longer than its consumer session (6 s: a SIGSTOP here, a starved
    CPU or a swapped-out process in the field) is dropped from its group; the commit after its
    snapshot then fails. That is transient: the service goes on and serves the next request."""
    stack = cdc_stack
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS paused_orders")
        cur.execute("CREATE UNLOGGED TABLE paused_orders (id bigint PRIMARY KEY, note text)")  # UNLOGGED: see above
        cur.execute("INSERT INTO paused_orders SELECT g, md5(g::text) FROM generate_series(1, 300000) g")
        cur.execute("CREATE TABLE after_pause (id int PRIMARY KEY)")
        cur.execute("INSERT INTO after_pause VALUES (1)")
    requested_at, _, pid = signal_once_rows_are_out(stack, "public.paused_orders", signal.SIGSTOP, end_too=True)
    try:  # until the broker drops the stopped member (its 6 s session ends)
        admin = kafka.admin_client(stack.bootstrap_servers)
        deadline = time.monotonic() + 60
        while admin.describe_consumer_groups(["mallard-snapshotter"])["mallard-snapshotter"].result(10).members:
            assert time.monotonic() < deadline, "the stopped snapshotter was never dropped from its group"
            time.sleep(0.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    _, _, end = read_snapshot(stack, "public.paused_orders", requested_at, timeout=180)
    assert end.row_count == 300_000
    requested_at = request(stack, "public.after_pause", "--reason", "after the pause")
    try:
        _, _, end = read_snapshot(stack, "public.after_pause", requested_at, timeout=120)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{stack.log_tails()}") from None
    assert end.row_count == 1
    assert stack.status()["components"]["snapshotter"]["pid"] == pid  # the same process: it never stopped
    log = (stack.home / "logs" / "snapshotter.log").read_text()
    assert "Traceback" not in log, log[-3000:]
