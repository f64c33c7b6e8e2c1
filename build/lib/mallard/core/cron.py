"""Five-field cron expressions, pure: parse, next fire after an instant, latest fire
at or before an instant, in a time zone (zoneinfo). No I/O, no clock.

The calendar is cronsim's (a maintained cron library, pure Python): it parses the
fields and walks the wall-clock fire times. This module adds what mallard promises
on top: the Vixie five-field language only (no seconds, ``L``, ``W`` or ``#``), a
message naming the field and the problem, a schedule that can never fire (Feb 31)
refused when it is parsed, and the daylight-saving rules below (cronsim's own
differ: it runs a skipped 02:30 at 03:00).

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

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

UTC = timezone.utc
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                                       "dec"), start=1)}
_DAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}), ("month", 1, 12, _MONTHS),
           ("day of week", 0, 7, _DAYS))
_REFERENCE = datetime(2000, 1, 1)
# Around an instant, a zone whose offset does not change within this window maps wall
# times to instants one to one and in order, so no day-by-day DST handling is needed.
_STEADY_WINDOW = timedelta(hours=50)
_STEADY_SAMPLE = timedelta(minutes=30)


class CronError(ValueError):
    """A cron expression or time zone that cannot be used; the message says which part and why."""


def _value_problem(text: str, name: str, lo: int, hi: int, names: dict[str, int]) -> str | None:
    t = text.lower()
    if t in names:
        return None
    if not t or not all(c in "0123456789" for c in t):
        return f"{name}: {text!r} is not a number" + (f" or a name ({', '.join(names)})" if names else "")
    if not lo <= int(t) <= hi:
        return f"{name}: {int(t)} is out of range {lo}-{hi}"
    return None


def _field_problem(text: str, name: str, lo: int, hi: int, names: dict[str, int]) -> str | None:
    """Why one field is not plain five-field cron, or None. Only for the message (and to
    keep cronsim's extensions out): cronsim decides what the field means."""
    for part in text.split(","):
        if not part:
            return f"{name}: empty list item in {text!r}"
        base, slash, step = part.partition("/")
        if slash and (not step or not all(c in "0123456789" for c in step) or int(step) == 0):
            return f"{name}: step {step!r} must be a positive number"
        if base == "*":
            continue
        a, dash, b = base.partition("-")
        for value in (a, b) if dash else (a,):
            problem = _value_problem(value, name, lo, hi, names)
            if problem:
                return problem
        if dash and _number(a, names) > _number(b, names):
            return f"{name}: range {base!r} goes backwards"
    return None


def _number(value: str, names: dict[str, int]) -> int:
    return names[value.lower()] if value.lower() in names else int(value)


def _calendar_field(text: str, names: dict[str, int]) -> str:
    """The field as cronsim should read it: cronsim takes a one-value stepped range
    (``6-6/2``) as ``6/2`` (6 to the field's end); cron means just 6."""
    items = []
    for part in text.split(","):
        base, slash, _ = part.partition("/")
        a, dash, b = base.partition("-")
        items.append(a if slash and dash and _number(a, names) == _number(b, names) else part)
    return ",".join(items)


def _fires_within(expression: str, start: datetime, end: datetime) -> list[datetime]:
    out = []
    for wall in CronSim(expression, start - timedelta(seconds=1)):
        if wall >= end:
            break
        out.append(wall)
    return out


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
    calendar: str = field(default="", repr=False, compare=False)
    """The expression as handed to cronsim (see _calendar_field)."""

    def _day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        dom, dow = d.day in self.days, d.weekday() in self.weekdays
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow

    # -- wall clock (cronsim) to instants (the DST rules above) -------------------------

    def _steady(self, around: datetime) -> bool:
        """No offset change within _STEADY_WINDOW of ``around`` (UTC)."""
        if isinstance(self.tz, timezone):
            return True
        at, end = around - _STEADY_WINDOW, around + _STEADY_WINDOW
        offset = at.astimezone(self.tz).utcoffset()
        while at < end:
            at += _STEADY_SAMPLE
            if at.astimezone(self.tz).utcoffset() != offset:
                return False
        return True

    def _instant(self, wall: datetime) -> datetime:
        """A wall time where the zone is steady: its one instant."""
        return wall.replace(tzinfo=self.tz).astimezone(UTC)

    def _days(self, start: date, reverse: bool) -> Iterator[tuple[date, list[datetime]]]:
        """Matching local days from ``start`` (inclusive) on, forwards or backwards, each
        with its wall-clock fire times; ends where cronsim gives up (50 years)."""
        first = datetime.combine(start + timedelta(days=1), time()) if reverse else \
            datetime.combine(start, time()) - timedelta(seconds=1)
        day: date | None = None
        walls: list[datetime] = []
        for wall in CronSim(self.calendar, first, reverse=reverse):
            if wall.date() != day:
                if walls:
                    yield day, walls  # type: ignore[misc]
                day, walls = wall.date(), []
            walls.append(wall)
        if walls:
            yield day, walls  # type: ignore[misc]

    def _instants(self, walls: list[datetime]) -> list[datetime]:
        """The fire instants of one local day's wall times, ascending, in UTC."""
        out = set()
        for local in walls:
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
        local = after.astimezone(self.tz)
        start = local.date() - timedelta(days=1)  # a skipped time of the day before may land after ``after``
        if self._steady(after):
            for wall in CronSim(self.calendar, local.replace(tzinfo=None)):
                if wall.date() <= local.date() + timedelta(days=1):
                    return self._instant(wall)
                start = wall.date()  # nothing fires in between: go on from there, day by day
                break
            else:
                raise CronError(f"{self.expression!r} never fires")
        for _, walls in self._days(start, reverse=False):
            for instant in self._instants(walls):
                if instant > after:
                    return instant
        raise CronError(f"{self.expression!r} never fires")

    def latest_at_or_before(self, now: datetime, since: datetime | None = None) -> datetime | None:
        """The last fire at or before ``now`` and after ``since`` (if given), or None."""
        if now.tzinfo is None:
            raise ValueError("latest_at_or_before needs an aware datetime")
        now = now.astimezone(UTC)
        local = now.astimezone(self.tz)
        start = local.date() + timedelta(days=1)
        if self._steady(now):
            for wall in CronSim(self.calendar, local.replace(tzinfo=None, microsecond=0) + timedelta(seconds=1),
                                reverse=True):
                if wall.date() >= local.date() - timedelta(days=1):
                    instant = self._instant(wall)
                    return instant if since is None or instant > since else None
                start = wall.date()
                break
            else:
                return None
        stop = (since.astimezone(self.tz).date() - timedelta(days=1)) if since is not None else None
        for day, walls in self._days(start, reverse=True):
            if stop is not None and day < stop:
                return None
            for instant in reversed(self._instants(walls)):
                if instant <= now:
                    return instant if since is None or instant > since else None
        return None


def zone(name: str | None) -> ZoneInfo | timezone:
    if not name or name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {name!r} (an IANA name such as Europe/Berlin)") from None


def _never_fires(expression: str) -> str:
    _, _, dom, month, dow = expression.split()
    return (f"{expression!r} never fires: day of month {dom} does not occur in month {month}"
            + ("" if dow == "*" else f" on day of week {dow}"))


def parse(expression: str, tz: str | None = None) -> Cron:
    """Parse a five-field expression; CronError names the field and the problem, and
    refuses a schedule that never fires."""
    if not isinstance(expression, str):
        raise CronError(f"expected a string of five fields, got {expression!r}")
    parts = expression.split()
    if len(parts) != 5:
        raise CronError(f"{expression!r} has {len(parts)} field(s); expected 5 (minute hour day-of-month month "
                        "day-of-week)")
    for text, (name, lo, hi, names) in zip(parts, _FIELDS):
        problem = _field_problem(text, name, lo, hi, names)
        if problem:
            raise CronError(problem)
    parts = [_calendar_field(text, names) for text, (_, _, _, names) in zip(parts, _FIELDS)]
    calendar = " ".join(parts)
    try:
        next(CronSim(calendar, _REFERENCE))
    except CronSimError as e:  # the fields are well-formed: what cronsim refuses is an impossible date
        raise CronError(_never_fires(expression) if "day-of-month" in str(e) else f"{expression!r}: {e}") from None
    except StopIteration:
        raise CronError(_never_fires(expression)) from None
    # The fields' values, read back through cronsim's own walk of the calendar.
    jan1 = datetime(2001, 1, 1)  # a Monday
    minutes = tuple(w.minute for w in _fires_within(f"{parts[0]} 0 1 1 *", jan1, jan1 + timedelta(hours=1)))
    hours = tuple(w.hour for w in _fires_within(f"0 {parts[1]} 1 1 *", jan1, jan1 + timedelta(days=1)))
    days = frozenset(w.day for w in _fires_within(f"0 0 {parts[2]} 1 *", jan1, jan1 + timedelta(days=31)))
    months = frozenset(w.month for w in _fires_within(f"0 0 1 {parts[3]} *", jan1, datetime(2002, 1, 1)))
    weekdays = frozenset(w.weekday() for w in _fires_within(f"0 0 * * {parts[4]}", jan1, jan1 + timedelta(days=7)))
    return Cron(expression, minutes, hours, days, months, weekdays, any_day=parts[2].startswith("*"),
                any_weekday=parts[4].startswith("*"), any_hour=parts[1] == "*", tz=zone(tz), calendar=calendar)
