"""Errors by what to do about them. Adapters translate their driver's errors into these.

- ``TransientError``: the same work may succeed later (a connection lost, an I/O error,
  a timeout, memory): retry it, with backoff, and say so once.
- ``TerminalError``: the work itself is wrong (a constraint, a conversion, a type, a
  catalog error): retrying it fails again. The applier bisects a batch that raises one
  down to the event that causes it, dead-letters that event and re-snapshots its stream.

An error neither of these (a bug, a fatal DuckDB error) stops the service, as before.
"""
from __future__ import annotations


class TransientError(Exception):
    """Retry later: nothing about the work itself is wrong."""


class TerminalError(Exception):
    """The work cannot succeed as it is: set it aside (dead-letter), never retry it."""


def cause(e: BaseException) -> str:
    """The first line of the driver's message, for a log line or a dead letter."""
    text = str(e.__cause__ or e).strip()
    return text.splitlines()[0] if text else type(e.__cause__ or e).__name__
