"""Postgres adapter (psycopg2): connections, and the publication and replication
slot that Debezium streams from."""
from __future__ import annotations

from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from mallard.core import names


class SourceError(RuntimeError):
    """The source Postgres cannot serve mallard as configured; the message says how to fix it."""


TLS_PARAMETERS = frozenset({"sslmode", "sslrootcert", "sslcert", "sslkey"})


def connect(host: str, port: int, user: str, password: str, dbname: str, *,
            timeout: int = 5, **tls: str) -> psycopg2.extensions.connection:
    """An autocommit connection. Plain parameters (PostgresSettings.pg_params() gives them),
    so this adapter depends on no settings module; ``tls``: libpq's sslmode and certificates."""
    unknown = set(tls) - TLS_PARAMETERS
    if unknown:
        raise TypeError(f"connect(): unknown parameter(s) {', '.join(sorted(unknown))}")
    try:
        conn = psycopg2.connect(
            host=host, port=port, user=user, password=password, dbname=dbname,
            connect_timeout=timeout,
            application_name="mallard",
            # Literals are written with standard quoting (a backslash is a plain character):
            # a server configured otherwise would read a filter's literal differently.
            options="-c standard_conforming_strings=on",
            **{k: v for k, v in tls.items() if v},
        )
    except psycopg2.OperationalError as e:
        # psycopg2's message never contains the password; the DSN we print must not either.
        raise SourceError(f"cannot connect to Postgres postgresql://{user}:***@{host}:{port}/{dbname}: "
                          f"{str(e).strip()}") from None
    conn.autocommit = True
    return conn


def scalar(conn: Any, query: str, *params: Any) -> Any:
    with conn.cursor() as cur:
        # No params, no placeholders: psycopg2 reads every '%' of the text as one when given any.
        cur.execute(query, params or None)
        row = cur.fetchone()
        return row[0] if row else None


def require_logical_wal(conn: Any) -> None:
    level = scalar(conn, "SHOW wal_level")
    if level != "logical":
        raise SourceError(
            f"Postgres wal_level is '{level}', CDC needs 'logical': set wal_level = logical "
            "in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart Postgres"
        )


def existing_tables(conn: Any, streams: list[str]) -> tuple[list[str], list[str]]:
    """Split '<schema>.<table>' names into (existing, missing); an entry that is no
    stream name (a regex of the connector's table.include.list) is missing."""
    found, missing = [], []
    for stream in streams:
        if not names.is_stream(stream):
            missing.append(stream)
            continue
        schema, table = names.parse_stream(stream)
        exists = scalar(
            conn,
            "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = %s",
            schema, table,
        )
        (found if exists else missing).append(stream)
    return found, missing


def ensure_publication(conn: Any, name: str, include: list[str], existing: list[str]) -> bool:
    """Create the publication unless it exists: for all tables when nothing is
    included, else for the included tables that exist (possibly none yet).
    Must run before the slot is created: pgoutput looks the publication up as
    of each change it decodes."""
    if scalar(conn, "SELECT 1 FROM pg_publication WHERE pubname = %s", name):
        return False
    publication = sql.Identifier(name)
    with conn.cursor() as cur:
        if not include:
            cur.execute(sql.SQL("CREATE PUBLICATION {} FOR ALL TABLES").format(publication))
        elif existing:
            tables = sql.SQL(", ").join(sql.Identifier(*names.parse_stream(s)) for s in existing)
            cur.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(publication, tables))
        else:
            cur.execute(sql.SQL("CREATE PUBLICATION {}").format(publication))
    return True


def table_identities(conn: Any, streams: list[str]) -> dict:
    """'<schema>.<table>' -> TableIdentity (whether it has a primary key, its REPLICA
    IDENTITY), for the tables that exist, in the order given."""
    from mallard.core.keyless import TableIdentity

    out = {}
    with conn.cursor() as cur:
        for stream in streams:
            schema, table = names.parse_stream(stream)
            cur.execute("""SELECT c.relreplident::text, EXISTS (SELECT 1 FROM pg_index i
                                                             WHERE i.indrelid = c.oid AND i.indisprimary)
                           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                           WHERE n.nspname = %s AND c.relname = %s""", (schema, table))
            row = cur.fetchone()
            if row is not None:
                out[stream] = TableIdentity(has_key=row[1], replica_identity=row[0])
    return out


