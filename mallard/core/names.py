"""Stream names: every table name Postgres accepts, written and read one way. Pure.

A stream is a Postgres table, named as SQL names it: ``<schema>.<table>``, each part an
identifier, double-quoted when it is not a plain lower-case word::

    public.orders
    public."Order Items"
    "Sales Dept"."Customers"
    "odd""name".t            (a double quote inside a quoted name is doubled)

Postgres' own scanner and parser (pglast) read what a user writes (the replication
config's keys, the command line, a request read from Kafka), so quoting, ``U&"..."``
escapes and keywords follow Postgres' rules. One thing is refused rather than guessed:
an unquoted name with capitals, which Postgres would fold to lower case (``public.Orders``
is the table ``orders``); quote it (``public."Orders"``) or write it in lower case.

Every name has ONE spelling, ``stream_name(schema, table)``: plain parts as they are,
the others quoted. The applier names a change event's stream from the event's own
``source.schema`` and ``source.table`` this way, the snapshotter keys its messages by it,
and the replica's bookkeeping stores it, so all of them agree whatever the name.

Debezium's topic for a table is ``<prefix>.<schema>.<table>`` with every character that
Kafka refuses in a topic name replaced by ``_`` (its TopicNamingStrategy's sanitizing), so
the topic does not name the table exactly (two tables may even share a topic): events are
routed by their ``source`` block, and ``cdc_topic`` computes the topic only to look at it.
"""
from __future__ import annotations

import functools
import re

from pglast import parse_sql, parser
from pglast.keywords import RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS

MAX_IDENTIFIER_BYTES = 63
"""Postgres' NAMEDATALEN - 1: a longer name is truncated by Postgres, so it names another table."""
MAX_TOPIC_LENGTH = 249
"""Debezium's TopicNamingStrategy.MAX_NAME_LENGTH."""

_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*\Z")
_NOT_A_COLUMN_ID = frozenset(RESERVED_KEYWORDS) | frozenset(TYPE_FUNC_NAME_KEYWORDS)
"""Keywords that cannot stand unquoted before a dot (Postgres' ColId); after one, any keyword can."""
_TOPIC_CHAR = re.compile(r"[A-Za-z0-9._-]")
_NAME_TOKENS = {"IDENT", "UIDENT"}
_QUOTED = re.compile(r'"((?:[^"]|"")*)"\Z')


class StreamNameError(ValueError):
    """A name that is not ``<schema>.<table>``; the message says what is wrong and how to write it."""


HOW = "expected <schema>.<table>, each part double-quoted unless it is a plain lower-case name: public.\"Order Items\""


def _identifiers(text: str, what: str, fold: bool = True) -> list[tuple[str, str]]:
    """(token text, token kind) of each identifier of a dotted name, checked to be
    nothing else (no comment, no second statement, no alias)."""
    if not isinstance(text, str) or not text.strip():
        raise StreamNameError(f"empty {what} name")
    if "\x00" in text:
        raise StreamNameError(f"{what} name {text[:200]!r} contains a NUL character")
    try:
        tokens = parser.scan(text)
    except parser.ParseError as e:
        raise StreamNameError(f"{what} name {text[:200]!r}: {e}") from None
    parts: list[tuple[str, str]] = []
    for i, token in enumerate(tokens):
        raw = text[token.start:token.end + 1]
        if i % 2 == 1:
            if token.name != "ASCII_46":
                raise StreamNameError(f"{what} name {text[:200]!r}: unexpected {raw!r}; {HOW}")
        elif token.name in _NAME_TOKENS or token.kind != "NO_KEYWORD":
            parts.append((raw, token.name))
        else:
            raise StreamNameError(f"{what} name {text[:200]!r}: {raw!r} is not an identifier; {HOW}")
    if len(tokens) % 2 == 0:
        raise StreamNameError(f"{what} name {text[:200]!r} ends with a dot")
    for raw, kind in parts:
        if fold and kind == "IDENT" and not raw.startswith('"') and raw != raw.lower():
            raise StreamNameError(
                f"{what} name {text[:200]!r}: Postgres folds the unquoted {raw!r} to {raw.lower()!r}; write "
                f"\"{raw}\" (quoted) for the name with capitals, or {raw.lower()} for the lower-case one")
        if kind == "IDENT":
            value = raw[1:-1].replace('""', '"') if raw.startswith('"') else raw
            if len(value.encode()) > MAX_IDENTIFIER_BYTES:
                raise StreamNameError(f"{what} name {text[:200]!r}: {value[:80]!r}... is longer than Postgres' "
                                      f"{MAX_IDENTIFIER_BYTES} bytes (Postgres would truncate it to another name)")
    return parts


