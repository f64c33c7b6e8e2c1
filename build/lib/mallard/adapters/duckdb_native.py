"""A second connection to the replica's DuckDB database, through DuckDB's C API, that
applies a whole batch in one call during which the GIL is free.

Why: DuckDB's Python client takes the GIL around every statement and again after every
task of a query (to check for Ctrl-C). Under a backlog the decoding thread holds the GIL,
so each of those waits for it: about 50 waits per batch, most of the DuckDB thread's time.
Through the C API (ctypes lets the GIL go for the call) a batch's statements run as one
script and wait once.

The connection is opened on the Python client's own database instance (from the client's
instance cache), so both connections see one database: one writer, one WAL, one lock.
The Arrow tables a batch reads are views made and dropped inside the batch's transaction,
so none of them is ever committed. Whatever fails here, the replica falls back to the
Python client.
"""
from __future__ import annotations

import ctypes
import importlib
import os
from typing import Sequence

import pyarrow as pa

_P = ctypes.c_void_p
_RESULT_BYTES = 64  # sizeof(duckdb_result) is 48: six words


class NativeUnavailable(RuntimeError):
    """The C API cannot be reached on this DuckDB build; the Python client does everything."""


class _ArrowArrayStream(ctypes.Structure):
    _fields_ = [("get_schema", _P), ("get_next", _P), ("get_last_error", _P), ("release", _P), ("private_data", _P)]


_RELEASE = ctypes.PYFUNCTYPE(None, _P)
_SIGNATURES = {
    "duckdb_create_config": ([_P], ctypes.c_int),
    "duckdb_set_config": ([_P, ctypes.c_char_p, ctypes.c_char_p], ctypes.c_int),
    "duckdb_destroy_config": ([_P], None),
    "duckdb_get_or_create_from_cache": ([_P, ctypes.c_char_p, _P, _P, _P], ctypes.c_int),
    "duckdb_connect": ([_P, _P], ctypes.c_int),
    "duckdb_disconnect": ([_P], None),
    "duckdb_close": ([_P], None),
    "duckdb_query": ([_P, ctypes.c_char_p, _P], ctypes.c_int),
    "duckdb_result_error": ([_P], ctypes.c_char_p),
    "duckdb_destroy_result": ([_P], None),
    "duckdb_arrow_scan": ([_P, ctypes.c_char_p, _P], ctypes.c_int),
}
_INSTANCE_CACHE = "_ZN6duckdb14instance_cacheE"  # the Python client's DBInstanceCache
TESTED_VERSIONS = ("1.5.5",)
"""Where reaching the client's instance cache (a symbol, and the layout of the C API's wrapper
of it) was checked; on any other DuckDB the Python client does everything."""


