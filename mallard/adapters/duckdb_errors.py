"""DuckDB's and pyarrow's errors, as transient or terminal (mallard/core/errors.py).

By class where the Python client raised it; by the message's ``<Kind> Error:`` prefix
where DuckDB raises a plain ``duckdb.Error``, its message says which."""
from __future__ import annotations

import duckdb
import pyarrow as pa

from mallard.core.errors import TerminalError, TransientError

_TRANSIENT = (duckdb.IOException, duckdb.OutOfMemoryException, duckdb.TransactionException,
              duckdb.ConnectionException, duckdb.SerializationException, pa.ArrowMemoryError)
_TERMINAL = (duckdb.ConversionException, duckdb.OutOfRangeException, duckdb.TypeMismatchException,
             duckdb.ConstraintException, duckdb.CatalogException, duckdb.BinderException, duckdb.ParserException,
             duckdb.InvalidInputException, duckdb.InvalidTypeException, duckdb.NotImplementedException,
             duckdb.DependencyException, duckdb.SequenceException,
             pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError)
_NEVER = (duckdb.FatalException, duckdb.InternalException, duckdb.InterruptException)
"""The database must be reopened (or the work was interrupted on purpose): neither retried nor set aside."""

_TRANSIENT_KINDS = ("IO Error", "Out of Memory Error", "TransactionContext Error", "Connection Error",
                    "Serialization Error", "HTTP Error")
_TERMINAL_KINDS = ("Conversion Error", "Out of Range Error", "Mismatch Type Error", "Constraint Error",
                   "Catalog Error", "Binder Error", "Parser Error", "Invalid Input Error", "Invalid type Error",
                   "Not implemented Error", "Dependency Error", "Sequence Error")


def translate(e: BaseException) -> BaseException:
    """``e`` as a TransientError or TerminalError (chained to it), or ``e`` itself when it
    is neither (then it stops the service, as it always did)."""
    if isinstance(e, (TransientError, TerminalError)) or isinstance(e, _NEVER):
        return e
    if isinstance(e, _TRANSIENT):
        return _chain(TransientError, e)
    if isinstance(e, _TERMINAL):
        return _chain(TerminalError, e)
    if type(e) is duckdb.Error:  # a plain one: DuckDB's own message says which
        kind = str(e).split(":", 1)[0].strip()
        if kind in _TRANSIENT_KINDS:
            return _chain(TransientError, e)
        if kind in _TERMINAL_KINDS:
            return _chain(TerminalError, e)
    return e


def _chain(kind: type[Exception], e: BaseException) -> Exception:
    err = kind(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    err.__cause__ = e
    return err
