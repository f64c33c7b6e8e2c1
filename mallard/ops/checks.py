"""``mallard check``: test every connection the settings and the replication config name,
and the prerequisites people get wrong, one line per check with the fix for each failure.

The pure parts (results, their formatting, sizes, the WAL threshold, which fix an error
calls for) are plain functions; the checks themselves connect with short timeouts, so a
server that is down fails in seconds. Nothing here prints a password: Postgres is named
as ``user@host:port/database``.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
SYMBOLS = {OK: "✓", WARN: "!", FAIL: "✗", SKIP: "-"}
ASCII_SYMBOLS = {OK: "OK", WARN: "!!", FAIL: "XX", SKIP: "--"}
DEFAULT_MAX_RETAINED_WAL = 1024**3


@dataclass(frozen=True)
class Result:
    check: str
    status: str
    """ok, warn (does not fail the run), fail, or skip (not checked: something it needs failed)."""
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "detail": self.detail, "fix": self.fix}


# -- pure helpers ---------------------------------------------------------------------


def format_result(r: Result, width: int = 12, symbols: Mapping[str, str] = SYMBOLS) -> str:
    """``✓ name  detail``, and for a failure or a warning the fix on a line of its own."""
    line = f"{symbols[r.status]} {r.check:<{width}} {r.detail}"
    if r.fix and r.status in (FAIL, WARN):
        line += f"\n{' ' * (width + 3)}fix: {r.fix}"
    return line


def symbols_for(encoding: str | None) -> Mapping[str, str]:
    """✓ ✗ ! where the terminal can show them, else ASCII."""
    try:
        "".join(SYMBOLS.values()).encode(encoding or "ascii")
        return SYMBOLS
    except (UnicodeEncodeError, LookupError):
        return ASCII_SYMBOLS


def exit_code(results: list[Result]) -> int:
    """1 when any check failed; warnings and skipped checks do not fail the run."""
    return 1 if any(r.status == FAIL for r in results) else 0


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


def parse_size(text: str) -> int:
    """'1GiB', '512MB', '200 mib', '1073741824' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (e.g. 1GiB, 512MB, 1073741824)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def retained_wal(slot: str, retained: int | None, threshold: int, wal_status: str | None = None) -> Result:
    """The WAL a slot holds back, against the threshold: a forgotten slot fills the disk."""
    drop = f"SELECT pg_drop_replication_slot('{slot}')"
    if wal_status == "lost":
        return Result("slot WAL", FAIL, f"slot {slot} has lost WAL it still needed (wal_status lost): "
                      "changes are missing", f"drop it ({drop}), restart Debezium (it creates the slot again) and "
                      "re-snapshot every stream (mallard resnapshot --full ...)")
    if retained is None:
        return Result("slot WAL", SKIP, f"slot {slot} has not reserved WAL yet")
    detail = f"{slot} retains {human_bytes(retained)} (warning above {human_bytes(threshold)})"
    if retained > threshold or wal_status == "unreserved":
        return Result("slot WAL", WARN, detail + ("; Postgres is about to remove WAL it needs"
                                                  if wal_status == "unreserved" else ""),
                      f"Debezium is behind or gone (see the debezium line): start it, or drop a slot nobody will "
                      f"read again ({drop}) before the source's disk fills")
    return Result("slot WAL", OK, detail)


def postgres_fix(message: str) -> str:
    """The fix for a failed connection, from libpq's message."""
    text = message.lower()
    if "password authentication failed" in text or "no password supplied" in text or (
            "role" in text and "does not exist" in text):
        return ("check MALLARD_PG_USER and MALLARD_PG_PASSWORD (or source: in the replication config); the user "
                "must exist and pg_hba.conf must let it in from this host")
    if "no pg_hba.conf entry" in text:
        return "add a pg_hba.conf line for this host and user (then SELECT pg_reload_conf())"
    if "database" in text and "does not exist" in text:
        return "create the database, or set MALLARD_PG_DATABASE (source.database) to the right one"
    return ("start Postgres (the local stack: mallard stack up), or point MALLARD_PG_HOST / MALLARD_PG_PORT "
            "(source: in the replication config) at it")


