"""Least privilege on Postgres: which role each part connects as, and what it may do.

- the admin (the cluster's bootstrap superuser): only ``mallard stack`` itself, to set up
  the roles, the database, and the publication (FOR ALL TABLES needs a superuser);
- the owner: owns the database and its schema; applications and tests write as it;
- Debezium: LOGIN REPLICATION and SELECT on the tables (it creates its slot itself);
- the snapshotter (and the other services' reads, verify's): SELECT only, plus
  ``pg_read_all_stats`` to see the Debezium sender's position.

The statements are plain functions, so ``mallard check`` prints the same ones it runs.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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


def _set_role(cur, name: str, attributes: str, password: str) -> None:
    """Create the role, or bring an existing one to these attributes and this password.
    The password goes to Postgres as a SCRAM verifier: a statement that reaches the
    server's log never carries it in the clear."""
    from psycopg2.extensions import encrypt_password

    verifier = encrypt_password(password, name, cur.connection, "scram-sha-256")
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
    verb = "ALTER" if cur.fetchone() else "CREATE"
    cur.execute(f"{verb} ROLE {quote_ident(name)} WITH {attributes} PASSWORD %s", (verifier,))


def ensure_roles(admin_conn, roles: Roles, passwords: dict[str, str]) -> None:
    """In the cluster (any database): the three roles, none a superuser; idempotent."""
    plain = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"
    with admin_conn.cursor() as cur:
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
    (not even temporary tables), and the readers read every schema's tables."""
    with admin_db_conn.cursor() as cur:
        db = quote_ident(database)
        cur.execute(f"REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC")
        cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        cur.execute(f"ALTER SCHEMA public OWNER TO {quote_ident(roles.owner)}")
        cur.execute("SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%%' "
                    "AND nspname <> 'information_schema'")
        schemas = [r[0] for r in cur.fetchall()]
        statements = [*_reader_grants(roles.debezium, roles.owner, database, schemas),
                      *_reader_grants(roles.snapshotter, roles.owner, database, schemas),
                      f"GRANT pg_read_all_stats TO {quote_ident(roles.snapshotter)}",
                      # verify, run as the owner outside the stack's roles, reads the sender's position too
                      f"GRANT pg_read_all_stats TO {quote_ident(roles.owner)}"]
        for statement in statements:
            cur.execute(statement)


def sync_publication_tables(admin_db_conn, publication: str, tables: list[str]) -> bool:
    """Make a table-list publication cover exactly ``tables`` ('<schema>.<table>' that exist);
    True when it changed. An all-tables publication, or an empty list, is left alone."""
    with admin_db_conn.cursor() as cur:
        cur.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s", (publication,))
        row = cur.fetchone()
        if row is None or row[0] or not tables:
            return False
        cur.execute("SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s",
                    (publication,))
        if {r[0] for r in cur.fetchall()} == set(tables):
            return False
        listed = ", ".join(".".join(quote_ident(part) for part in t.split(".", 1)) for t in tables)
        cur.execute(f"ALTER PUBLICATION {quote_ident(publication)} SET TABLE {listed}")
        return True


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
    with admin_db_conn.cursor() as cur:
        for statement in heartbeat_statements(roles):
            cur.execute(statement)
