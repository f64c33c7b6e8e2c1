import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from mallard.schemas import export
from mallard.schemas.control import ResnapshotRequest
from mallard.schemas.debezium import ChangeEventKey, ChangeEventValue, TransactionEvent
from mallard.schemas.snapshot import SnapshotBegin, SnapshotEnd, SnapshotFailed, SnapshotRows, snapshot_message_adapter

# Real messages, captured from Debezium 3.6.3 on the local stack: insert, update,
# delete, tombstone and truncate on public.orders, and their transaction events.
EVENTS = json.loads((Path(__file__).parent.parent / "fixtures" / "debezium" / "orders_events.json").read_text())
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_exported_json_schemas_are_fresh():
    """Fails when a model changed without `python -m mallard.schemas.export`."""
    stale = [name for name, text in export.rendered().items() if (export.JSON_DIR / name).read_text() != text]
    assert not stale, f"stale JSON Schema files, run python -m mallard.schemas.export: {stale}"
    assert sorted(p.name for p in export.JSON_DIR.glob("*.json")) == sorted(export.rendered())


def test_export_check_reports_stale(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export, "JSON_DIR", tmp_path)
    assert export.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().out
    assert export.main([]) == 0
    assert export.main(["--check"]) == 0


def test_real_debezium_change_events_decode():
    table_events = [e for e in EVENTS if e["topic"] == "mallard.public.orders"]
    ops = []
    for e in table_events:
        if e["value"] is None:
            ops.append("tombstone")
            assert ChangeEventKey.model_validate_json(e["key"]).payload
            continue
        value = ChangeEventValue.model_validate_json(e["value"])
        ops.append(value.payload.op)
        assert value.payload.source.table == "orders"
        assert value.payload.source.schema_ == "public"
        assert value.payload.source.txId is not None
        if value.payload.op != "t":
            key = ChangeEventKey.model_validate_json(e["key"])
            assert set(key.payload) == {"id"}
            assert value.payload.transaction is not None
    assert ops == ["c", "u", "d", "tombstone", "t"]
    insert = ChangeEventValue.model_validate_json(table_events[0]["value"])
    after_schema = next(f for f in insert.schema_.fields if f.field == "after")
    total = next(f for f in after_schema.fields if f.field == "total")
    assert total.name == "org.apache.kafka.connect.data.Decimal" and total.parameters["scale"] == "2"


def test_real_transaction_events_decode():
    tx = [TransactionEvent.model_validate_json(e["value"]) for e in EVENTS if e["topic"] == "mallard.transaction"]
    assert [t.payload.status for t in tx] == ["BEGIN", "END"] * 4
    end = tx[1].payload
    assert end.event_count == 1 and end.data_collections[0].data_collection == "public.orders"


def test_snapshot_messages_round_trip_through_the_discriminator():
    begin = SnapshotBegin(snapshot_id="s1", stream="public.orders", cut={"xmin": 5, "xmax": 9, "xip": [6, 8]},
                          columns=[{"name": "id", "pg_type": "bigint", "nullable": False, "primary_key_position": 1}],
                          started_at=NOW)
    rows = SnapshotRows(snapshot_id="s1", stream="public.orders", batch=1, rows=[[1], [2]])
    end = SnapshotEnd(snapshot_id="s1", stream="public.orders", batches=1, row_count=2, finished_at=NOW)
    failed = SnapshotFailed(stream="public.orders", request_id="cli-1", snapshot_id="s1", reason="no such column",
                            failed_at=NOW)
    for msg in (begin, rows, end, failed):
        assert snapshot_message_adapter.validate_json(msg.model_dump_json()) == msg


@pytest.mark.parametrize("bad", [
    {"kind": "rows", "snapshot_id": "s", "stream": "orders", "batch": 1, "rows": []},  # stream without schema
    {"kind": "rows", "snapshot_id": "s", "stream": "public.orders", "batch": 0, "rows": []},
    {"kind": "end", "snapshot_id": "s", "stream": "public.orders", "batches": 1, "row_count": -1, "finished_at": "2026-01-01T00:00:00Z"},
    {"kind": "rows", "snapshot_id": "s", "stream": "public.orders", "batch": 1, "rows": [], "schema_version": 2},
    {"kind": "other", "snapshot_id": "s", "stream": "public.orders"},
    {"kind": "failed", "stream": "public.orders", "request_id": "r", "reason": "", "failed_at": "2026-01-01T00:00:00Z"},
    {"kind": "failed", "stream": "public.orders", "reason": "why", "failed_at": "2026-01-01T00:00:00Z"},
])
def test_invalid_snapshot_messages_are_refused(bad):
    with pytest.raises(ValidationError):
        snapshot_message_adapter.validate_python(bad)


def test_resnapshot_request_needs_streams_and_reason():
    ok = ResnapshotRequest(request_id="daily@2026-01-01T06:00Z", streams=["public.orders"], reason="schedule daily",
                           requested_by="scheduler:daily", requested_at=NOW)
    assert ResnapshotRequest.model_validate_json(ok.model_dump_json()) == ok
    with pytest.raises(ValidationError, match="streams"):
        ResnapshotRequest(request_id="r", streams=[], reason="x", requested_by="cli", requested_at=NOW)
    with pytest.raises(ValidationError, match="unexpected"):
        ResnapshotRequest.model_validate({**ok.model_dump(), "unexpected": 1})
