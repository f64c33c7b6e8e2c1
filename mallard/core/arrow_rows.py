"""Snapshot rows as Arrow: the transport types both paths load into DuckDB, and the
snapshotter's fast reader of Postgres' COPY CSV. Pure (pyarrow only: no I/O client).

Every column has a transport (mallard/core/pgtypes.py): the Arrow type its values are
loaded into DuckDB with, whatever the path. CDC values and JSON snapshot rows are
decoded in Python into it (``snapshot_table``); the snapshotter's Arrow rows carry it
directly. ``CsvPlan`` says, per column, what the snapshot's ``COPY ... (FORMAT csv)``
selects and how Arrow's CSV parser (C++, threaded) turns that text into the transport
array — so that snapshot rows and CDC rows still become the very same DuckDB values:
- integers, floats, booleans, text (also uuid, json, enums, unknown types), numerics and
  timestamps with time zone: Postgres' own text, parsed by Arrow into the transport
  type (numerics stay text, each checked to fit its DECIMAL(p,s) exactly, never through
  a float; a value that does not fit is an error);
- dates, times, timestamps: the integer Debezium sends (days, ms or µs since the epoch,
  ``json_expression``), parsed as an integer and viewed as the transport type;
- everything else (bytea, interval, arrays): the Debezium JSON value
  (``json_expression``), decoded by the same Python decoder CDC values go through.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv

from mallard.core.changes import PoisonMessage
from mallard.core.pgtypes import ARROW_PARSED, ColumnType, column_type, decode_values
from mallard.core.snapshot_encoding import PgColumn, connect_schema, json_expression
from mallard.core.sql import quote_ident

_ARROW = {
    "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "float32": pa.float32(), "float64": pa.float64(), "bool": pa.bool_(), "string": pa.string(),
    "binary": pa.binary(), "date32": pa.date32(), "time_ms": pa.time32("ms"), "time_us": pa.time64("us"),
    "time_ns": pa.time64("ns"), "ts_ms": pa.timestamp("ms"), "ts_us": pa.timestamp("us"),
    "ts_ns": pa.timestamp("ns"), "tstz_us": pa.timestamp("us", tz="UTC"),
    "interval": pa.month_day_nano_interval(),
}


def arrow_type(ct: ColumnType) -> pa.DataType:
    t = ct.transport
    if t.startswith("list:"):
        return pa.list_(arrow_type(ColumnType("", t[5:], decode=None, precision=ct.precision)))
    if t == "decimal":
        return pa.decimal128(*ct.precision)
    return _ARROW[t]


def transport_schema(types: Sequence[ColumnType]) -> pa.Schema:
    """The Arrow schema of a snapshot's rows: column i is ``c<i>`` of its transport type."""
    return pa.schema([pa.field(f"c{i}", arrow_type(ct)) for i, ct in enumerate(types)])


def transport_array(ct: ColumnType, values: Sequence[Any]) -> pa.Array:
    """Transport values (``decode_values``) as the typed Arrow array DuckDB loads."""
    if ct.decode in ARROW_PARSED:
        try:
            return pa.array(values, pa.string()).cast(arrow_type(ct))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            values = [None if v is None else ct.decode(v) for v in values]  # names what is wrong
    return pa.array(values, arrow_type(ct))


