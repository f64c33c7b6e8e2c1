"""SQL quoting shared by the Postgres and DuckDB sides (the same rules in both). Pure."""
from __future__ import annotations


def quote_ident(name: str) -> str:
    """A quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A string literal (standard_conforming_strings: backslashes are literal in both)."""
    return "'" + text.replace("'", "''") + "'"
