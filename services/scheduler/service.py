"""The scheduler: the replication config's cron schedules become resnapshot requests
on the control topic, each fire once, whatever restarts or how many schedulers run.

- **One publisher.** Every scheduler joins the consumer group ``mallard-scheduler``
  on the (single-partition) control topic; the member the partition is assigned to
  publishes, the others stand by and take over when it leaves (Kafka's group
  membership is the lease). Publishing is synchronous in the polling thread, so a
  fire is in Kafka before the partition can be revoked (eager rebalance: every
  member gives up its partitions before any member gets them).
- **State from Kafka.** On getting the partition a scheduler reads the control topic
  from the beginning and takes each schedule's last fire from the deterministic
  request ids it finds (``<schedule>@<fire time ISO>``); only then does it fire.
- **Missed fires.** A fire found due later than ``missed_after_s`` (no scheduler ran
  at that time) is run once (the latest one, not one per missed occurrence), or
  skipped with ``catch_up=skip``. A schedule with no fire on the topic starts from
  now.
- **Clock.** ``MALLARD_NOW`` / ``MALLARD_TIME_SCALE`` let tests run a virtual clock.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from mallard.core.errors import TransientError
from mallard.core.replication import ReplicationConfig
from mallard.core.scheduling import due, next_fire, parse_request_id, request_id
from mallard.runtime.metrics import counter, gauge
from mallard.runtime.service import Service
from mallard.schemas.control import ResnapshotRequest, control_message_adapter
from mallard.services.scheduler.config import SchedulerSettings


class Clock:
    """Real time, or a virtual one starting at ``start`` and running ``scale`` times as fast."""

    def __init__(self, start: str = "", scale: float = 1.0):
        self.scale = scale
        self.t0 = time.monotonic()
        self.base = datetime.fromisoformat(start).astimezone(timezone.utc) if start else datetime.now(timezone.utc)
        self.virtual = bool(start) or scale != 1.0

    def now(self) -> datetime:
        if not self.virtual:
            return datetime.now(timezone.utc)
        return self.base + timedelta(seconds=(time.monotonic() - self.t0) * self.scale)


class SchedulerService(Service):
    name = "scheduler"

    def __init__(self, settings: SchedulerSettings, clock: Clock | None = None, ports: Any = None):
        """``ports``: what ``bootstrap`` wires (services/scheduler/bootstrap.py); without it, the real adapters."""
        super().__init__(settings)
        if ports is None:
            from mallard.services.scheduler.bootstrap import real_ports

            ports = real_ports(settings)
        self.ports = ports
        self.clock = clock or ports.clock or Clock(settings.now, settings.time_scale)
        self.config: ReplicationConfig | None = None
        self.leader = False
        self.caught_up = False
        self.last_fire: dict[str, datetime] = {}
        self.anchor = self.clock.now()
        self.anchors: dict[str, datetime] = {}
        """A schedule added or changed while running starts from then, not from the start."""
        self.published = 0
        self.fires: dict[str, int] = {}
        self._high: dict[int, int] = {}
        self._position: dict[int, int] = {}
        self._idle_since = 0.0
        self.metrics.on_scrape(self._metric_families)

    def _metric_families(self) -> list[Any]:
        families = [
            counter("mallard_schedule_fires", "Schedule fires this scheduler published to the control topic.",
                    {(name,): self.fires.get(name, 0) for name in sorted({*self.fires, *(self.config.schedules if
                                                                                         self.config else ())})},
                    ("schedule",)),
            gauge("mallard_scheduler_leader", "1 when this scheduler is the one that publishes (it holds the control "
                  "topic's partition).", 1 if self.leader else 0),
        ]
        if self.config and self.config.schedules:
            now = self.clock.now()
            upcoming = {name: next_fire(sched.cron, now, self.last_fire.get(name))
                        for name, sched in self.config.schedules.items()}
            families.append(gauge(
                "mallard_schedule_next_fire_timestamp_seconds", "When each schedule fires next (Unix time; absent: "
                "it never fires again).", {(name, ): at.timestamp() for name, at in upcoming.items() if at is not None},
                ("schedule",)))
            families.append(gauge(
                "mallard_schedule_last_fire_timestamp_seconds", "The last fire of each schedule found on the control "
                "topic or published (Unix time).",
                {(name,): fire.timestamp() for name, fire in sorted(self.last_fire.items())}, ("schedule",)))
        return families

    def state(self) -> dict[str, Any]:
        now = self.clock.now()
        schedules = {}
        if self.config:
            for name, sched in self.config.schedules.items():
                last = self.last_fire.get(name)
                upcoming = next_fire(sched.cron, now, last)
                schedules[name] = {"cron": sched.cron.expression, "streams": list(sched.streams),
                                   "last_fire": last.isoformat() if last else None,
                                   "next_fire": upcoming.isoformat() if upcoming else None}
        return {**super().state(), "leader": self.leader, "caught_up": self.caught_up, "now": now.isoformat(),
                "published": self.published, "schedules": schedules}

    # -- start -------------------------------------------------------------------------

    def _load(self) -> None:
        s = self.settings
        if not s.replication_config:
            return
        from mallard.config.replication import check_against_postgres, load_config

        self.config = load_config(s.replication_config)
        if s.check_tables and self.config.streams:
            from mallard.adapters import postgres

            delay = 0.5
            while True:  # Postgres not up yet is transient; a table that does not exist yet is waited for
                try:
                    conn = postgres.connect(**s.pg_params())
                    break
                except postgres.SourceError as e:
                    if self.stopping.wait(delay):
                        return
                    delay = min(delay * 2, 5.0)
                    self.log.warning("waiting for Postgres: %s", e)
            try:
                missing = check_against_postgres(self.config, conn, missing_ok=True)
            finally:
                conn.close()
            if missing:  # the snapshotter holds their snapshots until they exist: fires go on
                self.log.warning("tables that do not exist yet (their snapshots wait for them): %s", ", ".join(missing))

    def run(self) -> None:
        s = self.settings
        self.ports.prepare_topics(self.stopping)
        self._load()
        if self.config is not None:
            from mallard.config.replication import ConfigWatch

            self.config_watch = ConfigWatch(s.replication_config, self.config, self.log, s.config_reload_interval_s)
        if self.config is None or not self.config.schedules:
            self.log.info("scheduler up: no schedules (%s)", s.replication_config or "no replication config")
            self.ready = True
            # A schedule added to the config later (``mallard config apply``) starts this one.
            while not self.stopping.wait(max(s.config_reload_interval_s, 0.5)):
                if self.config_watch is None or s.config_reload_interval_s <= 0:
                    continue
                self._take_config_change()
                if self.config.schedules:
                    break
            else:
                return
        consumer = self.ports.control_source()
        consumer.subscribe([s.control_topic], on_assign=self._assigned, on_revoke=self._revoked,
                           on_lost=self._revoked)
        self.consumer = consumer
        self.log.info("scheduler up: %d schedule(s) from %s (%s), clock %s%s", len(self.config.schedules),
                      s.replication_config, ", ".join(f"{n}: {c.cron.expression}" for n, c in
                                                      self.config.schedules.items()),
                      self.anchor.isoformat(), f" x{s.time_scale}" if self.clock.virtual else "")
        self.ready = True
        try:
            while not self.stopping.is_set():
                self._take_config_change()
                msg = consumer.poll(0.2)
                if msg is not None:
                    self._seen(msg)
                if self.leader and not self.caught_up:
                    self._check_caught_up()
                if self.leader and self.caught_up:
                    self._fire_due()
        finally:
            self.ready = False
            consumer.close()

    def _take_config_change(self) -> None:
        """The replication config file changed (``mallard config apply``): schedules added,
        removed or changed take effect now; one added or changed fires from now on (no
        catch-up of fires before it existed)."""
        if self.config_watch is None:
            return
        change = self.config_watch.check(time.monotonic())
        if change is None or change[1] is None:
            return
        self.config, diff = change
        now = self.clock.now()
        for name in (*diff.schedules_added, *diff.schedules_changed):
            self.anchors[name] = now
            self.last_fire.pop(name, None)

    # -- leadership --------------------------------------------------------------------

    def _assigned(self, consumer: Any, partitions: list[Any]) -> None:
        from confluent_kafka import OFFSET_BEGINNING

        if not partitions:
            return
        for p in partitions:
            p.offset = OFFSET_BEGINNING
            self._high[p.partition] = consumer.get_watermark_offsets(p, timeout=10)[1]
            self._position[p.partition] = -1
        consumer.assign(partitions)
        self.leader, self.caught_up = True, False
        self._idle_since = time.monotonic()
        self.log.info("this scheduler publishes now (control topic partition assigned); reading past fires")

    def _revoked(self, consumer: Any, partitions: list[Any]) -> None:
        if self.leader:
            self.log.info("standing by: another scheduler has the control topic")
        self.leader, self.caught_up = False, False
        self._high.clear()

    def _seen(self, msg: Any) -> None:
        from confluent_kafka import KafkaError

        if msg.error():
            if msg.error().code() != KafkaError._PARTITION_EOF:
                self.log.warning("control topic: %s", msg.error())
            return
        self._position[msg.partition()] = msg.offset()
        self._idle_since = time.monotonic()
        try:
            request = control_message_adapter.validate_json(msg.value() or b"")
        except ValueError:
            return
        if not isinstance(request, ResnapshotRequest) or not request.requested_by.startswith("scheduler:"):
            return
        parsed = parse_request_id(request.request_id)
        if parsed is None:
            return
        name, fire = parsed
        if fire > self.last_fire.get(name, datetime.min.replace(tzinfo=timezone.utc)):
            self.last_fire[name] = fire

    def _check_caught_up(self) -> None:
        reached = all(self._position.get(p, -1) + 1 >= h for p, h in self._high.items())
        if reached and time.monotonic() - self._idle_since >= 1.0:  # nothing more arrived meanwhile
            self.caught_up = True
            self.log.info("past fires: %s", ", ".join(f"{n} {f.isoformat()}" for n, f in sorted(self.last_fire.items()))
                          or "none on the control topic")

    # -- firing ------------------------------------------------------------------------

    def _fire_due(self) -> None:
        assert self.config is not None
        now = self.clock.now()
        grace = timedelta(seconds=self.settings.missed_after_s)
        for name, sched in self.config.schedules.items():
            d = due(sched.cron, now, self.last_fire.get(name), self.anchors.get(name, self.anchor), grace)
            if d is None:
                continue
            if d.missed and (sched.catch_up or self.settings.catch_up) == "skip":
                self.log.info("schedule %s: missed fire %s skipped (catch_up=skip)", name, d.fire.isoformat())
                self.last_fire[name] = d.fire
                continue
            self._publish(name, sched.streams, d.fire, now, d.missed, sched.cron.expression)

    def _publish(self, name: str, streams: tuple[str, ...], fire: datetime, now: datetime, missed: bool,
                 expression: str) -> None:
        s = self.settings
        request = ResnapshotRequest(
            request_id=request_id(name, fire), streams=list(streams),
            reason=f"schedule {name} ({expression})" + (" — missed fire, run on start" if missed else ""),
            requested_by=f"scheduler:{name}", requested_at=now)
        try:
            self.ports.control_topic.send(request.request_id.encode(), request.model_dump_json().encode())
        except TransientError:  # stops the scheduler: another one (or this one, restarted) fires it
            raise RuntimeError(f"Kafka at {s.kafka_bootstrap_servers} did not take fire {request.request_id}") from None
        self.last_fire[name] = fire
        self.published += 1
        self.fires[name] = self.fires.get(name, 0) + 1
        self.log.info("fired %s: %s%s", request.request_id, ", ".join(streams), " (missed while down: run once)"
                      if missed else "", extra={"kind": "schedule_fired", "schedule": name,
                                                "request_id": request.request_id, "streams": list(streams),
                                                "fire": fire.isoformat(), "missed": missed})