def snapshot_table(types: Sequence[ColumnType], columns: Sequence[Sequence[Any]]) -> pa.Table:
    """Decoded snapshot columns as typed Arrow arrays; a value of the wrong type is poison."""
    arrays = {}
    for i, (values, ct) in enumerate(zip(columns, types)):
        try:
            arrays[f"c{i}"] = transport_array(ct, values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as e:
            raise PoisonMessage(f"snapshot column {i + 1} ({ct.duckdb}): {e}") from None
    return pa.table(arrays)


# --- The snapshotter's reader: COPY CSV -> Arrow record batches of transport arrays ------

_VIEWED = {"date32": pa.int32(), "time_ms": pa.int32(), "time_us": pa.int64(), "ts_ms": pa.int64(),
           "ts_us": pa.int64()}
"""Transports read as the integer Debezium sends (``json_expression``) and viewed as such."""
_AS_TEXT = {"int8", "int16", "int32", "int64", "float32", "float64", "bool", "string", "decimal", "tstz_us"}
"""Transports Arrow parses from Postgres' own text."""


@dataclass(frozen=True)
class CsvColumn:
    name: str
    select: str
    """SQL selecting the column for COPY."""
    read_as: pa.DataType
    """The Arrow type the CSV parser gives the column."""
    finish: Callable[[pa.Array], pa.Array]
    """That array -> the transport array."""


def _same(array: pa.Array) -> pa.Array:
    return array


def _viewed_as(target: pa.DataType) -> Callable[[pa.Array], pa.Array]:
    return lambda array: array.view(target)


def _unscaled(precision: int) -> Callable[[pa.Array], pa.Array]:
    """A DECIMAL(p<=18, s) read as decimal -> its unscaled integers (the int64 transport):
    the same 128-bit values read with scale 0, then narrowed (exact: p <= 18 digits)."""
    return lambda array: array.view(pa.decimal128(precision, 0)).cast(pa.int64())


def _checked_decimal_text(precision: int, scale: int) -> Callable[[pa.Array], pa.Array]:
    """Postgres' text of numeric(p, s) values, kept as text (the transport: cast in SQL) once
    Arrow has parsed it as DECIMAL(p, s) without rounding (NaN, or a value that does not fit,
    is refused as the CDC path refuses it)."""
    def finish(array: pa.Array) -> pa.Array:
        array.cast(pa.decimal128(precision, scale))
        return array

    return finish


def _from_json(ct: ColumnType) -> Callable[[pa.Array], pa.Array]:
    """Debezium JSON values (bytea, interval, arrays) -> the transport array, through the
    decoders CDC values go through."""
    loads = orjson.loads

    def finish(array: pa.Array) -> pa.Array:
        return transport_array(ct, decode_values(ct, [None if v is None else loads(v) for v in array.to_pylist()]))

    return finish


def csv_column(col: PgColumn, ct: ColumnType) -> CsvColumn:
    """How ``col`` (of column type ``ct``, from its connect schema) is read."""
    t = ct.transport
    if t in _VIEWED and col.element is None:
        return CsvColumn(col.name, json_expression(col), _VIEWED[t], _viewed_as(arrow_type(ct)))
    if t == "int64" and ct.precision is not None:  # numeric(p<=18, s): unscaled
        return CsvColumn(col.name, quote_ident(col.name), pa.decimal128(*ct.precision), _unscaled(ct.precision[0]))
    if t == "string" and ct.precision is not None:  # numeric(p<=38, s): text, checked
        return CsvColumn(col.name, quote_ident(col.name), pa.string(), _checked_decimal_text(*ct.precision))
    if t in _AS_TEXT:
        return CsvColumn(col.name, quote_ident(col.name), arrow_type(ct), _same)
    return CsvColumn(col.name, json_expression(col), pa.string(), _from_json(ct))


@dataclass(frozen=True)
class CsvPlan:
    """How one table's snapshot is read as CSV and turned into transport record batches."""

    columns: tuple[CsvColumn, ...]
    schema: pa.Schema
    """The transport schema (``transport_schema``) of the batches it yields."""

    @classmethod
    def of(cls, columns: Sequence[PgColumn]) -> CsvPlan:
        types = [column_type(connect_schema(c)) for c in columns]
        return cls(tuple(csv_column(c, ct) for c, ct in zip(columns, types)), transport_schema(types))

    SESSION = "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL extra_float_digits = 1"
    """The text forms the plan parses (timestamptz with offset +00, ISO dates, exact floats):
    run in the reading transaction before ``copy``."""

    @property
    def select_list(self) -> str:
        return ", ".join(c.select for c in self.columns)

    @staticmethod
    def copy(query: str) -> str:
        """The COPY statement whose output ``batches`` reads (``query`` selects ``select_list``)."""
        return f"COPY ({query}) TO STDOUT WITH (FORMAT csv)"

    def batches(self, source: Any, block_bytes: int) -> Iterator[pa.RecordBatch]:
        """Transport record batches of about ``block_bytes`` of CSV each, from ``source`` (a
        binary file or stream of ``COPY ... TO STDOUT (FORMAT csv)`` output); a value Arrow
        cannot take as its type raises ``ValueError`` naming the column."""
        names = [f"c{i}" for i in range(len(self.columns))]
        try:
            reader = pacsv.open_csv(
                source,
                read_options=pacsv.ReadOptions(column_names=names, block_size=block_bytes),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),  # Postgres quotes, does not escape, newlines
                convert_options=pacsv.ConvertOptions(
                    column_types={n: c.read_as for n, c in zip(names, self.columns)},
                    # NULL is an unquoted empty field, the empty string a quoted one
                    null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False,
                    true_values=["t"], false_values=["f"]))
        except pa.ArrowInvalid as e:
            if str(e) == "Empty CSV file":  # no row
                return
            raise self._not_fitting(e) from None
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as e:
                raise self._not_fitting(e) from None
            arrays = []
            for i, (column, array) in enumerate(zip(self.columns, batch.columns)):
                try:
                    arrays.append(column.finish(array))
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as e:
                    raise ValueError(f"column {column.name!r} ({self.schema.field(i).type}): {e}") from None
            yield pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _not_fitting(self, e: Exception) -> ValueError:
        """Arrow names a column by its number: say its name."""
        message = re.sub(r"CSV column #(\d+)", lambda m: f"column {self.columns[int(m[1])].name!r}", str(e))
        return ValueError(f"a value does not fit its type: {message}")
