"""``mallard status``, pure: facts gathered elsewhere (services, the replica, Kafka, the
replication config) become one report per stream, as a dict (``--json``) and as text.

No I/O here: ``mallard/ops/status.py`` gathers the facts. Times are aware datetimes in,
ISO 8601 strings (UTC) out.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mallard.core.names import StreamNameError, canonical, cdc_topic, is_stream
from mallard.core.scheduling import next_fire

UTC = timezone.utc
CONVERGING = "converging"
"""A stream whose rows a schema change may have rewritten without row events, until the
re-snapshot the applier asked for is merged (its changes are applied meanwhile)."""


# -- small pieces ----------------------------------------------------------------------


def partition_lag(ends: Mapping[int, tuple[int, int]], committed: Mapping[int, int | None]) -> dict[int, int]:
    """Per partition, messages a consumer group has not consumed: the high watermark minus
    its committed offset; where it committed nothing, every message still there
    (high - low). Never negative (a watermark read a moment before a commit)."""
    out = {}
    for p, (low, high) in sorted(ends.items()):
        done = committed.get(p)
        out[p] = max(0, high - (low if done is None else done))
    return out


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def position_parts(position: int) -> tuple[str, int]:
    """A replica row's ``_mallard_position`` (commit LSN << 32 | event order) -> (LSN text, order)."""
    return lsn_text(position >> 32), position & 0xFFFFFFFF


def topic_of(prefix: str, stream: str) -> str:
    """The stream's CDC topic, named as Debezium names it (``public."Order Items"`` ->
    ``<prefix>.public.Order_Items``); a name that is no stream: ``<prefix>.<name>``."""
    try:
        return cdc_topic(prefix, stream)
    except StreamNameError:
        return f"{prefix}.{stream}"


def stream_of_topic(topic: str, prefix: str) -> str | None:
    """``<prefix>.<schema>.<table>`` -> ``<schema>.<table>``; None for any other topic.
    Only a guess for a topic Debezium sanitized (``Order_Items`` may be ``"Order Items"``):
    where the streams are known, map their topics instead (``dead_letters_by_stream``)."""
    head = prefix + "."
    if not topic.startswith(head):
        return None
    rest = topic[len(head):]
    return rest if rest.count(".") == 1 and all(rest.split(".")) else None


def dead_letters_by_stream(letters: Iterable[tuple[str | None, str | None]], prefix: str, snapshot_topic: str,
                           streams: Iterable[str] = ()) -> tuple[dict[str, int], dict[str, int]]:
    """(per stream, per other source topic) counts of dead letters given as (source topic,
    original key). A CDC event names its stream by its topic (the topic of one of
    ``streams``, else read from the topic's name); a snapshot message by its key
    (snapshot messages are keyed by stream). A topic two streams share counts as a topic."""
    by_stream: dict[str, int] = {}
    other: dict[str, int] = {}
    owners: dict[str, list[str]] = {}
    for s in streams:
        owners.setdefault(topic_of(prefix, s), []).append(s)
    for topic, key in letters:
        known = owners.get(topic or "")
        stream = (known[0] if len(known) == 1 else None) if known else stream_of_topic(topic or "", prefix)
        if stream is None and topic == snapshot_topic and key and is_stream(key):
            stream = canonical(key)
        if stream is not None:
            by_stream[stream] = by_stream.get(stream, 0) + 1
        else:
            other[topic or "?"] = other.get(topic or "?", 0) + 1
    return by_stream, other


