"""Proof that the production topology runs here as plain processes (issue 16's head start;
not part of the test suite yet). Run it through scripts/jvm-proof.sh.

In a throwaway folder under /tmp it: initdb's a Postgres (wal_level=logical), starts
Apache Kafka (KRaft, one node) and a Kafka Connect distributed worker from .jvm/,
registers Debezium from debezium/postgres-connector.json (connection values through
the worker's environment, as in docker-compose), inserts a row and reads its change
event (confluent_kafka, and Debian's kcat); then SIGTERMs everything, writes a row while
Kafka is down, restarts, and shows topics, the consumer group's offsets and Connect's
offsets survived and the row written meanwhile arrived. Prints start-up times and RSS.
Every process it started is stopped at the end, whatever happens.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2  # noqa: E402
from confluent_kafka import Consumer, KafkaException, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from mallard.config.settings import DEFAULT_CONNECTOR_CONFIG  # noqa: E402
from mallard.stack.jvm import (  # noqa: E402
    Artifacts, BrokerConfig, ConnectConfig, connect_info, connector_offsets, connector_status, pinned_versions,
    register_connector, rss_bytes,
)
from mallard.stack.processes import free_ports, is_alive, spawn, tail, terminate  # noqa: E402

CDC_TOPIC = "mallard.public.customers"
GROUP = "jvm-proof"
SCHEMA = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text);
CREATE TABLE products (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2));
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int REFERENCES customers, updated_at timestamptz DEFAULT now());
"""


def say(msg: str) -> None:
    print(msg, flush=True)


def mib(pid: int | None) -> str:
    rss = rss_bytes(pid) if pid else None
    return f"{rss / 2**20:.0f} MiB" if rss else "n/a"


def as_postgres() -> dict:
    return {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}


