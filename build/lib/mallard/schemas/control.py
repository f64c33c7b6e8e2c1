"""Messages on the control topic: what the scheduler and the CLI ask the snapshotter to do."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

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


class StateReset(BaseModel):
    """Rewind (``to_value``) or forget (``to_value`` None) the incremental state of streams:
    the next incremental run reads rows with update_key > to_value, or every row.
    The state itself is the last snapshot end's ``max_update_key`` (snapshot topic);
    a reset newer than that end overrides it. Keyed by ``reset_id``."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = Field(CONTROL_SCHEMA_VERSION, description="Version of this contract.")
    kind: Literal["state-reset"] = "state-reset"
    reset_id: str = Field(min_length=1)
    streams: list[str] = Field(min_length=1, description="'<schema>.<table>' of each stream whose state is reset.")
    to_value: str | None = Field(None, description="The update_key value to resume after (Postgres text form); "
                                 "None: no state, the next run reads every row.")
    requested_by: str = Field(min_length=1)
    requested_at: datetime


ControlMessage = Annotated[Union[ResnapshotRequest, StateReset], Field(discriminator="kind")]
control_message_adapter: TypeAdapter[ResnapshotRequest | StateReset] = TypeAdapter(ControlMessage)
