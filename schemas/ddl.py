"""The signal of a schema change that may have rewritten existing rows without row events.

mallard's event trigger (mallard/stack/roles.py) sends it in the transaction of an
``ALTER TABLE`` on a captured table that added a column with a default (or an identity or
generated column), renamed a column or changed a column's type:
``pg_logical_emit_message(true, 'mallard.ddl', <this JSON>)``. Debezium publishes it on
``<prefix>.message`` (schemas/debezium.py, ``LogicalMessageValue``) with the transaction's
``txId``; the applier then re-snapshots the stream through the cut. Anyone who can write to
Postgres can send such a message: at worst it costs a re-snapshot, which converges to
what Postgres holds.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DDL_SIGNAL_PREFIX = "mallard.ddl"
"""The logical decoding message prefix of the signal."""


class DdlSignal(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    v: Literal[1] = Field(1, description="Version of this contract.")
    schema_: str = Field(alias="schema", min_length=1, max_length=256, description="The table's schema, as Postgres spells it.")
    table: str = Field(min_length=1, max_length=256, description="The table's name, as Postgres spells it.")
    changes: str = Field(min_length=1, max_length=4000, description="What changed, for operators: 'column x added "
                         "with a default; column a renamed to b'.")
