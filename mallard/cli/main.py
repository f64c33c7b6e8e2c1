"""The ``mallard`` command line."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _stack_settings():
    from mallard.config.deployment import stack_settings

    return stack_settings()


def _deployment(args: argparse.Namespace):
    """Which deployment this command talks to: the global options, MALLARD_* variables,
    a profile, then the local stack (resolved once per command)."""
    dep = getattr(args, "_deployment", None)
    if dep is None:
        from mallard.adapters import kafka
        from mallard.config.deployment import resolve_deployment

        options = {name: getattr(args, name, None) for name in
                   ("bootstrap_server", "applier_url", "connect_url", "pg_dsn", "config", "replica_file")}
        dep = resolve_deployment(options, getattr(args, "profile", None))
        kafka.use_client_config(dict(dep.kafka))
        args._deployment = dep
    return dep


def _source_settings(args: argparse.Namespace, reading: bool = False):
    """How to connect to the source Postgres: the deployment's DSN, else the local stack's
    settings (its SELECT-only role when ``reading`` and the stack has one)."""
    from mallard.config.deployment import postgres_settings

    from mallard.config.deployment import config_source, same_server

    dep = _deployment(args)
    stack = _stack_settings()
    if dep.pg_dsn:
        return postgres_settings(dep, stack)
    if dep.config and dep.origin.get("config") != "local stack":
        # A config the user named (option, variable, profile) names the source, over what an
        # earlier `stack up` recorded; the same server as the local stack's: the stack's roles.
        source = config_source(stack, dep.config)
        if not same_server(source, stack):
            return source
    if reading:
        from mallard.stack.local import LocalStack

        return LocalStack(stack).reader()
    return stack


def cmd_stack_up(args: argparse.Namespace) -> int:
    from mallard.stack.local import LocalStack, StackSettings

    from datetime import datetime, timezone

    stack = LocalStack(StackSettings())
    print(f"mallard stack up ({stack.home})")
    started = datetime.now(timezone.utc)
    stack.up(demo=not args.no_demo, only=args.only)
    if args.only:
        print(f"{args.only} healthy; `mallard stack up` starts the rest")
        return 0
    print("all components healthy; `mallard stack status` shows them, `mallard stack guide` how to look")
    if sys.stderr.isatty():  # a person watching: follow the first snapshots until they are merged
        streams = _first_snapshot_streams(args)
        if streams:
            print("first snapshots (Ctrl-C stops watching, not the stack):", file=sys.stderr)
            try:
                _wait_for_snapshots(args, streams, started, timeout=600)
            except KeyboardInterrupt:
                pass
    return 0


def _first_snapshot_streams(args: argparse.Namespace) -> list[str]:
    """The stack's streams with no snapshot merged into the replica yet."""
    from mallard.config.connector import load_connector_config_file
    from mallard.stack.local import LocalStack

    stack = LocalStack(_stack_settings())
    try:
        streams = (list(_replication_config(args).streams) if _deployment(args).config
                   else load_connector_config_file(stack.connector_config_path()).tables)
        merged = {row[0] for row in _applier_get(args, "/query", sql="SELECT DISTINCT stream FROM _mallard.snapshots "
                                                                    "WHERE status = 'merged'")["rows"]}
    except (RuntimeError, ValueError, OSError):
        return []  # nothing to follow (the replica not readable yet): `status` shows it
    return [x for x in streams if x not in merged]


def cmd_stack_down(args: argparse.Namespace) -> int:
    from mallard.stack.local import LocalStack

    stack = LocalStack(_stack_settings())
    print(f"mallard stack down ({stack.home})")
    stack.down(purge=args.purge)
    return 0


def cmd_stack_status(args: argparse.Namespace) -> int:
    from mallard.stack.local import LocalStack

    status = LocalStack(_stack_settings()).status(show_secrets=args.show_secrets)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(f"local stack in {status['home']}")
        for name, c in status["components"].items():
            pid = c["pid"] or "-"
            print(f"  {name:<14} {c['state']:<9} pid {pid!s:<8} port {c['port']:<6} log {c['log']}")
        print(f"  postgres DSN       {status['postgres']['dsn']}")
        for role, r in status["postgres"]["roles"].items():
            if role != "owner":
                print(f"    {role + ' role':<16} {r['dsn']}")
        print(f"  kafka bootstrap    {status['kafka']['bootstrap_servers']}")
        print(f"  duckdb file        {status['duckdb']['path']}")
        applier = status["components"]["applier"]["detail"]
        if isinstance(applier, dict) and applier.get("progress"):
            p = applier["progress"]
            print(f"  applied up to      LSN {p['commit_lsn']} (tx {p['tx_id']}, committed {p['committed_at']}); "
                  f"{applier['events_applied']} event(s) since start, {applier['dead_letters']} dead-lettered")
        connect = status["components"]["connect"]
        print(f"  kafka connect      {connect.get('url')} (Kafka {connect.get('version')}, Debezium "
              f"{connect.get('debezium_version')})")
        detail = connect["detail"]
        if isinstance(detail, dict) and detail.get("slot"):
            slot = detail["slot"]
            print(f"  connector          {detail['connector']['name']}: {detail['connector']['state']}")
            print(f"  replication slot   {'active' if slot['active'] else 'INACTIVE'}, confirmed up to "
                  f"{slot['confirmed_flush_lsn']}, retaining {slot['retained_wal_bytes'] / 1024:.0f} KiB of WAL")
    running = all(c["state"] == "running" for c in status["components"].values())
    return 0 if running else 3


