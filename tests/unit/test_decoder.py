"""Decoding real Debezium messages (captured from Debezium 3.6.3) and refusing poison."""
import json
from pathlib import Path

import pytest

from mallard.core.changes import Decoder, PoisonMessage

EVENTS = json.loads((Path(__file__).parent.parent / "fixtures" / "debezium" / "orders_events.json").read_text())


def raw(e):
    return (e["key"].encode() if e["key"] else None), (e["value"].encode() if e["value"] else None)


def test_real_change_events_decode_to_rows_keys_and_positions():
    d = Decoder()
    decoded = [d.decode_change(e["topic"], e["partition"], e["offset"], *raw(e))
               for e in EVENTS if e["topic"] == "mallard.public.orders" and e["value"]]
    assert [x.op for x in decoded] == ["c", "u", "d", "t"]
    insert, update, delete, truncate = decoded
    assert insert.stream == "public.orders" and insert.key == (insert.row[0],)
    assert insert.schema.key_columns == ("id",)
    assert insert.schema.columns[:3] == ("id", "customer_id", "product_id")
    total = insert.schema.types[insert.schema.columns.index("total")]
    assert total.duckdb == "DECIMAL(12,2)" and insert.row[insert.schema.columns.index("total")] == 1234  # cents, scaled in SQL
    assert update.key == insert.key and update.tx_id > insert.tx_id and update.total_order == 1
    assert delete.row is None and delete.key == insert.key
    assert truncate.key is None and truncate.row is None and truncate.schema.key_known
    assert insert.schema is update.schema  # one schema object per layout: cheap comparisons


def test_the_schema_is_parsed_once_per_layout():
    d = Decoder()
    e = next(e for e in EVENTS if e["topic"] == "mallard.public.orders" and e["value"])
    first = d.decode_change(e["topic"], 0, 0, *raw(e))
    again = d.decode_change(e["topic"], 0, 1, *raw(e))
    assert first.schema is again.schema and len(d._value_prefixes[e["topic"]]) == 1


def test_transaction_markers_give_the_commit_lsn():
    d = Decoder()
    markers = [d.decode_transaction(e["topic"], 0, e["offset"], e["value"].encode())
               for e in EVENTS if e["topic"] == "mallard.transaction"]
    ends = [m for m in markers if m.status == "END"]
    assert len(ends) == 4 and all(m.event_count == 1 for m in ends)
    assert [m.lsn for m in ends] == sorted(m.lsn for m in ends)  # commit order


# The END Debezium 3.6 sent for `BEGIN; SELECT pg_logical_emit_message(true, 'app', '...');
# UPDATE customers ...; COMMIT` (pgoutput): the message is counted, under a Java object's name,
# but goes to mallard.message, never to a table topic.
END_WITH_A_MESSAGE = {"status": "END", "id": "757:28604736", "event_count": 2, "data_collections": [
    {"data_collection": "public.customers", "event_count": 1},
    {"data_collection": "io.debezium.connector.postgresql.LogicalDecodingMessageMonitor$"
                        "LogicalDecodingMessageId@7ae678ea", "event_count": 1}], "ts_ms": 1796333841991}


@pytest.mark.parametrize("typed", [True, False])
@pytest.mark.parametrize("enveloped", [True, False])
def test_an_end_does_not_count_the_logical_decoding_messages_of_its_transaction(typed, enveloped):
    value = {"schema": {"type": "struct"}, "payload": END_WITH_A_MESSAGE} if enveloped else END_WITH_A_MESSAGE
    marker = Decoder(typed=typed).decode_transaction("mallard.transaction", 0, 3, json.dumps(value).encode())
    assert (marker.tx_id, marker.event_count) == (757, 1)
    only_messages = {**END_WITH_A_MESSAGE, "event_count": 1, "data_collections": END_WITH_A_MESSAGE["data_collections"][1:]}
    assert Decoder(typed=typed).decode_transaction("t", 0, 0, json.dumps(only_messages).encode()).event_count == 0
    # A table may be named like anything, but not like a Java object with a hash code.
    table = {**END_WITH_A_MESSAGE, "data_collections": [{"data_collection": "io.debezium.x", "event_count": 2}]}
    assert Decoder(typed=typed).decode_transaction("t", 0, 0, json.dumps(table).encode()).event_count == 2


