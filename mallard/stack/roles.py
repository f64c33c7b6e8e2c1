"""Least privilege on Postgres: which role each part connects as, and what it may do.

- the admin (the cluster's bootstrap superuser): only ``mallard stack`` itself, to set up
  the roles, the database, and the publication (FOR ALL TABLES needs a superuser);
- the owner: owns the database and its schema; applications and tests write as it;
- Debezium: LOGIN REPLICATION and SELECT on the tables (it creates its slot itself);
- the snapshotter (and the other services' reads, verify's): SELECT only, plus
  ``pg_read_all_stats`` to see the Debezium sender's position.

The statements are plain functions, so ``mallard check`` prints the same ones it runs.

Applied by ``mallard stack up`` on every run, also while the stack runs and applications
write. A GRANT rewrites its object's catalog row even when nothing changes, without
locking the object: with a concurrent TRUNCATE (which rewrites the table's ``pg_class``
row) or another ``up``, Postgres fails it with "tuple concurrently updated". So the set-up
runs only what is missing (a table's SELECT is granted table by table), ``up``s on one
cluster take turns (an advisory lock), and a statement that still meets that error is
run again.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mallard.core import names
from mallard.core.sql import quote_ident

PASSWORD_PLACEHOLDER = "<password>"


@dataclass(frozen=True)
class Roles:
    owner: str
    debezium: str
    snapshotter: str


def _reader_grants(role: str, owner: str, database: str, schemas: Iterable[str]) -> list[str]:
    r, o = quote_ident(role), quote_ident(owner)
    statements = [f"GRANT CONNECT ON DATABASE {quote_ident(database)} TO {r}"]
    for schema in schemas:
        s = quote_ident(schema)
        statements += [f"GRANT USAGE ON SCHEMA {s} TO {r}", f"GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}"]
    # Tables (and schemas) the owner creates later are readable too, without another GRANT.
    statements += [f"ALTER DEFAULT PRIVILEGES FOR ROLE {o} GRANT SELECT ON TABLES TO {r}",
                   f"ALTER DEFAULT PRIVILEGES FOR ROLE {o} GRANT USAGE ON SCHEMAS TO {r}"]
    return statements


def debezium_statements(roles: Roles, database: str, schemas: Iterable[str],
                        password: str = PASSWORD_PLACEHOLDER) -> list[str]:
    """Debezium's role: streams WAL (REPLICATION) and reads the captured tables."""
    d = quote_ident(roles.debezium)
    return [f"CREATE ROLE {d} LOGIN REPLICATION PASSWORD '{password}'",
            *_reader_grants(roles.debezium, roles.owner, database, schemas)]


def snapshotter_statements(roles: Roles, database: str, schemas: Iterable[str],
                           password: str = PASSWORD_PLACEHOLDER) -> list[str]:
    """The snapshotter's role: reads tables (in READ ONLY transactions), nothing else."""
    s = quote_ident(roles.snapshotter)
    return [f"CREATE ROLE {s} LOGIN PASSWORD '{password}'",
            *_reader_grants(roles.snapshotter, roles.owner, database, schemas),
            f"GRANT pg_read_all_stats TO {s}"]


def least_privilege_statements(roles: Roles, database: str, schemas: Iterable[str]) -> list[str]:
    """What a superuser runs so that neither Debezium nor the snapshotter needs to be one."""
    schemas = list(schemas)
    return [*debezium_statements(roles, database, schemas), *snapshotter_statements(roles, database, schemas)]


# -- applied by the local stack, as its admin ------------------------------------------------

SETUP_LOCK = 0x6D616C6C61726401
"""pg_advisory_lock key: one ``stack up`` at a time sets up roles and grants (per database)."""
RETRIES = 6


@contextmanager
def _serialized(cur) -> Iterator[None]:
    cur.execute("SELECT pg_advisory_lock(%s)", (SETUP_LOCK,))
    try:
        yield
    finally:
        try:
            cur.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK,))
        except Exception:  # noqa: BLE001 - a broken connection: closing it releases the lock
            pass


def _run(cur, statement: str, params: tuple | None = None) -> None:
    """One statement (autocommit), run again when a concurrent session updated the same
    catalog row first ("tuple concurrently updated": transient, the next try sees its row)."""
    import psycopg2

    for attempt in range(RETRIES):
        try:
            cur.execute(statement, params)
            return
        except psycopg2.errors.InternalError_ as e:
            if "tuple concurrently updated" not in str(e) or attempt == RETRIES - 1:
                raise
            time.sleep(0.05 * 2 ** attempt)


