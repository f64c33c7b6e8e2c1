"""``mallard stack up | down | status`` for the local stack: the production topology
(Postgres, Apache Kafka in KRaft mode, Kafka Connect running Debezium, the services)
as plain processes.

Each component is a background process with a log file and a pid file under the
stack's home (default ./.mallard). ``up`` checks every port first, starts what is
not running, waits for each to be healthy, and on failure stops what it started
in that call. ``down`` stops only processes its pid files name, services first and
the broker and Postgres last.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr

from mallard.config.settings import (DEFAULT_CONNECTOR_CONFIG, DEFAULT_KAFKA_PORT, REPO_ROOT, PostgresRoleSettings,
                              PostgresSettings)
from mallard.core.deployment import KAFKA_ENV
from mallard.stack.processes import PidFile, is_alive, port_in_use, spawn, tail, terminate

DEMO_SQL = REPO_ROOT / "demo" / "shop.sql"
DEMO_REPLICATION_CONFIG = REPO_ROOT / "demo" / "replication.yaml"


class StackSettings(PostgresSettings, PostgresRoleSettings):
    """The local stack's layout and ports (MALLARD_* variables, like the services)."""

    pg_admin_user: str = Field("mallard_admin", description="The cluster's superuser, which only `mallard stack` "
                               "connects as (to set up roles, the database and the publication); its password is "
                               "generated and kept in <home>/secrets.json.")

    home: Path = Field(Path(".mallard"), description="Folder of the stack's data, logs and pid files.")
    kafka_port: int = Field(DEFAULT_KAFKA_PORT, description="Port of the Kafka broker on 127.0.0.1.")
    kafka_controller_port: int = Field(19093, description="Port of the broker's KRaft controller on 127.0.0.1.")
    connect_port: int = Field(18084, description="Port of Kafka Connect's REST API on 127.0.0.1.")
    broker_heap: str = Field("512m", description="Maximum heap of the Kafka broker's JVM (-Xmx).")
    connect_heap: str = Field("512m", description="Maximum heap of the Kafka Connect worker's JVM (-Xmx).")
    jvm_opts: str = Field("", description="Extra options for the broker's and Connect's JVMs, space-separated, after "
                          "mallard's own (e.g. -XX:TieredStopAtLevel=1: about half the start-up CPU, for short-lived "
                          "stacks such as tests').")
    snapshotter_health_port: int = Field(18081, description="Health port of the snapshotter.")
    applier_health_port: int = Field(18082, description="Health port of the applier.")
    scheduler_health_port: int = Field(18083, description="Health port of the scheduler.")
    connector_config: Path = Field(DEFAULT_CONNECTOR_CONFIG, description="Debezium connector config file.")
    replication_config: str = Field(str(DEMO_REPLICATION_CONFIG), description="Replication config (streams, modes, "
                                    "schedules); the connector's table.include.list is derived from its streams. "
                                    "Empty: none (the connector config's own list, no schedules).")
    pg_bin: str = Field("", description="Folder of the Postgres server binaries; empty: the newest /usr/lib/postgresql/*/bin.")
    start_timeout_s: float = Field(180.0, description="How long each component may take to become healthy.")
    kafka_sasl_ssl: bool = Field(False, description="Run the local broker with SASL_SSL on its client listener "
                                 "(PLAIN credentials over TLS, a CA made for the stack under <home>/kafka/tls); the "
                                 "services, Connect and the CLI log in with a generated password kept in secrets.json.")

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def connect_url(self) -> str:
        return f"http://127.0.0.1:{self.connect_port}"


PURGE_GRACE_S = 5.0
"""How long ``down --purge`` lets each component stop by itself before killing it."""


class StackError(RuntimeError):
    """A component could not be started or stopped; the message names it and its log."""


def stack_replication_config(configured: str, named: bool, demo_stack: bool, own_connector: bool) -> str:
    """The replication config a local stack runs (``""``: none), or StackError when nothing
    says what to replicate. ``configured`` is the settings' value, ``named`` whether the user
    set it (else it is the default: the demo's config); ``demo_stack`` whether this stack
    holds the demo (loaded now or by an earlier ``up``); ``own_connector`` whether the
    connector config is the user's rather than the repo's, whose table list is the demo's.
    A stack replicates only what it was told to: the demo's tables only with the demo."""
    config = configured if named or demo_stack else ""
    if config or own_connector or demo_stack:
        return config
    raise StackError("nothing to replicate: no replication config names the tables (set MALLARD_REPLICATION_CONFIG "
                     "to one; demo/replication.yaml shows the format), and without the demo (--no-demo) the "
                     "default connector config's tables are the demo's, which this stack does not hold")


def postgres_bin(settings: StackSettings) -> Path:
    if settings.pg_bin:
        return Path(settings.pg_bin)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not candidates:
        raise StackError("postgres: no server binaries under /usr/lib/postgresql (apt-get install postgresql, or set MALLARD_PG_BIN)")
    return candidates[-1].parent


def _as_postgres_user() -> dict[str, Any]:
    """initdb and postgres refuse to run as root: run them as the 'postgres' user then."""
    return {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}


