"""`mallard status`, the pure part: lag, dead letters per stream, next runs, the report and its text."""
import json
from datetime import datetime, timezone

from mallard.core.replication import parse_config
from mallard.core.status import (KafkaFacts, ReplicaFacts, build_report, dead_letters_by_stream, next_run,
                                 partition_lag, position_parts, render, service_summary, stream_of_topic)

UTC = timezone.utc
NOW = datetime(2026, 1, 1, 11, 0, tzinfo=UTC)
CONFIG = parse_config("""\
streams:
  public.customers:
  public.orders:
    mode: incremental
    update_key: updated_at
schedules:
  daily:
    cron: "0 6 * * *"
    streams: "*"
  orders:
    cron: "0 12,18 * * *"
    streams: [public.orders]
""")


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def test_lag_is_the_end_minus_the_committed_offset_and_everything_where_nothing_was_committed():
    ends = {0: (0, 10), 1: (3, 7), 2: (0, 0)}
    assert partition_lag(ends, {0: 10, 1: 5, 2: None}) == {0: 0, 1: 2, 2: 0}
    assert partition_lag(ends, {0: None, 1: None}) == {0: 10, 1: 4, 2: 0}  # counted from the low watermark
    assert partition_lag({0: (0, 5)}, {0: 6}) == {0: 0}  # an end read just before a commit: never negative


def test_positions_and_topics():
    assert position_parts((0x1B42B70 << 32) | 3) == ("0/1B42B70", 3)
    assert stream_of_topic("mallard.public.orders", "mallard") == "public.orders"
    assert stream_of_topic("mallard.transaction", "mallard") is None
    assert stream_of_topic("other.public.orders", "mallard") is None
    assert stream_of_topic("mallard.a.b.c", "mallard") is None


def test_dead_letters_are_counted_per_stream_by_topic_or_by_the_snapshot_key():
    letters = [("mallard.public.orders", '{"id":1}'), ("mallard.public.orders", None),
               ("mallard.snapshots", "public.customers"), ("mallard.snapshots", None), ("mallard.transaction", None)]
    by_stream, other = dead_letters_by_stream(letters, "mallard", "mallard.snapshots")
    assert by_stream == {"public.orders": 2, "public.customers": 1}
    assert other == {"mallard.snapshots": 1, "mallard.transaction": 1}


def test_next_run_is_the_earliest_fire_of_the_schedules_naming_the_stream():
    assert next_run("public.orders", CONFIG.schedules, NOW) == {
        "at": "2026-01-01T12:00:00.000Z", "schedule": "orders", "cron": "0 12,18 * * *"}
    assert next_run("public.customers", CONFIG.schedules, NOW)["at"] == "2026-01-02T06:00:00.000Z"
    assert next_run("public.other", CONFIG.schedules, NOW) is None
    # the running scheduler's word wins (its clock, its last fires)
    announced = {"orders": datetime(2026, 1, 1, 18, tzinfo=UTC)}
    assert next_run("public.orders", CONFIG.schedules, NOW, announced)["at"] == "2026-01-01T18:00:00.000Z"


def facts():
    replica = ReplicaFacts(source="applier")
    replica.tables = {"public.customers": {"target": '"main"."customers"', "status": "ok", "reason": None},
                      "public.orders": {"target": '"main"."orders"', "status": "ok", "reason": None},
                      "public.extra": {"target": '"main"."extra"', "status": "refused", "reason": "no primary key"}}
    replica.rows = {"public.customers": 2000, "public.orders": 5006, "public.extra": 0}
    write = {"position": (0x10 << 32) | 2, "tx_id": 700, "committed_ms": ms("2026-01-01T10:59:00+00:00"),
             "applied_ms": ms("2026-01-01T10:59:00.500+00:00")}
    replica.last_write = {"public.orders": write}
    replica.last_delete = {"public.orders": {"position": (0x20 << 32) | 1, "tx_id": 701,
                                             "applied_ms": ms("2026-01-01T10:59:30+00:00")}}
    replica.snapshots = {"public.customers": {"snapshot_id": "s1", "status": "merged", "started_ms": ms("2026-01-01T06:00:00+00:00"),
                                              "finished_ms": ms("2026-01-01T06:00:02.500+00:00"), "rows_staged": 2000,
                                              "rows_applied": 2000, "rows_deleted": 3}}
    replica.progress = {"commit_lsn": 0x20 << 32, "tx_id": 701, "committed_ms": ms("2026-01-01T10:59:29+00:00"),
                        "applied_ms": ms("2026-01-01T10:59:30+00:00")}
    kafka = KafkaFacts(lag={"mallard.public.orders": {0: 3, 1: 0, 2: 4}, "mallard.transaction": {0: 2},
                            "mallard.snapshots": {0: 0}},
                       oldest_unapplied_ms=ms("2026-01-01T10:59:40+00:00"), dead_letters_total=2,
                       dead_letters_by_stream={"public.orders": 1}, dead_letters_other={"mallard.transaction": 1})
    services = {"applier": {"state": "running", "pid": 12, "port": 18082, "summary": "applied up to LSN 0/20"},
                "scheduler": {"state": "stopped", "pid": None, "port": 18083, "summary": "not running"}}
    return services, replica, kafka


