"""The snapshotter's CSV -> Arrow reader on COPY output written by hand: NULL and empty
text, quotes and newlines, every transport it parses, no rows, values that do not fit."""
from __future__ import annotations

import io
from datetime import date, datetime, timezone
import pyarrow as pa
import pytest

from mallard.core.arrow_rows import CsvPlan
from mallard.core.snapshot_encoding import PgColumn
from mallard.services.snapshotter.service import _parts

COLUMNS = [PgColumn("id", "int8"), PgColumn("note", "text"), PgColumn("total", "numeric", (12 << 16 | 2) + 4),
           PgColumn("big", "numeric", (30 << 16 | 3) + 4), PgColumn("ok", "bool"), PgColumn("day", "date"),
           PgColumn("at", "timestamptz"), PgColumn("ratio", "float4"), PgColumn("tags", "_text", element="text")]


def read(csv: bytes, block: int = 1 << 20) -> list[dict]:
    plan = CsvPlan.of(COLUMNS)
    batches = list(plan.batches(io.BytesIO(csv), block))
    assert all(b.schema.equals(plan.schema) for b in batches)
    return pa.Table.from_batches(batches, plan.schema).to_pylist()


def test_values_become_their_transport():
    rows = read(b'1,"a ""quoted""\nline",12.30,123456789012345678901234567.891,t,19723,'
                b'2024-01-01 10:00:00.5+00,0.1,"[""x"",null]"\n'
                b'2,"",,,f,,,NaN,\n')
    assert rows[0] == {"c0": 1, "c1": 'a "quoted"\nline', "c2": "12.30", "c3": "123456789012345678901234567.891",  # numerics: text, cast in SQL
                       "c4": True, "c5": date(2024, 1, 1), "c6": datetime(2024, 1, 1, 10, 0, 0, 500000, timezone.utc),
                       "c7": pytest.approx(0.1), "c8": ["x", None]}
    assert rows[1]["c1"] == "" and all(rows[1][f"c{i}"] is None for i in (2, 3, 5, 6, 8))
    assert rows[1]["c4"] is False and rows[1]["c7"] != rows[1]["c7"]


def test_no_rows_is_no_batch():
    assert read(b"") == []


def test_small_blocks_give_many_batches_of_the_same_rows():
    csv = b"".join(b"%d,n%d,1.00,1.000,t,1,2024-01-01 00:00:00+00,1,\n" % (i, i) for i in range(1000))
    assert [r["c0"] for r in read(csv, block=1024)] == list(range(1000))


@pytest.mark.parametrize("csv, column", [(b"1,,1.234,,,,,,\n", "total"), (b"x,,,,,,,,\n", "id"),
                                         (b"1,,,,,,,,[1\n", "tags")])
def test_a_value_that_does_not_fit_is_refused_naming_its_column(csv, column):
    with pytest.raises(ValueError, match=column):
        read(csv)


def test_batches_are_cut_to_rows_and_bytes():
    batch = pa.record_batch({"a": pa.array(range(10_001))})
    parts = _parts(batch, 1000, 1 << 30)
    assert max(p.num_rows for p in parts) <= 1000 and sum(p.num_rows for p in parts) == 10_001
    assert all(p.nbytes <= 8_100 for p in _parts(batch, 100_000, 8_000))
    assert _parts(batch.slice(0, 0), 10, 10) == []