MAX_NAME_LENGTH = 1024
"""Characters of a written stream name: two 63-byte parts, quoted or U&-escaped, fit;
anything longer (from Kafka, say) is refused before it is parsed or cached."""


def parse_stream(text: str) -> tuple[str, str]:
    """``<schema>.<table>`` as written (by a user, or read from Kafka) -> (schema, table),
    as Postgres reads it; StreamNameError for anything else."""
    if not isinstance(text, str):
        raise StreamNameError(f"a stream name is text, not {type(text).__name__}")
    if len(text) > MAX_NAME_LENGTH:
        raise StreamNameError(f"stream name {text[:80]!r}... is longer than {MAX_NAME_LENGTH} characters")
    return _parse_stream(text)


@functools.lru_cache(maxsize=4096)
def _parse_stream(text: str) -> tuple[str, str]:
    parts = _identifiers(text, "stream")
    if len(parts) != 2:
        raise StreamNameError(f"stream name {text[:200]!r}: {HOW}"
                              + (" (the schema is required)" if len(parts) == 1 else ""))
    try:
        (statement,) = parse_sql("SELECT FROM " + text)
    except (parser.ParseError, ValueError) as e:
        raise StreamNameError(f"stream name {text[:200]!r}: {e}; {HOW}") from None
    relation = statement.stmt.fromClause[0]
    if not relation.schemaname or not relation.relname:
        raise StreamNameError(f"stream name {text[:200]!r}: {HOW}")
    return relation.schemaname, relation.relname


def _render(name: str, before_dot: bool) -> str:
    if _PLAIN.match(name) and not (before_dot and name in _NOT_A_COLUMN_ID):
        return name
    return '"' + name.replace('"', '""') + '"'


@functools.lru_cache(maxsize=4096)
def stream_name(schema: str, table: str) -> str:
    """The one spelling of the stream of table ``schema.table`` (names as Postgres stores them)."""
    return _render(schema, True) + "." + _render(table, False)


def canonical(text: str) -> str:
    """A stream as written -> its one spelling; StreamNameError when it is not one."""
    return stream_name(*parse_stream(text))


def is_stream(text: str) -> bool:
    try:
        parse_stream(text)
    except StreamNameError:
        return False
    return True


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quoted(stream: str) -> str:
    """The stream's table in SQL, both parts quoted: ``"public"."Order Items"``."""
    schema, table = parse_stream(stream)
    return quote_ident(schema) + "." + quote_ident(table)


# -- Debezium ----------------------------------------------------------------------------


def _sanitized(topic: str) -> str:
    """Debezium's AbstractTopicNamingStrategy.sanitizedTopicName: each UTF-16 unit that Kafka
    refuses in a topic name becomes '_', cut at 249; '.' and '..' alone are replaced too."""
    out = "".join(c if _TOPIC_CHAR.match(c) else ("__" if ord(c) > 0xFFFF else "_") for c in topic)
    out = out[:MAX_TOPIC_LENGTH]
    return "_" if out == "." else "__" if out == ".." else out


def _blank(part: str) -> bool:
    """Java's ``trim().isEmpty()`` (Debezium leaves blank parts out of a topic name)."""
    return not part.strip("".join(chr(c) for c in range(0x21)))


