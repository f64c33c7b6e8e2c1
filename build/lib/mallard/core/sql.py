"""SQL quoting shared by the Postgres and DuckDB sides (the same rules in both). Pure."""
from __future__ import annotations


def quote_ident(name: str) -> str:
    """A quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A string literal (standard_conforming_strings: backslashes are literal in both)."""
    return "'" + text.replace("'", "''") + "'"


def sql_text(value: str | None) -> str:
    """A string literal, or NULL."""
    return "NULL" if value is None else quote_literal(value)


def sql_int(value: int | None) -> str:
    """An integer literal, or NULL."""
    return "NULL" if value is None else str(int(value))


def sql_time(moment) -> str:
    """A TIMESTAMPTZ literal of an aware datetime."""
    return f"{quote_literal(moment.isoformat())}::TIMESTAMPTZ"
