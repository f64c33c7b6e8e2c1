"""The snapshotter's loop driven through its ports with fakes (no Kafka, no Postgres):
untrusted requests are refused, dead-lettered and answered without touching the source,
and a request is committed once answered (not taken again after a restart)."""
from __future__ import annotations

import json
import threading
import time

from mallard.services.applier.fakes import FakeKafka, FakeProducer
from mallard.services.snapshotter.bootstrap import bootstrap
from mallard.services.snapshotter.config import SnapshotterSettings

CONTROL, SNAPSHOTS, DEAD = "mallard.control", "mallard.snapshots", "mallard.dead-letter"


def request(request_id: str, streams: list[str], where: str | None = None) -> bytes:
    return json.dumps({"kind": "resnapshot", "schema_version": 1, "request_id": request_id, "streams": streams,
                       "reason": "test", "requested_by": "cli:test", "requested_at": "2026-12-03T10:00:00Z",
                       "where": where}).encode()


def no_source():
    raise AssertionError("an untrusted request reached Postgres")


def run_until(service, done, timeout: float = 20.0) -> None:
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)
    service.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert done(), "the loop did not get there"


def messages(kafka: FakeKafka, topic: str) -> list[dict]:
    return [json.loads(v) for _, v in kafka.topics.get(topic, {}).get(0, []) if v is not None]


def test_untrusted_requests_are_refused_dead_lettered_and_answered_without_the_source():
    kafka = FakeKafka()
    for topic in (CONTROL, SNAPSHOTS, DEAD):
        kafka.create(topic)
    kafka.produce(CONTROL, b"r1", request("r1", ["public.not_replicated"]))
    kafka.produce(CONTROL, b"r2", request("r2", ["public.orders"], where="1=1); CREATE TABLE pwned (x int); --"))
    kafka.produce(CONTROL, b"r3", b"{not json")
    settings = SnapshotterSettings(health_port=0, replication_config="")

    def wired():
        return bootstrap(settings, prepare_topics=lambda stopping: None, control_source=kafka.consumer("mallard-snapshotter"),
                         snapshot_writer=FakeProducer(kafka), source=no_source)

    run_until(wired(), lambda: kafka.committed.get("mallard-snapshotter", {}).get((CONTROL, 0)) == 3)
    assert len(messages(kafka, DEAD)) == 3
    failed = {m["request_id"]: m["reason"] for m in messages(kafka, SNAPSHOTS) if m.get("kind") == "failed"}
    assert set(failed) == {"r1", "r2"}
    assert "not replicated" in failed["r1"] and "bad filter" in failed["r2"]
    reasons = " | ".join(m["error"] for m in messages(kafka, DEAD))
    assert "public.not_replicated" in reasons and "bad filter" in reasons and "malformed" in reasons

    # Answered and committed: a restarted snapshotter does not take them again.
    before = (len(messages(kafka, DEAD)), len(messages(kafka, SNAPSHOTS)))
    service = wired()
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    time.sleep(1.5)
    service.stop()
    thread.join(10)
    assert (len(messages(kafka, DEAD)), len(messages(kafka, SNAPSHOTS))) == before


def test_bootstrap_refuses_a_port_that_does_not_exist():
    import pytest

    with pytest.raises(TypeError, match="no such port: kafka"):
        bootstrap(SnapshotterSettings(health_port=0), kafka=object())


def test_a_commit_refused_after_the_group_dropped_the_snapshotter_is_transient():
    """A snapshotter stalled past its session is dropped from its group: the commit of the
    requests it served fails, and the group hands their partition back from the old offset.
    The service goes on: it skips what it served, commits it later, and serves the next."""
    from confluent_kafka import KafkaError, KafkaException

    kafka = FakeKafka()
    for topic in (CONTROL, SNAPSHOTS, DEAD):
        kafka.create(topic)
    kafka.produce(CONTROL, b"r1", request("r1", ["public.not_replicated"]))
    refusals = []

    def drop_once(offsets):
        if not refusals:
            refusals.append(offsets)
            consumer.rebalance()  # read again from the committed offset, as after a rejoin
            raise KafkaException(KafkaError(KafkaError._ASSIGNMENT_LOST))

    consumer = kafka.consumer("mallard-snapshotter")
    consumer.before_commit = drop_once
    service = bootstrap(SnapshotterSettings(health_port=0, replication_config=""), prepare_topics=lambda stopping: None,
                        control_source=consumer, snapshot_writer=FakeProducer(kafka), source=no_source)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while kafka.committed.get("mallard-snapshotter", {}).get((CONTROL, 0)) != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert refusals and kafka.committed["mallard-snapshotter"][(CONTROL, 0)] == 1
        kafka.produce(CONTROL, b"r2", request("r2", ["public.not_replicated_either"]))
        while kafka.committed["mallard-snapshotter"][(CONTROL, 0)] != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert thread.is_alive() and kafka.committed["mallard-snapshotter"][(CONTROL, 0)] == 2
    finally:
        service.stop()
        thread.join(10)
    assert [m["request_id"] for m in messages(kafka, SNAPSHOTS) if m.get("kind") == "failed"] == ["r1", "r2"]
    assert len(messages(kafka, DEAD)) == 2  # r1 refused once, not again after the rebalance