def cmd_stack_guide(args: argparse.Namespace) -> int:
    from mallard.config.connector import load_connector_config_file

    from mallard.stack.local import LocalStack

    s = _stack_settings()
    stack = LocalStack(s)
    config = load_connector_config_file(s.connector_config)
    from mallard.core.status import topic_of

    topic = topic_of(config.topic_prefix, config.tables[-1]) if config.tables else \
        f"{config.topic_prefix}.<schema>.<table>"
    home = stack.home
    print(f"""
How to look at the running stack:
  Debezium change events:    .venv/bin/mallard tail {topic} --from-beginning --limit 5
  Transaction metadata:      .venv/bin/mallard tail {config.transaction_topic} --from-beginning --limit 4
  Topics and message counts: .venv/bin/mallard topics
  With kcat (apt install kcat):  kcat -b {s.bootstrap_servers} -t {topic} -C -o beginning -e -q -f '%k\\n%s\\n\\n'
  Lag, delay, last snapshots:    .venv/bin/mallard status
  Change the source:         psql 'postgresql://{s.pg_user}:<password>@127.0.0.1:{s.pg_port}/{s.pg_database}'   (local default password: mallard)
                             .venv/bin/mallard demo changes --count 10
  Logs:                      {home / 'logs'}/  (Postgres: {stack.components[0].log})
  Every connection checked:  .venv/bin/mallard check
  Replica equal to Postgres? .venv/bin/mallard verify   (--repair re-snapshots what differs)
  Machine-readable status:   .venv/bin/mallard stack status --json
  Stop:                      .venv/bin/mallard stack down   (--purge also drops the replication slot and all local data)
""")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from mallard.core.status import render
    from mallard.ops.status import gather

    dep = _deployment(args)
    config = _replication_config(args) if dep.config else None

    def report_now() -> tuple[dict, str]:
        now = datetime.now(timezone.utc)
        report = gather(_stack_settings(), config, now, deployment=dep)
        return report, (json.dumps(report, indent=2, default=str) if args.json else render(report, now))

    report, text = report_now()
    if args.watch is None:
        print(text)
    else:
        import time

        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        console = Console()
        if not console.is_terminal:  # a pipe or a log: one report after another
            while True:
                print(text, flush=True)
                time.sleep(args.watch)
                report, text = report_now()
        with Live(Text(text), console=console, auto_refresh=False, screen=False) as live:
            while True:  # until Ctrl-C (exit 130)
                time.sleep(args.watch)
                report, text = report_now()
                live.update(Text(text), refresh=True)
    return 0 if all(c["state"] == "running" for c in report["services"].values()) else 3


def cmd_topics(args: argparse.Namespace) -> int:
    from mallard.adapters.kafka import topic_summaries

    topics = topic_summaries(_deployment(args).bootstrap_server)
    if args.json:
        print(json.dumps(topics, indent=2))
        return 0
    for t in topics:
        lags = []
        for group, parts in t["groups"].items():
            total = sum(parts.values())
            detail = ", ".join(f"p{p} {n}" for p, n in parts.items() if n)
            lags.append(f"{group} {total}" + (f" ({detail})" if detail and len(parts) > 1 else ""))
        print(f"  {t['topic']:<40} partitions {t['partitions']:<3} messages {t['messages']:<9} "
              f"lag {'; '.join(lags) if lags else '-'}")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from mallard.adapters.kafka import read_topic
    from mallard.core.describe import as_json, describe, key_matches

    servers = _deployment(args).bootstrap_server
    from_time_ms = None
    if args.from_time:
        from datetime import datetime, timezone

        try:
            when = datetime.fromisoformat(args.from_time.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"--from-time {args.from_time!r}: expected an ISO time, e.g. 2026-12-03T10:00:00Z") from None
        from_time_ms = int((when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp() * 1000)
    if args.offset is not None and args.partition is None:
        raise ValueError("--offset needs --partition")
    shown = 0
    # With --key every message is read and the limit counts the matching ones.
    for msg in read_topic(servers, args.topic, from_beginning=args.from_beginning or args.partition is not None,
                          limit=None if args.key is not None else args.limit,
                          idle_timeout=None if args.follow else args.timeout, partition=args.partition,
                          offset=args.offset, from_time_ms=from_time_ms):
        if args.key is not None and not key_matches(msg.key(), args.key):
            continue
        if args.json:
            kind, ts = msg.timestamp()
            print(json.dumps(as_json(msg.topic(), msg.partition(), msg.offset(), ts if kind else None, msg.headers(),
                                     msg.key(), msg.value(), raw=args.raw), default=str, ensure_ascii=False), flush=True)
        else:
            print(describe(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), raw=args.raw), flush=True)
        shown += 1
        if args.limit is not None and shown >= args.limit:
            break
    print(f"({shown} message(s))", file=sys.stderr)
    return 0


def _service_get(service: str, base_url: str, path: str, **params: str) -> dict:
    import urllib.error
    import urllib.parse
    import urllib.request

    from mallard.runtime.health import client_request

    url = base_url.rstrip("/") + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
    try:
        with urllib.request.urlopen(client_request(url, "cli"), timeout=90) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            body = json.loads(e.read() or b"{}")
        except ValueError:
            body = {}
        raise RuntimeError(body.get("error") or f"the {service} answered {e.code} at {url}") from None
    except OSError as e:
        raise RuntimeError(f"the {service} does not answer at {url} ({e}); is it running? (--applier-url, "
                           "MALLARD_APPLIER_URL or a --profile name another)") from None


def _applier_get(args: argparse.Namespace, path: str, **params: str) -> dict:
    return _service_get("applier", _deployment(args).applier_url, path, **params)


def _answers(url: str) -> bool:
    """Whether the applier answers at ``url`` (its /healthz; 503 while not ready still answers)."""
    from mallard.runtime.health import probe

    return probe(url.rstrip("/") + "/healthz", timeout=3)[1] is not None


