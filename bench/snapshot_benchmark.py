"""Full refresh, Postgres -> DuckDB: mallard's snapshot path against the tools people
would otherwise use, on the same table, in one run (issue 4).

    bash scripts/setup.sh && bash bench/setup_peers.sh
    .venv/bin/python bench/snapshot_benchmark.py [--rows 1000000 5000000] [--timeout 600] [--repeat 3] [--skip-mallard]

It starts its own local stack (``mallard stack up``, demo schema) in a temporary
MALLARD_HOME on free ports, with a connector config whose table.include.list also
names the bench tables, and always purges it at the end. For each size N it creates
``public.bench_orders_<N>`` (9 columns, like the demo's orders, ~1/4 of ``note``
NULL) with ``INSERT ... SELECT generate_series`` and then measures, one after the
other:

  copy-binary        ``COPY (SELECT ...) TO STDOUT (FORMAT binary)`` to /dev/null (psycopg2): the floor
  duckdb-pg-scanner  DuckDB's postgres scanner, ``CREATE TABLE AS SELECT * FROM pg.public.<t>``: the ceiling
  sling              Sling full-refresh Postgres -> DuckDB (``copy_method=csv_files``, the DuckDB CLI)
  dlt-connectorx     dlt sql_database -> duckdb, backend="connectorx"
  dlt-pyarrow        dlt sql_database -> duckdb, backend="pyarrow"
  mallard            ``mallard resnapshot public.<t>`` until the applier's count equals N
                     (+ the snapshotter's own read-and-publish time from its log)

Each peer runs as a subprocess from ``.bench-venv`` (bench/setup_peers.sh, pinned
versions, not project dependencies); its wall time is from spawn to exit, and its
peak RSS is the peak of its whole process tree's RSS sampled every 50 ms. Mallard's
RSS is the sum of the snapshotter, applier and broker processes (pids from
``mallard stack status --json``); its time runs from the resnapshot request to the
moment the replica's count equals N. The stack's other processes (Debezium's JVM,
the scheduler) stay up, idle, while the peers run. Postgres' own memory is counted
for no one. ``--repeat K`` keeps each peer's fastest of K runs. A row's note says
when processes that are neither this script's nor its stack's used CPU meanwhile
(another stack, a test run): on 2 cores that slows every tool, so compare such rows
with care.

Prints a markdown table (tool, rows, seconds, rows/s, peak RSS MB), mallard's time
over the postgres scanner's, and the machine. This file imports only the standard
library at the top: it is also its own worker (``--worker ...``) in the peers' venv.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MALLARD = REPO / ".venv" / "bin" / "mallard"
PEERS_VENV = REPO / ".bench-venv"
PEERS_PY = PEERS_VENV / "bin" / "python"
SITE = next(iter(sorted(PEERS_VENV.glob("lib/python3*/site-packages"))), PEERS_VENV / "lib" / "site-packages")
sys.path.insert(0, str(REPO))

from mallard.runtime.health import client_request  # noqa: E402
from mallard.stack.processes import free_ports  # noqa: E402

PORT_VARIABLES = (
    "MALLARD_PG_PORT", "MALLARD_KAFKA_PORT", "MALLARD_SNAPSHOTTER_HEALTH_PORT",
    "MALLARD_APPLIER_HEALTH_PORT", "MALLARD_SCHEDULER_HEALTH_PORT", "MALLARD_PUBLISHER_HEALTH_PORT",
)
PEER_PACKAGES = ("duckdb", "duckdb-extension-postgres-scanner", "sling-linux-amd64", "duckdb-cli", "dlt",
                 "connectorx", "psycopg2-binary", "pyarrow", "sqlalchemy")


def table_name(n: int) -> str:
    return f"bench_orders_{n}"


# -- memory: RSS of process trees, sampled ---------------------------------------

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def rss_kb(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0  # gone


def processes() -> dict[int, tuple[int, int]]:
    """Every process: pid -> (parent pid, CPU clock ticks used so far), from /proc."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return table


