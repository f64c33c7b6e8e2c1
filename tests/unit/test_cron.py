"""The pure cron core: parsing, next fire, latest fire, time zones and DST changes."""
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mallard.core.cron import CronError, parse

UTC = timezone.utc


def t(s: str) -> datetime:
    return datetime.fromisoformat(s).astimezone(UTC)


def fires(expr: str, start: str, n: int, tz: str | None = None) -> list[str]:
    c = parse(expr, tz)
    out, at = [], t(start)
    for _ in range(n):
        at = c.next_after(at)
        out.append(at.isoformat())
    return out


def brute_force(expr: str, after: datetime, tz: str | None = None) -> datetime:
    """Minute by minute in UTC, with the wall-clock rules spelled out (UTC only)."""
    c = parse(expr, tz)
    at = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(60 * 24 * 400):
        if at.minute in c.minutes and at.hour in c.hours and c._day_matches(at.date()):
            return at
        at += timedelta(minutes=1)
    raise AssertionError("no fire")


def test_daily_and_lists():
    assert fires("0 6 * * *", "2026-01-01T00:00:00+00:00", 2) == ["2026-01-01T06:00:00+00:00",
                                                                  "2026-01-02T06:00:00+00:00"]
    assert fires("0 12,18 * * *", "2026-01-01T12:00:00+00:00", 3) == [
        "2026-01-01T18:00:00+00:00", "2026-01-02T12:00:00+00:00", "2026-01-02T18:00:00+00:00"]


def test_strictly_after():
    assert fires("0 6 * * *", "2026-01-01T06:00:00+00:00", 1) == ["2026-01-02T06:00:00+00:00"]
    assert fires("* * * * *", "2026-01-01T06:00:30+00:00", 1) == ["2026-01-01T06:01:00+00:00"]


def test_ranges_steps_names():
    assert parse("*/15 * * * *").minutes == (0, 15, 30, 45)
    assert parse("10-20/5 * * * *").minutes == (10, 15, 20)
    assert parse("5/20 * * * *").minutes == (5, 25, 45)
    assert parse("0 0 * jan-mar *").months == {1, 2, 3}
    assert parse("0 0 * * mon-fri").weekdays == {0, 1, 2, 3, 4}
    assert parse("0 0 * * 0").weekdays == parse("0 0 * * 7").weekdays == {6}
    # weekdays at 09:30: Friday 2026-01-02 -> Monday 2026-01-05
    assert fires("30 9 * * 1-5", "2026-01-02T10:00:00+00:00", 1) == ["2026-01-05T09:30:00+00:00"]


def test_day_of_month_or_day_of_week():
    # both restricted: either matches (the 13th, or any Friday)
    c = parse("0 0 13 * 5")
    got = fires("0 0 13 * 5", "2026-02-01T00:00:00+00:00", 4)
    assert got == ["2026-02-06T00:00:00+00:00", "2026-02-13T00:00:00+00:00", "2026-02-20T00:00:00+00:00",
                   "2026-02-27T00:00:00+00:00"]
    assert c._day_matches(datetime(2026, 3, 13).date())  # a Friday the 13th, and the 13th anyway


def test_rare_schedules():
    assert fires("0 0 29 2 *", "2026-01-01T00:00:00+00:00", 1) == ["2028-02-29T00:00:00+00:00"]
    assert fires("0 0 31 * *", "2026-04-01T00:00:00+00:00", 1) == ["2026-05-31T00:00:00+00:00"]
    with pytest.raises(CronError, match="never fires"):
        parse("0 0 30 2 *").next_after(t("2026-01-01T00:00:00+00:00"))


@pytest.mark.parametrize("expr, message", [
    ("0 6 * *", "4 field"), ("60 * * * *", "minute: 60 is out of range"), ("* 24 * * *", "hour: 24"),
    ("* * 0 * *", "day of month: 0"), ("* * * 13 *", "month: 13"), ("* * * * 8", "day of week: 8"),
    ("*/0 * * * *", "step"), ("5-1 * * * *", "backwards"), ("a * * * *", "not a number"), ("1,,2 * * * *", "empty"),
    ("* * * foo *", "month: 'foo'"),
])
def test_bad_expressions(expr, message):
    with pytest.raises(CronError, match=message):
        parse(expr)


def test_bad_zone():
    with pytest.raises(CronError, match="unknown time zone 'Mars/Olympus'"):
        parse("0 6 * * *", "Mars/Olympus")