@dataclass(frozen=True)
class RoleFacts:
    """A role's attributes, as pg_roles gives them."""
    name: str
    superuser: bool
    replication: bool


def _role_fix(facts: RoleFacts | None, create: list[str], attributes: str) -> list[str]:
    """The statements that make a role what it should be: created with its grants when
    missing, stripped of superuser when it has it, nothing when it is fine."""
    from mallard.core.sql import quote_ident

    if facts is None:
        return create
    if facts.superuser:
        return [f"ALTER ROLE {quote_ident(facts.name)} WITH NOSUPERUSER {attributes}".rstrip(), *create[1:]]
    return []


def privileges(user: RoleFacts, debezium: RoleFacts | None, snapshotter: RoleFacts | None, *,
               debezium_user: str, snapshotter_user: str, owner: str, database: str,
               schemas: list[str]) -> Result:
    """Whether Debezium may stream WAL, and whether anything connects as a superuser: a
    superuser is a warning, with the statements that give each part only what it needs.
    ``debezium`` / ``snapshotter``: their roles' facts, None when no such role exists
    (Debezium then presumably connects as ``user``)."""
    from mallard.core.sql import quote_ident
    from mallard.stack.roles import Roles, debezium_statements, snapshotter_statements

    streamer = debezium or user
    if not (streamer.replication or streamer.superuser):
        return Result("privileges", FAIL, f"{streamer.name} may not stream WAL (no REPLICATION attribute)",
                      f"as a superuser: ALTER ROLE {quote_ident(streamer.name)} WITH REPLICATION")
    supers = list(dict.fromkeys(r.name for r in (user, debezium, snapshotter) if r is not None and r.superuser))
    if supers:
        roles = Roles(owner=owner, debezium=debezium_user, snapshotter=snapshotter_user)
        statements = [*_role_fix(debezium, debezium_statements(roles, database, schemas), "REPLICATION"),
                      *_role_fix(snapshotter, snapshotter_statements(roles, database, schemas), "")]
        if user.superuser and user.name not in (debezium_user, snapshotter_user):
            statements.append(f"ALTER ROLE {quote_ident(user.name)} WITH NOSUPERUSER")
        one = len(supers) == 1
        return Result("privileges", WARN,
                      f"{', '.join(supers)} {'is a superuser' if one else 'are superusers'}: whatever connects as "
                      f"{'it' if one else 'them'} may write and run anything in Postgres (Debezium needs only "
                      "REPLICATION and SELECT, the snapshotter only SELECT)",
                      "as a superuser: " + "; ".join(statements)
                      + f"; then Debezium connects as {debezium_user} (database.user), the snapshotter as "
                      f"{snapshotter_user} (MALLARD_PG_USER)")
    named = [r.name for r in (user, debezium, snapshotter) if r is not None]
    return Result("privileges", OK, f"{streamer.name} has REPLICATION; no superuser among "
                  + ", ".join(dict.fromkeys(named)))


# -- what to check: from the same settings the other commands use ---------------------


@dataclass
class Targets:
    pg: Any
    """PostgresSettings: the source."""
    bootstrap_servers: str
    control_topic: str
    snapshot_topic: str
    dead_letter_topic: str
    duckdb_path: Path
    applier_url: str
    connect_url: str = "http://127.0.0.1:18084"
    """Kafka Connect's REST API: the local stack's worker unless MALLARD_CONNECT_URL names another."""
    max_retained_wal: int = DEFAULT_MAX_RETAINED_WAL
    config_path: str | None = None
    connector_config_path: str | None = None
    timeout: float = 3.0
    config: Any = None
    connector: Any = None
    streams: list[str] = field(default_factory=list)
    setup_errors: list[Result] = field(default_factory=list)
    log_dir: Path | None = None


