"""Least privilege on the local stack's Postgres: each part has a role of its own, none a
superuser, the socket wants a password, and `stack status` shows no password unless asked."""
import json
import uuid
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest

pytestmark = pytest.mark.integration


def connect(dsn: str):
    conn = psycopg2.connect(dsn, connect_timeout=5)
    conn.autocommit = True
    return conn


def one(dsn: str, sql: str, *params):
    return _rows(dsn, sql, *params)[0]


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_no_part_of_the_stack_is_a_superuser_and_each_runs_as_its_own_role(stack):
    status = stack.status()
    roles = {name: r["user"] for name, r in status["postgres"]["roles"].items()}
    assert roles == {"admin": "mallard_admin", "owner": "mallard", "debezium": "mallard_debezium",
                     "snapshotter": "mallard_snapshotter"}
    admin = stack.role_dsn("admin")
    found = {r[0]: r[1:] for r in _rows(admin, "SELECT rolname, rolsuper, rolreplication, rolcreaterole, rolcreatedb "
                                               "FROM pg_roles WHERE rolname LIKE 'mallard%%'")}
    assert found == {"mallard_admin": (True, True, True, True), "mallard": (False, False, False, False),
                     "mallard_debezium": (False, True, False, False),
                     "mallard_snapshotter": (False, False, False, False)}
    # Debezium streams as its role (the Connect worker resolves ${env:MALLARD_PG_*} from its
    # environment); each service process was given its role's credentials.
    assert one(admin, "SELECT usename FROM pg_stat_replication") == ("mallard_debezium",)
    wanted = {"connect": "mallard_debezium", "snapshotter": "mallard_snapshotter",
              "scheduler": "mallard_snapshotter", "applier": "mallard_snapshotter"}
    for service, user in wanted.items():
        env = environ(status["components"][service]["pid"])
        assert env["MALLARD_PG_USER"] == user, service
        assert env["MALLARD_PG_PASSWORD"] != stack.env["MALLARD_PG_PASSWORD"], service
    # No 'trust' line anywhere in pg_hba.conf.
    methods = {r[0] for r in _rows(admin, "SELECT auth_method FROM pg_hba_file_rules")}
    assert methods == {"scram-sha-256"}


def _rows(dsn: str, sql: str, *params) -> list[tuple]:
    conn = connect(dsn)  # autocommit, no `with conn`: that would open a transaction block
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else [()]
    finally:
        conn.close()


@pytest.mark.parametrize("role", ["snapshotter", "debezium"])
def test_the_reading_roles_cannot_write(stack, role):
    dsn = stack.role_dsn(role)
    assert one(dsn, "SELECT count(*) > 0 FROM customers") == (True,)  # they read ...
    attempts = {  # ... and every way of writing is refused
        "INSERT INTO customers (email, full_name, country, created_at) VALUES ('x@y', 'x', 'NL', now())":
            psycopg2.errors.InsufficientPrivilege,
        "UPDATE products SET name = name": psycopg2.errors.InsufficientPrivilege,
        "DELETE FROM orders": psycopg2.errors.InsufficientPrivilege,
        "TRUNCATE customers": psycopg2.errors.InsufficientPrivilege,
        "CREATE TABLE public.pwned (x int)": psycopg2.errors.InsufficientPrivilege,
        "CREATE TEMP TABLE pwned (x int)": psycopg2.errors.InsufficientPrivilege,
        "CREATE SCHEMA pwned": psycopg2.errors.InsufficientPrivilege,
        "COPY (SELECT 1) TO PROGRAM 'true'": psycopg2.errors.InsufficientPrivilege,
        "CREATE ROLE pwned": psycopg2.errors.InsufficientPrivilege,
        "ALTER SYSTEM SET work_mem = '1MB'": psycopg2.errors.InsufficientPrivilege,
    }
    for sql, error in attempts.items():
        with pytest.raises(error):
            one(dsn, sql)
    assert one(stack.dsn, "SELECT to_regclass('public.pwned')") == (None,)


