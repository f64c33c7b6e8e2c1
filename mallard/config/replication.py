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