def _library_path() -> str:
    for name in ("_duckdb", "duckdb.duckdb"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        path = getattr(module, "__file__", None) or ""
        if path.endswith(".so"):
            return path
    raise NativeUnavailable("DuckDB's compiled module was not found")


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    for name, (args, result) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    return lib


class NativeConnection:
    def __init__(self, con, path: str):
        """A C API connection to the database ``con`` (a Python client connection to ``path``) has open."""
        import duckdb

        if not path or path.startswith(":memory:"):  # never cached: the C API would get a database of its own
            raise NativeUnavailable("an in-memory database")
        if duckdb.__version__ not in TESTED_VERSIONS:
            raise NativeUnavailable(f"DuckDB {duckdb.__version__}: its C API is used on {', '.join(TESTED_VERSIONS)} only")
        try:
            so = _library_path()
            self._free = _bind(ctypes.CDLL(so))  # calls that let the GIL go
            self._held = _bind(ctypes.PyDLL(so))  # short calls that keep it (no wait to get it back)
            cache = ctypes.addressof(ctypes.c_char.in_dll(self._free, _INSTANCE_CACHE))
        except (OSError, AttributeError, ValueError) as e:
            raise NativeUnavailable(f"DuckDB's C API is not reachable: {e}") from e
        # The instance cache hands out the open instance only to a config equal to the one
        # it was opened with; the client's differs from a C API default in duckdb_api alone.
        api = con.execute("SELECT current_setting('duckdb_api')").fetchone()[0]
        self._cache_wrapper = (_P * 1)(cache)  # what a duckdb_instance_cache points to
        config, error = _P(), ctypes.c_char_p()
        self._db, self._con = _P(), _P()
        self._free.duckdb_create_config(ctypes.byref(config))
        try:
            self._free.duckdb_set_config(config, b"duckdb_api", api.encode())
            failed = self._free.duckdb_get_or_create_from_cache(
                ctypes.addressof(self._cache_wrapper), path.encode(), ctypes.byref(self._db), config, ctypes.byref(error))
        finally:
            self._free.duckdb_destroy_config(ctypes.byref(config))
        if failed:
            message = (error.value or b"").decode(errors="replace")
            raise NativeUnavailable(f"DuckDB's C API could not share the open database: {message}")
        if self._free.duckdb_connect(self._db, ctypes.byref(self._con)):
            self._free.duckdb_close(ctypes.byref(self._db))
            raise NativeUnavailable("DuckDB's C API could not connect")
        self._result = (ctypes.c_char * _RESULT_BYTES)()
        if not self._shares(con):
            self.close()
            raise NativeUnavailable("DuckDB's C API opened a database other than the client's")

    def _shares(self, con) -> bool:
        """Whether this is the client's database instance: a catalog attached here (in memory,
        nothing written) shows there."""
        probe = f"_mallard_probe_{os.getpid()}_{id(self)}"
        self.execute(f"ATTACH ':memory:' AS {probe}")
        try:
            return con.execute("SELECT count(*) FROM duckdb_databases() WHERE database_name = ?",
                               [probe]).fetchone()[0] == 1
        finally:
            self.execute(f"DETACH {probe}")

    def _query(self, lib: ctypes.CDLL, sql: str) -> None:
        failed = lib.duckdb_query(self._con, sql.encode(), self._result)
        try:
            if failed:
                raise duckdb_error((lib.duckdb_result_error(self._result) or b"").decode(errors="replace"))
        finally:
            lib.duckdb_destroy_result(self._result)

    def execute(self, sql: str) -> None:
        """Run statements (no result), the GIL free meanwhile."""
        self._query(self._free, sql)

    def run_transaction(self, statements: Sequence[str], scans: Sequence[tuple[str, pa.Table]]) -> None:
        """Run ``statements`` in one DuckDB transaction; each of ``scans`` is a view its statements
        can read once."""
        streams = []
        # BEGIN and the views take no time: they keep the GIL rather than wait to get it back.
        self._query(self._held, "BEGIN TRANSACTION")
        try:
            for name, table in scans:  # views of the C API are not temporary: dropped before COMMIT
                stream = _ArrowArrayStream()
                streams.append(stream)
                table.to_reader()._export_to_c(ctypes.addressof(stream))
                if self._held.duckdb_arrow_scan(self._con, name.encode(), ctypes.byref(stream)):
                    raise duckdb_error(f"could not read the Arrow table {name}")
            self.execute(";\n".join([*statements, *(f"DROP VIEW {name}" for name, _ in scans), "COMMIT"]))
        except BaseException:
            try:
                self._query(self._held, "ROLLBACK")
            except Exception:  # a failed COMMIT has rolled back already
                pass
            raise
        finally:
            for stream in streams:
                if stream.release:
                    _RELEASE(stream.release)(ctypes.addressof(stream))

    def close(self) -> None:
        if self._con:
            self._free.duckdb_disconnect(ctypes.byref(self._con))
            self._free.duckdb_close(ctypes.byref(self._db))
            self._con = _P()


def duckdb_error(message: str) -> Exception:
    """The Python client's exception for a DuckDB error, so that callers handle both alike."""
    import duckdb

    return duckdb.Error(message)
