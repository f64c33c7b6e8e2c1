"""Following framed snapshots: only a complete snapshot is merged, and the snapshot
topic's offsets never pass a snapshot that has not been merged."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from mallard.core.changes import PoisonMessage
from mallard.core.cut import Cut
from mallard.core.merge import apply_event, TableChanges
from mallard.core.snapshots import SnapshotFrame, SnapshotTracker, decode_columns, frame_schema

TP = ("mallard.snapshots", 0)
COLUMNS = [
    {"name": "id", "pg_type": "int4", "primary_key_position": 1, "connect_schema": {"type": "int32"}},
    {"name": "total", "pg_type": "numeric(12,2)", "primary_key_position": None,
     "connect_schema": {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
                        "parameters": {"scale": "2", "connect.decimal.precision": "12"}}},
    {"name": "day", "pg_type": "date", "connect_schema": {"type": "int32", "name": "io.debezium.time.Date"}},
]


def frame(snapshot_id: str = "s1", stream: str = "public.t") -> SnapshotFrame:
    return SnapshotFrame(snapshot_id, stream, Cut(10, 12, frozenset({11})), frame_schema(stream, COLUMNS), None,
                         datetime.now(timezone.utc))


def test_the_schema_of_a_begin_is_typed_as_cdc_events_type_it():
    schema = frame().schema
    assert schema.key_columns == ("id",)
    assert [t.duckdb for t in schema.types] == ["INTEGER", "DECIMAL(12,2)", "DATE"]


def test_rows_decode_column_wise_and_bad_values_name_the_column():
    types = frame().schema.types
    cols = decode_columns(types, [[1, "AQ==", 0], [2, None, None]])
    assert list(cols[0]) == [1, 2] and cols[1][1] is None and len(cols) == 3
    with pytest.raises(PoisonMessage, match="column 2 .*DECIMAL"):
        decode_columns(types, [[1, 5, None]])
    for bad in ([[1, None]], [7], [{"a": 1, "b": 2, "c": 3}][:0] + [None]):
        with pytest.raises(PoisonMessage, match="not a list of 3 values"):
            decode_columns(types, bad)


def test_a_complete_snapshot_is_merged_and_then_releases_its_offsets():
    t = SnapshotTracker()
    f = frame()
    assert [w.kind for w in t.begin(f, TP, 5)] == ["begin"]
    assert t.committable() == {TP: 5}
    rows = t.rows(f, 1, [[1, 2], [None, None], [None, None]], TP, 6)
    assert rows[0].kind == "rows" and rows[0].row_count == 2
    end = t.end(f, 1, 2, TP, 7)
    assert [w.kind for w in end] == ["end"]
    assert t.committable() == {TP: 5}  # not merged yet
    t.done(end[0])
    assert t.committable() == {TP: 8}


@pytest.mark.parametrize("batches,row_count", [(2, 2), (1, 3)])
def test_an_end_that_does_not_match_what_arrived_abandons_the_snapshot(batches, row_count):
    t = SnapshotTracker()
    f = frame()
    t.begin(f, TP, 0)
    t.rows(f, 1, [[1, 2], [None, None], [None, None]], TP, 1)
    (work,) = t.end(f, batches, row_count, TP, 2)
    assert work.kind == "abandon" and "arrived" in work.reason
    assert t.frame(f.stream, f.snapshot_id) is None


def test_a_missing_batch_abandons_the_snapshot():
    t = SnapshotTracker()
    f = frame()
    t.begin(f, TP, 0)
    (work,) = t.rows(f, 2, [[1], [None], [None]], TP, 1)
    assert work.kind == "abandon" and "missing" in work.reason


def test_a_new_begin_of_the_same_stream_supersedes_one_cut_short():
    t = SnapshotTracker()
    old, new = frame("s1"), frame("s2")
    t.begin(old, TP, 0)
    t.rows(old, 1, [[1], [None], [None]], TP, 1)
    work = t.begin(new, TP, 2)
    assert [w.kind for w in work] == ["abandon", "begin"] and work[0].frame is old
    assert t.committable() == {TP: 0}  # until the abandon is done
    t.done(work[0])
    assert t.committable() == {TP: 2}


def test_snapshots_of_different_streams_interleave():
    t = SnapshotTracker()
    a, b = frame("a", "public.a"), frame("b", "public.b")
    t.begin(a, TP, 0)
    t.begin(b, TP, 1)
    t.rows(b, 1, [[1], [None], [None]], TP, 2)
    (end_b,) = t.end(b, 1, 1, TP, 3)
    t.done(end_b)
    assert t.committable() == {TP: 0}  # a is still being staged
    (end_a,) = t.end(a, 0, 0, TP, 4)
    t.done(end_a)
    assert t.committable() == {TP: 5}


def test_the_new_key_of_a_primary_key_update_takes_unchanged_toast_values_from_the_old_key():
    from mallard.core.changes import ChangeEvent, TableSchema
    from mallard.core.pgtypes import column_type

    schema = TableSchema("public.t", ("id", "big"), (column_type({"type": "int32"}), column_type({"type": "string"})),
                         ("id",))

    def event(op, key, row, order, unavailable=frozenset()):
        return ChangeEvent("t", 0, order, "public.t", op, 7, order, 0, key, row, unavailable, schema)

    stored = TableChanges(schema)  # the old row is in DuckDB, not in this batch
    apply_event(stored, event("d", (1,), None, 1), 1)
    apply_event(stored, event("c", (2,), (2, None), 2, frozenset({1})), 2)
    assert stored.states[(2,)].unavailable == {1} and stored.states[(2,)].source_key == (1,)

    in_batch = TableChanges(schema)  # the old row was written earlier in the same batch
    apply_event(in_batch, event("c", (1,), (1, "x" * 5000), 1), 1)
    apply_event(in_batch, event("d", (1,), None, 2), 2)
    apply_event(in_batch, event("c", (2,), (2, None), 3, frozenset({1})), 3)
    assert in_batch.states[(2,)].row == (2, "x" * 5000) and not in_batch.states[(2,)].unavailable


def test_a_failed_snapshot_is_abandoned_and_releases_its_offsets():
    """The snapshotter's failure answer ends a staging snapshot: nothing stays staging, and
    the snapshot topic's offset moves past it."""
    t = SnapshotTracker()
    f = frame()
    t.begin(f, TP, 5)
    t.rows(f, 1, [[1], ["AQ=="], [0]], TP, 6)
    assert t.committable() == {TP: 5}
    (w,) = t.failed("public.t", "s1", "r1", None, "precision not supported by type", datetime.now(timezone.utc), TP, 7)
    assert (w.kind, w.frame is f) == ("abandon", True)
    assert "precision not supported by type" in w.reason
    assert t.frame("public.t", "s1") is None
    t.done(w)
    assert t.committable() == {TP: 8}


def test_a_request_refused_before_its_begin_is_recorded_under_its_request():
    t = SnapshotTracker()
    other = frame("s2")
    t.begin(other, TP, 1)
    at = datetime.now(timezone.utc)
    (w,) = t.failed("public.t", None, "cli-1", "id > 1", "bad filter", at, TP, 2)
    assert (w.kind, w.frame.snapshot_id, w.frame.request_id, w.frame.where, w.frame.started_at) == (
        "abandon", "failed:cli-1:public.t", "cli-1", "id > 1", at)
    assert t.frame("public.t", "s2") is other  # a failure of another request leaves a snapshot in flight alone
    t.done(w)
    assert t.committable() == {TP: 1}
