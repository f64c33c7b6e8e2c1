"""Operator-facing logging: one line per event worth knowing, never a secret.

Two formats: ``text`` (the default, for people) and ``json`` (``--log-format json`` or
``MALLARD_LOG_FORMAT=json``, for machines): one JSON object per line with ``time``,
``level``, ``logger`` and ``message``, plus the structured fields a line was given with
``extra=`` (per applied batch and per snapshot chunk: stream, rows, rate, ...). Only what
a call passes in ``extra`` is added, so nothing reaches a log that was not chosen for it.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """A record as one JSON line: time (UTC, ISO 8601), level, logger, message, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def log_format(fmt: str | None = None) -> str:
    """The format asked for, else MALLARD_LOG_FORMAT, else text."""
    fmt = (fmt or os.environ.get("MALLARD_LOG_FORMAT") or "text").lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (expected {' or '.join(FORMATS)})")
    return fmt


_configured = "text"


def configure(level: str = "INFO", name: str = "mallard", fmt: str | None = None) -> logging.Logger:
    global _configured
    _configured = log_format(fmt)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if _configured == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(_configured == "json")
    return logging.getLogger(name)


def librdkafka_logger() -> logging.Logger | None:
    """With JSON logs, librdkafka's own lines (it writes text to stderr) go through logging
    too, so every line stays one JSON object; None (its default) otherwise."""
    return logging.getLogger("mallard.librdkafka") if _configured == "json" else None