def descendants(roots: list[int], table: dict[int, tuple[int, int]] | None = None) -> set[int]:
    """``roots`` and every process below them."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in (table if table is not None else processes()).items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


OUR_ROOTS: list[int] = [os.getpid()]
"""This script and the stack's processes: any other CPU use during a measurement is
someone else's (another stack, a build) and is reported as such."""


class OtherLoad:
    """CPU used, during the block, by processes that are neither this script's nor its
    stack's, in cores (a busy neighbour on a 2-core machine slows every tool)."""

    def __enter__(self) -> "OtherLoad":
        self.cores = 0.0
        self._before = processes()
        self._ours = descendants(OUR_ROOTS, self._before)
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        after = processes()
        ours = self._ours | descendants(OUR_ROOTS, after)
        ticks = sum(cpu - self._before[pid][1] for pid, (_, cpu) in after.items()
                    if pid in self._before and pid not in ours)
        wall = time.monotonic() - self._t0
        self.cores = ticks / os.sysconf("SC_CLK_TCK") / wall if wall > 0 else 0.0


class PeakRss:
    """Samples the summed RSS of some pids (with their descendants, if asked) every
    ``interval`` seconds in a thread; ``peak_mb`` is the highest sum seen."""

    def __init__(self, pids: list[int], trees: bool, interval: float = 0.05):
        self.pids, self.trees, self.interval = pids, trees, interval
        self.peak_kb = 0
        self.peak_kb_by_pid: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = descendants(self.pids) if self.trees else set(self.pids)
            sizes = {p: rss_kb(p) for p in pids}
            self.peak_kb = max(self.peak_kb, sum(sizes.values()))
            for p, kb in sizes.items():
                self.peak_kb_by_pid[p] = max(kb, self.peak_kb_by_pid.get(p, 0))
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024


# -- the local stack --------------------------------------------------------------