def test_zoned_schedule():
    # 06:00 in Berlin is 05:00 UTC in winter, 04:00 UTC in summer
    assert fires("0 6 * * *", "2026-01-10T00:00:00+00:00", 1, "Europe/Berlin") == ["2026-01-10T05:00:00+00:00"]
    assert fires("0 6 * * *", "2026-07-10T00:00:00+00:00", 1, "Europe/Berlin") == ["2026-07-10T04:00:00+00:00"]


def test_dst_spring_forward_fixed_time_shifts_past_the_gap():
    # Europe/Berlin 2026-03-29: 02:00 CET -> 03:00 CEST; 02:30 does not exist that day
    assert fires("30 2 * * *", "2026-03-28T12:00:00+00:00", 3, "Europe/Berlin") == [
        "2026-03-29T01:30:00+00:00",  # = 03:30 CEST, once
        "2026-03-30T00:30:00+00:00", "2026-03-31T00:30:00+00:00"]


def test_dst_spring_forward_every_minute_skips_the_gap():
    got = fires("*/30 * * * *", "2026-03-29T00:00:00+00:00", 3, "Europe/Berlin")  # 01:00 CET
    assert got == ["2026-03-29T00:30:00+00:00", "2026-03-29T01:00:00+00:00",  # 01:30 CET, 03:00 CEST
                   "2026-03-29T01:30:00+00:00"]  # 03:30 CEST
    assert len(set(got)) == 3


def test_dst_fall_back_fixed_time_fires_once():
    # Europe/Berlin 2026-10-25: 03:00 CEST -> 02:00 CET; 02:30 happens twice
    assert fires("30 2 * * *", "2026-10-24T12:00:00+00:00", 2, "Europe/Berlin") == [
        "2026-10-25T00:30:00+00:00",  # the first 02:30 (CEST)
        "2026-10-26T01:30:00+00:00"]


def test_dst_fall_back_every_half_hour_keeps_going():
    got = fires("*/30 * * * *", "2026-10-24T23:45:00+00:00", 5, "Europe/Berlin")
    assert got == ["2026-10-25T00:00:00+00:00", "2026-10-25T00:30:00+00:00",  # 02:00, 02:30 CEST
                   "2026-10-25T01:00:00+00:00", "2026-10-25T01:30:00+00:00",  # 02:00, 02:30 CET
                   "2026-10-25T02:00:00+00:00"]


def test_dst_us_zone():
    # America/New_York 2026-03-08 02:00 EST -> 03:00 EDT
    assert fires("0 2 * * *", "2026-03-07T12:00:00+00:00", 2, "America/New_York") == [
        "2026-03-08T07:00:00+00:00",  # 03:00 EDT, the shifted 02:00
        "2026-03-09T06:00:00+00:00"]


def test_latest_at_or_before():
    c = parse("0 12,18 * * *")
    assert c.latest_at_or_before(t("2026-01-03T13:00:00+00:00")) == t("2026-01-03T12:00:00+00:00")
    assert c.latest_at_or_before(t("2026-01-03T12:00:00+00:00")) == t("2026-01-03T12:00:00+00:00")
    assert c.latest_at_or_before(t("2026-01-03T11:00:00+00:00")) == t("2026-01-02T18:00:00+00:00")
    assert c.latest_at_or_before(t("2026-01-03T13:00:00+00:00"), since=t("2026-01-03T12:00:00+00:00")) is None
    assert c.latest_at_or_before(t("2026-01-09T13:00:00+00:00"), since=t("2026-01-03T12:00:00+00:00")) \
        == t("2026-01-09T12:00:00+00:00")


def test_latest_is_consistent_with_next_in_a_zone():
    c = parse("30 2 * * *", "Europe/Berlin")
    for start in ("2026-03-27T00:00:00+00:00", "2026-10-23T00:00:00+00:00"):
        at = t(start)
        for _ in range(5):
            nxt = c.next_after(at)
            assert c.latest_at_or_before(nxt) == nxt
            assert c.latest_at_or_before(nxt - timedelta(seconds=1)) in (None, at) or \
                c.latest_at_or_before(nxt - timedelta(seconds=1)) < nxt
            at = nxt


EXPRESSIONS = ["0 6 * * *", "0 12,18 * * *", "*/7 * * * *", "15 */5 * * 1-5", "0 0 1,15 * *", "0 0 13 * 5",
               "45 23 * 2 sun", "1-59/13 3-21/6 */3 * *"]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(EXPRESSIONS), st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1)))