def resolve_targets(stack: Any, env: Mapping[str, str] | None = None, *, config_path: str | None = None,
                    bootstrap_servers: str | None = None, connect_url: str | None = None,
                    applier_url: str | None = None, max_retained_wal: int = DEFAULT_MAX_RETAINED_WAL,
                    timeout: float = 3.0, pg: Any = None) -> Targets:
    """What ``check`` connects to. ``stack`` is the CLI's StackSettings (environment, then what
    ``stack up`` recorded); a replication config given with ``--config`` names the source and
    target (a MALLARD_PG_* / MALLARD_DUCKDB_PATH variable, where set, still wins)."""
    from mallard.config.connector import load_connector_config_file
    from mallard.core.connector import with_streams
    from mallard.config.replication import load_config
    from mallard.config.settings import KafkaSettings
    from mallard.stack.local import LocalStack

    env = os.environ if env is None else env
    kafka = KafkaSettings()
    path = config_path or stack.replication_config or None
    setup: list[Result] = []
    config = None
    if path:
        try:
            config = load_config(path)
        except ValueError as e:
            setup.append(Result("config", FAIL, str(e), "correct the file: the message names its line and key "
                                "(mallard config check --offline checks it alone)"))
    given_pg = pg
    pg = stack
    local = LocalStack(stack)
    duckdb_path = Path(env["MALLARD_DUCKDB_PATH"]) if env.get("MALLARD_DUCKDB_PATH") else local.duckdb_path
    if config is not None:
        # The config's source and target, below the environment (the settings' one source of them).
        from mallard.services.applier.config import ApplierSettings

        from mallard.config.deployment import config_source

        ranked = ApplierSettings(replication_config=path)
        if config_path:
            pg = config_source(stack, path)
        if not env.get("MALLARD_DUCKDB_PATH") and "duckdb_path" in ranked.model_fields_set \
                and (config_path or not (local.home / "stack.json").exists()):
            duckdb_path = Path(ranked.duckdb_path)

    if given_pg is not None:  # --pg-dsn / MALLARD_PG_DSN / a profile's: it wins
        pg = given_pg
    connector = None
    try:
        connector = load_connector_config_file(stack.connector_config)
        if config is not None:
            connector = with_streams(connector, list(config.streams))
    except (OSError, ValueError) as e:
        setup.append(Result("config", FAIL, str(e), "correct the connector config (MALLARD_CONNECTOR_CONFIG), "
                            "or point MALLARD_CONNECTOR_CONFIG at the one Debezium runs"))
    streams = list(config.streams) if config is not None else (connector.tables if connector else [])
    return Targets(
        pg=pg,
        bootstrap_servers=bootstrap_servers or env.get("MALLARD_KAFKA_BOOTSTRAP_SERVERS") or stack.bootstrap_servers,
        control_topic=kafka.control_topic, snapshot_topic=kafka.snapshot_topic,
        dead_letter_topic=kafka.dead_letter_topic,
        duckdb_path=duckdb_path.resolve(),
        applier_url=(applier_url or env.get("MALLARD_APPLIER_URL")
                     or f"http://127.0.0.1:{stack.applier_health_port}").rstrip("/"),
        connect_url=(connect_url or env.get("MALLARD_CONNECT_URL") or "").rstrip("/") or stack.connect_url,
        max_retained_wal=max_retained_wal, timeout=timeout,
        config_path=path, connector_config_path=str(stack.connector_config),
        config=config, connector=connector, streams=streams, setup_errors=setup,
        log_dir=local.logs,
    )


# -- the checks -------------------------------------------------------------------------


