"""Messages on the dead-letter topic: what could not be applied, why, and where it came from."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DeadLetter(BaseModel):
    """Keyed like the original message; the original key and value travel as text
    (UTF-8) or, when not UTF-8, base64, cut to a bounded size so that a dead letter is
    always writable (the original stays at its topic, partition and offset)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    kind: Literal["dead_letter"] = "dead_letter"
    error: str = Field(description="Why the message could not be applied, naming what was wrong.")
    service: str = Field(description="Which service dead-lettered it (applier, snapshotter, ...).")
    source_topic: str
    source_partition: int
    source_offset: int
    key: str | None = None
    value: str | None = None
    encoding: Literal["utf-8", "base64"] = "utf-8"
    truncated: bool = Field(False, description="Whether key or value is only the first bytes of the original.")
    key_bytes: int | None = Field(None, description="Size of the original key in bytes (None: no key).")
    value_bytes: int | None = Field(None, description="Size of the original value in bytes (None: no value).")
    failed_at: datetime
