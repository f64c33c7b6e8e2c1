"""Which SQL the applier's ``/query`` endpoint runs: exactly one read, nothing else.

Pure: the DuckDB adapter hands in what DuckDB's own parser and tokenizer said about
the text (``duckdb.extract_statements`` types and ``duckdb.tokenize`` offsets), and
``refusal`` says why it must not run, or None.

Three rules, each a different depth of the same boundary:
- one statement, of DuckDB's type SELECT (which SHOW, DESCRIBE, SUMMARIZE and
  ``FROM t`` are too): no transaction control, COPY, ATTACH, SET, INSTALL, LOAD,
  CALL, CREATE, EXPLAIN ANALYZE of a write...;
- and beginning with a read's keyword: PRAGMA is rewritten by DuckDB into a SELECT
  of some pragmas, but what it may run is not a read's business;
- and calling none of the functions that change the database instance, run SQL text
  this check never saw, or take raw memory pointers (``REFUSED_CALLS``): a SELECT
  can call them, and one of them aborts the whole process when refused a file.
The connection the read runs on cannot reach the file system nor change settings
(see DuckDBReplica.confine): that stops what these rules miss.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

READ_STATEMENT = "SELECT"
"""DuckDB's StatementType name of every read: SELECT, WITH, FROM, VALUES, SHOW, DESCRIBE, SUMMARIZE."""

READ_STARTS = frozenset({"select", "with", "from", "values", "show", "describe", "desc", "summarize", "table", "("})

_CHANGES_INSTANCE = "changes the DuckDB instance the applier writes with"
_RUNS_TEXT = "runs SQL text that this check never sees"
_POINTERS = "reads raw memory of the applier's process"
_FILES = "reads files"
REFUSED_CALLS: dict[str, str] = {
    **dict.fromkeys(("checkpoint", "force_checkpoint", "enable_logging", "disable_logging", "enable_profiling",
                     "disable_profiling", "truncate_duckdb_logs"), _CHANGES_INSTANCE),
    **dict.fromkeys(("query", "json_execute_serialized_sql"), _RUNS_TEXT),
    **dict.fromkeys(("arrow_scan", "arrow_scan_dumb", "pandas_scan", "python_map_function"), _POINTERS),
    # The connection is denied the file system anyway; named here for a clear answer.
    **dict.fromkeys(("read_csv", "read_csv_auto", "sniff_csv", "read_parquet", "parquet_scan", "parquet_metadata",
                     "parquet_schema", "parquet_kv_metadata", "parquet_file_metadata", "parquet_full_metadata",
                     "parquet_bloom_probe", "read_json", "read_json_auto", "read_json_objects",
                     "read_json_objects_auto", "read_ndjson", "read_ndjson_auto", "read_ndjson_objects", "read_text",
                     "read_blob", "read_duckdb", "glob"), _FILES),
}

_WORD = re.compile(r'"(?:[^"]|"")*"|[^\W\d][\w$]*')


class QueryRefused(ValueError):
    """The text is not one read; the message says what was refused and why."""


def _excerpt(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def tokens(sql: str, offsets: Sequence[tuple[int, str]]) -> list[tuple[str, str]]:
    """(text, kind) of each token, from DuckDB's tokenizer (offset, kind): a word is cut to
    the word (comments that follow it are not part of it), quotes removed, lower-cased."""
    out = []
    for i, (start, kind) in enumerate(offsets):
        end = offsets[i + 1][0] if i + 1 < len(offsets) else len(sql)
        text = sql[start:end]
        if kind in ("identifier", "keyword"):
            m = _WORD.match(text)
            text = m.group(0) if m else text.strip()
            text = text[1:-1].replace('""', '"') if text.startswith('"') else text.lower()
        else:
            text = text.strip()
        out.append((text, kind))
    return out


def calls(toks: Sequence[tuple[str, str]]) -> list[str]:
    """Names called as functions: a word followed by an opening parenthesis."""
    return [text.lower() for (text, kind), (nxt, _) in zip(toks, toks[1:])
            if kind in ("identifier", "keyword") and nxt.startswith("(")]


def refusal(sql: str, statements: Sequence[tuple[str, str]], toks: Sequence[tuple[str, str]]) -> str | None:
    """Why ``/query`` must not run ``sql`` (None: it is one read).

    ``statements``: (DuckDB StatementType name, text) per statement, in order;
    ``toks``: ``tokens()`` of the whole text."""
    if not statements:
        return "no statement: /query runs one SELECT (or WITH, SHOW, DESCRIBE)"
    if len(statements) > 1:
        listed = "; ".join(_excerpt(text, 30) for _, text in statements)
        return (f"{len(statements)} statements ({listed}): /query runs exactly one read-only statement")
    kind, text = statements[0][0], sql  # DuckDB rewrites some statements' text (PRAGMA): name the caller's
    if kind != READ_STATEMENT:
        return (f"{kind} statement ({_excerpt(text)}): /query runs only SELECT, WITH, SHOW or DESCRIBE")
    first = toks[0][0].lower() if toks else ""
    if first not in READ_STARTS:
        return f"{first.upper() or 'this'} ({_excerpt(text)}): /query runs only SELECT, WITH, SHOW or DESCRIBE"
    for name in calls(toks):
        if name in REFUSED_CALLS:
            return f"{name}() {REFUSED_CALLS[name]}: /query runs reads of the replica only"
    return None
