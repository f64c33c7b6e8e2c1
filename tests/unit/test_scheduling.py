"""What a scheduler fires when: on time, after downtime (once), never twice, with a fake clock."""
from datetime import datetime, timedelta, timezone

from mallard.core.cron import parse
from mallard.core.scheduling import due, parse_request_id, request_id

UTC = timezone.utc


def t(s: str) -> datetime:
    return datetime.fromisoformat(s)


DAILY = parse("0 6 * * *")


def test_nothing_owed_before_the_first_fire_after_start():
    assert due(DAILY, t("2026-01-01T05:59:59+00:00"), None, anchor=t("2026-01-01T05:00:00+00:00")) is None
    # started after today's fire: not owed (the schedule never fired on this topic)
    assert due(DAILY, t("2026-01-01T07:00:00+00:00"), None, anchor=t("2026-01-01T06:30:00+00:00")) is None


def test_on_time():
    d = due(DAILY, t("2026-01-01T06:00:01+00:00"), None, anchor=t("2026-01-01T05:00:00+00:00"))
    assert d is not None and d.fire == t("2026-01-01T06:00:00+00:00") and not d.missed


def test_published_fire_is_not_owed_again():
    assert due(DAILY, t("2026-01-01T06:00:30+00:00"), t("2026-01-01T06:00:00+00:00"),
               anchor=t("2026-01-01T05:00:00+00:00")) is None


def test_downtime_runs_the_latest_missed_fire_once():
    now, last = t("2026-01-04T07:00:00+00:00"), t("2026-01-01T06:00:00+00:00")
    d = due(DAILY, now, last, anchor=now)
    assert d is not None and d.fire == t("2026-01-04T06:00:00+00:00") and d.missed
    # once published, nothing more is owed, not one per missed day
    assert due(DAILY, now + timedelta(minutes=5), d.fire, anchor=now) is None


def test_a_fake_clock_over_three_days():
    cron = parse("0 12,18 * * *")
    now, last, fired = t("2026-01-01T00:00:00+00:00"), None, []
    anchor = now
    while now < t("2026-01-04T00:00:00+00:00"):
        d = due(cron, now, last, anchor)
        if d:
            fired.append(d.fire.isoformat())
            last = d.fire
        now += timedelta(seconds=37)
    assert fired == [f"2026-01-0{d}T{h}:00:00+00:00" for d in (1, 2, 3) for h in (12, 18)]


def test_request_ids():
    rid = request_id("daily", t("2026-01-01T06:00:00+00:00"))
    assert rid == "daily@2026-01-01T06:00:00+00:00"
    assert parse_request_id(rid) == ("daily", t("2026-01-01T06:00:00+00:00"))
    assert parse_request_id("cli-abc") is None


def test_incremental_state_folds_ends_and_resets():
    from mallard.core.incremental import (and_filters, end_event, fold_states, incremental_filter, is_incremental_run,
                                          reset_events)

    end = {"kind": "end", "snapshot_id": "s1", "stream": "public.orders", "finished_at": "2026-01-01T06:00:05+00:00",
           "max_update_key": "2025-12-31 17:59:00+00", "update_key": "updated_at"}
    plain = {**end, "snapshot_id": "s0", "update_key": None, "max_update_key": None}
    reset = {"kind": "state-reset", "reset_id": "r1", "streams": ["public.orders"], "to_value": None,
             "requested_by": "cli:me", "requested_at": "2026-01-01T07:00:00+00:00"}
    assert end_event(plain) is None  # a snapshot of a full-refresh stream, or a subset, says nothing
    events = [end_event(end)]
    assert fold_states(events)["public.orders"].value == "2025-12-31 17:59:00+00"
    state = fold_states(events + reset_events(reset))["public.orders"]
    assert state.value is None and state.source == "reset r1 by cli:me" and state.update_key == "updated_at"
    later = {**end, "snapshot_id": "s2", "finished_at": "2026-01-01T08:00:00+00:00", "max_update_key": "x"}
    assert fold_states(events + reset_events(reset) + [end_event(later)])["public.orders"].value == "x"
    assert incremental_filter("updated_at", "it's") == "\"updated_at\" > 'it''s'"
    assert incremental_filter("updated_at", None) is None
    assert and_filters("a = 1", None, "b > 2") == "(a = 1) AND (b > 2)"
    assert is_incremental_run("incremental", False, None, "scheduler:daily")
    assert not is_incremental_run("incremental", True, None, "cli:me")  # --full
    assert not is_incremental_run("incremental", False, "id < 5", "cli:me")  # --where
    assert not is_incremental_run("incremental", False, None, "applier")  # first snapshots, rebuilds
    assert not is_incremental_run("full-refresh", False, None, "scheduler:daily")


def test_next_fire_is_none_not_a_traceback_for_a_schedule_that_does_not_fire_again():
    from mallard.core.cron import CronError
    from mallard.core.scheduling import next_fire

    class Exhausted:  # parse refuses a schedule that never fires; a health check must still not fail on one
        expression = "0 0 1 1 *"

        def next_after(self, after):
            raise CronError("'0 0 1 1 *' never fires")

    assert next_fire(Exhausted(), t("2026-01-01T00:00:00+00:00"), None) is None
    assert next_fire(DAILY, t("2026-01-01T06:00:00+00:00"), t("2026-01-02T06:00:00+00:00")) == \
        t("2026-01-03T06:00:00+00:00")
