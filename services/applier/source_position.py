"""The source's WAL position: the transaction assembler's bound on commit LSNs (a forged
END marker cannot claim a position beyond it)."""
from __future__ import annotations

import time
from typing import Any

from mallard.services.applier.config import ApplierSettings

SOURCE_RETRY_S = 30.0
"""After the source did not answer, how long the window of what Debezium reported bounds
commit LSNs before the source is asked again."""
WAL_POSITION = ("SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END)"
                " - '0/0'::pg_lsn")


class SourcePosition:
    """The source's current WAL position (the assembler's ``source_lsn`` port): a commit LSN
    beyond it cannot be real. One connection, kept; when the source does not answer, None
    (said once) and no new try for SOURCE_RETRY_S."""

    def __init__(self, settings: ApplierSettings, log: Any):
        self.settings, self.log = settings, log
        self._conn: Any = None
        self._retry_at = 0.0
        self._failing = False

    def __call__(self) -> int | None:
        if self._conn is None and time.monotonic() < self._retry_at:
            return None
        try:
            from mallard.adapters import postgres

            if self._conn is None:
                self._conn = postgres.connect(**self.settings.pg_params(), timeout=3)
            lsn = int(postgres.scalar(self._conn, WAL_POSITION))
        except Exception as e:  # noqa: BLE001 - transient: the window bounds meanwhile
            self.close()
            self._retry_at = time.monotonic() + SOURCE_RETRY_S
            if not self._failing:
                self._failing = True
                self.log.warning("cannot ask the source its WAL position (%s); meanwhile a commit LSN may be at most "
                                 "%d bytes beyond the last one known (retrying every %.0fs)", str(e).strip(),
                                 self.settings.commit_lsn_window_bytes, SOURCE_RETRY_S)
            return None
        if self._failing:
            self._failing = False
            self.log.info("the source answers its WAL position again")
        return lsn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._conn = None