def cmd_tables(args: argparse.Namespace) -> int:
    tables = _applier_get(args, "/tables")["tables"]
    if args.json:
        print(json.dumps(tables, indent=2))
        return 0
    for t in sorted(tables, key=lambda t: t["stream"]):
        extra = []
        if t["reason"]:
            extra.append(t["reason"])
        if t.get("converging"):
            extra.append(f"converging (re-snapshot requested): {t['converging']}")
        if t["dropped_columns"]:
            extra.append("dropped in Postgres, kept: " + ", ".join(t["dropped_columns"]))
        if t["unknown_type_columns"]:
            extra.append("unknown types kept as text: " + ", ".join(t["unknown_type_columns"]))
        print(f"  {t['stream']:<32} -> {t['target']:<28} {t['status']:<17} {'; '.join(extra)}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    dep = _deployment(args)
    if dep.replica_file and not _answers(dep.applier_url):
        # Compose from the host: the applier's port is not published, its read copy is.
        import duckdb

        from mallard.adapters.duckdb_read import ReplicaFile
        from mallard.core.read_query import QueryRefused

        try:
            replica = ReplicaFile(dep.replica_file)
        except (OSError, duckdb.Error) as e:
            print(f"mallard query: the applier does not answer at {dep.applier_url}, and {e}", file=sys.stderr)
            return 1
        try:
            result = replica.query(args.sql)
        except QueryRefused as e:
            print(f"mallard query: {e}", file=sys.stderr)
            return 1
        finally:
            replica.close()
        print(f"(read from {dep.replica_file}: the applier's read copy, as of its last publication)", file=sys.stderr)
    else:
        result = _applier_get(args, "/query", sql=args.sql)
    if args.json:
        print(json.dumps({"columns": result["columns"], "rows": result["rows"],
                          "truncated": bool(result.get("truncated"))}, default=str))
        return 0
    print("\t".join(result["columns"]))
    for row in result["rows"]:
        print("\t".join("NULL" if v is None else str(v) for v in row))
    if result.get("truncated"):
        print(f"(only the first {len(result['rows'])} rows: add a LIMIT or narrow the query)", file=sys.stderr)
    return 0


class CannotCompare(RuntimeError):
    """verify could not compare: exit 2, not 1 (different)."""


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        return _verify(args)
    except (CannotCompare, OSError) as e:
        print(f"mallard verify: could not compare: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a side unreachable (Postgres, the applier, Kafka): not a difference
        from mallard.adapters.postgres import SourceError

        if isinstance(e, SourceError) or "does not answer" in str(e) or "cannot" in str(e):
            print(f"mallard verify: could not compare: {e}", file=sys.stderr)
            return 2
        raise


def _verify(args: argparse.Namespace) -> int:
    from mallard.config.connector import load_connector_config_file
    from mallard.ops.verify import ApplierReplica, FileReplica, as_json, render, repair_request, verify

    s = _stack_settings()
    dep = _deployment(args)
    if args.duckdb:
        replica = FileReplica(args.duckdb)
    else:
        replica = ApplierReplica(dep.applier_url)
        if not replica.answers() and dep.replica_file:
            replica = FileReplica(dep.replica_file)  # compose from the host: the applier's read copy
        elif not replica.answers():
            if not dep.is_local_stack:
                raise CannotCompare(f"the applier does not answer at {dep.applier_url} (give --duckdb FILE to read a "
                                    "copy of the replica instead)")
            from mallard.stack.local import LocalStack

            replica = FileReplica(str(LocalStack(s).duckdb_path))
    slot = load_connector_config_file(s.connector_config).slot_name
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    reader = _source_settings(args, reading=True)  # verify only reads: a SELECT-only role where there is one

    def run(streams):
        from mallard.runtime.progress import VerifyProgress

        with VerifyProgress(sys.stderr) as progress:
            return verify(reader, replica, streams, slot, timeout=args.catch_up_timeout, fanout=args.fanout,
                          leaf_rows=args.leaf_rows, log=lambda line: print(line, file=sys.stderr), on_stream=progress)

    try:
        report = run(args.streams)
        if args.json:
            print(json.dumps(as_json(report), indent=2))
        else:
            print("\n".join(render(report, args.limit)))
        broken = [r for r in report.results if not r.equal and r.comparison is not None]
        if not args.repair or not broken:
            return 0 if report.equal else 1
        from datetime import datetime, timezone

        requested_at = datetime.now(timezone.utc)
        for r in broken:
            where, full = repair_request(r)
            _request_snapshot(args, [r.stream], "verify --repair", where=where, full=full)
            shown = where if where is None or len(where) < 200 else where[:200] + "..."
            say(f"repair: requested a snapshot of {r.stream}" + (f" where {shown}" if where else " (whole table)"))
        if not args.wait:
            return 1
        if _wait_for_snapshots(args, [r.stream for r in broken], requested_at, args.timeout) != 0:
            return 1
        say("repair: merged; verifying again")
        again = run([r.stream for r in broken])
        if args.json:
            print(json.dumps(as_json(again), indent=2))
        else:
            print("\n".join(render(again, args.limit)))
        return 0 if again.equal else 1
    finally:
        replica.close()


def _request_snapshot(args: argparse.Namespace, streams: list[str], reason: str, where: str | None = None,
                      full: bool = False):
    """Publish a resnapshot request on the control topic; returns it."""
    import getpass
    import uuid
    from datetime import datetime, timezone

    from mallard.adapters import kafka
    from mallard.config.settings import KafkaSettings
    from mallard.schemas.control import ResnapshotRequest

    request = ResnapshotRequest(request_id=f"cli-{uuid.uuid4().hex[:12]}", streams=streams, reason=reason,
                                requested_by=f"cli:{getpass.getuser()}", requested_at=datetime.now(timezone.utc),
                                where=where, full=full)
    # Not idempotent: its producer id handshake costs half a second, and a request sent
    # twice is coalesced by the snapshotter anyway.
    servers = _deployment(args).bootstrap_server
    producer = kafka.producer(servers, **{"enable.idempotence": False})
    producer.produce(KafkaSettings().control_topic, key=request.request_id.encode(),
                     value=request.model_dump_json().encode())
    if producer.flush(30) != 0:
        raise RuntimeError(f"Kafka at {servers} did not take the request")
    return request


def cmd_resnapshot(args: argparse.Namespace) -> int:

    from mallard.core.filters import FilterError, check_filter

    if args.full and args.where:
        raise ValueError("--full and --where exclude each other (--full is a whole-table refresh)")
    args.streams = _spelled(args.streams)  # (main did already; a caller of cmd_resnapshot may not have)
    known = _known_streams(args)
    unknown = [x for x in args.streams if known is not None and x not in known]
    if unknown:  # refused here: the snapshotter would refuse it, and nothing would say so
        raise ValueError(f"stream(s) not replicated: {', '.join(unknown)} (replicated: {', '.join(sorted(known))})")
    where = None
    if args.where is not None:
        try:
            where = check_filter(args.where)  # refused here, before anything is published
        except FilterError as e:
            raise ValueError(f"--where: {e}") from None
    request = _request_snapshot(args, args.streams, args.reason, where=where, full=args.full)
    if args.json:
        print(json.dumps({"request_id": request.request_id, "streams": args.streams, "where": where,
                          "full": args.full}), flush=True)
    else:
        print(f"requested {request.request_id}: {', '.join(args.streams)}")
    return _wait_for_snapshots(args, args.streams, request.requested_at, args.timeout,
                               request_id=request.request_id) if args.wait else 0


def _known_streams(args: argparse.Namespace) -> set[str] | None:
    """The streams a request may name, as the snapshotter decides: the replication
    config's, else the connector config's table list; None: any table (the connector
    captures every one, or its config is not readable from here)."""
    if _deployment(args).config:
        return set(_replication_config(args).streams)
    try:
        from mallard.config.connector import load_connector_config_file
        from mallard.stack.local import LocalStack

        path = (LocalStack(_stack_settings()).connector_config_path() if _deployment(args).is_local_stack
                else None)
        tables = load_connector_config_file(path).tables if path is not None and path.exists() else []
    except (OSError, ValueError):
        return None
    return set(tables) or None


def _wait_for_snapshots(args: argparse.Namespace, streams: list[str], requested_at, timeout: float,
                        request_id: str | None = None) -> int:
    """Follow the request until every stream's snapshot is merged into DuckDB; stop at the
    first one abandoned, or failed or refused by the snapshotter (its answer is recorded as
    abandoned, with the reason): a live progress bar per stream (rows, rate, ETA) on a
    terminal, a line per stream otherwise."""
    import time

    from mallard.core.sql import quote_literal
    from mallard.runtime.progress import SnapshotProgress

    started, done, failed = time.monotonic(), {}, False
    listed = ", ".join(quote_literal(x) for x in streams)
    ours = f" OR request_id = {quote_literal(request_id)}" if request_id else ""
    sql = (f"SELECT stream, status, rows_staged, rows_applied, rows_deleted, reason FROM _mallard.snapshots "
           f"WHERE stream IN ({listed}) AND (started_at >= {quote_literal(requested_at.isoformat())}{ours}) "
           f"ORDER BY started_at")
    local = _deployment(args).is_local_stack
    with SnapshotProgress(streams, sys.stderr) as progress:
        while len(done) < len(streams) and not failed:
            if time.monotonic() - started > timeout:
                progress.say(f"no end within {timeout:.0f}s for: {', '.join(x for x in streams if x not in done)}")
                return 1
            try:
                rows = _applier_get(args, "/query", sql=sql)["rows"]
                # The snapshotter's progress: the local stack's (elsewhere its address is not known).
                current = (_service_get("snapshotter", f"http://127.0.0.1:{_stack_settings().snapshotter_health_port}",
                                        "/healthz").get("current") or {}) if local else {}
            except RuntimeError:
                rows, current = [], {}  # a service restarting: keep waiting
            for stream, status, staged, applied, deleted, reason in rows:
                if stream in done or status not in ("merged", "abandoned"):
                    continue
                done[stream] = status
                failed |= status != "merged"
                progress.finish(stream, status == "merged", staged or 0,
                                f"{stream}: merged, {staged:,} rows ({applied:,} applied, {deleted:,} deleted)"
                                if status == "merged" else f"{stream}: abandoned: {reason}")
            if failed:
                left = [x for x in streams if x not in done]
                if left:
                    progress.say(f"not waiting for: {', '.join(left)}")
                break
            if current.get("stream") in streams and current.get("stream") not in done:
                progress.update(current["stream"], current.get("rows", 0), current.get("estimate") or 0)
            time.sleep(0.5)
    return 1 if failed else 0


def _replication_config(args: argparse.Namespace):
    from mallard.config.replication import load_config

    path = _deployment(args).config
    if not path:
        raise ValueError("no replication config: pass --config FILE or set MALLARD_REPLICATION_CONFIG")
    return load_config(path)


def cmd_config_check(args: argparse.Namespace) -> int:
    from mallard.adapters import postgres
    from mallard.config.replication import check_against_postgres

    from mallard.core.keyless import keyless_modes

    config = _replication_config(args)
    keyless = {}
    if not args.offline:
        conn = postgres.connect(**_source_settings(args).pg_params())
        try:
            check_against_postgres(config, conn)
            full = [n for n, st in config.streams.items() if st.replica_identity == "full"]
            keyless = {m.stream: m for m in keyless_modes(postgres.table_identities(conn, list(config.streams)), full)}
        finally:
            conn.close()
    publication = _publication_name()
    if args.json:
        print(json.dumps({"path": str(config.path), "ok": True, "checked_in_postgres": not args.offline,
                          "streams": {n: {"mode": st.mode, "primary_key": list(st.primary_key or []) or None,
                                          "update_key": st.update_key, "where": st.where,
                                          "replica_identity": st.replica_identity,
                                          **({"no_primary_key": {"mode": keyless[n].mode,
                                                                 "detail": keyless[n].describe(publication)}}
                                             if n in keyless else {})}
                                      for n, st in config.streams.items()},
                          "schedules": {n: {"cron": sc.cron.expression, "timezone": str(sc.cron.tz),
                                            "streams": list(sc.streams)} for n, sc in config.schedules.items()}},
                         indent=2))
        return 0
    print(f"{config.path}: ok: {len(config.streams)} stream(s) "
          f"({', '.join(f'{n} {s.mode}' for n, s in config.streams.items())}), {len(config.schedules)} schedule(s)"
          + ("" if args.offline else "; every table exists in Postgres"))
    for name, sched in config.schedules.items():
        print(f"  schedule {name}: {sched.cron.expression} ({sched.cron.tz}) -> {', '.join(sched.streams)}")
    for mode in keyless.values():
        print(f"  {mode.describe(publication)}")
    return 0


def cmd_config_apply(args: argparse.Namespace) -> int:
    """A changed replication config on a running deployment, without restarting anything
    (docs/operating.md, "Changing the config while it runs")."""
    from mallard.config.replication import load_config

    dep = _deployment(args)
    path = args.file or dep.config
    if not path:
        raise ValueError("no replication config: name the FILE, or pass --config FILE or set MALLARD_REPLICATION_CONFIG")
    load_config(path)  # a bad file is refused before anything is asked of anyone
    if dep.origin.get("connect_url") == "local stack" and not dep.pg_dsn:
        from mallard.stack.local import LocalStack

        print(f"mallard config apply {path} (local stack)")
        diff = LocalStack(_stack_settings()).apply_config(path)
        named = os.environ.get("MALLARD_REPLICATION_CONFIG")
        if named and Path(named).resolve() != Path(path).resolve():
            print(f"  note: MALLARD_REPLICATION_CONFIG names {named}: commands run with it keep reading that file "
                  f"(the environment wins over the stack's record); point it at {path}", file=sys.stderr)
        if diff is not None and diff.removed:
            print(f"  no longer applied: {', '.join(diff.removed)} (their DuckDB tables are kept as they are; drop them "
                  "in the replica if they are not wanted)")
        return 0
    return _apply_elsewhere(args, dep, path)


def _apply_elsewhere(args: argparse.Namespace, dep, path: str) -> int:
    """Another deployment (compose, your own Kafka Connect): check the config against the
    source, PUT the connector's new table list through Connect's REST API, and print the
    publication's SQL for a role that may alter it (mallard holds no such role there)."""
    from mallard.adapters import postgres
    from mallard.config.connector import register
    from mallard.config.replication import check_against_postgres, load_config
    from mallard.core import names
    from mallard.core.connector import ConnectorConfig, with_streams
    from mallard.core.keyless import plan_publications, publication_statements
    from mallard.stack import jvm
    from mallard.stack.roles import HEARTBEAT

    config = load_config(path)
    conn = postgres.connect(**_source_settings(args).pg_params())
    try:
        missing = check_against_postgres(config, conn, missing_ok=True)
        existing = [s for s in config.streams if s not in missing]
        plan = plan_publications(postgres.table_identities(conn, existing),
                                 [n for n, st in config.streams.items() if st.replica_identity == "full"])
        name = args.name or _connector_name()
        try:
            held_config = jvm.connector_config(dep.connect_url, name)
        except jvm.JvmError as e:
            raise RuntimeError(f"{e}: register it first (mallard connector register)") from None
        connector = with_streams(ConnectorConfig(name, {k: v for k, v in held_config.items() if k != "name"}),
                                 list(config.streams))
        publication, inserts = connector.publication_name, connector.inserts_publication
        held: dict[str, set[str]] = {}
        for pub in filter(None, (publication, inserts)):
            with conn.cursor() as cur:
                cur.execute("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (pub,))
                held[pub] = {names.stream_name(*r) for r in cur.fetchall()}
        all_tables = bool(postgres.scalar(conn, "SELECT puballtables FROM pg_publication WHERE pubname = %s",
                                          publication))
    finally:
        conn.close()
    register(dep.connect_url, connector, timeout=args.timeout)
    print(f"connector {name} at {dep.connect_url}: table.include.list {connector.config['table.include.list']} "
          "(RUNNING)")
    statements = [] if all_tables else publication_statements(
        plan, publication, inserts, held.get(publication, ()), held.get(inserts, ()) if inserts else (), [HEARTBEAT])
    if statements:
        print("run this in the source database as its owner or a superuser (mallard holds no such role here); a new "
              "stream's first snapshot waits until its table is in the publication:")
        for statement in statements:
            print(f"  {statement}")
    else:
        print(f"publication {publication}: already as the config needs it")
    for mode in plan.modes:
        print(f"  {mode.describe(publication)}")
    if missing:
        print(f"waiting for tables that do not exist yet: {', '.join(missing)}")
    print(f"then give the services {path} as their MALLARD_REPLICATION_CONFIG (replace the file they read): they "
          "take it within seconds, without a restart (/healthz shows its digest under config)")
    return 0


def _connector_name() -> str:
    from mallard.config.connector import load_connector_config_file
    from mallard.config.settings import DEFAULT_CONNECTOR_CONFIG

    return load_connector_config_file(os.environ.get("MALLARD_CONNECTOR_CONFIG") or DEFAULT_CONNECTOR_CONFIG).name


def _publication_name() -> str:
    """The publication Debezium streams from, as the connector config names it (its default when unreadable)."""
    from mallard.config.connector import load_connector_config_file
    from mallard.config.settings import DEFAULT_CONNECTOR_CONFIG

    try:
        return load_connector_config_file(os.environ.get("MALLARD_CONNECTOR_CONFIG") or DEFAULT_CONNECTOR_CONFIG
                                          ).publication_name
    except (OSError, ValueError):
        return "mallard_publication"


def cmd_state_show(args: argparse.Namespace) -> int:
    from mallard.config.settings import KafkaSettings
    from mallard.ops.state import read_states

    k = KafkaSettings()
    config = _replication_config(args)
    states = read_states(_deployment(args).bootstrap_server, k.snapshot_topic, k.control_topic)
    streams = args.streams or [n for n, s in config.streams.items() if s.incremental]
    shown = []
    for name in streams:
        cfg = config.stream(name)
        if cfg is None:
            raise ValueError(f"{name} is not a stream of {config.path}")
        st = states.get(name)
        shown.append({"stream": name, "mode": cfg.mode, "update_key": cfg.update_key,
                      "value": st.value if st else None, "from": st.source if st else None,
                      "at": st.at.isoformat() if st else None})
        if args.json:
            continue
        if not cfg.incremental:
            print(f"{name}: {cfg.mode} (no incremental state)")
        elif st is None or st.value is None:
            print(f"{name}: incremental on {cfg.update_key}: no state — the next run reads every row"
                  + (f" (since {st.source}, {st.at.isoformat()})" if st else ""))
        else:
            print(f"{name}: incremental on {cfg.update_key} > {st.value}  (from {st.source}, {st.at.isoformat()})")
    if args.json:
        print(json.dumps(shown, indent=2, default=str))
    return 0


def cmd_state_reset(args: argparse.Namespace) -> int:
    import getpass
    import uuid
    from datetime import datetime, timezone

    from mallard.adapters import kafka
    from mallard.config.settings import KafkaSettings
    from mallard.schemas.control import StateReset

    config = _replication_config(args)
    if args.all == bool(args.streams):
        raise ValueError("name the streams to reset, or --all")
    streams = [n for n, s in config.streams.items() if s.incremental] if args.all else args.streams
    for name in streams:
        cfg = config.stream(name)
        if cfg is None or not cfg.incremental:
            raise ValueError(f"{name} is not an incremental stream of {config.path}")
    if not streams:
        raise ValueError(f"{config.path} has no incremental stream")
    reset = StateReset(reset_id=f"reset-{uuid.uuid4().hex[:12]}", streams=streams, to_value=args.to,
                       requested_by=f"cli:{getpass.getuser()}", requested_at=datetime.now(timezone.utc))
    servers = _deployment(args).bootstrap_server
    producer = kafka.producer(servers)
    producer.produce(KafkaSettings().control_topic, key=reset.reset_id.encode(), value=reset.model_dump_json().encode())
    if producer.flush(30) != 0:
        raise RuntimeError(f"Kafka at {servers} did not take the reset")
    what = f"resumes after {args.to!r}" if args.to is not None else "reads every row (upserts; nothing is deleted)"
    print(f"{reset.reset_id}: the next incremental run of {', '.join(streams)} {what}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from mallard.ops import checks

    dep = _deployment(args)
    given = {name: getattr(dep, name) if dep.origin.get(name) not in ("local stack", "unset") else None
             for name in ("config", "bootstrap_server", "connect_url", "applier_url")}
    targets = checks.resolve_targets(
        _stack_settings(), config_path=given["config"], bootstrap_servers=given["bootstrap_server"],
        connect_url=given["connect_url"], applier_url=given["applier_url"],
        pg=_source_settings(args) if dep.pg_dsn else None,
        max_retained_wal=checks.parse_size(args.max_retained_wal), timeout=args.timeout)
    results = []
    symbols = checks.symbols_for(sys.stdout.encoding)
    for result in checks.run_checks(targets):
        results.append(result)
        if not args.json:
            print(checks.format_result(result, symbols=symbols), flush=True)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    return checks.exit_code(results)


def cmd_demo_changes(args: argparse.Namespace) -> int:
    from mallard.adapters import postgres
    from mallard.stack.demo import make_changes

    conn = postgres.connect(**_stack_settings().pg_params())
    try:
        done = make_changes(conn, args.count, seed=args.seed)
    finally:
        conn.close()
    print("demo changes: " + ", ".join(f"{k} {v}" for k, v in done.items()))
    return 0


def cmd_connector_register(args: argparse.Namespace) -> int:
    from mallard.config.connector import load_connector_config_file, register
    from mallard.runtime.logs import configure

    configure()
    config = load_connector_config_file(args.config)
    if args.replication_config:
        from mallard.core.connector import with_streams
        from mallard.config.replication import load_config

        config = with_streams(config, list(load_config(args.replication_config).streams))
    state = register(args.connect_url, config, timeout=args.timeout)
    print(f"connector {config.name}: {state}")
    return 0


def cmd_connector(args: argparse.Namespace) -> int:
    from mallard.config.connector import load_connector_config_file
    from mallard.stack import jvm

    dep = _deployment(args)
    url = dep.connect_url
    name = args.name or load_connector_config_file(_stack_settings().connector_config).name
    if args.action == "delete" and not args.yes:
        raise ValueError(f"deleting connector {name} stops CDC until it is registered again: add --yes")
    try:
        if args.action == "status":
            status = jvm.connector_status_document(url, name)
        elif args.action == "config":
            status = jvm.connector_config(url, name)
        else:
            getattr(jvm, f"{args.action}_connector")(url, name)
            status = {"connector": name, "action": args.action, "done": True}
    except jvm.JvmError as e:
        raise RuntimeError(str(e)) from None
    if args.json or args.action == "config":
        print(json.dumps(status, indent=2))
    elif args.action == "status":
        print("\n".join(jvm.render_status(status)))
    else:
        print(f"connector {name}: {args.action} requested at {url}")
    return 1 if args.action == "status" and jvm.judge_status(status).failed else 0


def cmd_profile_show(args: argparse.Namespace) -> int:
    dep = _deployment(args)
    shown = dep.shown()
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    print(f"profile: {shown['profile'] or '(none)'}")
    for name in ("bootstrap_server", "applier_url", "connect_url", "pg_dsn", "config"):
        print(f"  {name:<17} {shown[name] or '-':<50} ({shown['from'].get(name)})")
    for key, value in shown["kafka"].items():
        print(f"  kafka {key:<28} {value}")
    return 0


def cmd_profile_list(args: argparse.Namespace) -> int:
    from mallard.config.deployment import BUILT_IN_PROFILES, load_profiles, profiles_path

    path = profiles_path()
    for name, values in sorted(load_profiles(path).items()):
        where = "built in" if values is BUILT_IN_PROFILES.get(name) else str(path)
        print(f"  {name:<16} {values.get('bootstrap_server', '-'):<24} {values.get('applier_url', '-'):<28} ({where})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mallard.config.settings import DEFAULT_CONNECTOR_CONFIG

    p = argparse.ArgumentParser(prog="mallard", description="Postgres -> Kafka -> DuckDB replication.",
                                epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"mallard {_version()}")
    _deployment_options(p, suppress=False)
    # The same options after the command (`mallard status --profile compose`); absent there,
    # they leave what was given before the command alone.
    dp = argparse.ArgumentParser(add_help=False)
    _deployment_options(dp, suppress=True)
    sub = p.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="the local stack: Postgres, Apache Kafka, Kafka Connect with Debezium, services")
    ssub = stack.add_subparsers(dest="stack_command", required=True)
    up = ssub.add_parser("up", help="start every component (harmless when already running)")
    up.add_argument("--no-demo", action="store_true", help="do not load the demo shop schema into a new database")
    up.add_argument("--only", choices=["postgres"], help="start only this component (e.g. to change the source "
                    "while replication is stopped)")
    up.set_defaults(func=cmd_stack_up)
    down = ssub.add_parser("down", help="stop what `up` started")
    down.add_argument("--purge", action="store_true",
                      help="also drop Debezium's replication slot and publication, and delete the stack's data")
    down.set_defaults(func=cmd_stack_down)
    st = ssub.add_parser("status", help="state and connection details of every component (exit 3 if any is not running)")
    st.add_argument("--json", action="store_true", help="machine-readable, with the Postgres DSN of every role")
    st.add_argument("--show-secrets", action="store_true", help="print the passwords in the DSNs (masked otherwise)")
    st.set_defaults(func=cmd_stack_status)
    ssub.add_parser("guide", help="how to look at the running stack").set_defaults(func=cmd_stack_guide)

    status = sub.add_parser("status", parents=[dp], help="per stream: rows, last change applied, lag, delay, last snapshot, next run, "
                                           "dead letters; and every service's state (exit 3 if one is not running)")
    status.add_argument("--json", action="store_true", help="machine-readable")
    status.add_argument("--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
                        help="refresh in place every SECONDS (2 by default) until Ctrl-C")
    status.set_defaults(func=cmd_status)

    topics = sub.add_parser("topics", parents=[dp], help="list topics with partitions, message counts and the lag of each "
                                           "consumer group that committed offsets on them")
    topics.add_argument("--json", action="store_true")
    topics.set_defaults(func=cmd_topics)

    tail = sub.add_parser("tail", parents=[dp], help="print a topic's messages, decoded")
    tail.add_argument("topic")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--limit", type=int, default=None, help="stop after N messages (matching ones, with --key)")
    tail.add_argument("--key", help="only messages with this key, given as its value: 42 or abc for a one-column key, "
                                    "a JSON object for some or all columns ('{\"id\": 42}'), or a plain key's text "
                                    "(a snapshot's stream, a request id)")
    tail.add_argument("--timeout", type=float, default=5.0, help="stop after this many seconds without a message")
    tail.add_argument("--follow", "-f", action="store_true", help="keep reading (until Ctrl-C)")
    tail.add_argument("--partition", type=int, default=None, help="read this partition only")
    tail.add_argument("--offset", type=int, default=None, help="with --partition: start at this offset")
    tail.add_argument("--from-time", default=None, metavar="ISO",
                      help="start at the first message at or after this time (e.g. 2026-12-03T10:00:00Z)")
    tail.add_argument("--raw", action="store_true", help="values as Debezium sent them (base64 numerics, day counts)")
    tail.add_argument("--json", action="store_true", help="one JSON object per line: topic, partition, offset, "
                      "timestamp, headers, key, value")
    tail.set_defaults(func=cmd_tail)

    tables = sub.add_parser("tables", parents=[dp], help="replicated tables: status, why one needs a re-snapshot, dropped columns")
    tables.add_argument("--json", action="store_true")
    tables.set_defaults(func=cmd_tables)

    query = sub.add_parser("query", parents=[dp], help="run a read-only SQL query on the replica, through the running applier")
    query.add_argument("--json", action="store_true", help="machine-readable")
    query.add_argument("sql")
    query.set_defaults(func=cmd_query)

    ver = sub.add_parser("verify", parents=[dp], help="prove the replica matches Postgres: row counts and hashes over primary-key "
                                        "ranges at one consistent point, narrowed to the keys that differ "
                                        "(exit 1 if any differ)")
    ver.add_argument("streams", nargs="*", help="'<schema>.<table>' (default: every table of the replica)")
    ver.add_argument("--repair", action="store_true",
                     help="request a snapshot of just the differing keys (the whole table when there are more "
                          "than 1000 or it has no usable key)")
    ver.add_argument("--wait", action="store_true", help="with --repair: wait until merged, then verify again")
    ver.add_argument("--timeout", type=float, default=3600, help="seconds --wait waits for the repair at most")
    ver.add_argument("--catch-up-timeout", type=float, default=120,
                     help="seconds to wait for the applier to catch up with Postgres before comparing")
    ver.add_argument("--limit", type=int, default=50, help="keys printed per stream")
    ver.add_argument("--json", action="store_true", help="machine-readable result")
    ver.add_argument("--fanout", type=int, default=16, help="buckets a differing range is cut into")
    ver.add_argument("--leaf-rows", type=int, default=256, help="ranges this small are compared key by key")
    ver.add_argument("--duckdb", help="read this DuckDB file read-only instead of asking the running applier")
    ver.set_defaults(func=cmd_verify)

    res = sub.add_parser("resnapshot", parents=[dp], help="ask the snapshotter for a snapshot of streams ('<schema>.<table>'): a full refresh, or an incremental run for an incremental stream")
    res.add_argument("--json", action="store_true", help="machine-readable")
    res.add_argument("streams", nargs="+")
    res.add_argument("--where", help="SQL filter: snapshot only part of the table")
    res.add_argument("--reason", default="ad hoc")
    res.add_argument("--wait", action="store_true",
                     help="follow the snapshots until DuckDB has merged them (a progress bar on a terminal); "
                          "exit 1 if one is abandoned")
    res.add_argument("--timeout", type=float, default=3600, help="seconds --wait waits at most")
    res.add_argument("--full", action="store_true",
                     help="an incremental stream: one full refresh (every row; rows gone from Postgres are deleted), "
                          "which also resets its state to the table's largest update_key")
    res.set_defaults(func=cmd_resnapshot)

    cfg = sub.add_parser("config", help="the replication config (streams, modes, schedules)")
    cfgsub = cfg.add_subparsers(dest="config_command", required=True)
    chk = cfgsub.add_parser("check", parents=[dp], help="validate the config and check every table exists in Postgres")
    chk.add_argument("--json", action="store_true", help="machine-readable")
    chk.add_argument("--offline", action="store_true", help="validate the file only, without Postgres")
    chk.set_defaults(func=cmd_config_check)

    app = cfgsub.add_parser("apply", parents=[dp], help="take a changed config on a running deployment, without a "
                            "restart: streams added or removed, modes, schedules")
    app.add_argument("file", nargs="?", help="the new config (default: the deployment's, e.g. the stack's)")
    app.add_argument("--name", default=None, help="connector name (default: the connector config's)")
    app.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the connector to run again")
    app.set_defaults(func=cmd_config_apply)

    state = sub.add_parser("state", help="incremental state (the last update_key value per stream), kept in Kafka")
    stsub = state.add_subparsers(dest="state_command", required=True)
    show = stsub.add_parser("show", parents=[dp], help="each incremental stream's state and where it comes from")
    show.add_argument("--json", action="store_true", help="machine-readable")
    show.add_argument("streams", nargs="*")
    show.set_defaults(func=cmd_state_show)
    reset = stsub.add_parser("reset", parents=[dp], help="forget a stream's state (the next run reads every row) or rewind it "
                                           "(--to VALUE: resume after VALUE, for a backfill)")
    reset.add_argument("streams", nargs="*")
    reset.add_argument("--all", action="store_true", help="every incremental stream")
    reset.add_argument("--to", help="update_key value to resume after (as Postgres prints it)")
    reset.set_defaults(func=cmd_state_reset)

    check = sub.add_parser("check", parents=[dp], help="test every connection and prerequisite (Postgres, wal_level, replication "
                                         "privilege, publication, slot and its WAL, Kafka and topics, DuckDB, "
                                         "Debezium): one line each, the fix for each failure; exit 1 on a failure")
    check.add_argument("--max-retained-wal", default="1GiB",
                       help="warn when the replication slot holds back more WAL than this (default: 1GiB)")
    check.add_argument("--timeout", type=float, default=3.0, help="seconds each connection may take (default: 3)")
    check.add_argument("--json", action="store_true", help="the results as a JSON list")
    check.set_defaults(func=cmd_check)

    demo = sub.add_parser("demo", help="the demo shop database")
    dsub = demo.add_subparsers(dest="demo_command", required=True)
    changes = dsub.add_parser("changes", help="insert, update and delete some orders and customers")
    changes.add_argument("--count", type=int, default=20)
    changes.add_argument("--seed", type=int, default=None)
    changes.set_defaults(func=cmd_demo_changes)

    conn = sub.add_parser("connector", help="the Debezium connector in Kafka Connect: state, lifecycle, config")
    csub = conn.add_subparsers(dest="connector_command", required=True)
    for name, text in (("status", "the connector's and its tasks' state, with a failed task's error trace"),
                       ("restart", "restart the connector and its tasks (failed ones included)"),
                       ("pause", "pause streaming (the slot keeps WAL meanwhile)"), ("resume", "resume streaming"),
                       ("delete", "remove the connector from Connect (its slot and offsets stay)"),
                       ("config", "the connector's config as Connect holds it (secrets stay placeholders)")):
        c = csub.add_parser(name, parents=[dp], help=text)
        c.add_argument("--name", default=None, help="connector name (default: the connector config's, mallard-postgres)")
        c.add_argument("--json", action="store_true", help="machine-readable")
        if name == "delete":
            c.add_argument("--yes", action="store_true", help="really delete it")
        c.set_defaults(func=cmd_connector, action=name)
    reg = csub.add_parser("register", help="register the connector with Kafka Connect and wait until it runs")
    reg.add_argument("--connect-url", default="http://connect:8083")
    reg.add_argument("--config", type=Path, default=DEFAULT_CONNECTOR_CONFIG)
    reg.add_argument("--timeout", type=float, default=300.0)
    reg.add_argument("--replication-config", help="derive table.include.list from this replication config's streams")
    reg.set_defaults(func=cmd_connector_register)

    prof = sub.add_parser("profile", help="named deployments (profiles) and what the CLI talks to")
    psub = prof.add_subparsers(dest="profile_command", required=True)
    pshow = psub.add_parser("show", parents=[dp], help="what the CLI resolved from options, MALLARD_* variables, the "
                            "profile and the local stack, and where each value came from (secrets masked)")
    pshow.add_argument("--json", action="store_true", help="machine-readable")
    pshow.set_defaults(func=cmd_profile_show)
    psub.add_parser("list", help="the profiles in the profile file, and the built-in ones").set_defaults(
        func=cmd_profile_list)
    return p


EXIT_CODES = """exit codes:
  0  done (verify: the replica equals Postgres)
  1  failed, with one line saying why (verify: the replica differs; resnapshot --wait: the
     snapshot was refused, failed or not merged in time)
  2  verify could not compare (a side unreachable); a usage error
  3  status / stack status: a component is not running
deployment: the local stack, unless --profile, the options above or MALLARD_* variables
(MALLARD_KAFKA_BOOTSTRAP_SERVERS, MALLARD_APPLIER_URL, MALLARD_CONNECT_URL, MALLARD_PG_DSN,
MALLARD_REPLICATION_CONFIG, MALLARD_PROFILE) name another; profiles: MALLARD_PROFILES or
~/.config/mallard/profiles.yaml (docs/operating.md)."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mallard")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _deployment_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    g = parser.add_argument_group("deployment (default: the local stack)")
    g.add_argument("--profile", default=default, help="a named deployment from the profile file (MALLARD_PROFILE)")
    g.add_argument("--bootstrap-server", "--bootstrap-servers", dest="bootstrap_server", default=default,
                   metavar="HOST:PORT", help="Kafka (MALLARD_KAFKA_BOOTSTRAP_SERVERS)")
    g.add_argument("--applier-url", default=default, metavar="URL", help="the applier's HTTP endpoint (MALLARD_APPLIER_URL)")
    g.add_argument("--connect-url", default=default, metavar="URL", help="Kafka Connect's REST API (MALLARD_CONNECT_URL)")
    g.add_argument("--pg-dsn", default=default, metavar="DSN",
                   help="the source Postgres, a libpq DSN or URL; its password from PGPASSWORD (MALLARD_PG_DSN)")
    g.add_argument("--config", default=default, metavar="FILE", help="replication config (MALLARD_REPLICATION_CONFIG)")
    g.add_argument("--replica-file", default=default, metavar="FILE",
                   help="a copy of the replica (the applier's read copy) that query, status and verify read when the "
                   "applier does not answer (MALLARD_REPLICA_FILE)")


def _spelled(streams: list[str]) -> list[str]:
    """Stream names from the command line, read as Postgres reads them (``public."Order
    Items"``, quoted for the shell), each in its one spelling; ValueError names a bad one."""
    from mallard.core import names

    out = []
    for text in streams:
        try:
            out.append(names.canonical(text))
        except names.StreamNameError as e:
            raise ValueError(f"bad stream name: {e}") from None
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "streams", None) and isinstance(args.streams, list):
            args.streams = _spelled(args.streams)
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - a user-facing command: one clear line, no traceback
        from mallard.stack.local import StackError

        known = (StackError, FileNotFoundError, ValueError, RuntimeError)
        if isinstance(e, known):
            print(f"mallard: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