class Proof:
    def __init__(self, root: Path, heap: str):
        self.root = root
        self.pg_port, broker_port, controller_port, rest_port = free_ports(4)
        self.pg_bin = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                             key=lambda p: int(p.parent.parent.name))[-1].parent
        self.pg_dir = root / "postgres"
        self.pg_password = secrets.token_urlsafe(18)
        self.artifacts = Artifacts()
        self.broker = BrokerConfig(root / "broker", broker_port, controller_port, heap=heap)
        self.connect = ConnectConfig(root / "connect", self.broker.bootstrap_servers, rest_port,
                                     self.artifacts.plugin_path, heap=heap)
        self.logs = root / "logs"
        self.pids: dict[str, int] = {}
        self.times: dict[str, float] = {}

    # -- Postgres -------------------------------------------------------------------

    def pg(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.pg_bin / tool), *args], capture_output=True, text=True, check=check,
                              **as_postgres())

    def start_postgres(self) -> None:
        data = self.pg_dir / "data"
        if not (data / "PG_VERSION").exists():
            self.pg_dir.mkdir(parents=True)
            (self.pg_dir / "socket").mkdir()
            pwfile = self.pg_dir / "pwfile"
            pwfile.write_text(self.pg_password + "\n")
            if os.geteuid() == 0:
                for p in (self.pg_dir, self.pg_dir / "socket", pwfile):
                    shutil.chown(p, "postgres", "postgres")
            try:
                # Password on TCP, peer on the socket: never trust.
                self.pg("initdb", "-D", str(data), "-U", "mallard", "--pwfile", str(pwfile), "--auth-local=peer",
                        "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
            finally:
                pwfile.unlink()
        opts = (f"-p {self.pg_port} -c listen_addresses=127.0.0.1 -k {self.pg_dir / 'socket'} -c wal_level=logical "
                "-c max_replication_slots=10 -c max_wal_senders=10")
        r = self.pg("pg_ctl", "start", "-D", str(data), "-l", str(self.pg_dir / "postgres.log"), "-o", opts, "-w",
                    check=False)
        if r.returncode:
            raise SystemExit(f"postgres did not start: {r.stderr or r.stdout}\n{tail(self.pg_dir / 'postgres.log')}")
        self.pids["postgres"] = int((data / "postmaster.pid").read_text().split()[0])

    def sql(self, statement: str, params: tuple = (), dbname: str = "shop", fetch: bool = False):
        conn = psycopg2.connect(host="127.0.0.1", port=self.pg_port, user="mallard", password=self.pg_password,
                                dbname=dbname, connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall() if fetch else None
        finally:
            conn.close()

    # -- the JVMs -------------------------------------------------------------------

    def start_broker(self) -> float:
        t0 = time.monotonic()
        self.broker.write_config()
        if not self.broker.is_formatted():
            r = subprocess.run(self.broker.format_command(self.artifacts), capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(f"kafka-storage format failed:\n{r.stdout}{r.stderr}")
            self.times["broker format"] = time.monotonic() - t0
            say(f"  broker log dir formatted (cluster id {self.broker.cluster_id()}) in "
                f"{self.times['broker format']:.1f}s")
        proc = spawn(self.broker.command(self.artifacts), self.logs / "broker.log", dict(os.environ), cwd=self.root)
        self.pids["broker"] = proc.pid
        admin = AdminClient({"bootstrap.servers": self.broker.bootstrap_servers, "log_level": 0})
        self._wait("broker", lambda: admin.list_topics(timeout=2) is not None, (KafkaException,))
        return time.monotonic() - t0

    def start_connect(self) -> float:
        t0 = time.monotonic()
        self.connect.write_config()
        env = {**os.environ, "MALLARD_PG_HOST": "127.0.0.1", "MALLARD_PG_PORT": str(self.pg_port),
               "MALLARD_PG_USER": "mallard", "MALLARD_PG_PASSWORD": self.pg_password, "MALLARD_PG_DATABASE": "shop"}
        proc = spawn(self.connect.command(self.artifacts), self.logs / "connect.log", env, cwd=self.root)
        self.pids["connect"] = proc.pid
        self._wait("connect", lambda: connect_info(self.connect.url, timeout=2), (OSError,))
        return time.monotonic() - t0

    def _wait(self, name: str, probe, transient: tuple, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not is_alive(self.pids[name]):
                raise SystemExit(f"{name} exited during start-up:\n{tail(self.logs / f'{name}.log', 30)}")
            try:
                if probe():
                    return
            except transient:
                pass
            time.sleep(0.25)
        raise SystemExit(f"{name} not up after {timeout:.0f}s:\n{tail(self.logs / f'{name}.log', 30)}")

    def stop(self, name: str) -> float:
        pid = self.pids.pop(name, None)
        if pid is None:
            return 0.0
        t0 = time.monotonic()
        if not terminate(pid, timeout=60):
            say(f"  {name} (pid {pid}) did not stop")
        return time.monotonic() - t0

    def stop_all(self) -> None:
        for name in ("connect", "broker", "postgres"):
            self.stop(name)

    # -- Kafka reads --------------------------------------------------------------------

    def consume(self, n: int, timeout: float = 90.0) -> list:
        """The next ``n`` CDC events for GROUP (from its committed offsets), then commit."""
        c = Consumer({"bootstrap.servers": self.broker.bootstrap_servers, "group.id": GROUP,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False, "log_level": 0,
                      "allow.auto.create.topics": False})
        got = []
        try:
            c.subscribe([CDC_TOPIC])
            deadline = time.monotonic() + timeout
            while len(got) < n and time.monotonic() < deadline:
                m = c.poll(1.0)
                if m is None or m.error():
                    continue  # the topic may not exist until Debezium's first event
                if m.value() is None:
                    continue  # a tombstone
                got.append(m)
            if got:
                c.commit(asynchronous=False)
        finally:
            c.close()
        return got

    def committed(self) -> dict[int, int]:
        c = Consumer({"bootstrap.servers": self.broker.bootstrap_servers, "group.id": GROUP, "log_level": 0})
        try:
            md = c.list_topics(CDC_TOPIC, timeout=10)
            parts = [TopicPartition(CDC_TOPIC, p) for p in md.topics[CDC_TOPIC].partitions]
            return {tp.partition: tp.offset for tp in c.committed(parts, timeout=10)}
        finally:
            c.close()

    def topics(self) -> list[str]:
        admin = AdminClient({"bootstrap.servers": self.broker.bootstrap_servers, "log_level": 0})
        return sorted(admin.list_topics(timeout=10).topics)

    def connect_offsets(self, name: str) -> object:
        return connector_offsets(self.connect.url, name)

    def slot(self) -> list:
        return self.sql("SELECT slot_name, active, confirmed_flush_lsn::text FROM pg_replication_slots", fetch=True)


def event_summary(m) -> str:
    v = json.loads(m.value())
    p = v["payload"]
    return (f"partition {m.partition()} offset {m.offset()}: op={p['op']} after={p['after']} "
            f"txId={p['source']['txId']} lsn={p['source']['lsn']} (schema attached: {'schema' in v})")


def kcat(bootstrap: str) -> None:
    exe = shutil.which("kcat")
    if exe is None and os.geteuid() == 0:
        say("  installing Debian's kcat with apt-get")
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "kcat"], check=False,
                       capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        exe = shutil.which("kcat")
    if exe is None:
        say("  kcat: not installed (apt-get install kcat) - skipped")
        return
    lines = subprocess.run([exe, "-V"], capture_output=True, text=True).stdout.splitlines()
    say("  " + next((line.strip() for line in lines if "version" in line.lower()), lines[0] if lines else exe))
    listing = subprocess.run([exe, "-b", bootstrap, "-L"], capture_output=True, text=True, timeout=30)
    say("  kcat -L: " + " | ".join(line.strip() for line in listing.stdout.splitlines() if "topic \"" in line))
    read = subprocess.run([exe, "-b", bootstrap, "-C", "-t", CDC_TOPIC, "-o", "beginning", "-e", "-q",
                           "-f", "%t [%p] @%o key=%k value=%s\n"], capture_output=True, text=True, timeout=60)
    for line in read.stdout.splitlines():
        say(f"  kcat -C: {line[:260]}{'...' if len(line) > 260 else ''}")
    if read.returncode:
        say(f"  kcat -C failed ({read.returncode}): {read.stderr.strip()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--heap", default="512m", help="-Xmx of the broker and of Connect (default 512m)")
    ap.add_argument("--keep", action="store_true", help="keep the throwaway folder (logs, data)")
    args = ap.parse_args()

    versions = pinned_versions()
    say(f"pinned: Kafka {versions['kafka']}, Debezium {versions['debezium']}; heaps -Xmx{args.heap}")
    root = Path(tempfile.mkdtemp(prefix="mallard-jvm-proof-"))
    root.chmod(0o755)  # the 'postgres' user must reach its folder
    proof = Proof(root, args.heap)
    connector = json.loads(Path(DEFAULT_CONNECTOR_CONFIG).read_text())
    assert connector["config"]["snapshot.mode"] == "no_data"
    try:
        say(f"\n== start (home {root})")
        t0 = time.monotonic()
        proof.start_postgres()
        proof.sql("CREATE DATABASE shop", dbname="postgres")
        proof.sql(SCHEMA)
        say(f"  postgres   pid {proof.pids['postgres']} port {proof.pg_port}: {time.monotonic() - t0:.1f}s")
        t = proof.times["broker first start (with format)"] = proof.start_broker()
        say(f"  broker     pid {proof.pids['broker']} port {proof.broker.port}: answers metadata after {t:.1f}s")
        t = proof.times["connect first start"] = proof.start_connect()
        info = connect_info(proof.connect.url)
        say(f"  connect    pid {proof.pids['connect']} port {proof.connect.rest_port}: REST up after {t:.1f}s "
            f"(Kafka {info.get('version')}, cluster {info.get('kafka_cluster_id')})")
        t0 = time.monotonic()
        state = register_connector(proof.connect.url, connector["name"], connector["config"])
        proof.times["connector RUNNING after registration"] = time.monotonic() - t0
        say(f"  connector  {connector['name']}: {state.detail} {time.monotonic() - t0:.1f}s after registration")
        # RUNNING comes before Debezium opens its replication stream: healthy means the slot is active too.
        while not any(active for _, active, _ in proof.slot()) and time.monotonic() - t0 < 120:
            time.sleep(0.25)
        proof.times["slot active after registration"] = time.monotonic() - t0
        say(f"  slot       {proof.slot()} after {proof.times['slot active after registration']:.1f}s")

        say("\n== a change event")
        proof.sql("INSERT INTO customers (name, email) VALUES (%s, %s)", ("Ada", "ada@example.com"))
        t0 = time.monotonic()
        (first,) = proof.consume(1)
        say(f"  confluent_kafka, {time.monotonic() - t0:.1f}s after the INSERT: {event_summary(first)}")
        kcat(proof.broker.bootstrap_servers)
        topics_before = proof.topics()
        offsets_before = proof.committed()
        connect_offsets_before = proof.connect_offsets(connector["name"])
        say(f"  topics: {topics_before}")
        say(f"  group {GROUP} committed: {offsets_before}")
        say(f"  Connect's offsets for Debezium: {json.dumps(connect_offsets_before)}")
        time.sleep(2)  # let the JVMs settle before sampling memory
        rss_first = {n: mib(proof.pids.get(n)) for n in ("broker", "connect")}
        say(f"  RSS: broker {rss_first['broker']}, connect {rss_first['connect']}")

        say("\n== SIGTERM everything, write while Kafka is down, start again")
        for name in ("connect", "broker", "postgres"):
            pid = proof.pids[name]
            say(f"  {name:<9} pid {pid} stopped by SIGTERM in {proof.stop(name):.1f}s")
        proof.start_postgres()
        proof.sql("INSERT INTO customers (name, email) VALUES (%s, %s)", ("Grace", "grace@example.com"))
        say("  inserted 'Grace' while the broker and Connect were down")
        t = proof.times["broker restart"] = proof.start_broker()
        say(f"  broker     restarted: answers metadata after {t:.1f}s")
        t = proof.times["connect restart"] = proof.start_connect()
        say(f"  connect    restarted: REST up after {t:.1f}s")
        t0 = time.monotonic()
        # Not registered again: the worker finds the connector in its config topic.
        deadline = time.monotonic() + 120
        state = None
        while state is None or not state.ready:
            if time.monotonic() > deadline:
                raise SystemExit(f"connector not RUNNING again after restart: {state}")
            time.sleep(0.5)
            try:
                state = connector_status(proof.connect.url, connector["name"])
            except OSError:  # includes 404 while the worker reads its config topic
                state = None
        say(f"  connector  RUNNING again {time.monotonic() - t0:.1f}s after Connect's REST came up "
            f"(from its config topic, not registered again)")
        topics_after = proof.topics()
        offsets_after = proof.committed()
        say(f"  topics survived: {topics_after == topics_before} ({len(topics_after)} topics)")
        say(f"  group {GROUP} committed offsets survived: {offsets_after == offsets_before} {offsets_after}")
        t0 = time.monotonic()
        (second,) = proof.consume(1)
        say(f"  next event for the group ({time.monotonic() - t0:.1f}s): {event_summary(second)}")
        name_seen = json.loads(second.value())["payload"]["after"]["name"]
        say(f"  the row written while Kafka was down arrived, and nothing was re-read: {name_seen == 'Grace'}")
        say(f"  Connect's offsets now: {json.dumps(proof.connect_offsets(connector['name']))}")
        time.sleep(2)
        rss_again = {n: mib(proof.pids.get(n)) for n in ("broker", "connect")}
        say(f"  RSS: broker {rss_again['broker']}, connect {rss_again['connect']}")
        say(f"  slot       {proof.slot()}")
        say("\n== summary (seconds; a JVM counts as up when the broker answers metadata / Connect's REST answers)")
        for what, seconds in proof.times.items():
            say(f"  {what:<38} {seconds:5.1f}")
        say(f"  RSS after the first start   broker {rss_first['broker']}, connect {rss_first['connect']}")
        say(f"  RSS after the restart       broker {rss_again['broker']}, connect {rss_again['connect']}")
        ok = topics_after == topics_before and offsets_after == offsets_before and name_seen == "Grace"
        say(f"\nPROOF {'PASSED' if ok else 'FAILED'}")
        return 0 if ok else 1
    finally:
        proof.stop_all()
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
