"""Day-two changes of the replication config (``mallard config apply``): the pure diff,
the services' watch of their config file, the publication's SQL, and the applier's and
scheduler's loops taking a new config without a restart (with the fakes)."""
from __future__ import annotations

import logging
import time

import orjson
import pytest

from mallard.config.replication import ConfigWatch, config_digest
from mallard.core.keyless import PublicationPlan, publication_statements
from mallard.core.replication import diff_configs, parse_config

BASE = """\
streams:
  public.a:
  public.b:
    mode: incremental
    update_key: updated_at
schedules:
  nightly:
    cron: "0 3 * * *"
    streams: [public.a]
"""


def test_diff_names_streams_added_removed_and_changed_by_their_one_spelling():
    old = parse_config(BASE)
    new = parse_config("""\
streams:
  '"public"."a"':
    where: "id > 10"
  public.c:
schedules:
  nightly:
    cron: "0 4 * * *"
    streams: [public.a]
  hourly:
    cron: "0 * * * *"
""")
    d = diff_configs(old, new)
    assert d.added == ("public.c",) and d.removed == ("public.b",)
    assert d.changed == {"public.a": ("where",)}
    assert d.schedules_added == ("hourly",) and d.schedules_changed == ("nightly",) and not d.schedules_removed
    assert d.streams_changed and not d.fixed_changed and not d.empty
    assert d.describe() == "+public.c, -public.b, ~public.a (where), +schedule hourly, ~schedule nightly"


def test_diff_of_the_same_config_is_empty_and_a_mode_change_is_a_change():
    assert diff_configs(parse_config(BASE), parse_config(BASE)).empty
    assert diff_configs(parse_config(BASE), parse_config(BASE)).describe() == "no change"
    d = diff_configs(parse_config(BASE), parse_config(BASE.replace("mode: incremental", "mode: full-refresh")))
    assert d.changed == {"public.b": ("mode",)} and not d.streams_changed


def test_diff_says_when_the_source_or_target_change():
    moved = "source: {host: elsewhere}\ntarget: {path: other.duckdb}\n" + BASE
    assert diff_configs(parse_config(BASE), parse_config(moved)).fixed_changed == ("source", "target")


def watched(tmp_path, text: str = BASE):
    path = tmp_path / "replication.yaml"
    path.write_text(text)
    from mallard.config.replication import load_config

    return path, ConfigWatch(path, load_config(path), logging.getLogger("test"), interval_s=1.0)


def test_the_watch_takes_a_changed_file_once_and_reads_it_at_most_every_interval(tmp_path):
    path, watch = watched(tmp_path)
    assert watch.check(0.0) is None  # unchanged
    path.write_text(BASE.replace("public.b:", "public.c:"))
    assert watch.check(0.5) is None  # not yet: at most every interval
    new, diff = watch.check(1.5)
    assert diff.added == ("public.c",) and diff.removed == ("public.b",)
    assert watch.config is new and watch.digest == config_digest(path.read_bytes())
    assert watch.state()["streams"] == ["public.a", "public.c"] and watch.state()["refused"] is None
    assert watch.check(3.0) is None  # taken once


def test_the_watch_refuses_a_bad_file_and_a_moved_source_keeping_the_running_config(tmp_path, caplog):
    path, watch = watched(tmp_path)
    before = watch.config
    path.write_text(BASE.replace("mode: incremental", "mode: fast"))
    with caplog.at_level(logging.ERROR):
        assert watch.check(2.0) is None
    assert watch.config is before
    assert "unknown mode 'fast'" in watch.state()["refused"]["reason"]
    assert watch.state()["refused"]["digest"] == config_digest(path.read_bytes())
    caplog.clear()
    assert watch.check(4.0) is None and not caplog.records  # said once per version
    path.write_text("source: {host: elsewhere}\n" + BASE)
    assert watch.check(6.0) is None and watch.config is before
    assert "source changed" in watch.state()["refused"]["reason"]
    path.write_text(BASE + "  # a comment\n")  # fixed again: taken, nothing refused
    new, diff = watch.check(8.0)
    assert diff.empty and watch.state()["refused"] is None


def test_the_watch_does_nothing_when_disabled_unless_forced(tmp_path):
    path, watch = watched(tmp_path)
    watch.interval_s = 0
    path.write_text(BASE.replace("public.b:", "public.c:"))
    assert watch.check(100.0) is None
    assert watch.check(100.0, force=True)[1].added == ("public.c",)