def postgres_dir(home: Path) -> Path:
    """The cluster's folder: ``<home>/postgres``, unless we are root and the 'postgres'
    user cannot reach the project (cloned under /root, say); then a folder of its own
    under /var/lib/mallard, named after the home so every command finds it again."""
    local = home / "postgres"
    if os.geteuid() != 0:
        return local
    try:
        reachable = subprocess.run(["test", "-x", str(home.parent)], **_as_postgres_user()).returncode == 0
    except (KeyError, OSError):  # no 'postgres' user yet: postgres_bin() will say what is missing
        return local
    if reachable:
        return local
    return Path("/var/lib/mallard") / f"postgres-{hashlib.sha1(str(home).encode()).hexdigest()[:12]}"


SERVICE_ROLES = {"mallard.services.snapshotter": "snapshotter",
                 # they only read Postgres (the scheduler checks the tables exist): the SELECT-only role
                 "mallard.services.scheduler": "snapshotter", "mallard.services.applier": "snapshotter"}


@dataclass
class Component:
    name: str
    port: int
    port_hint: str
    log: Path
    pid_file: PidFile
    check: Callable[[], tuple[bool, Any]]
    """(healthy, detail): detail is a sentence, or a service's /healthz body."""
    launch: Callable[[], int]
    stop_fn: Callable[[int, float], bool] = field(default=terminate)
    """stop_fn(pid, grace): ask the process to stop, kill it after ``grace`` seconds; True when gone."""
    grace_s: float = 20.0
    started: Callable[[], tuple[bool, Any]] | None = None
    """What ``up`` waits for after the launch, when less than ``check`` (Connect: its REST API
    answers; the connector is registered next)."""

    def running_pid(self) -> int | None:
        return self.pid_file.running_pid()