def test_tables_the_owner_creates_later_are_readable_by_the_readers_without_a_grant(stack):
    owner = stack.dsn
    schema = f"lp_{uuid.uuid4().hex[:8]}"
    _rows(owner, f"CREATE TABLE public.{schema}_probe (id int PRIMARY KEY); INSERT INTO public.{schema}_probe VALUES (1)")
    _rows(owner, f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.probe (id int); INSERT INTO {schema}.probe VALUES (2)")
    for role in ("snapshotter", "debezium"):
        dsn = stack.role_dsn(role)
        assert one(dsn, f"SELECT id FROM public.{schema}_probe") == (1,)
        assert one(dsn, f"SELECT id FROM {schema}.probe") == (2,)
    # The owner is no superuser either: it cannot reach the server's files or programs.
    assert one(owner, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == (False,)
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        one(owner, "COPY (SELECT 1) TO PROGRAM 'true'")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        one(owner, "SELECT pg_read_file('postgresql.conf')")


@pytest.mark.parametrize("role", ["admin", "owner", "snapshotter"])
def test_the_socket_refuses_a_connection_without_a_password(stack, role):
    status = stack.status()
    pg = status["postgres"]
    user = pg["roles"][role]["user"]
    with pytest.raises(psycopg2.OperationalError, match="no password supplied|password authentication failed"):
        psycopg2.connect(host=pg["socket_dir"], port=pg["port"], user=user, dbname=pg["database"],
                         passfile="/dev/null", connect_timeout=5)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host=pg["socket_dir"], port=pg["port"], user=user, password="wrong",
                         dbname=pg["database"], passfile="/dev/null", connect_timeout=5)
    # With its password, the socket lets it in.
    password = pg["roles"][role]["dsn"].split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    psycopg2.connect(host=pg["socket_dir"], port=pg["port"], user=user, password=password,
                     dbname=pg["database"], passfile="/dev/null", connect_timeout=5).close()


def test_stack_status_masks_every_password_unless_asked(stack):
    revealed = stack.status()
    passwords = {r["dsn"].split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
                 for r in revealed["postgres"]["roles"].values()}
    assert stack.env["MALLARD_PG_PASSWORD"] in passwords and len(passwords) == 4 and "***" not in passwords
    for args in (["--json"], []):
        out = stack.mallard("stack", "status", *args, check=False)
        text = out.stdout + out.stderr
        assert not [p for p in passwords if p in text], args
        assert "mallard_debezium:***@" in text and "mallard:***@" in text
    masked = json.loads(stack.mallard("stack", "status", "--json", check=False).stdout)
    assert all(r["dsn"].split("@")[0].endswith(":***") for r in masked["postgres"]["roles"].values())
    assert masked["postgres"]["dsn"] == revealed["postgres"]["dsn"].replace(stack.env["MALLARD_PG_PASSWORD"], "***")


def test_replication_works_end_to_end_with_these_roles(stack):
    email = f"lp-{uuid.uuid4().hex[:10]}@example.com"
    new_id, = one(stack.dsn, "INSERT INTO customers (email, full_name, country, created_at) "  # as an application
                  "VALUES (%s, 'Least Privilege', 'NL', now()) RETURNING id", email)
    stack.wait_for(f"SELECT email FROM customers WHERE id = {new_id}", [[email]], timeout=60)
    # A re-snapshot, read by the snapshotter's SELECT-only role, lands too.
    stack.mallard("resnapshot", "public.customers", "--wait", "--timeout", "120")
    expected = one(stack.dsn, "SELECT count(*) FROM customers")[0]
    stack.wait_for("SELECT count(*) FROM customers", [[expected]], timeout=60)
    stack.wait_for(f"SELECT email FROM customers WHERE id = {new_id}", [[email]], timeout=10)
    # verify reads Postgres as the SELECT-only role, and finds the replica equal.
    out = stack.mallard("verify", "public.customers", check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    # No password of any role reached a log.
    passwords = [r["dsn"].split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
                 for r in stack.status()["postgres"]["roles"].values()]
    logs = [p for p in stack.home.rglob("*.log") if p.is_file()]
    pg_log = Path(stack.status()["postgres"]["data_dir"]).parent / "postgres.log"
    logs.append(pg_log)
    assert not [str(p) for p in logs for pw in passwords if pw in p.read_text(errors="replace")]