def test_next_after_equals_brute_force_in_utc(expr, after):
    after = after.replace(tzinfo=UTC)
    assert parse(expr).next_after(after) == brute_force(expr, after)


@pytest.mark.parametrize("expr", ["0 6 31 2 *", "0 6 30 2 *", "0 0 30,31 feb *", "0 0 31 4,6,9,11 *",
                                  "0 0 31 2 */2", "0 0 31 2 *   "])
def test_a_schedule_that_never_fires_is_refused_when_parsed(expr):
    with pytest.raises(CronError, match="never fires: day of month .* does not occur in month"):
        parse(expr)


@pytest.mark.parametrize("expr, message", [
    ("0 0 L * *", "day of month: 'L' is not a number"), ("0 0 LW * *", "day of month: 'LW'"),
    ("0 0 * * 5#2", "day of week: '5#2'"), ("0 0 * * 5L", "day of week: '5L'"), ("0 0 ? * *", "'?' is not"),
    ("0 0 0 6 * * *", "has 7 field"), ("0 0 6 * * *", "has 6 field"), ("0 0 * * mon-", "day of week: '' is not"),
    ("0 0 * * ２", "day of week: '２' is not a number"), ("0 0 * * 1/", "step ''"), ("0 0 * * */1/2", "step '1/2'"),
    ("0 0 * * sat-mon", "backwards"), ("0 0 1-0x1 * *", "'0x1' is not a number"),
])
def test_cronsims_extensions_and_oddities_are_refused(expr, message):
    with pytest.raises(CronError, match=message.replace("?", r"\?")):
        parse(expr)


def test_a_one_value_stepped_range_is_that_value():
    # cronsim alone would read 6-6/1 as 6 to the field's end (Saturday and Sunday)
    assert parse("0 0 * * 6-6/1").weekdays == {5}
    assert parse("0 0 18-18/2 * *").days == {18}
    assert parse("0 0 * * fri-fri/3,mon").weekdays == {0, 4}
    assert fires("0 0 * * 6-6/1", "2026-01-02T00:00:00+00:00", 2) == ["2026-01-03T00:00:00+00:00",
                                                                       "2026-01-10T00:00:00+00:00"]


def test_names_any_case_and_the_expression_kept_as_written():
    c = parse("0  6 * JAN-Mar Mon")
    assert c.months == {1, 2, 3} and c.weekdays == {0} and c.expression == "0  6 * JAN-Mar Mon"


def test_dense_schedules_are_quick():
    import time

    c = parse("* * * * *", "Europe/Berlin")
    start = time.perf_counter()
    for day in range(20):
        at = t("2026-03-20T10:00:30+00:00") + timedelta(days=day)  # through the spring change
        assert c.next_after(at) == at.replace(second=0) + timedelta(minutes=1)
        assert c.latest_at_or_before(at) == at.replace(second=0)
    assert time.perf_counter() - start < 5  # the scheduler asks every 0.2 s


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago", "Pacific/Apia",
         "Asia/Kolkata"]
DST_DAYS = [datetime(2026, 3, 8, 6, tzinfo=UTC), datetime(2026, 3, 29, 0, tzinfo=UTC),
            datetime(2026, 10, 25, 0, tzinfo=UTC), datetime(2026, 4, 4, 15, tzinfo=UTC),
            datetime(2011, 12, 29, 10, tzinfo=UTC), datetime(2026, 9, 5, 23, tzinfo=UTC)]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(EXPRESSIONS + ["30 2 * * *", "*/20 * * * *", "0,30 0-3 * * *", "59 23 * * *"]),
       st.sampled_from(ZONES), st.sampled_from(DST_DAYS), st.integers(-3 * 24 * 60, 3 * 24 * 60))
def test_next_and_latest_agree_in_every_zone_around_dst_changes(expr, zone_name, day, minutes):
    """latest <= at < next, and no fire in between: the two searches see the same fires."""
    c = parse(expr, zone_name)
    at = day + timedelta(minutes=minutes, seconds=17)
    nxt = c.next_after(at)
    latest = c.latest_at_or_before(at)
    assert nxt > at and (latest is None or latest <= at)
    assert c.latest_at_or_before(nxt) == nxt
    assert c.latest_at_or_before(nxt - timedelta(microseconds=1)) == latest
    if latest is not None:
        assert c.next_after(latest) == nxt
