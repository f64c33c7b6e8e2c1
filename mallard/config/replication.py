"""The replication config on disk and against Postgres (the edge around
mallard/core/replication.py, which is pure)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mallard.core.replication import ConfigError, ReplicationConfig, missing_tables_error, parse_config


def load_config(path: str | Path) -> ReplicationConfig:
    """Read and validate the file; ConfigError (one line) when it is unusable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the replication config: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not a text file (byte 0x{data[e.start]:02x} at offset {e.start} is not "
                          "UTF-8): is this the replication config?") from None
    return parse_config(text, str(path))


def check_against_postgres(config: ReplicationConfig, conn: Any, missing_ok: bool = False) -> list[str]:
    """Every stream's table exists, and an incremental stream's update_key and primary
    key columns exist; ConfigError naming the first that does not. ``missing_ok``: a
    table that does not exist yet is returned (a running stack waits for it) instead."""
    from mallard.adapters import postgres

    _, missing = postgres.existing_tables(conn, list(config.streams))
    if missing and not missing_ok:
        raise missing_tables_error(config, missing)
    for stream in config.streams.values():
        if stream.name in missing:
            continue
        columns = {c.name for c in postgres.table_columns(conn, stream.name)}
        for key in ("update_key",):
            col = getattr(stream, key)
            if col is not None and col not in columns:
                raise config.error(("streams", stream.name, key), f"column {col!r} does not exist in {stream.name}")
        for col in stream.primary_key or ():
            if col not in columns:
                raise config.error(("streams", stream.name, "primary_key"),
                                   f"column {col!r} does not exist in {stream.name}")
        table_key = postgres.primary_key(conn, stream.name)
        if stream.primary_key and tuple(table_key) != stream.primary_key:
            raise config.error(("streams", stream.name, "primary_key"),
                               f"{list(stream.primary_key)} is not the primary key of {stream.name} in Postgres "
                               f"({table_key or 'none'}); mallard upserts by the table's primary key")
        if stream.incremental and not table_key:
            raise config.error(("streams", stream.name), "an incremental stream needs a table with a primary key "
                                                         "to upsert by")
    return missing


def config_digest(data: bytes) -> str:
    """What names one version of the config (in /healthz, and what ``config apply`` waits for)."""
    import hashlib

    return hashlib.sha256(data).hexdigest()[:16]


class ConfigWatch:
    """A running service's replication config, taken again when the file changes (day-two
    changes without a restart). The file is read and validated as ``load_config`` does; one
    that does not validate, or that changes the source or target (fixed while running), is
    not taken: said once, and the service keeps its config."""

    def __init__(self, path: str | Path, config: ReplicationConfig | None, log: Any, interval_s: float = 2.0):
        self.path, self.config, self.log, self.interval_s = Path(path), config, log, interval_s
        self.digest = self._digest()
        self.refused: dict[str, str] | None = None
        """The version last refused: its digest and why (the service runs the previous one)."""
        self._next = 0.0

    def _digest(self) -> str | None:
        try:
            return config_digest(self.path.read_bytes())
        except OSError:
            return None

    def state(self) -> dict[str, Any]:
        """For /healthz: which version of the config the service runs."""
        return {"path": str(self.path), "digest": self.digest,
                "streams": sorted(self.config.streams) if self.config else [], "refused": self.refused}

    def check(self, now: float, force: bool = False) -> tuple[ReplicationConfig, Any] | None:
        """(the new config, its ConfigDiff) when the file changed into a usable config; else None.
        Reads the file at most every ``interval_s`` (``force``: now)."""
        from mallard.core.replication import diff_configs

        if self.interval_s <= 0 and not force or (not force and now < self._next):
            return None
        self._next = now + self.interval_s
        digest = self._digest()
        if digest is None or digest == self.digest or (self.refused and digest == self.refused["digest"]):
            return None
        try:
            new = load_config(self.path)
        except ConfigError as e:
            self._refuse(digest, f"not taken, the service keeps its config: {e}")
            return None
        if self.config is None:
            self.config, self.digest, self.refused = new, digest, None
            return new, None
        diff = diff_configs(self.config, new)
        if diff.fixed_changed:
            self._refuse(digest, f"{self.path}: {' and '.join(diff.fixed_changed)} changed: not taken while running "
                                 "(restart the services for that); the service keeps its config")
            return None
        self.config, self.digest, self.refused = new, digest, None
        self.log.info("replication config %s changed: %s", self.path, diff.describe(),
                      extra={"kind": "config_reloaded", "digest": digest, "added": list(diff.added),
                             "removed": list(diff.removed), "changed": sorted(diff.changed)})
        return new, diff

    def _refuse(self, digest: str, why: str) -> None:
        self.refused = {"digest": digest, "reason": why}
        self.log.error("replication config %s", why, extra={"kind": "config_refused", "digest": digest})
