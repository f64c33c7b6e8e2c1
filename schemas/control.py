"""Messages on the control topic: what the scheduler and the CLI ask the snapshotter to do."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CONTROL_SCHEMA_VERSION = 1


class ResnapshotRequest(BaseModel):
    """Re-snapshot one or more streams. Keyed by ``request_id`` on the topic."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = Field(CONTROL_SCHEMA_VERSION, description="Version of this contract.")
    kind: Literal["resnapshot"] = "resnapshot"
    request_id: str = Field(min_length=1, description="Deterministic for scheduled fires ('<schedule>@<fire time>'), random for ad-hoc ones.")
    streams: list[str] = Field(min_length=1, description="'<schema>.<table>' of each stream to snapshot.")
    reason: str = Field(min_length=1, description="Why: 'schedule daily', 'repair', 'schema change', ...")
    requested_by: str = Field(min_length=1, description="Who asked: 'scheduler:<schedule>', 'cli:<user>', 'applier'.")
    requested_at: datetime
    where: str | None = Field(None, description="SQL filter for a subset snapshot.")
    full: bool = Field(False, description="Force a full refresh of an incremental stream.")