def test_report_per_stream():
    services, replica, kafka = facts()
    report = build_report(NOW, services, replica, kafka, CONFIG, "mallard", ["mallard.transaction", "mallard.snapshots"])
    json.dumps(report)  # plain JSON
    assert list(report["streams"]) == ["public.customers", "public.orders", "public.extra"]  # config first, then the replica's
    orders = report["streams"]["public.orders"]
    assert orders["mode"] == "incremental" and orders["rows"] == 5006
    assert orders["lag"] == {"total": 7, "partitions": {"0": 3, "1": 0, "2": 4}}
    # the newest change is the delete (higher position); a delete has no commit time in the replica
    assert orders["last_change"] == {"op": "delete", "lsn": "0/20", "event_order": 1, "tx_id": 701, "committed_at": None,
                                     "applied_at": "2026-01-01T10:59:30.000Z", "delay_s": None}
    assert orders["next_run"]["schedule"] == "orders" and orders["dead_letters"] == 1
    customers = report["streams"]["public.customers"]
    assert customers["lag"] == {"total": 0, "partitions": {}} and not customers["topic_exists"]
    assert customers["last_snapshot"]["duration_s"] == 2.5 and customers["last_snapshot"]["rows_deleted"] == 3
    assert customers["last_change"] is None
    extra = report["streams"]["public.extra"]
    assert not extra["configured"] and extra["status"] == "refused" and extra["next_run"] is None
    assert report["replica"]["applied_up_to"] == {"commit_lsn": "20/0", "tx_id": 701, "committed_at": "2026-01-01T10:59:29.000Z",
                                                  "applied_at": "2026-01-01T10:59:30.000Z", "delay_s": 1.0}
    assert report["replica"]["behind"] == {"oldest_unapplied_committed_at": "2026-01-01T10:59:40.000Z", "behind_s": 20.0}
    assert report["kafka"]["topics"]["mallard.transaction"]["total"] == 2
    assert report["dead_letters"]["total"] == 2


def test_a_broker_down_leaves_lag_unknown_not_zero():
    services, replica, _ = facts()
    report = build_report(NOW, services, replica, KafkaFacts(error="no Kafka broker answered"), CONFIG, "mallard", [])
    orders = report["streams"]["public.orders"]
    assert orders["lag"] is None and orders["dead_letters"] is None and report["replica"]["behind"] is None
    assert "! Kafka: no Kafka broker answered" in render(report, NOW)


def test_text():
    services, replica, kafka = facts()
    report = build_report(NOW, services, replica, kafka, CONFIG, "mallard", ["mallard.transaction"], home="/x/.mallard")
    text = render(report, NOW)
    assert "applier        running   pid 12" in text and "scheduler      stopped   pid -" in text
    assert "behind by 20s: the oldest transaction not applied yet committed 2026-01-01 10:59:40Z (20s ago)" in text
    assert "lag             7 message(s)  (p0 3, p1 0, p2 4)  on mallard.public.orders" in text
    assert "lag             0 (no CDC topic yet: no change captured)" in text
    assert "rows            2,000 in main.customers" in text
    assert ("last snapshot   merged, started 2026-01-01 06:00:00Z (5h 0m ago), 2,000 rows (2,000 applied, 3 deleted) "
            "in 2.5s  [s1]") in text
    assert "next run        2026-01-01 12:00:00Z (1h 0m from now), schedule orders (0 12,18 * * *)" in text
    assert "last change     delete at LSN 0/20 (tx 701), applied 2026-01-01 10:59:30Z (30s ago)" in text
    assert "public.extra  (not in the replication config)  refused  — no primary key" in text
    assert "dead letters  2 on mallard.dead-letter: public.orders 1, mallard.transaction 1" in text