def lock_holder(path: Path) -> tuple[int, bool] | None:
    """(pid, exclusive) of the process holding a lock on a DuckDB file, or None. Asks the
    kernel (F_GETLK) without taking a lock, so a starting applier never finds it taken."""
    import fcntl
    import struct

    fd = os.open(path, os.O_RDONLY)
    try:
        layout = "hhqqi4x"  # struct flock on Linux (64-bit): type, whence, start, len, pid
        out = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(layout, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        kind, _, _, _, pid = struct.unpack(layout, out)
    finally:
        os.close(fd)
    return None if kind == fcntl.F_UNLCK else (pid, kind == fcntl.F_WRLCK)


def _shown(path: str) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _applier_holding(pid: int) -> int | None:
    """The applier's pid when ``pid`` is it or one of its descendants (its DuckDB writer
    process, forked by a fork server the applier started), else None."""
    for _ in range(4):
        if "mallard.services.applier" in _cmdline(pid):
            return pid
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        if pid <= 1:
            return None
    return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _get_json(url: str, timeout: float) -> tuple[int | None, Any]:
    """(HTTP status, JSON body) or (None, the error) when nothing answers."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}
    except (OSError, ValueError) as e:
        return None, getattr(e, "reason", e)


class Checker:
    """Runs the checks in order; later ones reuse what earlier ones found (the connection,
    the slot) and are skipped when what they need failed."""

    def __init__(self, t: Targets):
        self.t = t
        self.conn: Any = None
        self.slot: dict[str, Any] | None = None
        self.metadata: Any = None
        self.wal_level_ok = True
        """False once wal_level failed: Debezium cannot start until it is fixed, so say that first."""

    def run(self) -> Iterator[Result]:
        try:
            yield from self.t.setup_errors
            if not self.t.setup_errors:
                yield self.check_config()
            yield from self.check_postgres()
            yield from self.check_kafka()
            yield self.check_duckdb()
            yield self.check_debezium()
        finally:
            if self.conn is not None:
                self.conn.close()

    # -- files ----------------------------------------------------------------------

    def check_config(self) -> Result:
        t = self.t
        c = t.connector
        where = (f"{_shown(t.config_path)}: {len(t.config.streams)} stream(s), {len(t.config.schedules)} schedule(s); "
                 if t.config is not None else "no replication config (streams from the connector config); ")
        return Result("config", OK, where + f"connector {c.name} (slot {c.slot_name}, publication {c.publication_name})")

    # -- Postgres -------------------------------------------------------------------

    def _pg_name(self) -> str:
        pg = self.t.pg
        return f"{pg.pg_user}@{pg.pg_host}:{pg.pg_port}/{pg.pg_database}"

    def _rows(self, query: str, *params: Any) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def check_postgres(self) -> Iterator[Result]:
        from mallard.adapters import postgres

        checks = {"wal_level": self._wal_level, "slots": self._capacity, "privileges": self._privileges,
                  "tables": self._tables, "publication": self._publication, "slot": self._slot,
                  "slot WAL": self._slot_wal}
        try:
            self.conn = postgres.connect(**self.t.pg.pg_params(), timeout=max(2, round(self.t.timeout)))
            with self.conn.cursor() as cur:
                cur.execute("SET statement_timeout = %s", (int(self.t.timeout * 1000),))
            version = postgres.scalar(self.conn, "SHOW server_version")
        except Exception as e:  # noqa: BLE001 - reported as the check's result
            message = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            if isinstance(e, postgres.SourceError):  # libpq's message never holds the password
                message = message.split(": ", 1)[-1]  # drop "cannot connect to Postgres <dsn>"
            yield Result("postgres", FAIL, f"{self._pg_name()}: {message}", postgres_fix(message))
            for name in checks:
                yield Result(name, SKIP, "not checked: Postgres does not answer")
            return
        yield Result("postgres", OK, f"{self._pg_name()}: PostgreSQL {version.split()[0]}")
        for name, check in checks.items():
            if self.t.connector is None and name in ("publication", "slot", "slot WAL"):
                yield Result(name, SKIP, "not checked: no connector config")
                continue
            try:
                yield check()
            except Exception as e:  # noqa: BLE001 - one check failing must not hide the others
                yield Result(name, FAIL, f"could not check: {' '.join(str(e).split())}",
                             f"{self.t.pg.pg_user} must be able to read pg_settings, pg_roles and pg_replication_slots")

    def _wal_level(self) -> Result:
        from mallard.adapters import postgres

        level = postgres.scalar(self.conn, "SHOW wal_level")
        self.wal_level_ok = level == "logical"
        if level != "logical":
            return Result("wal_level", FAIL, f"wal_level is '{level}': CDC needs 'logical'",
                          "set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) "
                          "and restart Postgres")
        return Result("wal_level", OK, "logical")

    def _capacity(self) -> Result:
        rows = dict(self._rows("SELECT name, setting FROM pg_settings WHERE name IN "
                               "('max_replication_slots', 'max_wal_senders')"))
        slots, senders = int(rows.get("max_replication_slots", 0)), int(rows.get("max_wal_senders", 0))
        used = self._rows("SELECT slot_name FROM pg_replication_slots")
        ours = self.t.connector.slot_name if self.t.connector else None
        detail = f"max_replication_slots {slots} ({len(used)} used), max_wal_senders {senders}"
        fix = ("raise max_replication_slots and max_wal_senders in postgresql.conf (e.g. 10 each) and restart "
               "Postgres")
        if slots == 0 or senders == 0:
            return Result("slots", FAIL, detail, fix)
        if len(used) >= slots and ours not in {r[0] for r in used}:
            return Result("slots", FAIL, detail + f": no free slot for {ours}", fix + ", or drop an unused slot")
        return Result("slots", OK, detail)

    def _privileges(self) -> Result:
        pg = self.t.pg
        debezium_user = getattr(pg, "pg_debezium_user", "mallard_debezium")
        snapshotter_user = getattr(pg, "pg_snapshotter_user", "mallard_snapshotter")
        facts = {name: RoleFacts(name, sup, rep) for name, sup, rep in self._rows(
            "SELECT rolname, rolsuper, rolreplication FROM pg_roles WHERE rolname IN (current_user, %s, %s)",
            debezium_user, snapshotter_user)}
        user = facts[self._rows("SELECT current_user")[0][0]]
        schemas = sorted({_schema_and_table(s)[0] for s in self.t.streams}) or ["public"]
        owners = self._rows("SELECT tableowner FROM pg_tables WHERE schemaname = ANY(%s) GROUP BY tableowner "
                            "ORDER BY count(*) DESC LIMIT 1", schemas)
        return privileges(user, facts.get(debezium_user), facts.get(snapshotter_user), debezium_user=debezium_user,
                          snapshotter_user=snapshotter_user, owner=owners[0][0] if owners else user.name,
                          database=pg.pg_database, schemas=schemas)

    def _tables(self) -> Result:
        streams = self.t.streams
        if not streams:
            return Result("tables", SKIP, "no stream list: the connector captures every table")
        missing, unreadable = [], []
        for stream in streams:
            schema, table = _schema_and_table(stream)
            row = self._rows("SELECT has_table_privilege(c.oid, 'SELECT') FROM pg_class c JOIN pg_namespace n "
                             "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s", schema, table)
            if not row:
                missing.append(stream)
            elif not row[0][0]:
                unreadable.append(stream)
        where = (f"streams: in {_shown(self.t.config_path)}" if self.t.config_path else
                 f"table.include.list in {_shown(self.t.connector_config_path or 'the connector config')}")
        if missing:
            return Result("tables", FAIL, f"not in Postgres: {', '.join(missing)}",
                          f"create them, or remove them from {where}")
        if unreadable:
            return Result("tables", FAIL, f"{self.t.pg.pg_user} cannot SELECT from {', '.join(unreadable)}",
                          f"GRANT SELECT ON {', '.join(unreadable)} TO \"{self.t.pg.pg_user}\"")
        return Result("tables", OK, f"{len(streams)} stream table(s) exist and are readable")

    def _publication(self) -> Result:
        c = self.t.connector
        name = c.publication_name
        row = self._rows("SELECT puballtables FROM pg_publication WHERE pubname = %s", name)
        if not row:
            return Result("publication", FAIL, f"{name} does not exist",
                          f"{self._start_debezium()}: it creates the publication; or CREATE PUBLICATION {name} "
                          "FOR TABLE <the streams' tables>")
        if row[0][0]:
            from mallard.adapters import postgres
            from mallard.core.keyless import INSERTS_ONLY, keyless_modes

            broken = [m.stream for m in keyless_modes(postgres.table_identities(self.conn, list(self.t.streams)))
                      if m.mode == INSERTS_ONLY]
            if broken:  # FOR ALL TABLES publishes their updates and deletes: Postgres refuses them
                return Result("publication", WARN, f"{name} (all tables) publishes updates and deletes of "
                              f"{', '.join(broken)}, which have no primary key nor replica identity: Postgres "
                              "refuses their UPDATE and DELETE",
                              "; ".join(f"ALTER TABLE {t} REPLICA IDENTITY FULL" for t in broken))
            return Result("publication", OK, f"{name} (all tables)")
        from mallard.core.keyless import inserts_publication

        names = [name, c.inserts_publication or inserts_publication(name)]  # the local stack keeps the second
        if c.publication_marker and not self._rows("SELECT 1 FROM pg_publication WHERE pubname = %s",
                                                   c.publication_marker):
            return Result("publication", FAIL, f"{c.publication_marker} (the list Debezium streams from) does not exist",
                          "the local stack: mallard stack up (it creates it)")
        from mallard.core.names import stream_name

        covered = {stream_name(s, t) for s, t in self._rows(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = ANY(%s)", names)}
        uncovered = [s for s in self.t.streams if s not in covered]
        if uncovered:
            return Result("publication", WARN, f"{name} lacks {', '.join(uncovered)}: their changes are not captured",
                          f"the local stack: mallard stack up (it keeps the publication in step); elsewhere, as "
                          f"the tables' owner: ALTER PUBLICATION {name} ADD TABLE {', '.join(uncovered)}")
        return Result("publication", OK, f"{name} ({len(covered)} table(s)" +
                      (", every stream's" if self.t.streams else "") + ")" + self._keyless())

    def _keyless(self) -> str:
        """Tables without a primary key: how each is published, and what FULL would add."""
        from mallard.adapters import postgres
        from mallard.core.keyless import keyless_modes

        config = self.t.config
        full = [n for n, st in config.streams.items() if st.replica_identity == "full"] if config is not None else []
        modes = keyless_modes(postgres.table_identities(self.conn, list(self.t.streams)), full)
        return "".join(f"; {m.describe(self.t.connector.publication_name)}" for m in modes)

    def _slot(self) -> Result:
        c = self.t.connector
        rows = self._rows(
            """SELECT plugin, database, active, active_pid, wal_status,
                      pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
               FROM pg_replication_slots WHERE slot_name = %s""", c.slot_name)
        if not rows:
            return Result("slot", FAIL, f"replication slot {c.slot_name} does not exist",
                          f"{self._start_debezium()}: it creates the slot at start (the snapshotter needs it before "
                          "any cut)")
        plugin, database, active, pid, wal_status, retained = rows[0]
        self.slot = {"active": active, "pid": pid, "wal_status": wal_status, "retained": retained}
        if plugin != "pgoutput" or database != self.t.pg.pg_database:
            return Result("slot", FAIL, f"{c.slot_name} is a {plugin} slot of database {database}: Debezium needs "
                          f"pgoutput on {self.t.pg.pg_database}",
                          f"drop it (SELECT pg_drop_replication_slot('{c.slot_name}')) and restart Debezium, or set "
                          "slot.name in the connector config to another name")
        if not active:
            return Result("slot", WARN, f"{c.slot_name} (pgoutput) exists but nothing streams from it",
                          f"{self._start_debezium()}; while nobody reads the slot, Postgres keeps its WAL")
        return Result("slot", OK, f"{c.slot_name} (pgoutput): active (walsender pid {pid})")

    def _slot_wal(self) -> Result:
        if self.slot is None:
            return Result("slot WAL", SKIP, "no slot")
        return retained_wal(self.t.connector.slot_name, self.slot["retained"], self.t.max_retained_wal,
                            self.slot["wal_status"])

    # -- Kafka ----------------------------------------------------------------------

    def check_kafka(self) -> Iterator[Result]:
        from confluent_kafka import KafkaException

        from mallard.adapters.kafka import quiet_metadata

        t = self.t
        try:
            self.metadata = quiet_metadata(t.bootstrap_servers, t.timeout)
        except KafkaException:
            yield Result("kafka", FAIL, f"no broker answers at {t.bootstrap_servers} (within {t.timeout:.0f}s)",
                         "start the broker (the local stack: mallard stack up), or set MALLARD_KAFKA_BOOTSTRAP_SERVERS "
                         "(--bootstrap-servers) to a broker that is up")
            yield Result("topics", SKIP, "not checked: Kafka does not answer")
            return
        topics = self.metadata.topics
        yield Result("kafka", OK, f"{t.bootstrap_servers}: {len(self.metadata.brokers)} broker(s), "
                     f"{len([n for n in topics if not n.startswith('__')])} topic(s)")
        yield self._topics(topics)

    def _topics(self, topics: Mapping[str, Any]) -> Result:
        t = self.t
        tx = t.connector.transaction_topic if t.connector else None
        required = [t.control_topic, t.snapshot_topic, t.dead_letter_topic]
        missing = [n for n in required if n not in topics]
        single = [n for n in (t.control_topic, tx) if n and n in topics and len(topics[n].partitions) != 1]
        if missing:
            return Result("topics", FAIL, f"missing: {', '.join(missing)}",
                          "start the snapshotter and the applier (they create them), or create them with 1 partition")
        if single:
            return Result("topics", FAIL, f"{', '.join(single)} must have 1 partition (found "
                          f"{', '.join(str(len(topics[n].partitions)) for n in single)}): its order is the protocol",
                          "delete and create it again with 1 partition (a CDC restart then re-publishes from the slot)")
        present = required + ([tx] if tx in topics else [])
        cdc = [s for s in t.streams if t.connector and t.connector.cdc_topic(s) in topics]
        # Debezium creates a table's topic (and the transaction topic) with its first change: not a fault.
        detail = ", ".join(present) + (f"; {tx} appears with the first change" if tx and tx not in topics else "")
        if t.streams:
            detail += ("; CDC topics of every stream" if len(cdc) == len(t.streams) else
                       f"; CDC topics of {len(cdc)} of {len(t.streams)} stream(s) (the others appear with their "
                       "first change)")
        return Result("topics", OK, detail)

    # -- DuckDB ---------------------------------------------------------------------

    def check_duckdb(self) -> Result:
        t = self.t
        path = t.duckdb_path
        holder = None
        if path.is_file():
            try:
                holder = lock_holder(path)
            except OSError as e:
                return Result("duckdb", FAIL, f"{path}: cannot open: {e.strerror}",
                              "give this user read and write access to the file and its folder")
        if holder is not None:
            pid, exclusive = holder
            cmd = _cmdline(pid)
            applier = _applier_holding(pid)
            if applier is not None:
                pid = applier
                status, body = _get_json(f"{t.applier_url}/healthz", t.timeout)
                if status == 200:
                    return Result("duckdb", OK, f"{path}: held by the applier (pid {pid}), healthy")
                return Result("duckdb", WARN, f"{path}: held by the applier (pid {pid}), which is not healthy at "
                              f"{t.applier_url}/healthz", self._see_log("applier"))
            return Result("duckdb", FAIL, f"{path}: locked by another process (pid {pid}"
                          + (f": {cmd[:80]}" if cmd else "") + ")" + ("" if exclusive else ", read-only")
                          + ": the applier cannot write it",
                          "stop that process (DuckDB lets one process write and none read meanwhile); read the "
                          "replica with mallard query while the applier runs")
        status, body = _get_json(f"{t.applier_url}/healthz", t.timeout)
        if isinstance(body, dict) and body.get("service") == "applier":
            where = body.get("duckdb_path", "?")
            if status == 200:  # an applier elsewhere (a container): its endpoint answers for the file
                return Result("duckdb", OK, f"{where}: written by the applier at {t.applier_url} (healthy)")
            return Result("duckdb", FAIL, f"{where}: the applier at {t.applier_url} is not healthy",
                          self._see_log("applier"))
        if path.exists():
            if not path.is_file():
                return Result("duckdb", FAIL, f"{path} is not a file", "point MALLARD_DUCKDB_PATH (target.path) "
                              "at a DuckDB file")
            with open(path, "rb") as f:
                magic = f.read(12)[8:12]
            if magic and magic != b"DUCK":
                return Result("duckdb", FAIL, f"{path} is not a DuckDB file",
                              "point MALLARD_DUCKDB_PATH (target.path) at the replica, or move this file away")
            if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
                return Result("duckdb", FAIL, f"{path}: not writable by this user",
                              "give the applier's user write access to the file and its folder (DuckDB writes a "
                              ".wal beside it)")
            return Result("duckdb", OK, f"{path}: writable (no applier runs)")
        folder = next((p for p in path.parents if p.exists()), None)
        if folder is None or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            return Result("duckdb", FAIL, f"{path}: cannot be created ({folder} is not writable)",
                          "give the applier's user write access there, or set MALLARD_DUCKDB_PATH (target.path)")
        return Result("duckdb", OK, f"{path}: not created yet; {folder} is writable (the applier creates it)")

    def _start_debezium(self) -> str:
        return ("fix wal_level first (above), then start Debezium" if not self.wal_level_ok else "start Debezium") + \
            " (the local stack: mallard stack up; docker-compose: the Kafka Connect connector)"

    def _see_log(self, service: str) -> str:
        log = self.t.log_dir / f"{service}.log" if self.t.log_dir else None
        return f"see its log ({log})" if log and log.exists() else "see its log"

    # -- Debezium -------------------------------------------------------------------

    def check_debezium(self) -> Result:
        t = self.t
        if t.connector is None:
            return Result("debezium", SKIP, "no connector config")
        return self._connect(t.connector.name)

    def _connect(self, name: str) -> Result:
        t = self.t
        url = f"{t.connect_url}/connectors/{name}/status"
        status, body = _get_json(url, t.timeout)
        if status is None:
            return Result("debezium", FAIL, f"Kafka Connect does not answer at {t.connect_url} ({body})",
                          ("fix wal_level first (above), then start" if not self.wal_level_ok else "start")
                          + " Kafka Connect (the local stack: mallard stack up; docker-compose: docker compose up -d "
                          "connect), or set MALLARD_CONNECT_URL (--connect-url) to its REST address")
        if status == 404:
            return Result("debezium", FAIL, f"connector {name} is not registered at {t.connect_url}",
                          f"mallard connector register --connect-url {t.connect_url} --replication-config "
                          f"{t.config_path or 'FILE'}")
        if status != 200 or not isinstance(body, dict):
            return Result("debezium", FAIL, f"Kafka Connect answered {status} for {url}", "see Kafka Connect's log")
        state = (body.get("connector") or {}).get("state", "?")
        tasks = body.get("tasks") or []
        failed = [task for task in tasks if task.get("state") != "RUNNING"]
        if state != "RUNNING" or not tasks or failed:
            trace = next((task.get("trace", "") for task in failed if task.get("trace")), "")
            states = ", ".join(f"task {task.get('id')} {task.get('state')}" for task in tasks) or "no task"
            return Result("debezium", FAIL, f"connector {name} at {t.connect_url}: {state}, {states}"
                          + (f": {trace.splitlines()[0][:160]}" if trace else ""),
                          f"fix the cause in Kafka Connect's log, then POST {t.connect_url}/connectors/{name}/restart"
                          "?includeTasks=true&onlyFailed=true")
        if self.slot is not None and not self.slot["active"]:
            return Result("debezium", WARN, f"connector {name} at {t.connect_url}: RUNNING, but slot "
                          f"{t.connector.slot_name} is not active", "wait a few seconds (it is starting), then see "
                          "Kafka Connect's log")
        return Result("debezium", OK, f"connector {name} at {t.connect_url}: RUNNING ({len(tasks)} task(s))")


def run_checks(targets: Targets) -> Iterator[Result]:
    return Checker(targets).run()


def _schema_and_table(stream: str) -> tuple[str, str]:
    """A stream's table (``public."Order Items"`` -> public, Order Items); an entry of
    table.include.list that is a regex, split at its first dot (it names no one table)."""
    from mallard.core import names

    if names.is_stream(stream):
        return names.parse_stream(stream)
    schema, _, table = stream.partition(".")
    return schema, table
