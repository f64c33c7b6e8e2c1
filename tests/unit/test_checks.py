"""`mallard check`'s pure parts (formatting, sizes, the WAL threshold, fixes), its DuckDB lock
check against real lock holders, and its Kafka Connect check against a fake Connect REST API."""
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pytest

from mallard.ops import checks
from mallard.ops.checks import FAIL, OK, SKIP, WARN, Checker, Result, Targets
from mallard.core.connector import parse_connector_config
from mallard.config.settings import DEFAULT_CONNECTOR_CONFIG, PostgresSettings
from mallard.stack.local import StackSettings
from mallard.stack.processes import free_ports


def test_a_passing_check_is_one_line_and_a_failure_gives_its_fix_on_the_next():
    assert checks.format_result(Result("wal_level", OK, "logical")) == "✓ wal_level    logical"
    failed = checks.format_result(Result("wal_level", FAIL, "wal_level is 'replica'", "set wal_level = logical"))
    first, fix = failed.split("\n")
    assert first == "✗ wal_level    wal_level is 'replica'"
    assert fix == " " * 15 + "fix: set wal_level = logical"  # under the detail column
    assert checks.format_result(Result("slot WAL", WARN, "big", "drop it")).startswith("! slot WAL     big\n")
    assert checks.format_result(Result("topics", SKIP, "not checked", "ignored")) == "- topics       not checked"
    assert checks.format_result(Result("kafka", FAIL, "down", "start it"), symbols=checks.ASCII_SYMBOLS
                                ).startswith("XX kafka        down")


def test_symbols_fall_back_to_ascii_where_the_terminal_cannot_show_them():
    assert checks.symbols_for("utf-8") is checks.SYMBOLS
    assert checks.symbols_for("ascii") is checks.ASCII_SYMBOLS
    assert checks.symbols_for(None) is checks.ASCII_SYMBOLS
    assert checks.symbols_for("no-such-codec") is checks.ASCII_SYMBOLS


def test_only_a_failure_fails_the_run():
    assert checks.exit_code([]) == 0
    assert checks.exit_code([Result("a", OK, ""), Result("b", WARN, ""), Result("c", SKIP, "")]) == 0
    assert checks.exit_code([Result("a", OK, ""), Result("b", FAIL, "")]) == 1


@pytest.mark.parametrize("text,expected", [
    ("1GiB", 1024**3), ("1 gib", 1024**3), ("512MB", 512 * 1000**2), ("200MiB", 200 * 1024**2),
    ("1073741824", 1073741824), ("1.5GiB", int(1.5 * 1024**3)), ("64k", 64_000), ("0", 0),
])
def test_sizes(text, expected):
    assert checks.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "1 parsec", "-1GiB", "1e9"])
def test_a_size_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError, match="not a size"):
        checks.parse_size(text)


def test_human_bytes():
    assert checks.human_bytes(936) == "936 B"
    assert checks.human_bytes(1536) == "1.5 KiB"
    assert checks.human_bytes(3 * 1024**3) == "3.0 GiB"
    assert checks.human_bytes(5 * 1024**5) == "5120.0 TiB"


def test_retained_wal_warns_over_the_threshold_and_says_how_to_drop_a_forgotten_slot():
    threshold = 1024**3
    assert checks.retained_wal("s", 0, threshold).status == OK
    assert checks.retained_wal("s", threshold, threshold).status == OK  # at the threshold: not yet
    over = checks.retained_wal("s", threshold + 1, threshold)
    assert over.status == WARN and "1.0 GiB" in over.detail
    assert "pg_drop_replication_slot('s')" in over.fix
    assert checks.retained_wal("s", 10, threshold, "unreserved").status == WARN
    lost = checks.retained_wal("s", 10, threshold, "lost")
    assert lost.status == FAIL and "resnapshot" in lost.fix
    assert checks.retained_wal("s", None, threshold).status == SKIP
    assert checks.exit_code([over]) == 0  # a warning never fails the run


@pytest.mark.parametrize("message,fix", [
    ('connection to server at "127.0.0.1", port 1 failed: Connection refused', "start Postgres"),
    ('connection to server at "db", port 5432 failed: timeout expired', "MALLARD_PG_HOST"),
    ('FATAL:  password authentication failed for user "mallard"', "MALLARD_PG_PASSWORD"),
    ('FATAL:  role "nobody" does not exist', "MALLARD_PG_USER"),
    ('FATAL:  database "shop" does not exist', "MALLARD_PG_DATABASE"),
    ('FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "mallard"', "pg_hba.conf"),
])
def test_a_failed_connection_gets_the_fix_its_message_calls_for(message, fix):
    assert fix in checks.postgres_fix(message)


