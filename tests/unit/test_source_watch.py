"""The snapshotter's scrape-time view of the CDC side (the slot, the connector's tasks) and
of each stream's snapshot: right series from a status document, and a scrape that neither
hangs nor fails when Postgres or Connect does not answer."""
from __future__ import annotations

import socket
import time

from prometheus_client.parser import text_string_to_metric_families

from mallard.services.snapshotter import source_watch
from mallard.services.snapshotter.config import SnapshotterSettings
from mallard.services.snapshotter.service import SnapshotterService, _Batcher
from mallard.stack.processes import free_ports
from mallard.runtime.metrics import ServiceMetrics


def samples(families) -> dict:
    m = ServiceMetrics("t")
    m.on_scrape(lambda: families)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(m.render().decode()) for s in f.samples}


FAILED_TASK = {"name": "mallard-postgres", "connector": {"state": "RUNNING", "worker_id": "w:1"},
               "tasks": [{"id": 0, "state": "FAILED", "worker_id": "w:1", "trace": "org.apache.kafka...Exception"}]}


def test_a_failed_task_is_its_failed_series_at_one_and_every_other_state_at_zero():
    got = samples(source_watch.connector_families("mallard-postgres", lambda: FAILED_TASK))
    task = lambda state: got[("mallard_connector_task_state",
                              (("connector", "mallard-postgres"), ("state", state), ("task", "0")))]
    assert task("FAILED") == 1 and task("RUNNING") == 0 and task("PAUSED") == 0
    assert got[("mallard_connector_state", (("connector", "mallard-postgres"), ("state", "RUNNING")))] == 1
    assert got[("mallard_connect_reachable", ())] == 1 and got[("mallard_connector_tasks", ())] == 1


def test_a_state_connect_adds_later_is_reported_too():
    doc = {"connector": {"state": "RUNNING"}, "tasks": [{"id": 0, "state": "SOMETHING_NEW"}]}
    got = samples(source_watch.connector_families("c", lambda: doc))
    assert got[("mallard_connector_task_state", (("connector", "c"), ("state", "SOMETHING_NEW"), ("task", "0")))] == 1


def test_the_slot_series_from_its_state_and_a_missing_slot():
    got = samples(source_watch.slot_families("s", lambda: {"active": False, "confirmed_flush_lsn": "0/1",
                                                           "retained_wal_bytes": 123456}))
    assert got[("mallard_replication_slot_retained_wal_bytes", (("slot", "s"),))] == 123456
    assert got[("mallard_replication_slot_active", (("slot", "s"),))] == 0
    assert got[("mallard_replication_slot_exists", (("slot", "s"),))] == 1
    missing = samples(source_watch.slot_families("s", lambda: None))
    assert missing[("mallard_replication_slot_exists", (("slot", "s"),))] == 0
    assert ("mallard_replication_slot_retained_wal_bytes", (("slot", "s"),)) not in missing


def silent_listener() -> tuple[socket.socket, int]:
    """A port that accepts connections and never says a word (a hung server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, sock.getsockname()[1]


def test_a_scrape_neither_hangs_nor_fails_when_postgres_and_connect_do_not_answer():
    hung, hung_port = silent_listener()
    closed_port = free_ports(1)[0]
    try:
        for port in (closed_port, hung_port):
            svc = SnapshotterService(SnapshotterSettings(health_port=0, pg_port=port, pg_host="127.0.0.1",
                                                         connect_url=f"http://127.0.0.1:{port}"))
            svc.slot_name, svc.connector_name = "mallard_debezium", "mallard-postgres"
            started = time.monotonic()
            text = svc.metrics.render().decode()
            took = time.monotonic() - started
            assert took < 2 * source_watch.SCRAPE_TIMEOUT_S + 2, (port, took)
            got = {(s.name, tuple(s.labels.items())): s.value for f in text_string_to_metric_families(text)
                   for s in f.samples}
            assert got[("mallard_postgres_reachable", ())] == 0 and got[("mallard_connect_reachable", ())] == 0
            assert not any(name.startswith(("mallard_replication_slot_", "mallard_connector_")) for name, _ in got)
            assert got[("mallard_snapshots_total", (("result", "done"),))] == 0  # the rest of the scrape is there
    finally:
        hung.close()


def test_no_connect_url_no_connector_series():
    svc = SnapshotterService(SnapshotterSettings(health_port=0, connect_url=""))
    svc.connector_name = "mallard-postgres"
    assert b"mallard_connect_reachable" not in svc.metrics.render()


class FakeProducer:
    def produce(self, *args, **kwargs):
        pass


def test_snapshot_progress_per_stream_moves_with_each_batch_and_a_failure_marks_the_stream():
    import pyarrow as pa

    from mallard.schemas.control import ResnapshotRequest
    from datetime import datetime, timezone

    svc = SnapshotterService(SnapshotterSettings(health_port=0, connect_url=""))
    svc.producer = FakeProducer()
    svc.progress["public.orders"] = {"rows": 0, "estimate": 10, "running": 1, "failed": 0}
    batcher = _Batcher(svc, "public.orders", "snap", [], 10, fix_numerics=False)
    batcher.emit_arrow(pa.record_batch({"c0": pa.array(range(4), pa.int64())}))

    def progress(name: str) -> float:
        text = svc.metrics.render().decode()
        return {s.labels.get("stream"): s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == name}

    assert progress("mallard_snapshot_progress_rows") == {"public.orders": 4}
    assert progress("mallard_snapshot_estimated_rows") == {"public.orders": 10}
    assert progress("mallard_snapshot_running") == {"public.orders": 1}
    svc._answer_failure = lambda *args: None  # no Kafka here: the answer's message is not this test's business
    svc._flush = lambda what: None
    request = ResnapshotRequest(request_id="r", streams=["public.customers"], reason="t", requested_by="test",
                                requested_at=datetime.now(timezone.utc))
    svc._fail("public.customers", request, "table gone")
    assert progress("mallard_stream_snapshot_failed") == {"public.orders": 0, "public.customers": 1}