class Stack:
    """A mallard local stack in a temporary home on free ports, driven through the CLI."""

    def __init__(self, sizes: list[int]):
        self.home = Path(tempfile.mkdtemp(prefix="mallard-bench-"))
        self.home.chmod(0o755)  # run as root, the 'postgres' user must reach its data folder
        self.ports = dict(zip(PORT_VARIABLES, free_ports(len(PORT_VARIABLES))))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MALLARD_")}
        self.env.update({k: str(v) for k, v in self.ports.items()})
        self.env.update({"MALLARD_HOME": str(self.home), "MALLARD_START_TIMEOUT_S": "180",
                         "MALLARD_CONNECTOR_CONFIG": str(self._connector_config(sizes)),
                         # No replication config: the streams are the connector's tables, the bench's among them
                         # (the snapshotter refuses a request for a stream that is not replicated).
                         "MALLARD_REPLICATION_CONFIG": ""})
        # Settings to try on the services, e.g. BENCH_SERVICE_ENV=MALLARD_DUCKDB_MEMORY_LIMIT=300MB
        self.env.update(kv.split("=", 1) for kv in os.environ.get("BENCH_SERVICE_ENV", "").split(",") if "=" in kv)
        self._status: dict | None = None

    def _connector_config(self, sizes: list[int]) -> Path:
        """The repo's connector config, with the bench tables added to table.include.list.
        They do not exist yet when the stack starts (it leaves them out of
        the publication), so their bulk fill makes no CDC events; each is added to the
        publication once filled (``add_to_publication``)."""
        doc = json.loads((REPO / "debezium" / "postgres-connector.json").read_text())
        doc["config"]["table.include.list"] += "".join(f",public.{table_name(n)}" for n in sizes)
        path = self.home / "connector-bench.json"
        path.write_text(json.dumps(doc, indent=2))
        return path

    def mallard(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([str(MALLARD), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"mallard {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def up(self) -> None:
        self.mallard("stack", "up", timeout=900)
        self._status = json.loads(self.mallard("stack", "status", "--json", "--show-secrets").stdout)

    def down(self) -> None:
        try:
            self.mallard("stack", "down", "--purge", timeout=180, check=False)
        finally:
            shutil.rmtree(self.home, ignore_errors=True)

    @property
    def status(self) -> dict:
        assert self._status is not None, "stack not up"
        return self._status

    @property
    def dsn(self) -> str:
        return self.status["postgres"]["dsn"]

    @property
    def admin_dsn(self) -> str:
        """The stack's admin: the publication is its (Debezium's role may not change it)."""
        return self.status["postgres"]["roles"]["admin"]["dsn"]

    def pid(self, component: str) -> int:
        return self.status["components"][component]["pid"]

    def query(self, sql: str) -> list[list]:
        """Read the replica through the applier (the only process that may open its file)."""
        port = self.ports["MALLARD_APPLIER_HEALTH_PORT"]
        url = f"http://127.0.0.1:{port}/query?" + urllib.parse.urlencode({"sql": sql})
        with urllib.request.urlopen(client_request(url, "bench"), timeout=10) as resp:
            return json.loads(resp.read())["rows"]

    @property
    def snapshotter_log(self) -> Path:
        return Path(self.status["components"]["snapshotter"]["log"])


# -- the source table ---------------------------------------------------------------

def fill_table(dsn: str, n: int) -> float:
    """Create and fill ``public.bench_orders_<n>``; returns the seconds it took."""
    import psycopg2  # the project's venv has it

    t = table_name(n)
    started = time.monotonic()
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS public.{t}")
            cur.execute(f"""
                CREATE TABLE public.{t} (
                    id bigint NOT NULL, customer_id int NOT NULL, product_id int NOT NULL, quantity int NOT NULL,
                    total numeric(12,2) NOT NULL, status text NOT NULL, note text, order_date date NOT NULL,
                    created_at timestamptz NOT NULL)""")
            cur.execute(f"""
                INSERT INTO public.{t}
                SELECT g, 1 + (g * 7919) % 100000, 1 + (g * 104729) % 5000, 1 + g % 10,
                       round((1 + (g * 31) % 100000) / 100.0, 2),
                       (ARRAY['new', 'paid', 'shipped', 'delivered', 'cancelled'])[1 + g % 5],
                       CASE WHEN g % 4 = 0 THEN NULL ELSE 'note ' || md5(g::text) END,
                       date '2024-01-01' + (g % 700)::int,
                       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second'
                FROM generate_series(1::bigint, {int(n)}) AS g""")
            cur.execute(f"ALTER TABLE public.{t} ADD PRIMARY KEY (id)")  # after the fill: faster
            cur.execute(f"VACUUM ANALYZE public.{t}")
            cur.execute(f"SELECT count(*) FROM public.{t}")  # and warm the cache for the first reader
    finally:
        conn.close()
    return time.monotonic() - started


def add_to_publication(dsn: str, n: int) -> None:
    """Capture the (already filled) table's changes from now on, as a real deployment would."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_publication_tables WHERE pubname = 'mallard_publication' AND tablename = %s",
                        (table_name(n),))
            if cur.fetchone() is None:
                cur.execute(f"ALTER PUBLICATION mallard_publication ADD TABLE public.{table_name(n)}")
    finally:
        conn.close()


def duckdb_count(path: Path, table: str) -> int | None:
    import duckdb  # the project's venv has duckdb 1.5.5, the peers' too: same file format

    try:
        con = duckdb.connect(str(path), read_only=True)
        try:
            return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        finally:
            con.close()
    except Exception:  # noqa: BLE001 - reported as "rows: ?"
        return None


# -- measuring a peer -----------------------------------------------------------------

def run_measured(name: str, argv: list[str], n: int, timeout: float, env: dict | None = None) -> dict:
    """Run one peer as a subprocess; wall time from spawn to exit, peak RSS of its tree."""
    log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
    with open(log, "wb") as out, OtherLoad() as other, PeakRss([], trees=True) as rss:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        rss.pids.append(proc.pid)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        seconds = time.monotonic() - started
    text = log.read_text(errors="replace")
    log.unlink()
    result = {"tool": name, "n": n, "seconds": seconds, "peak_rss_mb": rss.peak_mb, "other_load": other.cores}
    if code is None:
        result["error"] = f"did not finish in {timeout:.0f} s"
    elif code != 0:
        result["error"] = f"exit {code}: " + " / ".join(line.strip() for line in text.strip().splitlines()[-3:])
    worker = [line for line in text.splitlines() if line.startswith("BENCH ")]
    if worker:
        result.update(json.loads(worker[-1][6:]))
    return result


def worker_argv(tool: str, dsn: str, n: int, out: Path, **extra: str) -> list[str]:
    argv = [str(PEERS_PY), str(Path(__file__).resolve()), "--worker", tool, "--dsn", dsn, "--rows", str(n),
            "--out", str(out)]
    for k, v in extra.items():
        argv += [f"--{k}", v]
    return argv


def bench_copy(dsn: str, n: int, work: Path, timeout: float) -> dict:
    return run_measured("copy-binary (floor)", worker_argv("copy", dsn, n, work / "none"), n, timeout)


def bench_scanner(dsn: str, n: int, work: Path, timeout: float) -> dict:
    out = work / f"scanner-{n}.duckdb"
    result = run_measured("duckdb-pg-scanner", worker_argv("scanner", dsn, n, out), n, timeout)
    result["rows"] = duckdb_count(out, table_name(n))
    return result


def bench_sling(dsn: str, n: int, work: Path, timeout: float) -> dict:
    """Sling's Go binary, run directly (its tree includes the DuckDB CLI it drives)."""
    out = work / f"sling-{n}.duckdb"
    sling = SITE / "sling_linux_amd64" / "bin" / "sling-linux-amd64"
    duckdb_cli = SITE / "duckdb_cli" / "duckdb"
    for binary in (sling, duckdb_cli):  # wheels do not always keep the executable bit
        binary.chmod(binary.stat().st_mode | 0o111)
    (work / "sling-home").mkdir(exist_ok=True)
    sep = "&" if "?" in dsn else "?"
    env = {**os.environ, "SLING_HOME_DIR": str(work / "sling-home"), "SLING_DISABLE_TELEMETRY": "true",
           "DUCKDB_PATH": str(duckdb_cli), "DUCKDB_USE_INSTALLED_EXTENSIONS": "true",
           "BENCH_PG": f"{dsn}{sep}sslmode=disable", "BENCH_DUCK": f"duckdb://{out}?copy_method=csv_files"}
    argv = [str(sling), "run", "--src-conn", "BENCH_PG", "--src-stream", f"public.{table_name(n)}",
            "--tgt-conn", "BENCH_DUCK", "--tgt-object", f"main.{table_name(n)}", "--mode", "full-refresh"]
    result = run_measured("sling", argv, n, timeout, env=env)
    result["rows"] = duckdb_count(out, table_name(n))
    return result


def bench_dlt(backend: str, dsn: str, n: int, work: Path, timeout: float) -> dict:
    out = work / f"dlt-{backend}-{n}.duckdb"
    result = run_measured(f"dlt-{backend}", worker_argv("dlt", dsn, n, out, backend=backend), n, timeout)
    result["rows"] = duckdb_count(out, f"bench.{table_name(n)}")
    return result


SNAPSHOT_DONE = re.compile(r"snapshot \S+ of (?P<stream>\S+) done: (?P<rows>\d+) rows in (?P<batches>\d+) batches, "
                           r"(?P<seconds>[\d.]+)s \((?P<rate>\d+) rows/s\)")


def snapshotter_done(log: Path, stream: str, skip_bytes: int) -> dict | None:
    try:
        with open(log, "rb") as f:
            f.seek(skip_bytes)
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    for m in SNAPSHOT_DONE.finditer(text):
        if m["stream"] == stream:
            return {"rows": int(m["rows"]), "batches": int(m["batches"]), "seconds": float(m["seconds"]),
                    "rate": int(m["rate"])}
    return None


def bench_mallard(stack: Stack, n: int, timeout: float) -> tuple[dict, dict | None]:
    """Resnapshot request -> the replica's count equals N; and the snapshotter's own time."""
    t, stream = table_name(n), f"public.{table_name(n)}"
    add_to_publication(stack.admin_dsn, n)
    log_start = stack.snapshotter_log.stat().st_size if stack.snapshotter_log.exists() else 0
    applier_log = Path(stack.status["components"]["applier"]["log"])
    applier_log_start = applier_log.stat().st_size if applier_log.exists() else 0
    components = ("snapshotter", "applier", "broker")
    pids = [stack.pid(c) for c in components]
    rss_before = {c: rss_kb(stack.pid(c)) / 1024 for c in components}
    result = {"tool": "mallard (end to end)", "n": n}
    snap, count, snap_at = None, None, None
    # CPU seconds per component (Postgres: its whole process tree): where the time goes.
    postmaster = stack.pid("postgres")

    def cpu_seconds() -> dict[str, float]:
        table = processes()
        ticks = {c: table.get(stack.pid(c), (0, 0))[1] for c in components}
        # Backends come and go (the parallel readers'): the live ones, plus what the
        # postmaster has reaped (its children's CPU time).
        fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
        ticks["postgres"] = int(fields[13]) + int(fields[14]) + sum(
            table[p][1] for p in descendants([postmaster], table) if p in table)
        return {c: t / os.sysconf("SC_CLK_TCK") for c, t in ticks.items()}

    cpu_before = cpu_seconds()
    with OtherLoad() as other, PeakRss(pids, trees=False) as rss:
        started = time.monotonic()
        stack.mallard("resnapshot", stream, "--reason", "bench", timeout=60)
        requested = time.monotonic() - started  # the CLI's own time (a process start, a produce)
        deadline = started + timeout
        while time.monotonic() < deadline:
            if snap is None:
                snap = snapshotter_done(stack.snapshotter_log, stream, log_start)
                if snap is not None:
                    snap_at = time.monotonic() - started
            try:
                count = stack.query(f"SELECT count(*) FROM {t}")[0][0]
            except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError):
                count = None  # no such table in the replica yet, or the applier is busy
            if count == n:
                break
            time.sleep(0.25)
        result["seconds"] = time.monotonic() - started
    cpu_after = cpu_seconds()
    result["peak_rss_mb"] = rss.peak_mb
    result["other_load"] = other.cores
    result["cpu_seconds"] = {c: round(cpu_after[c] - cpu_before.get(c, 0), 2) for c in cpu_after}
    result["rows"] = count
    result["note"] = "peak RSS: " + ", ".join(
        f"{c} {rss.peak_kb_by_pid.get(stack.pid(c), 0) / 1024:,.0f} MB (from {rss_before[c]:,.0f})" for c in components) \
        + "; CPU s: " + ", ".join(f"{c} {v:.1f}" for c, v in result["cpu_seconds"].items())
    if count != n:
        result["error"] = f"did not finish in {timeout:.0f} s (replica count: {count})"
    if os.environ.get("BENCH_SHOW_LOGS"):  # the services' own lines about this snapshot: where the time goes
        for log, start in ((stack.snapshotter_log, log_start), (applier_log, applier_log_start)):
            with log.open("rb") as f:
                f.seek(start)
                for line in f.read().decode(errors="replace").splitlines():
                    if stream in line:
                        print("    " + line[:220])
    snapshotter = None
    if snap is not None:
        snapshotter = {"tool": "  mallard snapshotter (read + publish)", "n": n, "rows": snap["rows"],
                       "seconds": snap["seconds"], "rate": snap["rate"], "peak_rss_mb": None,
                       "note": f"{snap['batches']} batches; logged {snap_at:.1f} s after the request "
                               f"(`mallard resnapshot` took {requested:.1f} s)"}
    return result, snapshotter


# -- the workers (run in the peers' venv) ------------------------------------------------

def worker(args: argparse.Namespace) -> None:
    """One peer's work, inside its own process; prints ``BENCH {json}`` with its core time."""
    n, out, t = args.rows[0], Path(args.out), table_name(args.rows[0])
    started = time.monotonic()
    if args.worker == "copy":
        import psycopg2

        conn = psycopg2.connect(args.dsn)
        with conn.cursor() as cur, open(os.devnull, "wb") as sink:
            cur.copy_expert(f"COPY (SELECT * FROM public.{t}) TO STDOUT (FORMAT binary)", sink)
            rows = cur.rowcount
        conn.close()
    elif args.worker == "scanner":
        import duckdb

        ext = next((SITE / "duckdb_extension_postgres_scanner").rglob("*.duckdb_extension"))
        out.unlink(missing_ok=True)
        con = duckdb.connect(str(out))
        con.execute(f"LOAD '{ext}'")
        dsn = args.dsn.replace("'", "''")
        con.execute(f"ATTACH '{dsn}' AS pg (TYPE postgres, READ_ONLY)")  # ATTACH takes no parameters
        con.execute(f"CREATE TABLE {t} AS SELECT * FROM pg.public.{t}")
        rows = con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        con.close()
    elif args.worker == "dlt":
        os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
        import dlt
        from dlt.sources.sql_database import sql_database

        # SQLAlchemy 2.1 takes a bare postgresql:// URL for psycopg 3: name the driver.
        url = args.dsn.replace("postgresql://", "postgresql+psycopg2://", 1)
        out.unlink(missing_ok=True)
        source = sql_database(credentials=url, schema="public", table_names=[t], backend=args.backend)
        pipeline = dlt.pipeline(pipeline_name=f"bench_{args.backend}_{n}", destination=dlt.destinations.duckdb(str(out)),
                                dataset_name="bench", pipelines_dir=str(out.parent / f"dlt-{args.backend}-{n}"))
        info = pipeline.run(source, write_disposition="replace")
        rows = None
        info.raise_on_failed_jobs()
    else:
        raise SystemExit(f"unknown worker {args.worker}")
    print("BENCH " + json.dumps({"core_seconds": time.monotonic() - started, "rows": rows}), flush=True)


# -- the report ------------------------------------------------------------------------

def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))
    return (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; nproc {os.cpu_count()} ({cpu}); "
            f"{mem_kb / 1024 / 1024:.0f} GiB RAM; {platform.platform()}")