# -- what check connects to ------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in [k for k in os.environ if k.startswith("MALLARD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MALLARD_HOME", str(tmp_path / "home"))
    return monkeypatch


def test_a_config_given_with_config_names_the_source_and_the_target(tmp_path, clean_env):
    config = tmp_path / "replication.yaml"
    config.write_text("source:\n  host: db.example\n  port: 6543\n  user: ${APP_USER:-app}\n  password: ${APP_PW}\n"
                      "  database: sales\ntarget:\n  path: ${WAREHOUSE:-/data/warehouse.duckdb}\n"
                      "streams:\n  public.orders:\n")
    clean_env.setenv("APP_PW", "s3cret")
    clean_env.setenv("MALLARD_PG_HOST", "pg.internal")  # a MALLARD_PG_* variable still wins
    t = checks.resolve_targets(StackSettings(), config_path=str(config))
    assert (t.pg.pg_host, t.pg.pg_port, t.pg.pg_user, t.pg.pg_database) == ("pg.internal", 6543, "app", "sales")
    assert t.pg.pg_password.get_secret_value() == "s3cret" and "s3cret" not in repr(t)
    assert t.duckdb_path == Path("/data/warehouse.duckdb")
    assert t.streams == ["public.orders"] and t.connector.tables == ["public.orders"]  # table.include.list derived
    assert t.connect_url == "http://127.0.0.1:18084" and not t.setup_errors  # the local stack's worker


def test_the_local_stack_recorded_in_the_home_names_its_duckdb_file(tmp_path, clean_env):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "stack.json").write_text("{}")
    clean_env.setenv("MALLARD_CONNECT_URL", "http://connect:8083/")
    t = checks.resolve_targets(StackSettings())  # the demo config, as `stack up` runs it
    assert t.duckdb_path == (tmp_path / "home" / "duckdb" / "mallard.duckdb").resolve()
    assert t.connect_url == "http://connect:8083" and t.streams == ["public.customers", "public.products",
                                                                      "public.orders"]


def test_an_unreadable_config_is_a_failed_check_not_a_crash(tmp_path, clean_env):
    config = tmp_path / "replication.yaml"
    config.write_text("streams:\n  public.orders:\n    mode: fast\n")
    t = checks.resolve_targets(StackSettings(), config_path=str(config))
    assert [r.check for r in t.setup_errors] == ["config"] and t.setup_errors[0].status == FAIL
    assert "replication.yaml:3" in t.setup_errors[0].detail and "unknown mode 'fast'" in t.setup_errors[0].detail


# -- the DuckDB file: who holds it --------------------------------------------------------


def _targets(tmp_path: Path, **overrides) -> Targets:
    applier, connect = free_ports(2)  # nothing answers there
    fields = {"pg": PostgresSettings(), "bootstrap_servers": "127.0.0.1:1", "control_topic": "mallard.control",
              "snapshot_topic": "mallard.snapshots", "dead_letter_topic": "mallard.dead-letter",
              "duckdb_path": tmp_path / "replica.duckdb", "applier_url": f"http://127.0.0.1:{applier}",
              "connect_url": f"http://127.0.0.1:{connect}", "timeout": 2.0,
              "connector": parse_connector_config(DEFAULT_CONNECTOR_CONFIG.read_text())}
    return Targets(**{**fields, **overrides})