def _true(cur, query: str, *params) -> bool:
    cur.execute(query, params or None)
    row = cur.fetchone()
    return bool(row and row[0])


ROLE_OID = "(SELECT oid FROM pg_roles WHERE rolname = %s)"


def _granted(acl: str, kind: str, owner: str) -> str:
    """SQL: whether the ACL ``acl`` (NULL: the default of object kind ``kind``) names the
    role given as the next parameter directly, with the privilege given after it: what a
    GRANT makes sure of (a privilege held through PUBLIC or a membership does not count)."""
    return (f"EXISTS (SELECT 1 FROM aclexplode(coalesce({acl}, acldefault('{kind}', {owner}))) a "
            f"WHERE a.grantee = {ROLE_OID} AND a.privilege_type = %s)")


def _missing_reader_grants(cur, role: str, owner: str, database: str, schemas: list[str]) -> list[str]:
    """Of ``_reader_grants``, what ``role`` does not have yet; SELECT per table that lacks it."""
    r, o = quote_ident(role), quote_ident(owner)
    statements = []
    if not _true(cur, f"SELECT {_granted('datacl', 'd', 'datdba')} FROM pg_database WHERE datname = %s",
                 role, "CONNECT", database):
        statements.append(f"GRANT CONNECT ON DATABASE {quote_ident(database)} TO {r}")
    cur.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s) "
                f"AND NOT {_granted('nspacl', 'n', 'nspowner')} ORDER BY nspname", (schemas, role, "USAGE"))
    statements += [f"GRANT USAGE ON SCHEMA {quote_ident(n)} TO {r}" for (n,) in cur.fetchall()]
    # What GRANT ... ON ALL TABLES IN SCHEMA covers: tables, views, materialized views,
    # foreign and partitioned tables.
    cur.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'v', 'm', 'f', 'p') "
                f"AND NOT {_granted('c.relacl', 'r', 'c.relowner')} ORDER BY 1, 2", (schemas, role, "SELECT"))
    statements += [f"GRANT SELECT ON TABLE {quote_ident(n)}.{quote_ident(t)} TO {r}" for n, t in cur.fetchall()]
    for objtype, privilege, what in (("r", "SELECT", "TABLES"), ("n", "USAGE", "SCHEMAS")):
        if not _true(cur, f"""SELECT EXISTS (SELECT 1 FROM pg_default_acl d, aclexplode(d.defaclacl) a
                WHERE d.defaclrole = {ROLE_OID} AND d.defaclnamespace = 0 AND d.defaclobjtype = %s
                AND a.grantee = {ROLE_OID} AND a.privilege_type = %s)""", owner, objtype, role, privilege):
            statements.append(f"ALTER DEFAULT PRIVILEGES FOR ROLE {o} GRANT {privilege} ON {what} TO {r}")
    return statements


def _set_role(cur, name: str, attributes: str, password: str) -> None:
    """Create the role, or bring an existing one to these attributes and this password.
    The password goes to Postgres as a SCRAM verifier: a statement that reaches the
    server's log never carries it in the clear."""
    from psycopg2.extensions import encrypt_password

    verifier = encrypt_password(password, name, cur.connection, "scram-sha-256")
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
    verb = "ALTER" if cur.fetchone() else "CREATE"
    _run(cur, f"{verb} ROLE {quote_ident(name)} WITH {attributes} PASSWORD %s", (verifier,))


def ensure_roles(admin_conn, roles: Roles, passwords: dict[str, str]) -> None:
    """In the cluster (any database): the three roles, none a superuser; idempotent."""
    plain = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"
    with admin_conn.cursor() as cur, _serialized(cur):
        _set_role(cur, roles.owner, f"{plain} NOREPLICATION", passwords["owner"])
        _set_role(cur, roles.debezium, f"{plain} REPLICATION", passwords["debezium"])
        _set_role(cur, roles.snapshotter, f"{plain} NOREPLICATION", passwords["snapshotter"])


