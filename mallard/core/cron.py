"""Five-field cron expressions, pure: parse, next fire after an instant, latest fire
at or before an instant, in a time zone (zoneinfo). No I/O, no clock.

Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or jan-dec),
day of week (0-7 or sun-sat; 0 and 7 are Sunday). Each field is ``*``, a value, a
range ``a-b``, a step ``*/n``, ``a-b/n`` or ``a/n``, or a comma list of those. As in
Vixie cron, when both day of month and day of week are restricted, a day matches
if either does.

Time zones (a schedule is UTC unless it names one), daylight-saving changes:

- a local time that does not exist (the hour skipped in spring) fires at the same
  offset past the change (02:30 -> 03:30) when the hour field is fixed, and is
  simply absent when the hour field is ``*`` (the clock went on; the next minute
  that exists fires);
- a local time that happens twice (the hour repeated in autumn) fires once, at its
  first occurrence, when the hour field is fixed; with ``*`` as hour it fires at
  both occurrences (every N minutes keeps going in real time).

Fire times are returned as aware UTC datetimes.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC = timezone.utc
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                                       "dec"), start=1)}
_DAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}), ("month", 1, 12, _MONTHS),
           ("day of week", 0, 7, _DAYS))
_SEARCH_DAYS = 366 * 28  # a schedule that fires at all does within 28 years (Feb 29 on a given weekday)


class CronError(ValueError):
    """A cron expression or time zone that cannot be used; the message says which part and why."""


def _value(text: str, name: str, lo: int, hi: int, names: dict[str, int]) -> int:
    t = text.strip().lower()
    if t in names:
        return names[t]
    if not t.isdigit():
        raise CronError(f"{name}: {text!r} is not a number" + (f" or a name ({', '.join(names)})" if names else ""))
    v = int(t)
    if not lo <= v <= hi:
        raise CronError(f"{name}: {v} is out of range {lo}-{hi}")
    return v


def _field(text: str, name: str, lo: int, hi: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{name}: empty list item in {text!r}")
        base, _, step_text = part.partition("/")
        step = 1
        if _:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{name}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            start, end = lo, hi
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = _value(a, name, lo, hi, names), _value(b, name, lo, hi, names)
            if start > end:
                raise CronError(f"{name}: range {base!r} goes backwards")
        else:
            start = _value(base, name, lo, hi, names)
            end = hi if _ else start  # 'a/n' means a, a+n, ... up to the field's end
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """A parsed expression; ``tz`` is where its wall-clock times are read."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    """0 = Monday ... 6 = Sunday (Python's weekday())."""
    any_day: bool
    any_weekday: bool
    any_hour: bool
    tz: ZoneInfo | timezone = UTC

    def _day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        dom, dow = d.day in self.days, d.weekday() in self.weekdays
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow

    def _instants(self, d: date) -> list[datetime]:
        """The fire instants of local day ``d``, ascending, in UTC."""
        out = set()
        for h in self.hours:
            for m in self.minutes:
                local = datetime.combine(d, time(h, m))
                first = local.replace(tzinfo=self.tz, fold=0)
                second = local.replace(tzinfo=self.tz, fold=1)
                off0, off1 = first.utcoffset(), second.utcoffset()
                if off0 == off1:  # an ordinary time
                    out.add(first.astimezone(UTC))
                    continue
                # off0 != off1: a repeated time (off0 > off1) or a skipped one (off0 < off1).
                exists = first.astimezone(UTC).astimezone(self.tz).replace(tzinfo=None) == local
                if exists:
                    out.add(first.astimezone(UTC))
                    if self.any_hour:
                        out.add(second.astimezone(UTC))
                elif not self.any_hour:
                    out.add(first.astimezone(UTC))  # skipped: the same offset past the change
        return sorted(out)

    def next_after(self, after: datetime) -> datetime:
        """The first fire strictly after ``after`` (an aware datetime), in UTC."""
        if after.tzinfo is None:
            raise ValueError("next_after needs an aware datetime")
        after = after.astimezone(UTC)
        d = after.astimezone(self.tz).date() - timedelta(days=1)  # a skipped time may land on the next day
        for _ in range(_SEARCH_DAYS):
            if self._day_matches(d):
                for instant in self._instants(d):
                    if instant > after:
                        return instant
            d += timedelta(days=1)
        raise CronError(f"{self.expression!r} never fires")

    def latest_at_or_before(self, now: datetime, since: datetime | None = None) -> datetime | None:
        """The last fire at or before ``now`` and after ``since`` (if given), or None."""
        if now.tzinfo is None:
            raise ValueError("latest_at_or_before needs an aware datetime")
        now = now.astimezone(UTC)
        d = now.astimezone(self.tz).date() + timedelta(days=1)
        stop = (since.astimezone(self.tz).date() - timedelta(days=1)) if since is not None else None
        for _ in range(_SEARCH_DAYS):
            if stop is not None and d < stop:
                return None
            if self._day_matches(d):
                for instant in reversed(self._instants(d)):
                    if instant <= now:
                        return instant if since is None or instant > since else None
            d -= timedelta(days=1)
        return None


def zone(name: str | None) -> ZoneInfo | timezone:
    if not name or name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {name!r} (an IANA name such as Europe/Berlin)") from None


def parse(expression: str, tz: str | None = None) -> Cron:
    """Parse a five-field expression; CronError names the field and the problem."""
    if not isinstance(expression, str):
        raise CronError(f"expected a string of five fields, got {expression!r}")
    parts = expression.split()
    if len(parts) != 5:
        raise CronError(f"{expression!r} has {len(parts)} field(s); expected 5 (minute hour day-of-month month "
                        "day-of-week)")
    fields = [_field(p, name, lo, hi, names) for p, (name, lo, hi, names) in zip(parts, _FIELDS)]
    minutes, hours, days, months, cron_weekdays = fields
    # cron: 0 and 7 are Sunday, 1 Monday; Python: 0 Monday, 6 Sunday.
    weekdays = frozenset((d - 1) % 7 for d in cron_weekdays)
    star = [p.split("/")[0] == "*" and "/" not in p for p in parts]
    return Cron(expression, tuple(sorted(minutes)), tuple(sorted(hours)), days, months, weekdays,
                any_day=parts[2].startswith("*"), any_weekday=parts[4].startswith("*"),
                any_hour=star[1], tz=zone(tz))
