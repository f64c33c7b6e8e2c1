"""Soak: drive the local stack (Postgres -> Debezium in Kafka Connect -> Apache Kafka ->
applier -> DuckDB) with pgbench for a long run and watch whether memory stays flat; with
``--kill-every``, through faults, and prove every table exact at the end.

    .venv/bin/python bench/soak.py [--seconds 600] [--scale 10] [--clients 4] [--interval 10]
                                   [--kill-every 60]

Needs nothing running: it starts its own local stack (`mallard stack up`) in a
temporary home on free ports and tears it down (`stack down --purge`) at the end,
also when something fails or the run is interrupted.

1. `stack up --only postgres`, then `pgbench -i -s <scale>` as the owner role (the
   tables exist before Debezium captures them: their rows reach DuckDB through the
   snapshotter, as for any existing database);
2. `stack up --no-demo` with a connector config capturing the four pgbench tables
   (`pgbench_history` has no primary key: `stack up` puts it in the inserts-only
   publication, and the applier appends its CDC inserts, a multiset); the applier asks
   for first snapshots itself; wait until the tables' rows are all in DuckDB;
3. `pgbench -c <clients> -T <seconds>`; every <interval> s: RSS of the broker, the
   Connect worker and the applier, the broker's log on disk, events applied, the
   applier's consumer lag and delay, the slot's retained WAL, the load average. With
   `--kill-every S`: every S seconds the applier and the Kafka Connect worker, in turn,
   get SIGKILL (no warning, no shutdown hook), and `mallard stack up` starts what is
   missing again, as a user would;
4. after pgbench, wait until the replica has caught up (row count and balance sum of
   each keyed table, and pgbench_history's row count, equal to Postgres'), still
   sampling; with `--kill-every`, or `--verify`, then `mallard verify` the four tables
   (per key for the keyed ones, as a multiset for pgbench_history): each must be `equal`;
5. print the table and a summary: first/last/max RSS, the slope over the second half
   of the run, the JVMs' RSS split (anonymous / mapped files) and heap (`jcmd`) at the
   end, pgbench's tps, events applied/s, the kills and restarts, caught up or not, and
   verify's verdict per table.

Exit status 0 when the replica caught up (and, when verified, every table is equal).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg2  # noqa: E402
from confluent_kafka import Consumer, KafkaException, TopicPartition  # noqa: E402

from mallard.runtime.health import client_request  # noqa: E402
from mallard.config.settings import DEFAULT_CONNECTOR_CONFIG  # noqa: E402
from mallard.stack.processes import free_ports, port_in_use  # noqa: E402

PG_BIN = Path(os.environ.get("MALLARD_PG_BIN", "/usr/lib/postgresql/15/bin"))
PORT_VARIABLES = ("MALLARD_PG_PORT", "MALLARD_KAFKA_PORT", "MALLARD_KAFKA_CONTROLLER_PORT", "MALLARD_CONNECT_PORT",
                  "MALLARD_SNAPSHOTTER_HEALTH_PORT", "MALLARD_APPLIER_HEALTH_PORT", "MALLARD_SCHEDULER_HEALTH_PORT")
TABLES = ["public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_tellers", "public.pgbench_history"]
KEYED = {"pgbench_accounts": "abalance", "pgbench_branches": "bbalance", "pgbench_tellers": "tbalance"}
WATCHED = ("broker", "connect", "applier")


class Interrupted(Exception):
    pass


def on_signal(signum, frame):  # noqa: ARG001
    raise Interrupted(f"signal {signum}")


# -- the stack ---------------------------------------------------------------------------

class Stack:
    """`mallard stack ...` against its own home and ports, as a user runs it."""

    def __init__(self, home: Path, start_timeout_s: int):
        self.home = home
        self.ports = dict(zip(PORT_VARIABLES, free_ports(len(PORT_VARIABLES))))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MALLARD_")}
        self.env.update({k: str(v) for k, v in self.ports.items()})
        self.env.update({"MALLARD_HOME": str(home), "MALLARD_START_TIMEOUT_S": str(start_timeout_s),
                         "MALLARD_REPLICATION_CONFIG": "", "MALLARD_PG_PASSWORD": f"soak-{secrets.token_hex(8)}",
                         "MALLARD_CONNECTOR_CONFIG": str(self.connector_config())})

    def connector_config(self) -> Path:
        """The repo's connector config, capturing the pgbench tables."""
        doc = json.loads(DEFAULT_CONNECTOR_CONFIG.read_text())
        doc["config"]["table.include.list"] = ",".join(TABLES)
        path = self.home / "connector-pgbench.json"
        path.write_text(json.dumps(doc, indent=2))
        return path

    def mallard(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        out = subprocess.run([sys.executable, "-m", "mallard.cli.main", *args], env=self.env, cwd=REPO,
                             capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"mallard {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def status(self) -> dict:
        """``stack status --json --show-secrets`` (it exits non-zero while a component is stopped)."""
        return json.loads(self.mallard("stack", "status", "--json", "--show-secrets", timeout=120, check=False))

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.ports['MALLARD_KAFKA_PORT']}"

    @property
    def applier_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['MALLARD_APPLIER_HEALTH_PORT']}"

    def query(self, sql: str, timeout: float = 30) -> list[list]:
        url = f"{self.applier_url}/query?" + urllib.parse.urlencode({"sql": sql})
        with urllib.request.urlopen(client_request(url, "soak"), timeout=timeout) as resp:
            return json.loads(resp.read())["rows"]

    def healthz(self) -> dict:
        try:
            with urllib.request.urlopen(f"{self.applier_url}/healthz", timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:  # 503 when not ready: still the state
            return json.loads(e.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.applier_url}/metrics", timeout=10) as resp:
            return resp.read().decode()

    def down(self) -> None:
        try:
            print(self.mallard("stack", "down", "--purge", timeout=300).rstrip())
        except Exception as e:  # noqa: BLE001 - report, then still remove the folder
            print(f"stack down --purge: {e}")


# -- measurements -------------------------------------------------------------------------

def rss_mb(pid: int | None) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, TypeError):
        pass
    return None