def ensure_database(admin_conn, database: str, owner: str) -> None:
    with admin_conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if cur.fetchone():
            cur.execute(f"ALTER DATABASE {quote_ident(database)} OWNER TO {quote_ident(owner)}")
        else:
            cur.execute(f"CREATE DATABASE {quote_ident(database)} OWNER {quote_ident(owner)}")


def ensure_grants(admin_db_conn, roles: Roles, database: str) -> None:
    """In the database: only our roles connect, nobody but the owner creates anything
    (not even temporary tables), and the readers read every schema's tables. Runs only
    what is missing (see the module's docstring): safe while the stack runs."""
    import psycopg2

    with admin_db_conn.cursor() as cur, _serialized(cur):
        db = quote_ident(database)
        if _true(cur, "SELECT has_database_privilege('public', %s, 'CONNECT') "
                 "OR has_database_privilege('public', %s, 'TEMPORARY')", database, database):
            _run(cur, f"REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC")
        if _true(cur, "SELECT has_schema_privilege('public', 'public', 'CREATE')"):
            _run(cur, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        if not _true(cur, f"SELECT nspowner = {ROLE_OID} FROM pg_namespace WHERE nspname = 'public'",
                     roles.owner):
            _run(cur, f"ALTER SCHEMA public OWNER TO {quote_ident(roles.owner)}")
        cur.execute("SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%%' "
                    "AND nspname <> 'information_schema'")
        schemas = [r[0] for r in cur.fetchall()]
        statements = [*_missing_reader_grants(cur, roles.debezium, roles.owner, database, schemas),
                      *_missing_reader_grants(cur, roles.snapshotter, roles.owner, database, schemas)]
        # verify, run as the owner outside the stack's roles, reads the sender's position too
        for role in (roles.snapshotter, roles.owner):
            if not _true(cur, "SELECT EXISTS (SELECT 1 FROM pg_auth_members "
                         f"WHERE roleid = 'pg_read_all_stats'::regrole AND member = {ROLE_OID})", role):
                statements.append(f"GRANT pg_read_all_stats TO {quote_ident(role)}")
        for statement in statements:
            try:
                _run(cur, statement)
            except psycopg2.errors.UndefinedTable:  # dropped meanwhile: nothing left to read
                pass


def sync_publication_tables(admin_db_conn, publication: str, tables: list[str]) -> bool:
    """Make a table-list publication cover exactly ``tables`` ('<schema>.<table>' that exist);
    True when it changed. An all-tables publication, or an empty list, is left alone."""
    with admin_db_conn.cursor() as cur:
        cur.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s", (publication,))
        row = cur.fetchone()
        if row is None or row[0] or not tables:
            return False
        cur.execute("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,))
        if {names.stream_name(*r) for r in cur.fetchall()} == {names.canonical(t) for t in tables}:
            return False
        listed = ", ".join(names.quoted(t) for t in tables)
        cur.execute(f"ALTER PUBLICATION {quote_ident(publication)} SET TABLE {listed}")
        return True


def _publications_array(publication: str, inserts_publication: str | None) -> str:
    """mallard's publications as a SQL text[] (the one for every change, and the inserts-only one)."""
    from mallard.core.sql import quote_literal

    publications = [publication, *([inserts_publication] if inserts_publication else [])]
    return "ARRAY[" + ", ".join(quote_literal(p) for p in publications) + "]::text[]"


def _event_trigger_statement(trigger: str, tags: Iterable[str], function: str) -> str:
    listed = ", ".join(f"'{t}'" for t in tags)
    return (f"CREATE EVENT TRIGGER {quote_ident(trigger)} ON ddl_command_end WHEN TAG IN ({listed}) "
            f"EXECUTE FUNCTION {quote_ident(HEARTBEAT_SCHEMA)}.{quote_ident(function)}()")


def _ensure_event_trigger(admin_db_conn, statements: list[str], trigger: str, tags: Iterable[str],
                          function: str) -> None:
    """Run ``statements`` (the trigger's function, replaced each ``up``), then create the
    trigger if it is missing."""
    with admin_db_conn.cursor() as cur, _serialized(cur):
        for statement in statements:
            _run(cur, statement)
        if not _true(cur, "SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = %s)", trigger):
            _run(cur, _event_trigger_statement(trigger, tags, function))


CAPTURE_TRIGGER = "mallard_capture_new_tables"
CAPTURE_FUNCTION = "capture_new_table"
CAPTURE_TAGS = ("CREATE TABLE", "CREATE TABLE AS", "SELECT INTO", "ALTER TABLE")


def capture_trigger_statements(publication: str, streams: list[str], inserts_publication: str | None = None,
                               full: list[str] = ()) -> list[str]:
    """An event trigger adding a configured table to the publication in the transaction
    that creates it (or renames a table to it): a table the config names before it exists
    is captured from its first row, with no process holding the admin's password. Only the
    admin (a superuser) creates event triggers; the function runs as it (SECURITY DEFINER)
    and adds only the tables listed here, which are fixed each ``up``.
    A table without a primary key nor replica identity never enters the publication of
    updates and deletes (Postgres would refuse its UPDATE and DELETE, mallard/core/keyless.py):
    it goes to ``inserts_publication``, or gets REPLICA IDENTITY FULL first when ``full``
    names it; with neither, it is left out (the snapshot waits, saying why)."""
    from mallard.core.sql import quote_literal

    def pairs(of: list[str]) -> str:
        parsed = [names.parse_stream(s) for s in of]
        return (f"unnest(ARRAY[{', '.join(quote_literal(a) for a, _ in parsed)}]::text[], "
                f"ARRAY[{', '.join(quote_literal(b) for _, b in parsed)}]::text[])")

    wanted, full_tables = pairs(streams), pairs(list(full))
    listed = _publications_array(publication, inserts_publication)
    inserts = quote_literal(inserts_publication) if inserts_publication else "NULL"
    function = f"{quote_ident(HEARTBEAT_SCHEMA)}.{quote_ident(CAPTURE_FUNCTION)}"
    body = f"""
DECLARE
    added record;
    target text;
BEGIN
    FOR added IN
        SELECT DISTINCT n.nspname, c.relname, c.relreplident,
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS has_key
        FROM pg_event_trigger_ddl_commands() d
        JOIN pg_class c ON c.oid = d.objid AND d.classid = 'pg_class'::regclass
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND (n.nspname, c.relname) IN (SELECT * FROM {wanted})
          AND NOT EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = ANY ({listed})
                          AND t.schemaname = n.nspname AND t.tablename = c.relname)
    LOOP
        BEGIN
            target := {quote_literal(publication)};
            IF NOT added.has_key AND added.relreplident NOT IN ('f', 'i') THEN
                IF (added.nspname, added.relname) IN (SELECT * FROM {full_tables}) THEN
                    EXECUTE format('ALTER TABLE %I.%I REPLICA IDENTITY FULL', added.nspname, added.relname);
                ELSE
                    target := {inserts};
                END IF;
            END IF;
            IF target IS NULL THEN
                RAISE WARNING 'mallard: % has no primary key: not added to a publication that would refuse its '
                    'UPDATE and DELETE', added.nspname || '.' || added.relname;
            ELSE
                EXECUTE format('ALTER PUBLICATION %I ADD TABLE %I.%I', target, added.nspname, added.relname);
            END IF;
        EXCEPTION WHEN OTHERS THEN  -- never fail the application's DDL: the snapshot waits, saying why
            RAISE WARNING 'mallard: % not added to a publication: %', added.nspname || '.' || added.relname, SQLERRM;
        END;
    END LOOP;
END"""
    return [
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER "
        f"SET search_path = pg_catalog AS $mallard${body}$mallard$",
        f"REVOKE ALL ON FUNCTION {function}() FROM PUBLIC",
    ]


def ensure_capture_trigger(admin_db_conn, publication: str, streams: list[str], inserts_publication: str | None = None,
                           full: list[str] = ()) -> None:
    """The function (replaced each ``up``: the streams may have changed) and its trigger."""
    _ensure_event_trigger(admin_db_conn, capture_trigger_statements(publication, streams, inserts_publication, full),
                          CAPTURE_TRIGGER, CAPTURE_TAGS, CAPTURE_FUNCTION)


REWRITE_TRIGGER = "mallard_signal_rewrites"  # after the capture trigger (triggers fire in name order)
REWRITE_FUNCTION = "signal_rewrites"
REWRITE_TAGS = CAPTURE_TAGS
COLUMNS_SEEN = "columns_seen"
"""The columns of each captured table as the trigger last saw them (UNLOGGED: never in a
publication; after a crash it is empty, and the next ALTER of a table is signalled)."""


def rewrite_signal_statements(publication: str, inserts_publication: str | None = None) -> list[str]:
    """An event trigger that tells the applier, in the DDL's own transaction, that an ALTER
    TABLE of a captured table may have changed its existing rows without row events: a
    column added with a default (or an identity or generated column), a column renamed, a
    type changed (schemas/ddl.py). What changed is found against the columns it saw last
    (``COLUMNS_SEEN``), so a drop, a constraint or a default for new rows sends nothing. It
    never fails the application's DDL: then only the table's next row event says so
    (mallard/core/schema_diff.py)."""
    from mallard.core.sql import quote_literal
    from mallard.schemas.ddl import DDL_SIGNAL_PREFIX

    listed = _publications_array(publication, inserts_publication)
    seen = f"{quote_ident(HEARTBEAT_SCHEMA)}.{quote_ident(COLUMNS_SEEN)}"
    function = f"{quote_ident(HEARTBEAT_SCHEMA)}.{quote_ident(REWRITE_FUNCTION)}"
    body = f"""
DECLARE
    altered record;
    changes text;
BEGIN
    FOR altered IN
        SELECT DISTINCT c.oid AS relid, n.nspname, c.relname, d.command_tag = 'ALTER TABLE' AS alter_table
        FROM pg_event_trigger_ddl_commands() d
        JOIN pg_class c ON c.oid = d.objid AND d.classid = 'pg_class'::regclass
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p')
          AND EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = ANY ({listed})
                      AND t.schemaname = n.nspname AND t.tablename = c.relname)
    LOOP
        BEGIN
            IF altered.alter_table THEN
                IF NOT EXISTS (SELECT 1 FROM {seen} WHERE relid = altered.relid) THEN
                    changes := 'altered before mallard saw its columns';
                ELSE
                    SELECT string_agg(CASE
                            WHEN s.attnum IS NULL THEN 'column ' || quote_ident(a.attname) || ' added with a default'
                            WHEN s.attname <> a.attname THEN 'column ' || quote_ident(s.attname::text) || ' renamed to '
                                                             || quote_ident(a.attname)
                            ELSE 'column ' || quote_ident(a.attname) || ' changed type to '
                                 || format_type(a.atttypid, a.atttypmod) END, '; ' ORDER BY a.attnum)
                    INTO changes
                    FROM pg_attribute a
                    LEFT JOIN {seen} s ON s.relid = a.attrelid AND s.attnum = a.attnum
                    WHERE a.attrelid = altered.relid AND a.attnum > 0 AND NOT a.attisdropped
                      AND ((s.attnum IS NULL AND (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''))
                           OR s.attname <> a.attname OR s.atttypid <> a.atttypid OR s.atttypmod <> a.atttypmod);
                END IF;
                IF changes IS NOT NULL THEN
                    PERFORM pg_logical_emit_message(true, {quote_literal(DDL_SIGNAL_PREFIX)}, json_build_object(
                        'v', 1, 'schema', altered.nspname, 'table', altered.relname, 'changes', changes)::text);
                END IF;
            END IF;
            DELETE FROM {seen} WHERE relid = altered.relid;
            INSERT INTO {seen} SELECT attrelid, attnum, attname, atttypid, atttypmod FROM pg_attribute
                WHERE attrelid = altered.relid AND attnum > 0 AND NOT attisdropped;
        EXCEPTION WHEN OTHERS THEN  -- never fail the application's DDL: its next row event still says it
            RAISE WARNING 'mallard: % altered, not signalled: %', altered.nspname || '.' || altered.relname, SQLERRM;
        END;
    END LOOP;
END"""
    return [
        f"CREATE UNLOGGED TABLE IF NOT EXISTS {seen} (relid oid, attnum int2, attname name, atttypid oid, "
        "atttypmod int4, PRIMARY KEY (relid, attnum))",
        f"REVOKE ALL ON {seen} FROM PUBLIC",
        # The tables captured now, where it has none (a table altered meanwhile was seen by the trigger).
        f"INSERT INTO {seen} SELECT a.attrelid, a.attnum, a.attname, a.atttypid, a.atttypmod FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p') "
        f"AND NOT EXISTS (SELECT 1 FROM {seen} s WHERE s.relid = c.oid) "
        f"AND EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = ANY ({listed}) "
        "AND t.schemaname = n.nspname AND t.tablename = c.relname)",
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER "
        f"SET search_path = pg_catalog AS $mallard${body}$mallard$",
        f"REVOKE ALL ON FUNCTION {function}() FROM PUBLIC",
    ]


def ensure_rewrite_signal(admin_db_conn, publication: str, inserts_publication: str | None = None) -> None:
    """The rewrite signal's function (replaced each ``up``) and its trigger."""
    _ensure_event_trigger(admin_db_conn, rewrite_signal_statements(publication, inserts_publication),
                          REWRITE_TRIGGER, REWRITE_TAGS, REWRITE_FUNCTION)


def rewrite_signal_script(publication: str) -> str:
    """The same, as the docker-compose Postgres runs it at its first start
    (docker/postgres/20-mallard-ddl-signal.sql, written by ``python -m mallard.stack.roles``)."""
    statements = [*rewrite_signal_statements(publication),
                  _event_trigger_statement(REWRITE_TRIGGER, REWRITE_TAGS, REWRITE_FUNCTION)]
    return ("-- Written by `python -m mallard.stack.roles` (mallard/stack/roles.py, rewrite_signal_statements):\n"
            "-- the DDL event trigger of docs/applier.md, \"Schema changes\". Do not edit.\n"
            + "".join(f"{s};\n" for s in statements))



HEARTBEAT_SCHEMA, HEARTBEAT_TABLE = "_mallard", "heartbeat"  # not the owner's name: that schema would come first in its search_path
HEARTBEAT = f"{HEARTBEAT_SCHEMA}.{HEARTBEAT_TABLE}"
"""Debezium's heartbeat.action.query updates this one-row table. Its change is in the
publication but outside table.include.list: Debezium decodes it (its position moves on
and is confirmed to the slot, so Postgres frees WAL while the captured tables are quiet)
and emits nothing for it."""


def heartbeat_statements(roles: Roles) -> list[str]:
    owner, debezium = quote_ident(roles.owner), quote_ident(roles.debezium)
    table = f"{quote_ident(HEARTBEAT_SCHEMA)}.{quote_ident(HEARTBEAT_TABLE)}"
    return [
        f"CREATE SCHEMA IF NOT EXISTS {quote_ident(HEARTBEAT_SCHEMA)} AUTHORIZATION {owner}",
        f"CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY, ts timestamptz NOT NULL DEFAULT now())",
        f"ALTER TABLE {table} OWNER TO {owner}",
        f"INSERT INTO {table} (id) VALUES (1) ON CONFLICT (id) DO NOTHING",
        # The one table Debezium's role may write: UPDATE (and the SELECT its WHERE needs).
        f"GRANT USAGE ON SCHEMA {quote_ident(HEARTBEAT_SCHEMA)} TO {debezium}",
        f"GRANT SELECT, UPDATE ON {table} TO {debezium}",
    ]


def ensure_heartbeat(admin_db_conn, roles: Roles) -> None:
    with admin_db_conn.cursor() as cur, _serialized(cur):
        create, grants = heartbeat_statements(roles)[:-2], heartbeat_statements(roles)[-2:]
        for statement in create:
            _run(cur, statement)
        table = f"{quote_ident(HEARTBEAT_SCHEMA)}.{quote_ident(HEARTBEAT_TABLE)}"
        granted = _true(cur, f"SELECT {_granted('nspacl', 'n', 'nspowner')} FROM pg_namespace WHERE nspname = %s",
                        roles.debezium, "USAGE", HEARTBEAT_SCHEMA)
        for privilege in ("SELECT", "UPDATE"):
            granted = granted and _true(cur, f"SELECT {_granted('relacl', 'r', 'relowner')} FROM pg_class "
                                        "WHERE oid = %s::regclass", roles.debezium, privilege, table)
        if not granted:
            for statement in grants:
                _run(cur, statement)


COMPOSE_PUBLICATION = "mallard_publication"
"""The publication docker/postgres/10-mallard.sh creates."""

if __name__ == "__main__":  # from a checkout: the compose Postgres' copy of the trigger
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "docker" / "postgres" / "20-mallard-ddl-signal.sql"
    script.write_text(rewrite_signal_script(COMPOSE_PUBLICATION))
    print(f"wrote {script}")
