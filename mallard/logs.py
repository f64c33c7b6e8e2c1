"""Operator-facing logging: one line per event worth knowing, never a secret."""
from __future__ import annotations

import logging
import sys


def configure(level: str = "INFO", name: str = "mallard") -> logging.Logger:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stdout,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        force=True,
    )
    return logging.getLogger(name)