def versions() -> str:
    out = subprocess.run([str(PEERS_PY), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
                         capture_output=True, text=True)
    try:
        found = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(out.stdout)}
    except ValueError:
        return "peers: ? (pip list failed)"
    return "peers: " + ", ".join(f"{p}=={found.get(p, '?')}" for p in PEER_PACKAGES)


def fmt_row(r: dict) -> str:
    secs = r.get("seconds")
    rows = r.get("rows")
    ok = "error" not in r
    rate = f"{r['rate'] if r.get('rate') else rows / secs:,.0f}" if ok and rows and secs else "—"
    rss = f"{r['peak_rss_mb']:,.0f}" if r.get("peak_rss_mb") is not None else "—"
    notes = [r["error"]] if not ok else []
    if r.get("core_seconds") is not None:
        notes.append(f"{r['core_seconds']:.1f} s inside the process")
    if r.get("note"):
        notes.append(r["note"])
    if r.get("other_load", 0) >= 0.05:
        notes.append(f"other processes used {r['other_load']:.2f} cores meanwhile")
    rows_text = f"{rows:,}" if isinstance(rows, int) else "?"
    if isinstance(rows, int) and rows != r["n"] and ok:
        notes.append(f"expected {r['n']:,} rows")
    secs_text = f"{secs:.1f}" if secs is not None else "—"
    if not ok:
        secs_text = f"> {secs:.0f}" if "did not finish" in r["error"] else "failed"
    notes_text = "; ".join(notes).replace("|", "/")
    return f"| {r['tool']} | {rows_text} | {secs_text} | {rate} | {rss} | {notes_text} |"