def cdc_topic(prefix: str, stream: str) -> str:
    """Debezium's topic for the stream's table (SchemaTopicNamingStrategy, delimiter '.')."""
    schema, table = parse_stream(stream)
    return _sanitized(".".join(p for p in (prefix, schema, table) if not _blank(p)))


def include_entry(stream: str) -> str:
    """The stream as one entry of Debezium's ``table.include.list``: a regex (Java's) that
    matches the table's ``<schema>.<table>`` exactly. Debezium matches case-insensitively,
    ``(?-i:...)`` turns that off; commas are escaped, Debezium splits the list at the others."""
    schema, table = parse_stream(stream)
    if _PLAIN.match(schema) and _PLAIN.match(table) and "$" not in schema + table:
        return schema + "." + table  # as before: readable, and '.' matches only the dot here
    # the separator is written '[.]', a dot inside a name '\.': the entry reads back unambiguously
    return "(?-i:" + (re.escape(schema) + "[.]" + re.escape(table)).replace(",", r"\,") + ")"


def split_include_list(value: str) -> list[str]:
    """Debezium's split of a regex list: at each comma not escaped with a backslash."""
    entries = (re.sub(r"(?<!\\)\s+\Z", "", e.lstrip()) for e in re.split(r"(?<!\\),", value))
    return [e for e in entries if e]  # spaces around an entry go; an escaped one ('\ ') is part of a name


_ESCAPED = re.compile(r"\(\?-i:((?:\\.|[^\\\[])*)\[\.\]((?:\\.|[^\\\[])*)\)\Z", re.S)


def stream_of_include(entry: str) -> str | None:
    """The stream an ``include_entry`` names (a plain ``schema.table`` too), or None for an
    entry that is a real regex (Debezium's, matching any number of tables)."""
    if entry.count(".") == 1 and all(_PLAIN.match(p) and "$" not in p for p in entry.split(".")):
        return stream_name(*entry.split("."))
    m = _ESCAPED.match(entry)
    if not m:
        return None
    schema, table = (re.sub(r"\\(.)", r"\1", p, flags=re.S) for p in m.groups())
    if not schema or not table or re.escape(schema) != m.group(1).replace(r"\,", ",") \
            or re.escape(table) != m.group(2).replace(r"\,", ","):
        return None  # not exactly an escaped name: a regex
    return stream_name(schema, table)


# -- DuckDB table names -----------------------------------------------------------------


def parse_table(text: str) -> tuple[str | None, str]:
    """A DuckDB table as a user writes it (a stream's ``target``): ``table`` or
    ``schema.table``, quoted like a stream's parts; unquoted parts are kept as written
    (DuckDB keeps their case). -> (schema or None, table)."""
    parts = []
    for raw, kind in _identifiers(text, "table", fold=False):
        if kind == "UIDENT":
            raise StreamNameError(f"table name {text[:200]!r}: U&\"...\" names are Postgres', write the name itself")
        parts.append(raw[1:-1].replace('""', '"') if raw.startswith('"') else raw)
    if len(parts) > 2:
        raise StreamNameError(f"table name {text[:200]!r}: expected 'table' or 'schema.table' (quoted where needed)")
    return (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def table_name(schema: str | None, table: str) -> str:
    """A DuckDB table's one spelling (``table`` or ``schema.table``, quoted where needed)."""
    return table if schema is None and _PLAIN.match(table) else (
        _render(table, False) if schema is None else _render(schema, True) + "." + _render(table, False))


def split_quoted(target: str) -> tuple[str, str]:
    """``"schema"."table"`` (both parts quoted, as the replica stores a table) -> the names."""
    m = re.match(r'"((?:[^"]|"")*)"\.(".*)\Z', target, re.S)
    if not m or not _QUOTED.match(m.group(2)):
        raise ValueError(f"{target!r} is not a quoted \"schema\".\"table\"")
    return m.group(1).replace('""', '"'), m.group(2)[1:-1].replace('""', '"')
