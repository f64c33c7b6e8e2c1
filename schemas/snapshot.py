"""The snapshotter's messages on the snapshot topic, framed per snapshot:

``SnapshotBegin`` (the cut and the columns), any number of rows batches,
``SnapshotEnd`` (the row count); or ``SnapshotFailed`` instead of the end (or of
the whole snapshot, for a refused request). A begin says how its rows batches are written
(``rows_format``): ``json``, ``SnapshotRows`` (values encoded as Debezium encodes
them), or ``arrow``, an Arrow IPC stream of one record batch of the columns'
transport types, with ``SnapshotRowsHeader`` in its schema metadata (see
``arrow_rows_message``). The applier never acts on a snapshot whose end
message it has not seen. All messages of one snapshot share its key (the
stream), so they land in one partition, in order.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

SNAPSHOT_SCHEMA_VERSION = 1


def _one_spelling(stream: str) -> str:
    """A stream name as mallard spells it (mallard/core/names.py): every other spelling of
    the same table would be another stream to the applier."""
    from mallard.core.names import StreamNameError, canonical

    try:
        spelled = canonical(stream)
    except StreamNameError as e:
        raise ValueError(str(e)) from None
    if spelled != stream:
        raise ValueError(f"stream {stream[:200]!r} is spelled {spelled!r}")
    return stream


StreamName = Annotated[str, Field(pattern=r"^\S.*\..*\S$", max_length=300), AfterValidator(_one_spelling)]
"""'<schema>.<table>', each part double-quoted unless a plain lower-case name: public."Order Items"."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = Field(SNAPSHOT_SCHEMA_VERSION, description="Version of this contract.")
    snapshot_id: str = Field(min_length=1, description="Unique id of this snapshot of this stream.")
    stream: StreamName = Field(description="'<schema>.<table>' in Postgres, each part double-quoted unless it is a "
                                           "plain lower-case name: public.\"Order Items\".")


class SnapshotCut(BaseModel):
    """``pg_current_snapshot()`` of the reading transaction, as 64-bit xids.

    A CDC event with txId t is covered by the snapshot when t < xmin, or
    t < xmax and t is not in xip (see the cut rule in the design notes).
    """

    model_config = ConfigDict(extra="forbid")

    xmin: int = Field(ge=0)
    xmax: int = Field(ge=0)
    xip: list[int] = Field(default_factory=list, description="Transactions in progress at the cut.")


class SnapshotColumn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    pg_type: str = Field(description="Postgres type as format_type() prints it, e.g. numeric(12,2).")
    nullable: bool = True
    primary_key_position: int | None = Field(None, ge=1, description="1-based position in the primary key; None if not a key column.")
    connect_schema: dict[str, Any] = Field(
        default_factory=dict,
        description="The Kafka Connect field schema Debezium declares for this column: how its values are encoded.")


class SnapshotBegin(_Message):
    kind: Literal["begin"] = "begin"
    cut: SnapshotCut
    columns: list[SnapshotColumn] = Field(min_length=1)
    where: str | None = Field(None, description="Filter of a subset snapshot; the end-of-snapshot delete stays inside it.")
    request_id: str | None = Field(None, description="The resnapshot request this snapshot answers.")
    started_at: datetime
    requested_at: datetime | None = Field(None, description="When the request this snapshot answers was made (the "
                                          "request's requested_at): status shows the time from request to merged.")
    incremental: bool = Field(False, description="An incremental run (rows with update_key past the stream's state): "
                              "rows are upserted; nothing is deleted at its end.")
    rows_format: Literal["json", "arrow"] = Field(
        "json", description="How this snapshot's rows batches are written: 'json' (SnapshotRows) or 'arrow' (an Arrow "
        "IPC stream: column i is c<i>, of the Arrow type the applier loads that column's values as — its transport, "
        "mallard/core/arrow_rows.py — with a SnapshotRowsHeader as schema metadata).")


class SnapshotRows(_Message):
    kind: Literal["rows"] = "rows"
    batch: int = Field(ge=1, description="1-based batch number within the snapshot.")
    rows: list[list[Any]] = Field(description="Values in the order of SnapshotBegin.columns, encoded as Debezium's JsonConverter encodes them.")


class SnapshotEnd(_Message):
    kind: Literal["end"] = "end"
    batches: int = Field(ge=0)
    row_count: int = Field(ge=0)
    finished_at: datetime
    max_update_key: Any = Field(None, description="Incremental streams: the stream's state after this snapshot, the "
                                "largest update_key value read (Postgres text form), or the state it started from "
                                "when it read no row.")
    update_key: str | None = Field(None, description="The column max_update_key is of (incremental streams).")


class SnapshotFailed(BaseModel):
    """A resnapshot request the snapshotter refused or could not finish, for one stream:
    its answer, so that nothing waits for an end that will never come. A staged snapshot
    (``snapshot_id`` set: its begin was published) is abandoned by the applier."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = Field(SNAPSHOT_SCHEMA_VERSION, description="Version of this contract.")
    kind: Literal["failed"] = "failed"
    stream: StreamName = Field(description="'<schema>.<table>' the request named (spelled as in a begin).")
    request_id: str = Field(min_length=1, description="The resnapshot request this answers.")
    snapshot_id: str | None = Field(None, description="The snapshot begun for it, if its begin was published.")
    where: str | None = Field(None, description="The filter it asked for, as checked (or as given, if refused).")
    reason: str = Field(min_length=1, description="Why, naming what was wrong.")
    failed_at: datetime


class SnapshotRowsHeader(_Message):
    """What an Arrow rows batch says of itself (schema metadata key ``mallard``, JSON)."""

    kind: Literal["rows"] = "rows"
    batch: int = Field(ge=1, description="1-based batch number within the snapshot.")


ARROW_ROWS_CONTENT_TYPE = "application/vnd.apache.arrow.stream"
_ARROW_STREAM_START = b"\xff\xff\xff\xff"  # an IPC stream's continuation marker; JSON starts with '{'


def arrow_rows_message(header: SnapshotRowsHeader, rows: Any) -> bytes:
    """An Arrow rows batch: ``rows`` (a pyarrow RecordBatch) as an IPC stream, ``header``
    in its schema metadata."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema.with_metadata({"mallard": header.model_dump_json()})) as writer:
        writer.write_batch(rows)
    return sink.getvalue().to_pybytes()


def is_arrow_rows(value: bytes | None) -> bool:
    return value is not None and value[:4] == _ARROW_STREAM_START


def read_arrow_rows(value: bytes) -> tuple[SnapshotRowsHeader, Any]:
    """(header, pyarrow Table without the metadata) of an Arrow rows batch; ValueError if
    it is not one."""
    import pyarrow as pa

    try:
        table = pa.ipc.open_stream(value).read_all()
        header = SnapshotRowsHeader.model_validate_json((table.schema.metadata or {}).get(b"mallard", b""))
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"not an Arrow rows batch: {e}") from None
    return header, table.replace_schema_metadata(None)


SnapshotMessage = Annotated[Union[SnapshotBegin, SnapshotRows, SnapshotEnd, SnapshotFailed], Field(discriminator="kind")]
snapshot_message_adapter: TypeAdapter[SnapshotBegin | SnapshotRows | SnapshotEnd | SnapshotFailed] = TypeAdapter(
    SnapshotMessage)
