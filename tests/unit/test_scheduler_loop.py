"""The scheduler's loop, driven with in-memory fakes (services/applier/fakes.py's Kafka)
through services/scheduler/bootstrap.py: each fire once, also across a restart."""
from __future__ import annotations

import threading
import time

import orjson

from mallard.services.applier.fakes import FakeKafka, KafkaTopicWriter
from mallard.services.scheduler.bootstrap import bootstrap
from mallard.services.scheduler.config import SchedulerSettings

CONFIG = """
source: {type: postgres, host: 127.0.0.1, port: 5432, user: u, database: d}
target: {type: duckdb, path: r.duckdb}
streams:
  public.t:
schedules:
  daily:
    cron: "0 6 * * *"
    streams: "*"
"""


def run_until(service, condition, timeout: float = 15.0) -> None:
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not condition():
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        service.stop()
        thread.join(10)


def scheduler(tmp_path, kafka: FakeKafka, now: str):
    (tmp_path / "replication.yaml").write_text(CONFIG)
    s = SchedulerSettings(replication_config=str(tmp_path / "replication.yaml"), check_tables=False, health_port=0,
                          now=now, time_scale=60.0)
    return bootstrap(s, prepare_topics=lambda stopping: kafka.create(s.control_topic),
                     control_source=kafka.consumer(s.consumer_group),
                     control_topic=KafkaTopicWriter(kafka, s.control_topic)), s.control_topic


def test_a_fire_is_published_once_and_a_restarted_scheduler_does_not_publish_it_again(tmp_path):
    kafka = FakeKafka()
    first, topic = scheduler(tmp_path, kafka, "2026-03-01T05:59:30+00:00")
    run_until(first, lambda: first.published == 1)
    fires = [orjson.loads(v) for _, v in kafka.topics[topic][0]]
    assert [f["request_id"] for f in fires] == ["daily@2026-03-01T06:00:00+00:00"]
    again, _ = scheduler(tmp_path, kafka, "2026-03-01T06:00:30+00:00")  # restarted just after the fire
    run_until(again, lambda: again.caught_up)
    time.sleep(0.2)
    assert again.published == 0 and len(kafka.topics[topic][0]) == 1
    assert again.last_fire["daily"].isoformat() == "2026-03-01T06:00:00+00:00"
