"""What a scheduler should fire now, pure (no clock, no Kafka).

``last`` is the last fire of the schedule found on the control topic (None: never
fired there); ``anchor`` is when this scheduler started watching (fires before it
are not owed when the schedule never fired). A fire older than ``grace`` is a
missed one (the scheduler was down): with catch-up ``once`` the latest missed fire
is run, once, however many were missed; with ``skip`` none is.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from mallard.core.cron import Cron, CronError


@dataclass(frozen=True)
class Due:
    fire: datetime
    missed: bool
    """The fire time is older than the grace: the scheduler was down (or late) at that time."""


def request_id(schedule: str, fire: datetime) -> str:
    """Deterministic: every scheduler computes the same id for the same fire."""
    return f"{schedule}@{fire.isoformat()}"


def parse_request_id(value: str) -> tuple[str, datetime] | None:
    name, sep, when = value.rpartition("@")
    if not sep or not name:
        return None
    try:
        fire = datetime.fromisoformat(when)
    except ValueError:
        return None
    return (name, fire) if fire.tzinfo is not None else None


def due(cron: Cron, now: datetime, last: datetime | None, anchor: datetime,
        grace: timedelta = timedelta(seconds=60)) -> Due | None:
    """The fire to publish now, if any: the latest fire at or before ``now`` after
    ``last`` (or after ``anchor`` when the schedule never fired)."""
    fire = cron.latest_at_or_before(now, since=last if last is not None else anchor)
    if fire is None:
        return None
    return Due(fire, missed=now - fire > grace)


def next_fire(cron: Cron, now: datetime, last: datetime | None) -> datetime | None:
    """The next fire after ``now`` (and after ``last``); None if the schedule never fires
    again (parse refuses one that never fires at all, but a health check must not fail)."""
    try:
        return cron.next_after(max(now, last) if last is not None else now)
    except CronError:
        return None
