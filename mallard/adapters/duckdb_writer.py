"""Where a batch's script meets DuckDB: the one place that knows how (the C API of
mallard/adapters/duckdb_native.py when it can be had, else the Python client).

Kept apart from the replica's other jobs on purpose: how a script reaches DuckDB is
being replaced (a writer process), and this class is all that change touches."""
from __future__ import annotations

import logging

import duckdb

from mallard.adapters.duckdb_native import NativeConnection, NativeUnavailable
from mallard.core.replica_sql import Script

log = logging.getLogger("mallard.duckdb")


class ScriptRunner:
    """Runs a ``Script`` as one DuckDB transaction on ``con``'s database."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: str, native: bool = True):
        self.con = con
        self.native: NativeConnection | None = None
        """Where batches are applied, if DuckDB's C API can be had (see duckdb_native); else the client does it."""
        if native:
            try:
                self.native = NativeConnection(self.con, path)
            except NativeUnavailable as e:
                log.warning("%s; batches are applied through DuckDB's Python client (slower under load)", e)

    @property
    def apart(self) -> bool:
        """Whether scripts run on a connection of their own (the client's stays free meanwhile)."""
        return self.native is not None

    def run(self, script: Script) -> None:
        """One DuckDB transaction: through the C API where it can be had (one call, the GIL free)."""
        if self.native is not None:
            self.native.run_transaction(script.statements, script.scans)
            return
        for name, table in script.scans:
            self.con.register(name, table)
        try:
            self.con.execute("BEGIN TRANSACTION")
            try:
                for sql in script.statements:
                    self.con.execute(sql)
                self.con.execute("COMMIT")
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
        finally:
            for name, _ in script.scans:
                self.con.unregister(name)

    def close(self) -> None:
        if self.native is not None:
            self.native.close()