def test_service_summaries():
    assert service_summary("applier", {"progress": {"commit_lsn": "0/1", "tx_id": 5}, "events_applied": 1200,
                                       "dead_letters": 1}) == "applied up to LSN 0/1 (tx 5); 1,200 events since start, 1 dead-lettered"
    summary = service_summary("connect", {"slot": {"active": False, "retained_wal_bytes": 4096},
                                          "connector": {"name": "mallard-postgres", "state": "connector RUNNING"}})
    assert "slot INACTIVE" in summary and "mallard-postgres: connector RUNNING" in summary
    assert service_summary("snapshotter", {"current": {"stream": "public.t", "rows": 10, "estimate": 100},
                                           "snapshots": 2}).startswith("snapshotting public.t (10/~100 rows)")
    assert service_summary("scheduler", {"leader": False, "schedules": {"a": {}}}).startswith("standing by; 1 schedule(s)")
    assert service_summary("postgres", "accepting connections") == "accepting connections"


def quiet_kafka(**lag):
    topics = {"mallard.public.orders": {0: 0}, "mallard.transaction": {0: 0}, "mallard.snapshots": {0: 0}}
    topics.update({k.replace("_", "."): v for k, v in lag.items()})
    return KafkaFacts(lag=topics, dead_letters_total=0)


def report_for(applier_state, kafka):
    services, replica, _ = facts()
    if applier_state is None:
        services.pop("applier")
    else:
        services["applier"]["state"] = applier_state
    report = build_report(NOW, services, replica, kafka, CONFIG, "mallard", ["mallard.transaction",
                                                                             "mallard.snapshots"])
    json.dumps(report)
    return report, render(report, NOW)


def test_caught_up_only_with_an_applier_that_answers_and_nothing_waiting():
    report, text = report_for("running", quiet_kafka())
    assert report["replica"]["caught_up"] and "caught up: every transaction on Kafka is applied" in text
    for state in ("stopped", "unhealthy", None):
        report, text = report_for(state, quiet_kafka())
        assert not report["replica"]["caught_up"] and "caught up:" not in text, state
        assert f"! the applier is {state or 'not known to run'}: " + (
            "nothing is being applied" if state == "stopped" else "not answering as ready, so not caught up") in text


def test_a_stopped_applier_with_messages_waiting_says_how_many():
    report, text = report_for("stopped", quiet_kafka(mallard_public_orders={0: 4, 1: 1}))
    assert report["replica"]["unapplied_messages"] == 5
    assert "! the applier is stopped: nothing is being applied (5 message(s) wait on Kafka)" in text
    assert "caught up" not in text


def test_a_stuck_snapshot_topic_is_not_caught_up():
    # lag on the snapshot topic (a snapshot that cannot finish) while no transaction waits
    report, text = report_for("running", quiet_kafka(mallard_snapshots={0: 3}))
    assert not report["replica"]["caught_up"]
    assert report["replica"]["behind"] == {"oldest_unapplied_committed_at": None, "behind_s": 0.0}  # no transaction
    assert report["replica"]["unapplied_messages"] == 3
    assert "3 message(s) on Kafka not applied yet" in text and "caught up" not in text


def test_kafka_unreadable_is_never_caught_up():
    report, text = report_for("running", KafkaFacts(error="no Kafka broker answered"))
    assert not report["replica"]["caught_up"] and report["replica"]["unapplied_messages"] is None
    assert "caught up" not in text


def test_a_schedule_that_does_not_fire_again_is_reported_not_raised():
    from dataclasses import replace

    from mallard.core.cron import CronError

    class Exhausted:
        expression = "0 0 1 1 *"

        def next_after(self, after):
            raise CronError("never fires")

    schedules = {"orders": replace(CONFIG.schedules["orders"], cron=Exhausted())}
    assert next_run("public.orders", schedules, NOW) == {"at": None, "schedule": "orders", "cron": "0 0 1 1 *"}
    services, replica, kafka = facts()
    config = replace(CONFIG, schedules=schedules)
    text = render(build_report(NOW, services, replica, kafka, config, "mallard", []), NOW)
    assert "next run        never: schedule orders (0 0 1 1 *) does not fire again" in text


def test_data_loss_on_kafka_is_reported_per_stream_and_in_the_applier_line():
    services, replica, kafka = facts()
    entry = {"topic": "mallard.public.orders", "partition": 1, "stream": "public.orders", "kind": "recreated",
             "detail": "topic mallard.public.orders was recreated", "read_again_from": 0,
             "detected_at": "2026-01-01T10:58:00.000+00:00", "resnapshot": "requested", "snapshot_id": None}
    services["applier"]["health"] = {"data_loss": {"detected": 1, "unrepaired_streams": ["public.orders"],
                                                   "streams": {"public.orders": entry}}}
    report = build_report(NOW, services, replica, kafka, CONFIG, "mallard", [])
    json.dumps(report)
    assert report["streams"]["public.orders"]["data_loss"]["kind"] == "recreated"
    assert report["streams"]["public.customers"]["data_loss"] is None
    text = render(report, NOW)
    assert ("! DATA LOSS     recreated on mallard.public.orders[1], detected 2026-01-01 10:58:00Z (2m 0s ago): "
            "re-snapshot requested, not merged yet") in text
    summary = service_summary("applier", services["applier"]["health"])
    assert "DATA LOSS on Kafka: 1 partition(s), re-snapshot pending for public.orders" in summary
    entry.update(resnapshot="merged", snapshot_id="s9")
    assert "repaired: snapshot s9 merged" in render(build_report(NOW, services, replica, kafka, CONFIG, "mallard", []), NOW)