def set_replica_identity_full(conn: Any, stream: str) -> None:
    """Postgres then logs whole old rows for the table's updates and deletes (its owner, or a superuser)."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(sql.Identifier(*names.parse_stream(stream))))


def ensure_inserts_publication(conn: Any, name: str, tables: list[str]) -> bool:
    """The publication of inserts and truncates only (mallard/core/keyless.py), holding exactly
    ``tables``: Postgres refuses no UPDATE or DELETE of a table it holds. True when it changed."""
    from mallard.core.keyless import INSERTS_PUBLISH

    publication = sql.Identifier(name)
    wanted = set(tables)
    with conn.cursor() as cur:
        if not scalar(conn, "SELECT 1 FROM pg_publication WHERE pubname = %s", name):
            cur.execute(sql.SQL("CREATE PUBLICATION {} WITH (publish = {})").format(
                publication, sql.Literal(INSERTS_PUBLISH)))
            held: set[str] = set()
        else:
            cur.execute("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (name,))
            held = {names.stream_name(*r) for r in cur.fetchall()}
        for stream in sorted(held - wanted):
            cur.execute(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(
                publication, sql.Identifier(*names.parse_stream(stream))))
        for stream in [t for t in tables if t not in held]:
            cur.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                publication, sql.Identifier(*names.parse_stream(stream))))
    return held != wanted


def ensure_empty_publication(conn: Any, name: str) -> bool:
    """A publication of no table, publishing nothing (the name Debezium checks: see keyless.py)."""
    if scalar(conn, "SELECT 1 FROM pg_publication WHERE pubname = %s", name):
        return False
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE PUBLICATION {} WITH (publish = '')").format(sql.Identifier(name)))
    return True


def ensure_slot(conn: Any, slot: str, plugin: str = "pgoutput") -> bool:
    if scalar(conn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", slot):
        return False
    scalar(conn, "SELECT pg_create_logical_replication_slot(%s, %s)", slot, plugin)
    return True


def slot_exists(conn: Any, slot: str) -> bool:
    return bool(scalar(conn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", slot))


def in_publication(conn: Any, publications: list[str], stream: str) -> bool:
    """Whether one of the publications covers the table (listed, by its schema, or FOR ALL
    TABLES): Debezium receives its changes from then on."""
    schema, table = names.parse_stream(stream)
    return bool(scalar(conn, "SELECT 1 FROM pg_publication_tables WHERE pubname = ANY(%s) AND schemaname = %s "
                             "AND tablename = %s", list(publications), schema, table))


def slot_state(conn: Any, slot: str) -> dict[str, Any] | None:
    """Whether the slot is being consumed (and by which walsender), and how much WAL it holds back."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT active, confirmed_flush_lsn::text,
                      pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, active_pid
               FROM pg_replication_slots WHERE slot_name = %s""",
            (slot,),
        )
        row = cur.fetchone()
    if row is None:
        return None
    return {"active": row[0], "confirmed_flush_lsn": row[1], "retained_wal_bytes": row[2], "active_pid": row[3]}


def drop_slot_and_publication(conn: Any, slot: str, publication: str, *others: str) -> list[str]:
    """Drop what the CDC publisher created, so Postgres stops retaining WAL for it.
    ``others``: more publications (the inserts-only one and its list's name)."""
    dropped = []
    state = slot_state(conn, slot)
    if state is not None:
        if state["active"]:
            raise SourceError(f"replication slot '{slot}' is still in use: stop the CDC publisher first")
        scalar(conn, "SELECT pg_drop_replication_slot(%s)", slot)
        dropped.append(f"replication slot {slot}")
    for name in (publication, *others):
        if scalar(conn, "SELECT 1 FROM pg_publication WHERE pubname = %s", name):
            with conn.cursor() as cur:
                cur.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
            dropped.append(f"publication {name}")
    return dropped


def table_columns(conn: Any, stream: str) -> list:
    """The columns of '<schema>.<table>' as the snapshot encoder needs them, in order."""
    from mallard.core.snapshot_encoding import PgColumn

    schema, table = names.parse_stream(stream)
    with conn.cursor() as cur:
        cur.execute(
            """SELECT a.attname, t.typname, a.atttypmod, t.typtype = 'e', e.typname
               FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_type t ON t.oid = a.atttypid
               LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
               WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
               ORDER BY a.attnum""",
            (schema, table),
        )
        rows = cur.fetchall()
    if not rows:
        raise SourceError(f"table {stream} not found in Postgres")
    return [PgColumn(name, typname, typmod, is_enum, element) for name, typname, typmod, is_enum, element in rows]


def primary_key(conn: Any, stream: str) -> list[str]:
    with conn.cursor() as cur:
        cur.execute(
            """SELECT a.attname FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
               WHERE i.indrelid = %s::regclass AND i.indisprimary
               ORDER BY array_position(i.indkey::int2[], a.attnum)""",
            (quote_stream(stream),),
        )
        return [r[0] for r in cur.fetchall()]


def quote_stream(stream: str) -> str:
    """'<schema>.<table>' (however its parts are quoted) as a quoted SQL name: the same
    text as ``psycopg2.sql.Identifier(schema, table)``, without a connection."""
    return names.quoted(stream)


def translate(e: BaseException) -> BaseException:
    """A psycopg2 error as TransientError (the connection lost or refused, a timeout, a
    serialization failure) or TerminalError (data, integrity, programming: the statement
    itself is wrong); anything else as it is."""
    from mallard.core.errors import TerminalError, TransientError

    if not isinstance(e, psycopg2.Error):
        return e
    transient = isinstance(e, (psycopg2.OperationalError, psycopg2.InterfaceError)) or \
        getattr(e, "pgcode", None) in ("40001", "40P01", "57014")  # serialization, deadlock, statement timeout
    translated = (TransientError if transient else TerminalError)(str(e).strip().splitlines()[0] if str(e).strip()
                                                                  else type(e).__name__)
    translated.__cause__ = e
    return translated