def test_publication_statements_add_and_drop_tables_keyless_ones_in_the_inserts_publication():
    plan = PublicationPlan(main=["public.a", "public.c"], inserts=["public.log"], set_full=["public.c"], modes=[])
    sql = publication_statements(plan, "mallard_publication", "mallard_publication_inserts",
                                 held={"public.a", "public.b", "_mallard.heartbeat"}, held_inserts={"public.old"},
                                 keep={"_mallard.heartbeat"})
    assert sql == [
        'ALTER TABLE "public"."c" REPLICA IDENTITY FULL;',
        'ALTER PUBLICATION "mallard_publication" ADD TABLE "public"."c";',
        'ALTER PUBLICATION "mallard_publication" DROP TABLE "public"."b";',
        'ALTER PUBLICATION "mallard_publication_inserts" ADD TABLE "public"."log";',
        'ALTER PUBLICATION "mallard_publication_inserts" DROP TABLE "public"."old";',
    ]
    assert publication_statements(PublicationPlan(["public.a"], ["public.log"], [], []), "p", None,
                                  held={"public.a"}) == []


# -- the services' loops ---------------------------------------------------------------------

def test_the_applier_takes_an_added_and_a_removed_stream_without_a_restart(tmp_path):
    from mallard.services.applier.bootstrap import bootstrap
    from mallard.services.applier.fakes import FakeKafka, FakeReplica, FakeTopic, ReplicaStore, fake_ports
    from tests.unit.test_applier_loop import Running, Source, rows, settings

    config = tmp_path / "replication.yaml"
    config.write_text("streams:\n  public.a:\n  public.b:\n")
    kafka, store = FakeKafka(), ReplicaStore()
    source = Source(kafka, tables=("a", "b", "c"))
    for i in range(5):
        source.transaction(("a", "c", i, f"a{i}"), ("b", "c", i, f"b{i}"))
    dead, requests = FakeTopic(), FakeTopic()
    service = bootstrap(settings(tmp_path, replication_config=str(config), config_reload_interval_s=0.05),
                        **fake_ports(kafka, FakeReplica(store), dead_letters=dead, snapshot_requests=requests))
    run = Running(service)
    try:
        run.until(lambda: len(rows(store, "public.b")) == 5 and len(rows(store, "public.a")) == 5)
        config.write_text("streams:\n  public.a:\n  public.c:\n")
        run.until(lambda: requests.sent)
        for i in range(5, 10):
            source.transaction(("a", "c", i, f"a{i}"), ("b", "c", i, f"b{i}"), ("c", "c", i, f"c{i}"))
        run.until(lambda: len(rows(store, "public.c")) == 5 and len(rows(store, "public.a")) == 10)
        time.sleep(0.2)  # b's later changes had every chance to be applied
    finally:
        run.stop()
    assert [r["streams"] for r in requests.sent] == [["public.c"]]
    assert "added to the replication config" in requests.sent[0]["reason"]
    assert rows(store, "public.b") == {i: f"b{i}" for i in range(5)}  # kept as it was, no longer applied
    assert rows(store, "public.c") == {i: f"c{i}" for i in range(5, 10)}
    assert not dead.sent  # a removed stream's events are not poison
    assert service.router.skipped_removed == {"public.b": 5}
    assert service.state()["config"]["streams"] == ["public.a", "public.c"]


def test_a_scheduler_started_without_schedules_fires_one_added_to_its_config(tmp_path):
    from mallard.services.applier.fakes import FakeKafka, KafkaTopicWriter
    from mallard.services.scheduler.bootstrap import bootstrap
    from mallard.services.scheduler.config import SchedulerSettings
    from tests.unit.test_scheduler_loop import run_until

    config = tmp_path / "replication.yaml"
    config.write_text("streams:\n  public.t:\n")
    kafka = FakeKafka()
    s = SchedulerSettings(replication_config=str(config), check_tables=False, health_port=0,
                          now="2026-03-01T05:59:00+00:00", time_scale=60.0, config_reload_interval_s=0.05)
    service = bootstrap(s, prepare_topics=lambda stopping: kafka.create(s.control_topic),
                        control_source=kafka.consumer(s.consumer_group),
                        control_topic=KafkaTopicWriter(kafka, s.control_topic))

    def add_schedule_once_ready() -> bool:
        if service.ready and "schedules" not in config.read_text():
            config.write_text("streams:\n  public.t:\nschedules:\n  daily:\n    cron: \"0 6 * * *\"\n")
        return service.published == 1

    run_until(service, add_schedule_once_ready)
    fires = [orjson.loads(v) for _, v in kafka.topics[s.control_topic][0]]
    assert [f["request_id"] for f in fires] == ["daily@2026-03-01T06:00:00+00:00"]
    assert "missed" not in fires[0]["reason"]


@pytest.mark.parametrize("text", ["streams: {}\n", "streams:\n  public.a:\n    mode: fast\n"])
def test_config_apply_refuses_a_bad_file_before_anything_is_asked(tmp_path, capsys, text):
    from mallard.cli.main import main

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    # Addresses nobody answers at: a refusal must come before any of them is tried.
    assert main(["config", "apply", str(path), "--connect-url", "http://127.0.0.1:9",
                 "--pg-dsn", "postgresql://u@127.0.0.1:9/d"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mallard: {path}:") and ("streams" in err)