def test_a_configured_table_that_does_not_exist_yet_is_reported_waiting():
    """Issue 18: the snapshotter holds the first snapshot of a table that does not exist
    yet; status names it per stream and in the snapshotter's line."""
    services, replica, kafka = facts()
    why = "table public.customers does not exist in Postgres; its snapshot waits for it"
    services["snapshotter"] = {"state": "running", "pid": 13, "port": 1, "log": "", "summary": "",
                               "health": {"snapshots": 0, "waiting": {"public.customers": why}}}
    replica.tables.pop("public.customers", None)
    report = build_report(NOW, services, replica, kafka, CONFIG, "mallard", [])
    assert report["streams"]["public.customers"]["waiting"] == why
    assert report["streams"]["public.orders"]["waiting"] is None
    text = render(report, NOW)
    assert "public.customers  full-refresh  WAITING for its table" in text
    assert f"    waiting         {why}" in text
    assert service_summary("snapshotter", services["snapshotter"]["health"]).endswith(
        "; waiting for 1 table(s): public.customers")


def test_a_stream_a_schema_change_rewrote_is_converging_not_ok_until_its_snapshot_is_merged():
    services, replica, kafka = facts()
    why = "column(s) added (in_stock): a default may have filled existing rows"
    replica.tables["public.customers"] = {"target": '"main"."customers"', "status": "ok", "reason": None,
                                          "converging": why}
    report = build_report(NOW, services, replica, kafka, CONFIG, "mallard", [])
    customers = report["streams"]["public.customers"]
    assert customers["status"] == "converging" and customers["reason"] == why
    assert report["streams"]["public.orders"]["status"] == "ok"
    assert f"public.customers  full-refresh  converging  — {why}" in render(report, NOW)
    # a table that needs a rebuild says so, whatever else it waits for
    replica.tables["public.customers"].update(status="needs_resnapshot", reason="key changed")
    customers = build_report(NOW, services, replica, kafka, CONFIG, "mallard", [])["streams"]["public.customers"]
    assert customers["status"] == "needs_resnapshot" and customers["reason"] == "key changed"


def test_a_snapshot_is_timed_from_request_to_merged_with_its_phases_apart():
    services, replica, kafka = facts()
    replica.snapshots["public.customers"].update({
        "requested_ms": ms("2026-01-01T05:59:58+00:00"),  # 2 s waiting for the snapshotter
        "read_finished_ms": ms("2026-01-01T06:00:01+00:00"),  # read and published in 1 s
        "merge_started_ms": ms("2026-01-01T06:00:02.200+00:00")})  # its end reached DuckDB 1.2 s later
    report = build_report(NOW, services, replica, kafka, CONFIG, "mallard", [])
    sn = report["streams"]["public.customers"]["last_snapshot"]
    assert sn["requested_at"] == "2026-01-01T05:59:58.000Z" and sn["request_to_merged_s"] == 4.5
    assert sn["phases"] == {"waited_s": 2.0, "read_s": 1.0, "transfer_s": 1.2, "merge_s": 0.3}
    text = render(report, NOW)
    assert "2,000 rows (2,000 applied, 3 deleted) in 2.5s, 4.5s from request to merged  [s1]" in text
    assert "phases          waited 2.0s, read 1.0s, transfer 1.2s, merge 0.3s" in text
    # A snapshot that was not merged has no merge phase, and a replica from before has no phases.
    replica.snapshots["public.customers"]["status"] = "abandoned"
    sn = build_report(NOW, services, replica, kafka, CONFIG, "mallard", [])["streams"]["public.customers"]["last_snapshot"]
    assert sn["request_to_merged_s"] is None and sn["phases"]["merge_s"] is None
    services, replica, kafka = facts()
    report = build_report(NOW, services, replica, kafka, CONFIG, "mallard", [])
    assert report["streams"]["public.customers"]["last_snapshot"]["phases"] == {
        "waited_s": None, "read_s": None, "transfer_s": None, "merge_s": None}
    assert "phases " not in render(report, NOW)