@contextmanager
def _hold(path: Path, *argv: str) -> Iterator[subprocess.Popen]:
    """A process holding DuckDB's write lock on ``path`` until the block ends; ``argv``
    lands in its command line."""
    code = f"import duckdb, sys; c = duckdb.connect({str(path)!r}); print('ok', flush=True); sys.stdin.read()"
    holder = subprocess.Popen([sys.executable, "-c", code, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_duckdb_not_created_yet_in_a_writable_folder_is_fine(tmp_path):
    r = Checker(_targets(tmp_path, duckdb_path=tmp_path / "new" / "replica.duckdb")).check_duckdb()
    assert r.status == OK and "not created yet" in r.detail


def test_duckdb_file_nobody_holds_is_checked_for_writing(tmp_path):
    duckdb.connect(str(tmp_path / "replica.duckdb")).close()
    r = Checker(_targets(tmp_path)).check_duckdb()
    assert r.status == OK and "writable (no applier runs)" in r.detail


def test_a_file_that_is_not_duckdb_fails(tmp_path):
    (tmp_path / "replica.duckdb").write_text("name,value\n" * 10)
    r = Checker(_targets(tmp_path)).check_duckdb()
    assert r.status == FAIL and "not a DuckDB file" in r.detail


def test_duckdb_locked_by_another_process_fails_naming_it(tmp_path):
    with _hold(tmp_path / "replica.duckdb") as holder:
        r = Checker(_targets(tmp_path)).check_duckdb()
    assert r.status == FAIL and f"locked by another process (pid {holder.pid}" in r.detail
    assert "mallard query" in r.fix


def test_duckdb_held_by_the_applier_is_not_a_failure(tmp_path):
    with _hold(tmp_path / "replica.duckdb", "mallard.services.applier") as holder:  # what `python -m mallard.services.applier` shows
        r = Checker(_targets(tmp_path)).check_duckdb()
    # Its lock is the applier's own; its health endpoint does not answer here: a warning, not a failure.
    assert r.status == WARN and f"held by the applier (pid {holder.pid})" in r.detail


def test_checking_takes_no_lock_so_a_starting_applier_never_finds_the_file_taken(tmp_path):
    path = tmp_path / "replica.duckdb"
    duckdb.connect(str(path)).close()
    assert checks.lock_holder(path) is None
    with _hold(path) as holder:
        assert checks.lock_holder(path) == (holder.pid, True)


# -- Kafka Connect (docker-compose) -----------------------------------------------------


class _FakeConnect:
    """GET /connectors/<name>/status answers what the test sets."""

    def __init__(self):
        self.answer: tuple[int, dict] = (404, {"error_code": 404, "message": "No status found"})
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                code, body = outer.answer
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def connect():
    fake = _FakeConnect()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def test_connect_running_connector(tmp_path, connect):
    connect.answer = (200, {"name": "mallard-postgres", "connector": {"state": "RUNNING"},
                            "tasks": [{"id": 0, "state": "RUNNING"}]})
    r = Checker(_targets(tmp_path, connect_url=connect.url)).check_debezium()
    assert r.status == OK and "RUNNING (1 task(s))" in r.detail


def test_connect_connector_not_registered(tmp_path, connect):
    r = Checker(_targets(tmp_path, connect_url=connect.url, config_path="demo/replication.yaml")).check_debezium()
    assert r.status == FAIL and "not registered" in r.detail
    assert r.fix == f"mallard connector register --connect-url {connect.url} --replication-config demo/replication.yaml"


def test_connect_failed_task_shows_the_first_line_of_its_trace(tmp_path, connect):
    connect.answer = (200, {"name": "mallard-postgres", "connector": {"state": "RUNNING"},
                            "tasks": [{"id": 0, "state": "FAILED", "trace": "org.postgresql.util.PSQLException: "
                                       "ERROR: logical decoding requires wal_level >= logical\n\tat org..."}]})
    r = Checker(_targets(tmp_path, connect_url=connect.url)).check_debezium()
    assert r.status == FAIL and "task 0 FAILED" in r.detail and "wal_level >= logical" in r.detail
    assert "\tat" not in r.detail and "/restart?includeTasks=true" in r.fix


def test_connect_not_answering(tmp_path):
    port, = free_ports(1)
    r = Checker(_targets(tmp_path, connect_url=f"http://127.0.0.1:{port}")).check_debezium()
    assert r.status == FAIL and "does not answer" in r.detail and "MALLARD_CONNECT_URL" in r.fix


def test_without_connect_url_the_local_stacks_worker_is_checked(tmp_path, monkeypatch):
    monkeypatch.delenv("MALLARD_CONNECT_URL", raising=False)
    t = checks.resolve_targets(StackSettings(connect_port=18999), env={})
    assert t.connect_url == "http://127.0.0.1:18999"
    r = Checker(_targets(tmp_path)).check_debezium()
    assert r.status == FAIL and "Kafka Connect does not answer" in r.detail and "mallard stack up" in r.fix


# -- privileges: a superuser is a warning, with the statements to use instead ----------------

RF = checks.RoleFacts
ROLE_NAMES = dict(debezium_user="mallard_debezium", snapshotter_user="mallard_snapshotter", owner="app",
                  database="shop", schemas=["public"])


def test_least_privilege_roles_pass():
    r = checks.privileges(RF("app", False, False), RF("mallard_debezium", False, True),
                          RF("mallard_snapshotter", False, False), **ROLE_NAMES)
    assert r.status == OK
    assert r.detail == ("mallard_debezium has REPLICATION; no superuser among app, mallard_debezium, "
                        "mallard_snapshotter")


def test_a_superuser_connecting_is_a_warning_with_the_roles_to_create_instead():
    r = checks.privileges(RF("postgres", True, True), None, None, **ROLE_NAMES)
    assert r.status == WARN
    assert r.detail.startswith("postgres is a superuser: ")
    assert "Debezium needs only REPLICATION and SELECT, the snapshotter only SELECT" in r.detail
    fix = r.fix
    assert fix.startswith("as a superuser: ")
    assert "CREATE ROLE \"mallard_debezium\" LOGIN REPLICATION PASSWORD '<password>'" in fix
    assert "CREATE ROLE \"mallard_snapshotter\" LOGIN PASSWORD '<password>'" in fix
    assert 'GRANT SELECT ON ALL TABLES IN SCHEMA "public" TO "mallard_debezium"' in fix
    assert 'GRANT SELECT ON ALL TABLES IN SCHEMA "public" TO "mallard_snapshotter"' in fix
    assert 'ALTER DEFAULT PRIVILEGES FOR ROLE "app" GRANT SELECT ON TABLES TO "mallard_snapshotter"' in fix
    assert 'GRANT CONNECT ON DATABASE "shop" TO "mallard_debezium"' in fix
    assert 'ALTER ROLE "postgres" WITH NOSUPERUSER' in fix
    assert "SUPERUSER REPLICATION" not in fix and "GRANT ALL" not in fix
    assert "Debezium connects as mallard_debezium (database.user)" in fix
    # One line: `check` prints the fix under its check, and parsers read one line per fix.
    assert "\n" not in fix
    assert checks.exit_code([r]) == 0  # a warning does not fail the run


def test_a_superuser_debezium_role_is_demoted_not_created_again():
    r = checks.privileges(RF("app", False, False), RF("mallard_debezium", True, False),
                          RF("mallard_snapshotter", False, False), **ROLE_NAMES)
    assert r.status == WARN and r.detail.startswith("mallard_debezium is a superuser")
    assert 'ALTER ROLE "mallard_debezium" WITH NOSUPERUSER REPLICATION' in r.fix
    assert 'CREATE ROLE "mallard_debezium"' not in r.fix
    assert 'mallard_snapshotter"' not in r.fix.split("; then")[0]  # the snapshotter's role is fine already
    assert 'ALTER ROLE "app"' not in r.fix


def test_several_superusers_are_named_once_each():
    r = checks.privileges(RF("mallard_debezium", True, True), RF("mallard_debezium", True, True),
                          RF("mallard_snapshotter", True, False), **ROLE_NAMES)
    assert r.status == WARN
    assert r.detail.startswith("mallard_debezium, mallard_snapshotter are superusers: ")
    assert 'ALTER ROLE "mallard_snapshotter" WITH NOSUPERUSER' in r.fix
    assert r.fix.count('ALTER ROLE "mallard_debezium"') == 1


def test_debezium_without_replication_fails_with_the_alter_role():
    r = checks.privileges(RF("app", False, False), RF("mallard_debezium", False, False), None, **ROLE_NAMES)
    assert r == Result("privileges", FAIL, "mallard_debezium may not stream WAL (no REPLICATION attribute)",
                       'as a superuser: ALTER ROLE "mallard_debezium" WITH REPLICATION')


def test_without_a_debezium_role_the_connecting_user_must_stream():
    r = checks.privileges(RF("app", False, False), None, None, **ROLE_NAMES)
    assert r.status == FAIL and r.detail.startswith("app may not stream WAL")
    ok = checks.privileges(RF("app", False, True), None, None, **ROLE_NAMES)
    assert ok.status == OK and ok.detail == "app has REPLICATION; no superuser among app"


def test_role_names_are_quoted_in_the_statements():
    names = {**ROLE_NAMES, "owner": 'we"ird', "schemas": ["Sales"]}
    r = checks.privileges(RF("postgres", True, True), None, None, **names)
    assert 'ALTER DEFAULT PRIVILEGES FOR ROLE "we""ird"' in r.fix
    assert 'GRANT USAGE ON SCHEMA "Sales" TO "mallard_snapshotter"' in r.fix