def dir_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total / 2**20


def rss_split_mb(pid: int | None) -> dict[str, float]:
    """VmRSS, and of it anonymous memory (heap, metaspace, threads) and mapped files
    (for the broker: its memory-mapped index files)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) / 1024
    except (OSError, TypeError):
        pass
    return out


def jvm_heap(pid: int | None) -> str:
    """The JVM's committed and used heap and metaspace (``jcmd <pid> GC.heap_info``)."""
    jcmd = shutil.which("jcmd")
    if not jcmd or not pid:
        return "jcmd not available"
    try:
        out = subprocess.run([jcmd, str(pid), "GC.heap_info"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "jcmd failed"
    heap = re.search(r"heap\s+total (\d+)K, used (\d+)K", out)
    meta = re.search(r"Metaspace\s+used (\d+)K, committed (\d+)K", out)
    parts = []
    if heap:
        parts.append(f"heap committed {int(heap.group(1)) / 1024:.0f} MB, used {int(heap.group(2)) / 1024:.0f} MB")
    if meta:
        parts.append(f"metaspace committed {int(meta.group(2)) / 1024:.0f} MB")
    return "; ".join(parts) or "jcmd gave no heap figures"


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def other_jvms(ours: set[int]) -> int:
    n = 0
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) not in ours:
            try:
                if (p / "comm").read_text().strip() == "java":
                    n += 1
            except OSError:
                pass
    return n


def metric_values(text: str, name: str) -> list[float]:
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            try:
                out.append(float(line.rsplit(" ", 1)[1]))
            except ValueError:
                pass
    return out


def slot_wal(pg_dsn: str, slot: str) -> tuple[float | None, float | None]:
    """MB of WAL the slot retains (from restart_lsn) and not yet confirmed by Debezium."""
    try:
        with psycopg2.connect(pg_dsn, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("""SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn),
                                  pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)
                           FROM pg_replication_slots WHERE slot_name = %s""", (slot,))
            row = cur.fetchone()
        conn.close()
        return (float(row[0]) / 2**20, float(row[1]) / 2**20) if row else (None, None)
    except psycopg2.Error:
        return None, None


def source_figures(pg_dsn: str) -> dict[str, tuple[int, int]]:
    with psycopg2.connect(pg_dsn, connect_timeout=5) as conn, conn.cursor() as cur:
        out = {}
        for table, col in KEYED.items():
            cur.execute(f"SELECT count(*), coalesce(sum({col}), 0) FROM {table}")
            out[table] = tuple(int(v) for v in cur.fetchone())
        cur.execute("SELECT count(*) FROM pgbench_history")
        out["pgbench_history"] = (int(cur.fetchone()[0]), 0)
    conn.close()
    return out


def replica_figures(stack: Stack) -> dict[str, tuple[int, int] | None]:
    out: dict[str, tuple[int, int] | None] = {}
    for table, col in [*KEYED.items(), ("pgbench_history", None)]:
        try:
            rows = stack.query(f"SELECT count(*), {f'coalesce(sum({col}), 0)' if col else '0'} FROM {table}")
            out[table] = (int(rows[0][0]), int(rows[0][1]))
        except (OSError, urllib.error.HTTPError, KeyError, IndexError, ValueError, TypeError):
            out[table] = None  # not created yet, or the applier busy
    return out


def keyed_equal(source: dict, replica: dict) -> bool:
    return all(replica.get(t) == source[t] for t in KEYED)


def all_equal(source: dict, replica: dict) -> bool:
    """The keyed tables' counts and sums, and pgbench_history's row count."""
    return keyed_equal(source, replica) and replica.get("pgbench_history") == source["pgbench_history"]


class Faults:
    """Every ``every`` seconds, SIGKILL the applier or the Connect worker (in turn), then
    `mallard stack up` starts what is missing, as a user would after a crash."""

    VICTIMS = ("applier", "connect")

    def __init__(self, stack: Stack, pids: dict[str, int], every: float):
        self.stack, self.pids, self.every = stack, pids, every
        self.kills: list[dict] = []
        self.next_at = time.monotonic() + every

    def due(self) -> bool:
        return self.every > 0 and time.monotonic() >= self.next_at

    def kill_one(self) -> dict:
        name = self.VICTIMS[len(self.kills) % len(self.VICTIMS)]
        pid = self.pids[name]
        t0 = time.monotonic()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # died by itself: it is started again all the same
        # Gone when its port is free: a JVM's main thread is a zombie while its other threads
        # (and its listening socket) are still being torn down.
        port = int(self.stack.ports["MALLARD_CONNECT_PORT" if name == "connect" else "MALLARD_APPLIER_HEALTH_PORT"])
        deadline = time.monotonic() + 60
        while (Path(f"/proc/{pid}").exists() or port_in_use(port)) and time.monotonic() < deadline:
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z" and not port_in_use(port):
                    break  # init reaps it
            except OSError:
                pass
            time.sleep(0.05)
        self.stack.mallard("stack", "up", "--no-demo", timeout=600)
        comps = self.stack.status()["components"]
        self.pids[name] = comps[name]["pid"]
        kill = {"component": name, "pid": pid, "new_pid": self.pids[name], "at_s": None,
                "restart_s": time.monotonic() - t0}
        self.kills.append(kill)
        self.next_at = time.monotonic() + self.every
        print(f"   killed {name} (pid {pid}, SIGKILL); `stack up` started it again as pid {self.pids[name]} in "
              f"{kill['restart_s']:.1f}s", flush=True)
        return kill


def verify_tables(stack: Stack, timeout: float) -> dict[str, str]:
    """`mallard verify --json` of the four tables: stream -> 'equal', 'DIFFERENT (...)' or why not compared."""
    out = subprocess.run([sys.executable, "-m", "mallard.cli.main", "verify", "--json", "--catch-up-timeout",
                          str(int(timeout)), *TABLES], env=stack.env, cwd=REPO, capture_output=True, text=True,
                         timeout=timeout + 1800)
    try:
        report = json.loads(out.stdout)
    except ValueError:
        return {t: f"not compared (exit {out.returncode}: {out.stderr.strip()[-500:]})" for t in TABLES}
    verdict = {}
    for item in report["streams"]:
        rows = item.get("rows") or {}
        if item["equal"]:
            verdict[item["stream"]] = f"equal ({rows.get('postgres')} rows)"
        else:
            verdict[item["stream"]] = (f"DIFFERENT: {rows.get('postgres')} rows in Postgres, {rows.get('replica')} in "
                                       f"DuckDB, {len(item.get('differences') or [])} differences shown, "
                                       f"status {item.get('status')}, error {item.get('error')}")
    for t in TABLES:
        verdict.setdefault(t, "not in verify's report")
    return verdict


class Sampler:
    COLUMNS = ("t_s", "phase", "load1", "broker_MB", "connect_MB", "applier_MB", "kafka_disk_MB", "cdc_msgs",
               "applied", "applied/s", "lag_msgs", "delay_s", "slot_WAL_MB", "unconf_MB")

    def __init__(self, stack: Stack, pids: dict[str, int], log_dir: Path, owner_dsn: str, slot: str, prefix: str):
        self.stack, self.pids, self.log_dir, self.dsn, self.slot = stack, pids, log_dir, owner_dsn, slot
        self.samples: list[dict] = []
        self.t0 = time.monotonic()
        self._prev: tuple[float, int] | None = None
        self.kafka = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": "soak-watermarks",
                               "enable.auto.commit": False})
        self.prefix = prefix

    def cdc_messages(self) -> int | None:
        """Messages Debezium has written to the pgbench tables' topics (high watermarks):
        what Connect has produced, whether or not the applier has read it."""
        try:
            topics = self.kafka.list_topics(timeout=5).topics
            total = 0
            for name, meta in topics.items():
                if name.startswith(f"{self.prefix}.public.pgbench_"):
                    for p in meta.partitions:
                        total += self.kafka.get_watermark_offsets(TopicPartition(name, p), timeout=5)[1]
            return total
        except KafkaException:
            return None

    def header(self) -> None:
        print(" ".join(f"{c:>12}" for c in self.COLUMNS), flush=True)

    def sample(self, phase: str) -> dict:
        now = time.monotonic()
        state = {}
        try:
            state = self.stack.healthz()
        except (OSError, ValueError):
            pass
        applied = state.get("events_applied")
        lag = delay = None
        try:
            text = self.stack.metrics()
            lag_values = metric_values(text, "mallard_consumer_lag_messages")
            lag = int(sum(lag_values)) if lag_values else None
            last = metric_values(text, "mallard_last_applied_commit_timestamp_seconds")
            delay = max(0.0, time.time() - last[0]) if last else None
        except (OSError, ValueError):
            pass
        rate = None
        if applied is not None and self._prev is not None and now > self._prev[0]:
            rate = (applied - self._prev[1]) / (now - self._prev[0])
        if applied is not None:
            self._prev = (now, applied)
        retained, unconfirmed = slot_wal(self.dsn, self.slot)
        s = {"t_s": now - self.t0, "mono": now, "phase": phase, "load1": loadavg(),
             **{f"{name}_MB": rss_mb(pid) for name, pid in self.pids.items()},
             "kafka_disk_MB": dir_mb(self.log_dir), "cdc_msgs": self.cdc_messages(),
             "applied": applied, "applied/s": rate, "lag_msgs": lag,
             "delay_s": delay, "slot_WAL_MB": retained, "unconf_MB": unconfirmed,
             "dead_letters": state.get("dead_letters")}
        self.samples.append(s)
        print(" ".join(f"{fmt(s[c]):>12}" for c in self.COLUMNS), flush=True)
        return s


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def slope_mb_per_min(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    return sum((t - mt) * (y - my) for t, y in points) / var * 60


# -- the run ------------------------------------------------------------------------------

def pg_env(dsn: str) -> tuple[list[str], dict[str, str], str]:
    """pgbench's connection arguments, its environment (the password) and the database."""
    u = urllib.parse.urlsplit(dsn)
    args = ["-h", u.hostname or "127.0.0.1", "-p", str(u.port or 5432), "-U", urllib.parse.unquote(u.username or "")]
    env = {**os.environ, "PGPASSWORD": urllib.parse.unquote(u.password or "")}
    return args, env, u.path.lstrip("/")


def wait_until(what: str, predicate, timeout: float, every: float = 5.0, tick=None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        if tick:
            tick()
        time.sleep(every)


def run(args: argparse.Namespace, stack: Stack) -> int:
    t_start = time.monotonic()
    print(f"machine: {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
          f"load average at start {Path('/proc/loadavg').read_text().split()[:3]}; "
          f"other JVMs running: {other_jvms(set())}")
    print(f"home {stack.home}; ports {stack.ports}")

    t = time.monotonic()
    stack.mallard("stack", "up", "--only", "postgres", "--no-demo")
    status = stack.status()
    owner_dsn = status["postgres"]["dsn"]
    conn_args, env, db = pg_env(owner_dsn)
    print(f"postgres up in {time.monotonic() - t:.1f}s; owner role {status['postgres']['user']}, database {db}")

    t = time.monotonic()
    init = subprocess.run([str(PG_BIN / "pgbench"), "-i", "-s", str(args.scale), *conn_args, db],
                          env=env, capture_output=True, text=True, timeout=1800)
    if init.returncode != 0:
        raise RuntimeError(f"pgbench -i failed:\n{init.stderr}")
    print(f"pgbench -i -s {args.scale}: {time.monotonic() - t:.1f}s ({init.stderr.strip().splitlines()[-1]})")

    t = time.monotonic()
    print(stack.mallard("stack", "up", "--no-demo").rstrip())
    print(f"stack up (broker, Connect, connector, services): {time.monotonic() - t:.1f}s")
    status = stack.status()
    comps = status["components"]
    pids = {name: comps[name]["pid"] for name in WATCHED}
    for name, pid in pids.items():
        comm = Path(f"/proc/{pid}/comm").read_text().strip() if pid else "?"
        extra = f", heap {comps[name].get('heap')}" if comps[name].get("heap") else ""
        print(f"  {name}: pid {pid} ({comm}){extra}")
    connector = json.loads(Path(status["debezium"]["connector_config"]).read_text())["config"]
    sampler = Sampler(stack, pids, Path(comps["broker"]["log_dir"]), owner_dsn, connector["slot.name"],
                      connector["topic.prefix"])
    print(f"other JVMs running beside this stack: {other_jvms(set(pids.values()))}")

    # First snapshots: the applier asks for them; wait until the keyed tables are whole in DuckDB.
    source = source_figures(owner_dsn)
    print(f"source: {source}")
    print("\nwaiting for the first snapshots (phase 'snapshot')")
    sampler.header()
    t = time.monotonic()
    next_sample = [time.monotonic()]

    def tick():
        if time.monotonic() >= next_sample[0]:
            sampler.sample("snapshot")
            next_sample[0] += args.interval

    wait_until("the first snapshots of the keyed tables", lambda: keyed_equal(source, replica_figures(stack)),
               args.snapshot_timeout, every=2, tick=tick)
    snapshot_s = time.monotonic() - t
    print(f"keyed tables whole in DuckDB after {snapshot_s:.1f}s")

    # The run.
    print(f"\npgbench -c {args.clients} -T {args.seconds} (phase 'pgbench'), then catching up (phase 'catch-up')")
    sampler.header()
    applied_before = sampler.sample("pgbench")
    log = open(stack.home / "pgbench.log", "w")
    bench = subprocess.Popen([str(PG_BIN / "pgbench"), "-c", str(args.clients), "-j", str(args.clients),
                              "-T", str(args.seconds), "-P", str(args.interval), *conn_args, db],
                             env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    run_t0 = time.monotonic()
    faults = Faults(stack, pids, args.kill_every)
    try:
        next_at = run_t0 + args.interval
        while bench.poll() is None:
            time.sleep(max(0.0, min(1.0, next_at - time.monotonic(), faults.next_at - time.monotonic())))
            if faults.due() and bench.poll() is None:
                faults.kill_one()["at_s"] = time.monotonic() - run_t0
            if time.monotonic() >= next_at and bench.poll() is None:
                sampler.sample("pgbench")
                next_at = max(next_at + args.interval, time.monotonic())
    finally:
        if bench.poll() is None:
            bench.terminate()
            bench.wait(30)
        log.close()
    run_s = time.monotonic() - run_t0
    applied_after = sampler.sample("pgbench-end")
    output = (stack.home / "pgbench.log").read_text()
    if bench.returncode != 0:
        raise RuntimeError(f"pgbench exited {bench.returncode}:\n{output[-3000:]}")

    # Catch up.
    source = source_figures(owner_dsn)
    t = time.monotonic()
    caught_up = False
    replica: dict = {}
    next_at = time.monotonic() + args.interval
    while time.monotonic() - t < args.catch_up_timeout:
        replica = replica_figures(stack)
        if all_equal(source, replica):
            caught_up = True
            break
        if time.monotonic() >= next_at:
            sampler.sample("catch-up")
            next_at += args.interval
        time.sleep(1)
    catch_up_s = time.monotonic() - t
    final = sampler.sample("caught-up" if caught_up else "not-caught-up")
    state = stack.healthz()
    verdict: dict[str, str] = {}
    if args.verify or args.kill_every:
        t = time.monotonic()
        verdict = verify_tables(stack, args.verify_timeout)
        verify_s = time.monotonic() - t

    # Summary.
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", output)
    txs = re.search(r"number of transactions actually processed: (\d+)", output)
    during = [s for s in sampler.samples if s["phase"] in ("pgbench", "pgbench-end")]
    half = during[0]["mono"] + (during[-1]["mono"] - during[0]["mono"]) / 2
    print("\n== summary ==")
    print(f"pgbench -c {args.clients} -T {args.seconds}, scale {args.scale}: "
          f"{tps.group(1) if tps else '?'} tps, {f'{int(txs.group(1)):,}' if txs else '?'} transactions in {run_s:.0f}s")
    for name in WATCHED:
        key = f"{name}_MB"
        values = [s[key] for s in during if s[key] is not None]
        slope = slope_mb_per_min([(s["mono"], s[key]) for s in during if s["mono"] >= half and s[key] is not None])
        if values:
            print(f"RSS {name:<8} first {values[0]:6.0f} MB  last {values[-1]:6.0f} MB  max {max(values):6.0f} MB  "
                  f"slope over the second half {slope if slope is not None else float('nan'):+.2f} MB/min  "
                  f"(after catch-up {fmt(final[key])} MB)")
    for name in ("broker", "connect"):
        split = rss_split_mb(pids[name])
        print(f"  {name} at the end: RSS {split.get('VmRSS', 0):.0f} MB (peak {split.get('VmHWM', 0):.0f}; anonymous "
              f"{split.get('RssAnon', 0):.0f}, mapped files {split.get('RssFile', 0):.0f}); {jvm_heap(pids[name])} "
              f"(max heap {comps[name].get('heap')})")
    disk = [s["kafka_disk_MB"] for s in during]
    print(f"Kafka log on disk: {disk[0]:.0f} MB -> {disk[-1]:.0f} MB during the run ({final['kafka_disk_MB']:.0f} MB at the end)")
    a0, a1 = applied_before.get("applied") or 0, applied_after.get("applied") or 0
    c0, c1 = applied_before.get("cdc_msgs") or 0, applied_after.get("cdc_msgs") or 0
    print(f"messages Debezium wrote to the pgbench topics during the run: {c1 - c0:,} ({(c1 - c0) / run_s:,.0f}/s); "
          f"at the end {fmt(final.get('cdc_msgs'))}")
    print(f"events applied during the run: {a1 - a0:,} ({(a1 - a0) / run_s:,.0f}/s); "
          f"in all, run + catch-up: {(final.get('applied') or 0) - a0:,} "
          f"({((final.get('applied') or 0) - a0) / (run_s + catch_up_s):,.0f}/s)")
    lags = [s["lag_msgs"] for s in during if s["lag_msgs"] is not None]
    delays = [s["delay_s"] for s in during if s["delay_s"] is not None]
    wal = [s["slot_WAL_MB"] for s in during if s["slot_WAL_MB"] is not None]
    if lags:
        print(f"applier consumer lag during the run: max {max(lags):,} messages, last {lags[-1]:,}")
    if delays:
        print(f"applier delay (now - last applied commit) during the run: max {max(delays):.1f}s, last {delays[-1]:.1f}s")
    if wal:
        print(f"slot retained WAL during the run: max {max(wal):.1f} MB, last {wal[-1]:.1f} MB; "
              f"at the end {fmt(final['slot_WAL_MB'])} MB")
    loads = [s["load1"] for s in sampler.samples]
    print(f"load average (1 min) over the samples: min {min(loads):.1f}, mean {sum(loads) / len(loads):.1f}, "
          f"max {max(loads):.1f}; other JVMs at the end: {other_jvms(set(pids.values()))}")
    print(f"first snapshots: {snapshot_s:.0f}s; dead letters: {state.get('dead_letters')}; "
          f"transactions applied: {state.get('transactions_applied')}")
    for tr in state.get("tables", []):
        print(f"  table {tr.get('stream')}: {tr.get('status')}{' - ' + tr['reason'] if tr.get('reason') else ''}")
    print(f"source   : {source}")
    print(f"replica  : {replica}")
    print(f"caught up: {'yes' if caught_up else 'NO'} (keyed tables' row counts and balance sums, pgbench_history's "
          f"row count equal) {catch_up_s:.1f}s after pgbench ended")
    if faults.kills:
        print(f"kills: {len(faults.kills)} (" + ", ".join(
            f"{k['component']} at {k['at_s']:.0f}s, back in {k['restart_s']:.1f}s" for k in faults.kills) + ")")
    verified = True
    if verdict:
        print(f"mallard verify ({verify_s:.0f}s):")
        for stream, v in verdict.items():
            print(f"  {stream}: {v}")
        verified = all(v.startswith("equal") for v in verdict.values())
        print(f"verify: {'every table equal' if verified else 'NOT every table equal'}")
    print(f"total wall time {time.monotonic() - t_start:.0f}s")
    print(json.dumps({"samples": [{k: v for k, v in s.items() if k != "mono"} for s in sampler.samples],
                      "kills": faults.kills, "verify": verdict}))
    return 0 if caught_up and verified else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=600, help="pgbench -T (default 600)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i -s (default 10)")
    parser.add_argument("--clients", type=int, default=4, help="pgbench -c (default 4)")
    parser.add_argument("--interval", type=float, default=10, help="seconds between samples (default 10)")
    parser.add_argument("--snapshot-timeout", type=float, default=1200, help="for the first snapshots (s)")
    parser.add_argument("--catch-up-timeout", type=float, default=1800, help="after pgbench ends (s)")
    parser.add_argument("--start-timeout", type=int, default=240, help="MALLARD_START_TIMEOUT_S for stack up")
    parser.add_argument("--kill-every", type=float, default=0,
                        help="SIGKILL the applier and the Connect worker in turn every this many seconds during "
                             "pgbench, restarting them with `stack up` (0: no faults); implies --verify")
    parser.add_argument("--verify", action="store_true", help="after catching up, `mallard verify` the four tables")
    parser.add_argument("--verify-timeout", type=float, default=600, help="verify's --catch-up-timeout (s)")
    parser.add_argument("--keep-logs", help="copy the stack's logs to this folder before tearing it down")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, on_signal)
    home = Path(tempfile.mkdtemp(prefix="mallard-soak-"))
    home.chmod(0o755)  # run as root, Postgres runs as 'postgres' and must reach its folder
    stack = Stack(home, args.start_timeout)
    try:
        return run(args, stack)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # tear down whatever happens next
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if args.keep_logs:
            shutil.copytree(home / "logs", args.keep_logs, dirs_exist_ok=True)
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
