"""``mallard status``: gathers the facts (mallard/core/status.py turns them into the report).

- services: each component of the local stack — its pid file, and its health check
  (a service answering on its health port counts as running even without a pid file);
- the replica: through the applier's ``/query`` while it runs (DuckDB lets no other
  process open the file then), else the DuckDB file opened read-only;
- Kafka, directly (so lag shows while the applier is down): the applier group's
  committed offsets against each partition's end, and the dead-letter topic.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mallard.core.sql import quote_ident, quote_literal
from mallard.runtime.health import client_request, probe
from mallard.core.status import KafkaFacts, ReplicaFacts, build_report, dead_letters_by_stream, partition_lag, \
    service_summary, topic_of

Run = Callable[[str], list[list[Any]]]
DEAD_LETTERS_READ_AT_MOST = 200_000


def read_replica(run: Run, facts: ReplicaFacts) -> None:
    """Fill ``facts`` from the replica's bookkeeping and a scan of each table's
    _mallard_* columns (one query per kind, all tables at once)."""
    try:
        tables = run("SELECT stream, target, status, reason, converging FROM _mallard.tables ORDER BY stream")
    except Exception:  # noqa: BLE001 - a replica written before convergence was recorded
        tables = [[*r, None] for r in run("SELECT stream, target, status, reason FROM _mallard.tables ORDER BY stream")]
    for stream, target, status, reason, converging in tables:
        facts.tables[stream] = {"target": target, "status": status, "reason": reason, "converging": converging}
    row = run("SELECT commit_lsn, tx_id, epoch_ms(committed_at), epoch_ms(applied_at) FROM _mallard.progress WHERE id = 1")
    if row:
        facts.progress = dict(zip(("commit_lsn", "tx_id", "committed_ms", "applied_ms"), row[0]))
    for r in run("""SELECT stream, snapshot_id, status, reason, where_sql, request_id, epoch_ms(started_at),
                           epoch_ms(finished_at), rows_staged, rows_applied, rows_deleted, epoch_ms(requested_at),
                           epoch_ms(read_finished_at), epoch_ms(merge_started_at) FROM _mallard.snapshots
                    QUALIFY row_number() OVER (PARTITION BY stream ORDER BY started_at DESC, snapshot_id DESC) = 1"""):
        facts.snapshots[r[0]] = dict(zip(("stream", "snapshot_id", "status", "reason", "where_sql", "request_id",
                                          "started_ms", "finished_ms", "rows_staged", "rows_applied", "rows_deleted",
                                          "requested_ms", "read_finished_ms", "merge_started_ms"), r))
    existing = {f'"{s}"."{t}"' for s, t in run("SELECT schema_name, table_name FROM duckdb_tables()")}
    writes, deletes = [], []
    for stream, t in facts.tables.items():
        if t["target"] in existing:
            writes.append(f"""SELECT {quote_literal(stream)}, count(*),
                max(_mallard_position) FILTER (WHERE _mallard_source = 'cdc'),
                arg_max(_mallard_tx_id, _mallard_position) FILTER (WHERE _mallard_source = 'cdc'),
                arg_max(epoch_ms(_mallard_committed_at), _mallard_position) FILTER (WHERE _mallard_source = 'cdc'),
                arg_max(epoch_ms(_mallard_applied_at), _mallard_position) FILTER (WHERE _mallard_source = 'cdc')
                FROM {t['target']}""")
        tombstones = '"_mallard".' + quote_ident("deleted:" + stream)
        if tombstones in existing:
            deletes.append(f"""SELECT {quote_literal(stream)}, max(_mallard_position),
                arg_max(_mallard_tx_id, _mallard_position), arg_max(epoch_ms(_mallard_deleted_at), _mallard_position)
                FROM {tombstones}""")
    if writes:
        for stream, rows, position, tx, committed, applied in run(" UNION ALL ".join(writes)):
            facts.rows[stream] = rows
            if position is not None:
                facts.last_write[stream] = {"position": int(position), "tx_id": tx, "committed_ms": committed,
                                            "applied_ms": applied}
    if deletes:
        for stream, position, tx, applied in run(" UNION ALL ".join(deletes)):
            if position is not None:
                facts.last_delete[stream] = {"position": int(position), "tx_id": tx, "applied_ms": applied}


def _http_run(base_url: str) -> Run:
    def run(sql: str) -> list[list[Any]]:
        url = f"{base_url.rstrip('/')}/query?" + urllib.parse.urlencode({"sql": sql})
        try:
            with urllib.request.urlopen(client_request(url, "status"), timeout=90) as resp:
                return json.loads(resp.read())["rows"]
        except urllib.error.HTTPError as e:
            raise RuntimeError(json.loads(e.read() or b"{}").get("error") or f"the applier answered {e.code}") from None
    return run


def replica_facts(applier_running: bool, applier_url: str, duckdb_path: Path | None) -> ReplicaFacts:
    facts = ReplicaFacts()
    try:
        if applier_running:
            facts.source = "applier"
            read_replica(_http_run(applier_url), facts)
        elif duckdb_path is not None and duckdb_path.exists():
            import duckdb

            facts.source = "duckdb file"
            con = duckdb.connect(str(duckdb_path), read_only=True)
            try:
                read_replica(lambda sql: [list(r) for r in con.execute(sql).fetchall()], facts)
            finally:
                con.close()
        else:
            facts.error = (f"no DuckDB file at {duckdb_path} yet" if duckdb_path is not None else
                           "the applier does not answer (its replica cannot be read from here)")
    except Exception as e:  # noqa: BLE001 - a status command reports what it cannot read, and goes on
        facts.source, facts.error = None, f"cannot read the replica: {str(e).splitlines()[0]}"
    return facts


def _oldest_unapplied(bootstrap_servers: str, tx_topic: str, committed: dict[tuple[str, int], int | None],
                      lag: dict[int, int]) -> int | None:
    """Commit time (ms) of the oldest transaction the applier has not applied: the
    Debezium BEGIN/END marker at its committed offset of the transaction topic."""
    from mallard.adapters import kafka

    oldest = None
    for p, n in lag.items():
        if n <= 0:
            continue
        msg = kafka.read_at(bootstrap_servers, tx_topic, p, committed.get((tx_topic, p)) or 0)
        try:
            value = json.loads(msg.value()) if msg is not None and msg.value() else None
            payload = value.get("payload", value) if isinstance(value, dict) else None
            ts = int(payload["ts_ms"])
        except (ValueError, TypeError, KeyError):
            continue
        oldest = ts if oldest is None else min(oldest, ts)
    return oldest


def kafka_facts(bootstrap_servers: str, group: str, topics: list[str], dead_letter_topic: str, prefix: str,
                snapshot_topic: str, snapshot_group: str, streams: list[str] = ()) -> KafkaFacts:
    from mallard.adapters import kafka

    facts = KafkaFacts(group=group, snapshot_group=snapshot_group, dead_letter_topic=dead_letter_topic)
    try:
        metadata = kafka.broker_metadata(bootstrap_servers, timeout=5)
        known = [t for t in [*topics, dead_letter_topic] if t in metadata.topics]
        partitions = [(t, p) for t in known for p in sorted(metadata.topics[t].partitions)]
        ends = kafka.end_offsets(bootstrap_servers, partitions)
        committed = kafka.committed_offsets(bootstrap_servers, group, [
            tp for tp in partitions if tp[0] not in (dead_letter_topic, snapshot_topic)])
        committed.update(kafka.committed_offsets(bootstrap_servers, snapshot_group, [
            tp for tp in partitions if tp[0] == snapshot_topic]))
        for t in topics:
            if t in metadata.topics:
                parts = [p for t_, p in partitions if t_ == t]
                facts.lag[t] = partition_lag({p: ends[(t, p)] for p in parts}, {p: committed.get((t, p)) for p in parts})
        tx_topic = f"{prefix}.transaction"
        if facts.lag.get(tx_topic):
            facts.oldest_unapplied_ms = _oldest_unapplied(bootstrap_servers, tx_topic, committed, facts.lag[tx_topic])
        if dead_letter_topic in metadata.topics:
            dl = [(t, p) for t, p in partitions if t == dead_letter_topic]
            facts.dead_letters_total = sum(max(0, ends[tp][1] - ends[tp][0]) for tp in dl)
            if facts.dead_letters_total <= DEAD_LETTERS_READ_AT_MOST:
                letters = []
                for msg in kafka.read_to_end(bootstrap_servers, dead_letter_topic, idle=0.3):
                    try:
                        letter = json.loads(msg.value() or b"null")
                    except ValueError:
                        letter = None
                    letters.append((letter.get("source_topic"), letter.get("key")) if isinstance(letter, dict)
                                   else (None, None))
                facts.dead_letters_total = max(facts.dead_letters_total, len(letters))
                facts.dead_letters_by_stream, facts.dead_letters_other = dead_letters_by_stream(letters, prefix,
                                                                                                snapshot_topic, streams)
        else:
            facts.dead_letters_total = 0
    except Exception as e:  # noqa: BLE001 - the broker down is a fact to report
        facts.error = str(e).splitlines()[0]
    return facts


def service_states(stack: Any) -> dict[str, dict[str, Any]]:
    """Per component: running (healthy), unhealthy (its process runs, its check fails) or
    stopped; a service answering its health port without a pid file of ours counts as running."""
    out = {}
    for c in stack.components:
        pid = c.running_pid()
        ok, detail = c.check()
        state = "running" if ok else ("unhealthy" if pid else "stopped")
        if not ok and not pid:
            detail = "not running"
        health = {k: v for k, v in detail.items() if k != "tables"} if isinstance(detail, dict) else detail
        out[c.name] = {"state": state, "pid": pid, "port": c.port, "log": str(c.log),
                       "summary": service_summary(c.name, detail) if ok or isinstance(detail, dict)
                       else (detail if isinstance(detail, str) else ""),
                       "health": health}
    return out


def remote_service_states(deployment: Any) -> dict[str, dict[str, Any]]:
    """A deployment that is not the local stack: what its addresses answer (the applier's
    /healthz, Connect's REST API, a broker); no pid files, no logs of ours."""
    from mallard.adapters import kafka
    from mallard.stack import jvm

    out: dict[str, dict[str, Any]] = {}

    def entry(name: str, ok: bool, detail: Any, where: str) -> None:
        out[name] = {"state": "running" if ok else "stopped", "pid": None, "port": None, "log": "", "url": where,
                     "summary": service_summary(name, detail) if isinstance(detail, dict) else str(detail),
                     "health": detail}

    url = deployment.applier_url
    _, body = probe(url.rstrip("/") + "/healthz", timeout=5)  # 503: running, not ready (its body says why)
    entry("applier", body is not None, body if body is not None else f"does not answer at {url}", url)
    why = kafka.broker_answers(deployment.bootstrap_server)
    entry("broker", why is None, why or f"answers at {deployment.bootstrap_server}", deployment.bootstrap_server)
    if deployment.connect_url:
        try:
            info = jvm.connect_info(deployment.connect_url)
            entry("connect", True, f"Kafka Connect {info.get('version', '?')}", deployment.connect_url)
        except Exception as e:  # noqa: BLE001
            entry("connect", False, f"does not answer at {deployment.connect_url} ({e})", deployment.connect_url)
    return out


def gather(settings: Any, config: Any | None, now: datetime | None = None, deployment: Any = None) -> dict[str, Any]:
    """The status report's facts, from the local stack (``settings``) unless ``deployment``
    names another one (mallard/config/deployment.py)."""
    from mallard.config.settings import KafkaSettings
    from mallard.stack.local import LocalStack
    from mallard.services.applier.config import ApplierSettings

    now = now or datetime.now(timezone.utc)
    stack = LocalStack(settings)
    local = deployment is None or deployment.is_local_stack
    applier_url = deployment.applier_url if deployment is not None else f"http://127.0.0.1:{settings.applier_health_port}"
    bootstrap_servers = deployment.bootstrap_server if deployment is not None else settings.bootstrap_servers
    services = service_states(stack) if local else remote_service_states(deployment)
    replica_file = Path(deployment.replica_file) if deployment is not None and deployment.replica_file else None
    replica = replica_facts(services["applier"]["state"] == "running", applier_url,
                            stack.duckdb_path if local else replica_file)
    k = KafkaSettings()
    prefix = k.topic_prefix
    streams = list(config.streams) if config is not None else []
    streams += [s for s in replica.tables if s not in streams]
    other_topics = [f"{prefix}.transaction", k.snapshot_topic]
    applier = ApplierSettings()
    group, snapshot_group = applier.consumer_group, applier.snapshot_group
    if services["broker"]["state"] == "running":
        kafka = kafka_facts(bootstrap_servers, group, [topic_of(prefix, s) for s in streams] + other_topics,
                            k.dead_letter_topic, prefix, k.snapshot_topic, snapshot_group, streams)
    else:  # no waiting for a broker that is known to be down
        kafka = KafkaFacts(error=f"no Kafka broker answers at {bootstrap_servers}", group=group,
                           snapshot_group=snapshot_group, dead_letter_topic=k.dead_letter_topic)
    announced = {}
    scheduler = services.get("scheduler", {}).get("health")
    if isinstance(scheduler, dict):
        for name, sched in (scheduler.get("schedules") or {}).items():
            try:
                at = datetime.fromisoformat(sched["next_fire"])
            except (TypeError, KeyError, ValueError):
                continue  # none announced (or not a time): computed here instead
            if at.tzinfo is not None:
                announced[name] = at
    return build_report(now, services, replica, kafka, config, prefix, other_topics, announced,
                        home=str(stack.home) if local else None, duckdb_path=str(stack.duckdb_path) if local else None)