class LocalStack:
    def __init__(self, settings: StackSettings):
        self.s = settings
        self.home = settings.home.resolve()
        self.pg_dir = postgres_dir(self.home)
        self.logs = self.home / "logs"
        self.pids = self.home / "run"
        self.duckdb_path = self.home / "duckdb" / "mallard.duckdb"
        from mallard.stack import jvm

        self.artifacts = jvm.Artifacts()
        self.broker = jvm.BrokerConfig(self.home / "kafka", settings.kafka_port, settings.kafka_controller_port,
                                       heap=settings.broker_heap, jvm_opts=tuple(shlex.split(settings.jvm_opts)))
        self.connect = jvm.ConnectConfig(self.home / "connect", settings.bootstrap_servers, settings.connect_port,
                                         self.artifacts.plugin_path, heap=settings.connect_heap,
                                         jvm_opts=tuple(shlex.split(settings.jvm_opts)))
        self.secrets_file = self.home / "secrets.json"
        self.components = self._components()

    # -- the components ---------------------------------------------------------

    def _components(self) -> list[Component]:
        s = self.s
        return [
            Component("postgres", s.pg_port, "MALLARD_PG_PORT", self.pg_dir / "postgres.log",
                      PidFile(self.pids / "postgres.pid"), self._check_postgres, self._launch_postgres, self._stop_postgres,
                      grace_s=60.0),
            Component("broker", s.kafka_port, "MALLARD_KAFKA_PORT", self.logs / "broker.log",
                      PidFile(self.pids / "broker.pid"), self._check_broker, self._launch_broker,
                      # A controlled shutdown closes the log cleanly: no recovery at the next start.
                      grace_s=60.0),
            Component("connect", s.connect_port, "MALLARD_CONNECT_PORT", self.logs / "connect.log",
                      PidFile(self.pids / "connect.pid"), self._check_connect, self._launch_connect,
                      # Graceful: Debezium's task commits its last offsets before the worker exits.
                      grace_s=60.0, started=self._connect_answers),
            self._service("snapshotter", "mallard.services.snapshotter", s.snapshotter_health_port, "MALLARD_SNAPSHOTTER_HEALTH_PORT"),
            self._service("applier", "mallard.services.applier", s.applier_health_port, "MALLARD_APPLIER_HEALTH_PORT"),
            self._service("scheduler", "mallard.services.scheduler", s.scheduler_health_port, "MALLARD_SCHEDULER_HEALTH_PORT"),
        ]

    # -- roles ------------------------------------------------------------------------

    def _generated_passwords(self) -> dict[str, str]:
        """The passwords of the roles the stack creates, generated by the first ``up``
        and kept in the home, readable by this user only."""
        try:
            return json.loads(self.secrets_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise StackError(f"postgres: cannot read the roles' passwords in {self.secrets_file}: {e}") from None

    def _new_passwords(self) -> dict[str, str]:
        passwords = {role: secrets.token_urlsafe(24) for role in ("admin", "debezium", "snapshotter")}
        return self._write_secrets(passwords)

    def _write_secrets(self, passwords: dict[str, str]) -> dict[str, str]:
        self.secrets_file.parent.mkdir(parents=True, exist_ok=True)
        self.secrets_file.unlink(missing_ok=True)
        fd = os.open(self.secrets_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(passwords, f)
        return passwords

    def kafka_security(self, create: bool = False) -> Any:
        """The broker's SASL_SSL material (jvm.KafkaSecurity) when the stack runs with it:
        passwords from secrets.json, the CA and keystore under <home>/kafka/tls (made by
        ``create``, on the first start); None for a PLAINTEXT broker."""
        from mallard.stack import jvm

        if not self.s.kafka_sasl_ssl:
            return None
        kept = self._generated_passwords()
        names = ("kafka_keystore", "kafka_broker", "kafka_client")
        if not all(n in kept for n in names):
            if not create:
                raise StackError(f"broker: no Kafka credentials in {self.secrets_file} yet (mallard stack up makes them)")
            kept = self._write_secrets({**kept, **{n: secrets.token_urlsafe(24) for n in names if n not in kept}})
        folder = self.home / "kafka" / "tls"
        try:
            if create:
                ca, keystore = jvm.make_tls_material(folder, kept["kafka_keystore"])
            else:
                ca, keystore = folder / "ca.crt", folder / "broker.p12"
        except jvm.JvmError as e:
            raise StackError(str(e)) from None
        return jvm.KafkaSecurity(ca, keystore, kept["kafka_keystore"], kept["kafka_broker"], "mallard",
                                 kept["kafka_client"])

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka security properties for this stack's broker ({} when PLAINTEXT)."""
        try:
            security = self.kafka_security()
        except StackError:
            return {}
        return security.librdkafka() if security is not None else {}

    def role_names(self) -> dict[str, str]:
        s = self.s
        return {"admin": s.pg_admin_user, "owner": s.pg_user, "debezium": s.pg_debezium_user,
                "snapshotter": s.pg_snapshotter_user}

    def as_role(self, role: str) -> StackSettings:
        """The stack's settings, connecting as one of its roles (owner: the settings' own user)."""
        if role == "owner":
            return self.s
        password = self._generated_passwords().get(role)
        if password is None:
            raise StackError(f"postgres: no password for the {role} role in {self.secrets_file}; if the cluster was "
                             "created by an older mallard (a superuser for everything, trust on the socket), "
                             "`mallard stack down --purge` and `mallard stack up` create it again with its roles")
        return self.s.model_copy(update={"pg_user": self.role_names()[role], "pg_password": SecretStr(password)})

    def reader(self) -> StackSettings:
        """Settings for reading only (verify): the stack's SELECT-only role while its Postgres
        runs, else the settings' own user (a source the stack did not set up)."""
        if self.components[0].running_pid() is not None and "snapshotter" in self._generated_passwords():
            return self.as_role("snapshotter")
        return self.s

    def service_env(self, health_port: int, role: str = "owner") -> dict[str, str]:
        """What every service process gets: the same MALLARD_* names docker-compose sets,
        with the credentials of the service's own role."""
        s = self.s
        return {
            **os.environ,
            **self.as_role(role).pg_env(),
            "MALLARD_KAFKA_BOOTSTRAP_SERVERS": s.bootstrap_servers,
            **{KAFKA_ENV[k]: v for k, v in self.kafka_client_config().items()},
            "MALLARD_HEALTH_PORT": str(health_port),
            "MALLARD_DUCKDB_PATH": str(self.duckdb_path),
            "MALLARD_CONNECTOR_CONFIG": str(self.connector_config_path()),
            "MALLARD_CONNECT_URL": s.connect_url,  # the snapshotter reports the connector's task states
            # The copy `up` and `config apply` write once Debezium captures its tables: an edit of
            # the user's file reaches the services only through them (see apply_config).
            "MALLARD_REPLICATION_CONFIG": str(self.applied_config_path()) if s.replication_config else "",
            "PYTHONUNBUFFERED": "1",
        }

    def connector_config_path(self) -> Path:
        """The connector config the services run: with a replication config, a copy in the
        home whose table.include.list is derived from its streams."""
        if not self.s.replication_config:
            return self.s.connector_config.resolve()
        return self.home / "debezium" / "connector.json"

    def applied_config_path(self) -> Path:
        """The replication config the services run (and watch): a copy of the user's, in the home."""
        return self.home / "config" / "replication.yaml"

    def _write_applied_config(self) -> None:
        if not self.s.replication_config:
            return
        out = self.applied_config_path()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(Path(self.s.replication_config).read_bytes())
        tmp.replace(out)  # whole or not at all: a service never reads half a file

    def apply_config(self, path: str | Path, report: Callable[[str], None] = print,
                     wait_s: float | None = None) -> Any:
        """``mallard config apply`` on the running local stack, without restarting anything.
        The new config is validated (and checked against Postgres) before anything changes;
        then, in this order, so that a new stream's first cut comes after Debezium captures
        it: the connector's table.include.list (PUT through Connect's REST API, waiting for
        its task to stream again), the publication (as the admin role), and last the copy
        the services watch. Returns the ConfigDiff against what the services ran."""
        from mallard.adapters import postgres
        from mallard.config.replication import check_against_postgres, config_digest, load_config
        from mallard.core.replication import diff_configs

        path = Path(path).resolve()
        new = load_config(path)  # ConfigError: nothing changed
        applied = self.applied_config_path()
        if not applied.is_file() and any(c.running_pid() is not None for c in self.components[3:]):
            raise StackError("the services run without a replication config (the stack was started without one): "
                             "they cannot take one while running; `mallard stack down`, then `mallard stack up` with "
                             "MALLARD_REPLICATION_CONFIG set. Nothing was changed")
        old = load_config(applied) if applied.is_file() else None
        diff = diff_configs(old, new) if old is not None else None
        if diff is not None and diff.fixed_changed:
            raise StackError(f"{path}: {' and '.join(diff.fixed_changed)} differ from the running stack's "
                             f"({applied}): they cannot change while it runs; `mallard stack down` and `up` for that. "
                             "Nothing was changed")
        if self.components[0].running_pid() is None:
            raise StackError("postgres: not running; `mallard stack up` first")
        admin = self.as_role("admin")
        conn = postgres.connect(**admin.pg_params())
        try:
            missing = check_against_postgres(new, conn, missing_ok=True)
        finally:
            conn.close()
        before = self._connector()
        self.s = self.s.model_copy(update={"replication_config": str(path)})
        self._write_state()  # stack.json: what `status`, `config check` and the next `up` use
        self.derive_connector_config()
        after = self._connector()
        if after.config != before.config or self._connect_holds_another_config():
            self._reregister_connector(report)
        self._ensure_publication(admin, report)
        self._write_applied_config()
        digest = config_digest(applied.read_bytes())
        report(f"  {'config':<14} {path} applied ({diff.describe() if diff is not None else 'first config'})"
               + (f"; waiting for tables that do not exist yet: {', '.join(missing)}" if missing else ""))
        self._wait_for_services(digest, report, self.s.start_timeout_s if wait_s is None else wait_s)
        return diff

    def _applied_digest(self) -> str | None:
        from mallard.config.replication import config_digest

        try:
            return config_digest(self.applied_config_path().read_bytes())
        except OSError:
            return None

    def _config_digest(self) -> str | None:
        from mallard.config.replication import config_digest

        try:
            return config_digest(Path(self.s.replication_config).read_bytes()) if self.s.replication_config else None
        except OSError:
            return None

    def _connect_holds_another_config(self) -> bool:
        from mallard.stack import jvm

        config = self._connector()
        try:
            held = jvm.connector_config(self.s.connect_url, config.name)
        except jvm.JvmError:
            return False  # not registered (yet): register_connector creates it
        return {k: v for k, v in held.items() if k != "name"} != {k: v for k, v in config.config.items() if k != "name"}

    def _reregister_connector(self, report: Callable[[str], None]) -> None:
        """PUT the new config; Connect restarts the task. Wait until a new walsender streams
        from the slot: from then on every change of the new tables reaches Kafka."""
        config = self._connector()
        old_pid = (self._slot_state(config.slot_name) or {}).get("active_pid")
        t0 = time.monotonic()
        self._register_and_wait(config, lambda slot: slot.get("active") and slot.get("active_pid") != old_pid,
                                "took the new table list but its task did not stream again")
        report(f"  {'debezium':<14} connector {config.name} now captures {', '.join(config.tables) or 'no table'} "
               f"(task streaming again in {time.monotonic() - t0:.1f}s)")

    def _wait_for_services(self, digest: str, report: Callable[[str], None], wait_s: float) -> None:
        """Until every running service says (in /healthz) that it runs this version of the config."""
        from mallard.runtime.health import probe

        services = [c for c in self.components[3:] if c.running_pid() is not None]
        deadline = time.monotonic() + wait_s
        pending = {c.name for c in services}
        while pending:
            for c in services:
                if c.name in pending:
                    _, body = probe(f"http://127.0.0.1:{c.port}/healthz")
                    config = (body or {}).get("config") or {}
                    if config.get("digest") == digest:
                        pending.discard(c.name)
                    elif (config.get("refused") or {}).get("digest") == digest:
                        raise StackError(f"{c.name} refused the config: {config['refused']['reason']}")
            if not pending:
                break
            if time.monotonic() > deadline:
                raise StackError(f"{', '.join(sorted(pending))} did not take the new config within {wait_s:.0f}s; "
                                 "see their logs")
            time.sleep(0.25)
        if services:
            report(f"  {'services':<14} {', '.join(c.name for c in services)} run it (no restart)")

    def derive_connector_config(self) -> None:
        if self.s.replication_config:
            from mallard.config.connector import derive_connector_config

            derive_connector_config(self.s.connector_config, self.s.replication_config, self.connector_config_path())

    def _service(self, name: str, module: str, port: int, hint: str) -> Component:
        from mallard.runtime.health import probe

        log = self.logs / f"{name}.log"

        def launch() -> int:
            self.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
            env = self.service_env(port, SERVICE_ROLES.get(module, "snapshotter"))
            return spawn([sys.executable, "-m", module], log, env, cwd=self.home).pid

        def check() -> tuple[bool, Any]:
            ok, body = probe(f"http://127.0.0.1:{port}/healthz")
            return ok, body if body is not None else "no answer on its health port"

        return Component(name, port, hint, log, PidFile(self.pids / f"{name}.pid"), check, launch)

    def _pg(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(postgres_bin(self.s) / tool), *args], capture_output=True, text=True,
                              check=check, **_as_postgres_user())

    def _launch_postgres(self) -> int:
        data = self.pg_dir / "data"
        fresh = not (data / "PG_VERSION").exists()
        self.pg_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        (self.pg_dir / "socket").mkdir(exist_ok=True)
        if os.geteuid() == 0:
            if self.pg_dir.parent == self.home:
                self.home.chmod(self.home.stat().st_mode | 0o011)  # let 'postgres' traverse to its folder
            shutil.chown(self.pg_dir, "postgres", "postgres")
            shutil.chown(self.pg_dir / "socket", "postgres", "postgres")
        if fresh:
            # The bootstrap superuser is the stack's admin alone; everything else gets a role
            # of its own (ensure_roles). A password on the socket too: no 'trust' anywhere.
            admin_password = self._new_passwords()["admin"]
            pwfile = self.pg_dir / "pwfile"
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(admin_password + "\n")
            if os.geteuid() == 0:
                shutil.chown(pwfile, "postgres", "postgres")
            try:
                self._pg("initdb", "-D", str(data), "-U", self.s.pg_admin_user, "--pwfile", str(pwfile),
                         "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
            except subprocess.CalledProcessError as e:
                raise StackError(f"postgres: initdb failed: {e.stderr.strip()}") from None
            finally:
                pwfile.unlink(missing_ok=True)
        else:
            self.as_role("admin")  # a cluster from before the roles: say so now, not after it started
        options = " ".join([
            f"-p {self.s.pg_port}", "-c listen_addresses=127.0.0.1", f"-k {self.pg_dir / 'socket'}",
            "-c wal_level=logical", "-c max_replication_slots=10", "-c max_wal_senders=10",
            "-c fsync=off",  # a local dev cluster: speed over surviving an OS crash
        ])
        result = self._pg("pg_ctl", "start", "-D", str(data), "-l", str(self.pg_dir / "postgres.log"),
                          "-o", options, "-w", "-t", "60", check=False)
        if result.returncode != 0:
            raise StackError(f"postgres: pg_ctl start failed: {(result.stderr or result.stdout).strip()}")
        return int((data / "postmaster.pid").read_text().split()[0])

    def _prepare_postgres(self, demo: bool, report: Callable[[str], None]) -> None:
        """Roles, database, grants, the demo, then the publication; idempotent, on every ``up``."""
        from mallard.adapters import postgres
        from mallard.stack import roles

        admin = self.as_role("admin")
        names = self.role_names()
        passwords = {"owner": self.s.pg_password.get_secret_value(), **self._generated_passwords()}
        the_roles = roles.Roles(owner=names["owner"], debezium=names["debezium"], snapshotter=names["snapshotter"])
        conn = postgres.connect(**admin.pg_params(dbname="postgres"))
        try:
            roles.ensure_roles(conn, the_roles, passwords)
            roles.ensure_database(conn, self.s.pg_database, the_roles.owner)
        finally:
            conn.close()
        conn = postgres.connect(**admin.pg_params())
        try:
            roles.ensure_grants(conn, the_roles, self.s.pg_database)
            roles.ensure_heartbeat(conn, the_roles)
        finally:
            conn.close()
        if demo and self.load_demo():
            report(f"  {'demo':<14} loaded the shop schema and rows into '{self.s.pg_database}'")
        self._ensure_publication(admin, report)

    def _ensure_publication(self, admin: StackSettings, report: Callable[[str], None]) -> None:
        """Created here, as the admin, so Debezium's role needs no more than REPLICATION
        and SELECT: FOR ALL TABLES takes a superuser, FOR TABLE the tables' owner. In
        connector config says publication.autocreate.mode=disabled: Debezium never alters
        it, so it may hold the heartbeat table besides the included ones."""
        from mallard.adapters import postgres
        from mallard.config.connector import load_connector_config_file
        from mallard.stack import roles

        config = load_connector_config_file(self.connector_config_path())
        conn = postgres.connect(**admin.pg_params())
        try:
            every_table = not config.tables or config.config.get("publication.autocreate.mode") == "all_tables"
            existing, _ = postgres.existing_tables(conn, [] if every_table else config.tables)
            include = [] if every_table else config.tables
            if not every_table:  # FOR ALL TABLES has it already
                existing.append(roles.HEARTBEAT)
            inserts: list[str] = []
            if config.inserts_publication and not every_table:
                existing, inserts = self._keyless_tables(conn, existing, report)
            if postgres.ensure_publication(conn, config.publication_name, include, existing):
                report(f"  {'publication':<14} created {config.publication_name} for "
                       + ("all tables" if every_table else ", ".join(existing) or "no table yet"))
            elif not every_table and roles.sync_publication_tables(conn, config.publication_name, existing):
                report(f"  {'publication':<14} {config.publication_name} now covers {', '.join(existing)}")
            if config.inserts_publication:
                # Both exist before Debezium streams: pgoutput fails on a name it cannot find.
                if postgres.ensure_inserts_publication(conn, config.inserts_publication, inserts) and inserts:
                    report(f"  {'publication':<14} {config.inserts_publication} (inserts only) now covers "
                           f"{', '.join(inserts)}")
                postgres.ensure_empty_publication(conn, config.publication_marker)
            if not every_table:  # a configured table created later joins it as it is created
                roles.ensure_capture_trigger(conn, config.publication_name, config.tables, config.inserts_publication,
                                             self._identity_full_streams())
            # DDL that changes existing rows without row events is said in its own transaction.
            roles.ensure_rewrite_signal(conn, config.publication_name, config.inserts_publication)
        finally:
            conn.close()

    def _keyless_tables(self, conn: Any, existing: list[str],
                        report: Callable[[str], None]) -> tuple[list[str], list[str]]:
        """Tables without a primary key, before they enter a publication (mallard/core/keyless.py):
        said to the user; REPLICA IDENTITY FULL set where the config asks. Returns (tables for
        the publication of every change, tables for the inserts-only one)."""
        from mallard.adapters import postgres
        from mallard.config.connector import load_connector_config_file
        from mallard.core.keyless import plan_publications

        plan = plan_publications(postgres.table_identities(conn, existing), self._identity_full_streams())
        publication = load_connector_config_file(self.connector_config_path()).publication_name
        for stream in plan.set_full:  # before it enters the publication of updates and deletes
            postgres.set_replica_identity_full(conn, stream)
        for mode in plan.modes:
            report(f"  {'no key':<14} {mode.describe(publication)}")
        return plan.main, plan.inserts

    def _identity_full_streams(self) -> list[str]:
        """Streams the replication config gives ``replica_identity: full``."""
        from mallard.config.replication import load_config

        if not self.s.replication_config:
            return []
        return [s.name for s in load_config(self.s.replication_config).streams.values() if s.replica_identity == "full"]

    def load_demo(self) -> bool:
        """Load the demo shop schema and rows into an empty database, as its owner."""
        from mallard.adapters import postgres

        conn = postgres.connect(**self.s.pg_params())
        try:
            if postgres.scalar(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"):
                return False
            with conn.cursor() as cur:
                cur.execute(DEMO_SQL.read_text())
            return True
        finally:
            conn.close()

    def _check_postgres(self) -> tuple[bool, str]:
        from mallard.adapters import postgres

        try:
            postgres.connect(**self.as_role("admin").pg_params(dbname="postgres"), timeout=2).close()
            return True, "accepting connections"
        except (postgres.SourceError, StackError) as e:
            return False, str(e)

    def _stop_postgres(self, pid: int, grace: float) -> bool:
        # Within the grace "fast" (clean shutdown, no recovery at the next start); shorter: the
        # data is about to be deleted ("immediate").
        mode = "fast" if grace >= PURGE_GRACE_S * 2 else "immediate"
        self._pg("pg_ctl", "stop", "-D", str(self.pg_dir / "data"), "-m", mode, "-w", "-t", str(max(1, int(grace))),
                 check=False)
        return not is_alive(pid) or terminate(pid, grace)

    def _launch_broker(self) -> int:
        from mallard.stack import jvm

        b = self.broker
        try:
            security = self.kafka_security(create=True)
            if security is not None:
                b = self.broker = dataclasses.replace(b, security=security)
            b.write_config()
            if not b.is_formatted():  # once: formatting again would give the log another cluster id
                result = subprocess.run(b.format_command(self.artifacts), capture_output=True, text=True)
                if result.returncode != 0:
                    raise StackError(f"broker: kafka-storage format failed: {(result.stderr or result.stdout).strip()}")
            argv = b.command(self.artifacts)
        except jvm.JvmError as e:
            raise StackError(f"broker: {e}") from None
        return spawn(argv, self.logs / "broker.log", dict(os.environ), cwd=self.home).pid

    def _check_broker(self) -> tuple[bool, str]:
        from mallard.adapters.kafka import BrokerUnavailable, broker_metadata

        if not port_in_use(self.s.kafka_port):  # not listening yet: spare librdkafka's connection errors
            return False, f"nothing listens on port {self.s.kafka_port} yet"
        if self.s.kafka_sasl_ssl:  # this process talks to this stack's broker: log in to it
            from mallard.adapters.kafka import use_client_config

            use_client_config(self.kafka_client_config())
        try:
            broker_metadata(self.s.bootstrap_servers, timeout=2)
            return True, "answering metadata requests"
        except BrokerUnavailable as e:
            return False, str(e)

    def _launch_connect(self) -> int:
        from mallard.stack import jvm

        try:
            self.artifacts.check_plugin()
            security = self.kafka_security(create=True)
            if security is not None:
                self.connect = dataclasses.replace(self.connect, client_security=security.java_client())
            self.connect.write_config()
            argv = self.connect.command(self.artifacts)
        except jvm.JvmError as e:
            raise StackError(f"connect: {e}") from None
        # The connector config's ${env:MALLARD_PG_*} placeholders are resolved by the worker
        # from this environment (EnvVarConfigProvider, as in docker-compose): Debezium's role.
        return spawn(argv, self.logs / "connect.log", self.connect_env(), cwd=self.home).pid

    def connect_env(self) -> dict[str, str]:
        return {**os.environ, **self.as_role("debezium").pg_env()}

    def _connect_answers(self) -> tuple[bool, Any]:
        from mallard.stack import jvm

        try:
            info = jvm.connect_info(self.s.connect_url, timeout=2)
            return True, {"version": info.get("version")}
        except (OSError, ValueError, jvm.JvmError) as e:
            return False, f"REST API not answering at {self.s.connect_url}: {e}"

    def _connector(self):
        from mallard.config.connector import load_connector_config_file

        return load_connector_config_file(self.connector_config_path())

    def _slot_state(self, slot: str) -> dict[str, Any] | None:
        from mallard.adapters import postgres

        conn = postgres.connect(**self.as_role("admin").pg_params(), timeout=2)
        try:
            return postgres.slot_state(conn, slot)
        finally:
            conn.close()

    def _check_connect(self) -> tuple[bool, Any]:
        """Healthy: the REST API answers, the connector and its task are RUNNING, and
        Debezium's replication slot is active."""
        from mallard.adapters import postgres
        from mallard.stack import jvm

        ok, detail = self._connect_answers()
        if not ok:
            return ok, detail
        config = self._connector()
        try:
            state = jvm.connector_status(self.s.connect_url, config.name)
            detail["connector"] = {"name": config.name, "state": state.failed or state.detail, "running": state.ready}
        except (OSError, ValueError) as e:
            state = jvm.ConnectorState(False, "", str(e))
            detail["connector"] = {"name": config.name, "state": f"not registered ({e})", "running": False}
        try:
            detail["slot"] = self._slot_state(config.slot_name)
        except (postgres.SourceError, StackError) as e:
            detail["slot"] = None
            detail["slot_error"] = str(e)
        return state.ready and bool(detail["slot"] and detail["slot"]["active"]), detail

    def _register_and_wait(self, config, streaming: Callable[[dict], bool], failure: str) -> None:
        """PUT the connector's config through Connect's REST API, then wait until its slot
        shows ``streaming`` (Debezium reads the WAL: from then on no change is missed)."""
        from mallard.config.connector import register

        try:
            register(self.s.connect_url, config, timeout=self.s.start_timeout_s)
        except RuntimeError as e:
            raise StackError(f"connect: {e}; see its log: {self.logs / 'connect.log'}") from None
        deadline = time.monotonic() + self.s.start_timeout_s
        while not streaming(self._slot_state(config.slot_name) or {}):
            if time.monotonic() > deadline:
                raise StackError(f"connect: connector {config.name} {failure} within {self.s.start_timeout_s:.0f}s; "
                                 f"see its log: {self.logs / 'connect.log'}")
            time.sleep(0.2)

    def register_connector(self, report: Callable[[str], None] = print) -> None:
        """Register the connector through Connect's REST API (the code path of ``mallard
        connector register``), then wait until Debezium streams from its slot."""
        config = self._connector()
        t0 = time.monotonic()
        self._register_and_wait(config, lambda slot: slot.get("active"),
                                f"RUNNING but slot {config.slot_name} not active")
        report(f"  {'debezium':<14} connector {config.name} RUNNING, slot {config.slot_name} active, "
               f"in {time.monotonic() - t0:.1f}s")

    # -- up / down / status -----------------------------------------------------

    def up(self, demo: bool = True, report: Callable[[str], None] = print, only: str | None = None) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.demo_stack = demo or self._recorded().get("demo") is True
        config = stack_replication_config(self.s.replication_config, "replication_config" in self.s.model_fields_set,
                                          self.demo_stack, self.s.connector_config.resolve() != DEFAULT_CONNECTOR_CONFIG.resolve())
        config = str(Path(config).resolve()) if config else ""  # stack.json serves commands from any folder
        if config != self.s.replication_config:
            self.s = self.s.model_copy(update={"replication_config": config})
        self.derive_connector_config()  # a bad replication config stops here, in one line
        components = [c for c in self.components if only is None or c.name == only]
        # Fail fast, before starting anything: a port taken by a process that is not ours.
        for c in components:
            if c.running_pid() is None and port_in_use(c.port):
                raise StackError(
                    f"{c.name}: port {c.port} on 127.0.0.1 is already in use by another process; "
                    f"stop it or choose another port with {c.port_hint}"
                )
        broker = self.components[1]
        if broker in components and broker.running_pid() is None and port_in_use(self.s.kafka_controller_port):
            raise StackError(f"broker: controller port {self.s.kafka_controller_port} on 127.0.0.1 is already in use by "
                             "another process; stop it or choose another port with MALLARD_KAFKA_CONTROLLER_PORT")
        self._write_state()
        started: list[Component] = []
        wait_for: str | None = None
        try:
            for c in components:
                if c.name == "snapshotter":
                    # Written once Debezium captures the config's tables: running services take
                    # it as `mallard config apply` gives it to them, without a restart.
                    changed = self._applied_digest() != self._config_digest()
                    self._write_applied_config()
                    if changed and c.running_pid() is not None and self._config_digest():
                        wait_for = self._config_digest()
                if c.running_pid() is not None:
                    report(f"  {c.name:<14} already running (pid {c.running_pid()})")
                    if c.name == "postgres":
                        self._prepare_postgres(False, report)  # roles and grants as this version wants them
                    if c.name == "connect":
                        if self._connect_holds_another_config():  # the task must stream again before a cut
                            self._reregister_connector(report)
                        else:
                            self.register_connector(report)  # PUT is idempotent
                    continue
                t0 = time.monotonic()
                started.append(c)  # before it is healthy: a failed start is stopped too
                self._start(c)
                if c.name == "postgres":
                    self._prepare_postgres(demo, report)
                report(f"  {c.name:<14} started (pid {c.running_pid()}) in {time.monotonic() - t0:.1f}s")
                if c.name == "connect":
                    self.register_connector(report)
            if wait_for:
                self._wait_for_services(wait_for, report, self.s.start_timeout_s)
        except BaseException:
            for c in reversed(started):
                pid = c.running_pid()
                if pid is not None:
                    c.stop_fn(pid, c.grace_s)
                c.pid_file.remove()
            raise

    def _start(self, c: Component) -> None:
        try:
            pid = c.launch()
        except StackError:
            raise
        except Exception as e:
            raise StackError(f"{c.name}: failed to start: {e}; see its log: {c.log}") from None
        c.pid_file.write(pid)
        deadline = time.monotonic() + self.s.start_timeout_s
        detail = ""
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap our child if it already died
            except ChildProcessError:
                pass
            if not is_alive(pid):
                raise StackError(f"{c.name}: exited during start-up; see its log: {c.log}\n{tail(c.log)}")
            ok, detail = (c.started or c.check)()
            if ok:
                return
            time.sleep(0.25)
        raise StackError(
            f"{c.name}: not healthy after {self.s.start_timeout_s:.0f}s ({detail}); see its log: {c.log}\n{tail(c.log)}"
        )

    def down(self, purge: bool = False, report: Callable[[str], None] = print) -> None:
        for c in reversed(self.components):
            if purge and c.name == "postgres" and c.running_pid() is not None:
                try:
                    self._drop_slot_and_publication(report)
                except Exception as e:  # the cluster is deleted below, and its slot with it
                    report(f"  could not drop the replication slot and publication ({e}); deleting the cluster")
            pid = c.running_pid()
            if pid is None:
                c.pid_file.remove()
                continue
            # Purging deletes the data: a clean shutdown saves nothing, and a component that
            # hangs on the way out (Connect with its broker gone) would hold ``down`` for a minute.
            grace = min(c.grace_s, PURGE_GRACE_S) if purge else c.grace_s
            t0 = time.monotonic()
            if not c.stop_fn(pid, grace):
                raise StackError(f"{c.name}: pid {pid} did not stop; see its log: {c.log}")
            c.pid_file.remove()
            report(f"  {c.name:<14} stopped (pid {pid}) in {time.monotonic() - t0:.1f}s")
        if purge:
            for path in (self.pg_dir, *(self.home / sub for sub in ("kafka", "connect", "debezium", "duckdb", "logs", "run",
                                                                     "stack.json", "secrets.json"))):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            report(f"  purged {self.home}")

    def _drop_slot_and_publication(self, report: Callable[[str], None]) -> None:
        from mallard.adapters import postgres
        from mallard.config.connector import load_connector_config_file

        config = load_connector_config_file(self.s.connector_config)
        conn = postgres.connect(**self.as_role("admin").pg_params())
        try:
            from mallard.core.keyless import inserts_publication, publication_names

            main = config.publication_name
            for what in postgres.drop_slot_and_publication(conn, config.slot_name, main, inserts_publication(main),
                                                            publication_names(main)):
                report(f"  dropped {what}")
        finally:
            conn.close()

    @staticmethod
    def versions() -> dict[str, str]:
        """Kafka's and Debezium's versions, as jvm/pom.xml pins them (what .jvm/ holds)."""
        from mallard.stack import jvm

        try:
            return jvm.pinned_versions()
        except jvm.JvmError:
            return {}

    def _recorded(self) -> dict[str, Any]:
        """What the last ``up`` recorded in stack.json ({} if nothing)."""
        try:
            return json.loads((self.home / "stack.json").read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self) -> None:
        state = self.s.model_dump(mode="json")
        state.pop("pg_password", None)
        state["demo"] = getattr(self, "demo_stack", False) or self._recorded().get("demo") is True
        (self.home / "stack.json").write_text(json.dumps(state, indent=2))

    def status(self, show_secrets: bool = False) -> dict[str, Any]:
        """Every component's state and the connection details; passwords masked in every
        DSN unless ``show_secrets``."""
        s = self.s
        components = {}
        for c in self.components:
            pid = c.running_pid()
            ok, detail = c.check() if pid is not None else (False, "not running")
            components[c.name] = {
                "state": "running" if pid and ok else ("unhealthy" if pid else "stopped"),
                "pid": pid,
                "port": c.port,
                "detail": detail,
                "log": str(c.log),
            }
        versions = self.versions()
        components["broker"].update(version=versions.get("kafka"), controller_port=s.kafka_controller_port,
                                    heap=s.broker_heap, log_dir=str(self.broker.log_dir))
        components["connect"].update(version=versions.get("kafka"), debezium_version=versions.get("debezium"),
                                     heap=s.connect_heap, url=s.connect_url)
        s = self.s
        roles: dict[str, Any] = {}
        for role, name in self.role_names().items():
            try:
                settings = self.as_role(role)
            except StackError:  # not set up yet
                settings = s.model_copy(update={"pg_user": name})
            roles[role] = {"user": name, "dsn": settings.pg_dsn(with_password=show_secrets)}
        return {
            "home": str(self.home),
            "components": components,
            "postgres": {
                "dsn": s.pg_dsn(with_password=show_secrets),
                "host": s.pg_host, "port": s.pg_port, "user": s.pg_user, "database": s.pg_database,
                "data_dir": str(self.pg_dir / "data"),
                "socket_dir": str(self.pg_dir / "socket"),
                "roles": roles,
            },
            "kafka": {"bootstrap_servers": s.bootstrap_servers},
            "duckdb": {"path": str(self.duckdb_path)},
            "kafka_connect": {"url": s.connect_url},
            "debezium": {"connector_config": str(self.connector_config_path())},
        }