def report(results: list[dict]) -> str:
    lines = ["| tool | rows | seconds | rows/s | peak RSS MB | notes |", "|---|---|---|---|---|---|"]
    lines += [fmt_row(r) for r in results]
    for n in sorted({r["n"] for r in results}):
        by = {r["tool"].strip(): r for r in results if r["n"] == n}
        m, s = by.get("mallard (end to end)"), by.get("duckdb-pg-scanner")
        snap = by.get("mallard snapshotter (read + publish)")
        if not m or not s or "error" in s:
            continue
        ratio = f"{m['seconds'] / s['seconds']:.1f}x" if "error" not in m else \
            f"more than {m['seconds'] / s['seconds']:.0f}x (mallard did not finish)"
        line = f"\nmallard / postgres scanner, {n:,} rows: {ratio}"
        if snap:
            line += f"; the snapshotter's read + publish alone: {snap['seconds'] / s['seconds']:.1f}x"
        lines.append(line)
    return "\n".join(lines)


def interrupted(signum: int, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


# -- main ------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000], help="table sizes to run (default 1000000)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds mallard may take per size (default 600)")
    p.add_argument("--peer-timeout", type=float, default=1800.0, help="seconds each peer may take (default 1800)")
    p.add_argument("--repeat", type=int, default=1, help="run each peer this many times, keep the fastest (default 1)")
    p.add_argument("--skip-mallard", action="store_true", help="measure the peers only")
    p.add_argument("--skip-peers", action="store_true", help="measure mallard only")
    p.add_argument("--mallard-rows", type=int, nargs="*", help="sizes to run mallard on (default: all of --rows)")
    p.add_argument("--json", type=Path, help="also write every result to this file")
    # the workers, run by this script in the peers' venv
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--dsn", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0

    for needed, how in ((MALLARD, "bash scripts/setup.sh"), (PEERS_PY, "bash bench/setup_peers.sh")):
        if not needed.exists():
            print(f"missing {needed}: run {how} first", file=sys.stderr)
            return 2
    # A SIGTERM (or SIGHUP) must still reach the `finally` that purges the stack.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    sizes = args.rows
    mallard_sizes = set(sizes if args.mallard_rows is None else args.mallard_rows) if not args.skip_mallard else set()
    print(f"# mallard snapshot benchmark\n\nmachine: {machine()}\n{versions()}\n", flush=True)
    results: list[dict] = []
    stack = Stack(sizes)
    work = Path(tempfile.mkdtemp(prefix="mallard-bench-out-"))
    try:
        print(f"starting a local stack in {stack.home} ...", flush=True)
        started = time.monotonic()
        stack.up()
        OUR_ROOTS.extend(c["pid"] for c in stack.status["components"].values() if c["pid"])
        print(f"stack up in {time.monotonic() - started:.0f} s", flush=True)
        for n in sizes:
            print(f"\n## {n:,} rows\nfilling public.{table_name(n)} ... ", end="", flush=True)
            print(f"{fill_table(stack.dsn, n):.1f} s", flush=True)
            runs = [] if args.skip_peers else [
                lambda: bench_copy(stack.dsn, n, work, args.peer_timeout),
                lambda: bench_scanner(stack.dsn, n, work, args.peer_timeout),
                lambda: bench_sling(stack.dsn, n, work, args.peer_timeout),
                lambda: bench_dlt("connectorx", stack.dsn, n, work, args.peer_timeout),
                lambda: bench_dlt("pyarrow", stack.dsn, n, work, args.peer_timeout),
            ]
            for run in runs:
                tries = [run() for _ in range(args.repeat)]
                r = min(tries, key=lambda t: ("error" in t, t["seconds"]))
                if args.repeat > 1:
                    r["note"] = f"fastest of {args.repeat}: " + ", ".join(f"{t['seconds']:.1f}" for t in tries) + " s"
                results.append(r)
                print(fmt_row(r), flush=True)
            for f in work.glob("*"):  # keep the disk free for the next size
                shutil.rmtree(f, ignore_errors=True) if f.is_dir() else f.unlink()
            if n in mallard_sizes:
                print(f"mallard: resnapshot public.{table_name(n)} (timeout {args.timeout:.0f} s) ...", flush=True)
                m, snap = bench_mallard(stack, n, args.timeout)
                if "error" in m:
                    print(f"mallard: {m['error']}", flush=True)
                for r in (m, snap):
                    if r:
                        results.append(r)
                        print(fmt_row(r), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
    finally:
        print("\nstopping the stack (mallard stack down --purge) ...", flush=True)
        stack.down()
        shutil.rmtree(work, ignore_errors=True)
    print("\n" + report(results))
    print(f"\nmachine: {machine()}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