def test_a_truncate_before_any_keyed_event_does_not_claim_a_key():
    d = Decoder()
    e = next(e for e in EVENTS if e["value"] and '"op":"t"' in e["value"])
    assert not d.decode_change(e["topic"], 0, 0, *raw(e)).schema.key_known


@pytest.mark.parametrize("value, message", [
    (b"\x00garbage", "not JSON"),
    (b'{"schema": {"type": "string"}, "payload": "x"}', "unknown envelope"),
    (b'[1, 2]', "unknown envelope"),
])
def test_poison_is_named(value, message):
    with pytest.raises(PoisonMessage, match=message):
        Decoder().decode_change("mallard.public.orders", 0, 0, None, value)


def test_a_value_that_does_not_fit_names_the_column():
    e = next(e for e in EVENTS if e["value"] and '"op":"c"' in e["value"])
    doc = json.loads(e["value"])
    doc["payload"]["after"]["quantity"] = "many"
    with pytest.raises(PoisonMessage, match="column 'quantity' \\(INTEGER\\): expected an integer"):
        Decoder().decode_change(e["topic"], 0, 0, e["key"].encode(), json.dumps(doc).encode())


def test_an_event_without_transaction_metadata_is_refused():
    e = next(e for e in EVENTS if e["value"] and '"op":"c"' in e["value"])
    doc = json.loads(e["value"])
    doc["payload"]["transaction"] = None
    with pytest.raises(PoisonMessage, match="transaction metadata"):
        Decoder().decode_change(e["topic"], 0, 0, e["key"].encode(), json.dumps(doc).encode())


def test_toast_placeholders_are_marked_not_stored():
    e = next(e for e in EVENTS if e["value"] and '"op":"u"' in e["value"])
    doc = json.loads(e["value"])
    doc["payload"]["after"]["status"] = "__debezium_unavailable_value"
    event = Decoder().decode_change(e["topic"], 0, 0, e["key"].encode(), json.dumps(doc).encode())
    i = event.schema.columns.index("status")
    assert i in event.unavailable and event.row[i] is None


@pytest.mark.parametrize(("field", "placeholder"), [
    ({"type": "bytes", "optional": True, "field": "blob"}, "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="),
    ({"type": "array", "items": {"type": "string", "optional": True}, "optional": True, "field": "tags"},
     ["__debezium_unavailable_value"]),
])
def test_toast_placeholders_of_bytea_and_arrays_are_marked(field, placeholder):
    """The placeholder is looked for in the message text first (cheap): base64 and list forms too."""
    e = next(e for e in EVENTS if e["value"] and '"op":"u"' in e["value"])
    doc = json.loads(e["value"])
    for image in ("before", "after"):
        row_schema = next(f for f in doc["schema"]["fields"] if f["field"] == image)
        row_schema["fields"].append(field)
    doc["payload"]["after"][field["field"]] = placeholder
    event = Decoder().decode_change(e["topic"], 0, 0, e["key"].encode(), json.dumps(doc).encode())
    i = event.schema.columns.index(field["field"])
    assert event.unavailable == {i} and event.row[i] is None
    doc["payload"]["after"][field["field"]] = None
    event = Decoder().decode_change(e["topic"], 0, 0, e["key"].encode(), json.dumps(doc).encode())
    assert event.unavailable == frozenset() and event.row[i] is None


def test_a_rows_key_follows_the_key_columns_single_or_composite():
    from mallard.core.changes import TableSchema
    from mallard.core.pgtypes import column_type

    t = column_type({"type": "int32"})
    one = TableSchema("public.t", ("a", "b", "c"), (t, t, t), ("b",))
    two = TableSchema("public.t", ("a", "b", "c"), (t, t, t), ("c", "a"))
    assert one.key_of((1, 2, 3)) == (2,) and two.key_of((1, 2, 3)) == (3, 1)