def next_run(stream: str, schedules: Mapping[str, Any], now: datetime,
             announced: Mapping[str, datetime] | None = None) -> dict[str, Any] | None:
    """The next scheduled snapshot of ``stream``: the earliest next fire among the
    schedules naming it. ``schedules``: name -> ScheduleSpec (cron, streams);
    ``announced``: name -> next fire as the running scheduler says (its clock and its
    last fires); otherwise computed from ``now``."""
    best = None
    never = None
    for name, sched in schedules.items():
        if stream not in sched.streams:
            continue
        at = (announced or {}).get(name) or next_fire(sched.cron, now, None)
        if at is None:
            never = never or (name, sched.cron.expression)
        elif best is None or at < best[0]:
            best = (at, name, sched.cron.expression)
    if best is None:
        return {"at": None, "schedule": never[0], "cron": never[1]} if never else None
    return {"at": iso(best[0]), "schedule": best[1], "cron": best[2]}


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_ms(ms: int | float | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def seconds_between(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else round((b - a).total_seconds(), 3)


# -- facts in, report out --------------------------------------------------------------


@dataclass
class ReplicaFacts:
    """What the replica holds, read through the applier or from the DuckDB file."""

    source: str | None = None
    """'applier' (its HTTP endpoint), 'duckdb file' (opened read-only), or None (unreadable)."""
    error: str | None = None
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    """stream -> {target, status, reason}"""
    rows: dict[str, int] = field(default_factory=dict)
    last_write: dict[str, dict[str, Any]] = field(default_factory=dict)
    """stream -> {position, tx_id, committed_ms, applied_ms} of its newest CDC row"""
    last_delete: dict[str, dict[str, Any]] = field(default_factory=dict)
    """stream -> {position, tx_id, applied_ms} of its newest CDC delete"""
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)
    """stream -> the latest row of _mallard.snapshots (times in ms)"""
    progress: dict[str, Any] | None = None
    """{commit_lsn (int), tx_id, committed_ms, applied_ms} of the last applied transaction"""


@dataclass
class KafkaFacts:
    error: str | None = None
    group: str = "mallard-applier"
    snapshot_group: str = "mallard-applier-snapshots"
    """The applier reads the snapshot topic with a consumer (and group) of its own."""
    lag: dict[str, dict[int, int] | None] = field(default_factory=dict)
    """topic -> partition -> lag of the applier's group (None: no such topic)"""
    oldest_unapplied_ms: int | None = None
    """Postgres commit time of the oldest transaction on Kafka the applier has not applied"""
    dead_letter_topic: str = "mallard.dead-letter"
    dead_letters_total: int | None = None
    dead_letters_by_stream: dict[str, int] = field(default_factory=dict)
    dead_letters_other: dict[str, int] = field(default_factory=dict)


def _last_change(stream: str, replica: ReplicaFacts) -> dict[str, Any] | None:
    write, delete = replica.last_write.get(stream), replica.last_delete.get(stream)
    candidates = [(w["position"], "write", w) for w in (write,) if w and w.get("position")]
    candidates += [(d["position"], "delete", d) for d in (delete,) if d and d.get("position")]
    if not candidates:
        return None
    position, kind, c = max(candidates, key=lambda x: x[0])
    lsn, order = position_parts(position)
    committed, applied = from_ms(c.get("committed_ms")), from_ms(c.get("applied_ms"))
    return {"op": kind, "lsn": lsn, "event_order": order, "tx_id": c.get("tx_id"), "committed_at": iso(committed),
            "applied_at": iso(applied), "delay_s": seconds_between(committed, applied)}


def _snapshot(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if not row:
        return None
    started, finished = from_ms(row.get("started_ms")), from_ms(row.get("finished_ms"))
    requested, read, merging = (from_ms(row.get(k)) for k in ("requested_ms", "read_finished_ms", "merge_started_ms"))
    merged = row["status"] == "merged"
    return {"snapshot_id": row["snapshot_id"], "result": row["status"], "reason": row.get("reason"),
            "where": row.get("where_sql"), "request_id": row.get("request_id"), "started_at": iso(started),
            "finished_at": iso(finished), "duration_s": seconds_between(started, finished),
            "requested_at": iso(requested),
            "request_to_merged_s": seconds_between(requested, finished) if merged else None,
            # Apart: waiting for the snapshotter, its read (and publishing), the transfer
            # through Kafka into DuckDB's staging, and the merge into the table.
            "phases": {"waited_s": seconds_between(requested, started), "read_s": seconds_between(started, read),
                       "transfer_s": seconds_between(read, merging),
                       "merge_s": seconds_between(merging, finished) if merged else None},
            "rows": row.get("rows_staged"), "rows_applied": row.get("rows_applied"),
            "rows_deleted": row.get("rows_deleted")}


def build_report(now: datetime, services: dict[str, dict[str, Any]], replica: ReplicaFacts, kafka: KafkaFacts,
                 config: Any | None, prefix: str, other_topics: list[str],
                 announced_fires: Mapping[str, datetime] | None = None, home: str | None = None,
                 duckdb_path: str | None = None) -> dict[str, Any]:
    """The whole report. Streams: the replication config's, then any other the replica has."""
    configured = dict(config.streams) if config is not None else {}
    names = list(configured) + sorted(s for s in replica.tables if s not in configured)
    health = (services.get("applier") or {}).get("health")
    lost = ((health.get("data_loss") or {}).get("streams") or {}) if isinstance(health, dict) else {}
    snapshotter = (services.get("snapshotter") or {}).get("health")
    waiting = (snapshotter.get("waiting") or {}) if isinstance(snapshotter, dict) else {}
    streams = {}
    for name in names:
        cfg = configured.get(name)
        table = replica.tables.get(name) or {}
        topic = topic_of(prefix, name)
        parts = kafka.lag.get(topic)
        if parts is None and kafka.error is None:
            parts = {}  # no CDC topic: Debezium has captured no change of the table yet
        streams[name] = {
            "configured": cfg is not None,
            "mode": cfg.mode if cfg is not None else None,
            "target": table.get("target"),
            # A schema change rewrote rows without row events: not ok until its re-snapshot is merged.
            "status": CONVERGING if table.get("status") == "ok" and table.get("converging") else table.get("status"),
            "reason": table.get("converging") if table.get("status") == "ok" else table.get("reason"),
            "rows": replica.rows.get(name),
            "last_change": _last_change(name, replica),
            "topic": topic,
            "topic_exists": topic in kafka.lag,
            "lag": None if parts is None else {"total": sum(parts.values()),
                                               "partitions": {str(p): n for p, n in parts.items()}},
            "last_snapshot": _snapshot(replica.snapshots.get(name)),
            "next_run": next_run(name, config.schedules, now, announced_fires) if config is not None else None,
            "dead_letters": kafka.dead_letters_by_stream.get(name, 0) if kafka.dead_letters_total is not None else None,
            "data_loss": lost.get(name),
            "waiting": waiting.get(name),
        }
    progress = None
    if replica.progress:
        p = replica.progress
        committed, applied = from_ms(p.get("committed_ms")), from_ms(p.get("applied_ms"))
        progress = {"commit_lsn": lsn_text(p["commit_lsn"]), "tx_id": p.get("tx_id"), "committed_at": iso(committed),
                    "applied_at": iso(applied), "delay_s": seconds_between(committed, applied)}
    behind = None
    unapplied = None
    if kafka.error is None:
        unapplied = sum(sum(parts.values()) for parts in kafka.lag.values() if parts)
        oldest = from_ms(kafka.oldest_unapplied_ms)
        behind = {"oldest_unapplied_committed_at": iso(oldest),
                  "behind_s": max(0.0, seconds_between(oldest, now)) if oldest is not None else 0.0}
    # Caught up means an applier that answers and nothing waiting on any of its topics:
    # a stopped applier's zero lag is only that nothing new arrived.
    applier = (services.get("applier") or {}).get("state")
    caught_up = applier == "running" and unapplied == 0 and kafka.oldest_unapplied_ms is None
    topics = {}
    for topic in other_topics:
        parts = kafka.lag.get(topic)
        topics[topic] = None if parts is None else {"total": sum(parts.values()),
                                                    "partitions": {str(p): n for p, n in parts.items()}}
    return {
        "generated_at": iso(now),
        "home": home,
        "services": services,
        "replica": {"path": duckdb_path, "read_from": replica.source, "error": replica.error,
                    "applied_up_to": progress, "behind": behind, "applier": applier, "unapplied_messages": unapplied,
                    "caught_up": caught_up},
        "kafka": {"error": kafka.error, "consumer_group": kafka.group, "snapshot_consumer_group": kafka.snapshot_group,
                  "topics": topics},
        "streams": streams,
        "dead_letters": {"topic": kafka.dead_letter_topic, "total": kafka.dead_letters_total,
                         "by_stream": dict(sorted(kafka.dead_letters_by_stream.items())),
                         "other": dict(sorted(kafka.dead_letters_other.items()))},
    }


# -- text --------------------------------------------------------------------------------


def _when(text: str | None, now: datetime) -> str:
    """'2026-11-21 23:45:10Z (13m ago)' / '(in 6h 14m)'."""
    if text is None:
        return "-"
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    delta = (now - t).total_seconds()
    return f"{t:%Y-%m-%d %H:%M:%S}Z ({_span(abs(delta))} {'ago' if delta >= 0 else 'from now'})"


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m {int(seconds % 60)}s"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h {minutes % 60}m"
    return f"{hours // 24}d {hours % 24}h"


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def service_summary(name: str, health: Any) -> str:
    """One phrase from a component's health detail (a sentence, or a /healthz body)."""
    if not isinstance(health, dict):
        return str(health or "")
    if name == "applier":
        p = health.get("progress") or {}
        head = f"applied up to LSN {p['commit_lsn']} (tx {p['tx_id']})" if p else "nothing applied yet"
        line = f"{head}; {health.get('events_applied', 0):,} events since start, {health.get('dead_letters', 0)} dead-lettered"
        loss = health.get("data_loss") or {}
        if loss.get("detected"):
            unrepaired = loss.get("unrepaired_streams") or []
            line += (f"; DATA LOSS on Kafka: {loss['detected']} partition(s), "
                     + (f"re-snapshot pending for {', '.join(unrepaired)}" if unrepaired else "every stream repaired"))
        return line + (f"; HELD UP: {health['not_ready_reason']}" if health.get("not_ready_reason") else "")
    if name == "connect":
        slot = health.get("slot") or {}
        head = (f"slot {'active' if slot.get('active') else 'INACTIVE'}, {(slot.get('retained_wal_bytes') or 0) / 1024:,.0f}"
                f" KiB WAL retained" if slot else "no replication slot yet")
        connector = health.get("connector") or {}
        return f"{head}; connector {connector.get('name', '?')}: {connector.get('state', '?')}"
    if name == "snapshotter":
        cur = health.get("current")
        head = (f"snapshotting {cur['stream']} ({cur.get('rows', 0):,}/~{cur.get('estimate', 0):,} rows)" if cur
                else "idle")
        waiting = health.get("waiting") or {}
        return (f"{head}; {health.get('snapshots', 0)} done, {health.get('failed', 0)} failed since start"
                + (f"; waiting for {len(waiting)} table(s): {', '.join(waiting)}" if waiting else ""))
    if name == "scheduler":
        role = "publishing fires" if health.get("leader") else "standing by"
        return f"{role}; {len(health.get('schedules') or {})} schedule(s), {health.get('published', 0)} fired since start"
    return ""


def _lag_text(lag: dict[str, Any] | None) -> str:
    if lag is None:
        return "?"
    if not lag["partitions"]:
        return "0 (no CDC topic yet: no change captured)"
    parts = ", ".join(f"p{p} {n:,}" for p, n in lag["partitions"].items())
    return f"{lag['total']:,} message(s)" + (f"  ({parts})" if parts else "")


def render(report: dict[str, Any], now: datetime) -> str:
    out = [f"mallard status  {_when(report['generated_at'], now).split(' (')[0]}" + (f"  (local stack in {report['home']})" if report.get("home") else ""),
           "", "services"]
    for name, s in report["services"].items():
        if s.get("url"):  # a deployment other than the local stack: where it answers
            out.append(f"  {name:<14} {s['state']:<9} {s['url']:<28} {s.get('summary') or ''}".rstrip())
            continue
        pid = s.get("pid") or "-"
        out.append(f"  {name:<14} {s['state']:<9} pid {pid!s:<8} port {s.get('port')!s:<6} {s.get('summary') or ''}".rstrip())

    r = report["replica"]
    where = {"applier": "read through the applier", "duckdb file": "applier stopped: read from the file, read-only"}
    out += ["", f"replica  {r['path'] or ''}  ({where.get(r['read_from'], 'not readable')})"]
    if r["error"]:
        out.append(f"  ! {r['error']}")
    p = r["applied_up_to"]
    if p:
        out.append(f"  applied up to LSN {p['commit_lsn']} (tx {p['tx_id']}), committed in Postgres "
                   f"{_when(p['committed_at'], now)}, applied {_span(p['delay_s'] or 0)} later")
    waiting = r.get("unapplied_messages")
    if r.get("applier") != "running":
        state = r.get("applier") or "not known to run"
        out.append(f"  ! the applier is {state}: "
                   + ("nothing is being applied" if state == "stopped" else "not answering as ready, so not caught up")
                   + (f" ({waiting:,} message(s) wait on Kafka)" if waiting else ""))
    b = r.get("behind")
    if b:
        if b["oldest_unapplied_committed_at"]:
            out.append(f"  behind by {_span(b['behind_s'])}: the oldest transaction not applied yet committed "
                       f"{_when(b['oldest_unapplied_committed_at'], now)}")
        elif r.get("caught_up"):
            out.append("  caught up: every transaction on Kafka is applied")
        elif waiting:
            out.append(f"  {waiting:,} message(s) on Kafka not applied yet")

    k = report["kafka"]
    out += ["", f"streams  (lag: messages on the stream's CDC topic not yet applied by consumer group {k['consumer_group']})"]
    if k["error"]:
        out.append(f"  ! Kafka: {k['error']}")
    if not report["streams"]:
        out.append("  none: no replication config and nothing in the replica yet")
    for name, st in report["streams"].items():
        head = [name, st["mode"] or "(not in the replication config)",
                st["status"] or ("WAITING for its table" if st.get("waiting") else "not in DuckDB yet")]
        if st["reason"]:
            head.append(f"— {st['reason']}")
        out.append("  " + "  ".join(head))
        target = f" in {st['target'].replace(chr(34), '')}" if st["target"] else ""
        if not st.get("configured", True) and st["status"]:
            out.append("    not applied     no stream of the replication config names it: its table is kept as it "
                       "was, changes are no longer applied (drop it in DuckDB if it is not wanted)")
        if st.get("waiting"):
            out.append(f"    waiting         {st['waiting']}")
        out.append(f"    rows            {_count(st['rows'])}{target}")
        c = st["last_change"]
        if c:
            what = "delete" if c["op"] == "delete" else "write"
            when = (f"committed {_when(c['committed_at'], now)}, applied {_span(c['delay_s'] or 0)} later"
                    if c["committed_at"] else f"applied {_when(c['applied_at'], now)}")
            out.append(f"    last change     {what} at LSN {c['lsn']} (tx {c['tx_id']}), {when}")
        else:
            out.append("    last change     none by CDC yet")
        out.append(f"    lag             {_lag_text(st['lag'])}" + (f"  on {st['topic']}" if st["topic_exists"] else ""))
        sn = st["last_snapshot"]
        if sn:
            rows = (f"{_count(sn['rows'])} rows ({_count(sn['rows_applied'])} applied, {_count(sn['rows_deleted'])} deleted)"
                    if sn["result"] == "merged" else f"{_count(sn['rows'])} rows staged")
            took = f" in {_span(sn['duration_s'])}" if sn["duration_s"] is not None else ""
            if sn["request_to_merged_s"] is not None:
                took += f", {_span(sn['request_to_merged_s'])} from request to merged"
            phases = ", ".join(f"{name} {_span(sn['phases'][key])}" for name, key in (
                ("waited", "waited_s"), ("read", "read_s"), ("transfer", "transfer_s"), ("merge", "merge_s"))
                if sn["phases"][key] is not None)
            why = f": {sn['reason']}" if sn["reason"] and sn["result"] != "merged" else ""
            subset = f", where {sn['where']}" if sn["where"] else ""
            out.append(f"    last snapshot   {sn['result']}{why}, started {_when(sn['started_at'], now)}, {rows}{took}"
                       f"{subset}  [{sn['snapshot_id']}]")
            if phases:
                out.append(f"    phases          {phases}")
        else:
            out.append("    last snapshot   none")
        nr = st["next_run"]
        if nr and nr["at"] is None:
            out.append(f"    next run        never: schedule {nr['schedule']} ({nr['cron']}) does not fire again")
        else:
            out.append(f"    next run        {_when(nr['at'], now)}, schedule {nr['schedule']} ({nr['cron']})" if nr
                       else "    next run        not scheduled")
        out.append(f"    dead letters    {_count(st['dead_letters'])}")
        loss = st.get("data_loss")
        if loss:
            state = ("repaired: snapshot " + str(loss.get("snapshot_id")) + " merged" if loss.get("resnapshot") == "merged"
                     else "re-snapshot requested, not merged yet")
            out.append(f"    ! DATA LOSS     {loss['kind']} on {loss['topic']}[{loss['partition']}], detected "
                       f"{_when(loss['detected_at'].replace('+00:00', 'Z'), now)}: {state}")
    if k["topics"]:
        out += ["", f"the applier's other topics (group {k['consumer_group']}; the snapshot topic: group "
                    f"{k['snapshot_consumer_group']})"]
        for topic, lag in k["topics"].items():
            out.append(f"  {topic:<24} lag {_lag_text(lag)}")
    d = report["dead_letters"]
    line = f"dead letters  {_count(d['total'])} on {d['topic']}"
    if d["by_stream"] or d["other"]:
        line += ": " + ", ".join(f"{k_} {n}" for k_, n in [*d["by_stream"].items(), *d["other"].items()])
    out += ["", line]
    return "\n".join(out)
