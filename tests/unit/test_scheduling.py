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
