"""The DDL signal (schemas/ddl.py) as the applier reads it from Debezium's logical decoding
message: the one Debezium 3.6 sent for pg_logical_emit_message(true, 'mallard.ddl', ...),
other prefixes, and hostile shapes."""
from __future__ import annotations

import base64
import json

import pytest

from mallard.core.changes import PoisonMessage
from mallard.core.schema_signal import SchemaSignal, schema_signal

# What Debezium 3.6.3 published on mallard.message (the schema block shortened to its name).
SENT = (b'{"schema":{"type":"struct","optional":false,"name":"io.debezium.connector.postgresql.MessageValue",'
        b'"version":1},"payload":{"op":"m","ts_ms":1796341656379,"source":{"version":"3.6.3.Final",'
        b'"connector":"postgresql","name":"mallard","ts_ms":1796341656354,"snapshot":"false","db":"shop",'
        b'"sequence":"[null,\\"28602992\\"]","ts_us":1796341656354914,"ts_ns":1796341656354914000,"schema":"",'
        b'"table":"","txId":751,"lsn":28602992,"xmin":null,"origin":null,"origin_lsn":null},'
        b'"transaction":{"id":"751:28602992","total_order":1,"data_collection_order":1},'
        b'"message":{"prefix":"mallard.ddl","content":"CONTENT"}}}')


def message(content: object, prefix: str = "mallard.ddl", transaction: bool = True) -> bytes:
    raw = content if isinstance(content, bytes) else json.dumps(content).encode()
    value = json.loads(SENT.replace(b"CONTENT", base64.b64encode(raw)))
    value["payload"]["message"]["prefix"] = prefix
    if not transaction:
        value["payload"]["transaction"] = None
        value["payload"]["source"]["txId"] = None
    return json.dumps(value).encode()


def signal(**fields) -> dict:
    return {"v": 1, "schema": "public", "table": "products", "changes": "column in_stock added with a default",
            **fields}


def test_the_signal_debezium_sends_names_the_stream_and_the_ddl_transaction():
    assert schema_signal(message(signal())) == SchemaSignal("public.products", 751,
                                                            "column in_stock added with a default")


def test_any_identifier_postgres_accepts_is_named_as_mallard_names_streams():
    got = schema_signal(message(signal(schema="Sales Dept", table='Order "Items".v2')))
    assert got is not None and got.stream == '"Sales Dept"."Order ""Items"".v2"'


@pytest.mark.parametrize("prefix", ["app-audit", "", "mallard.ddl.v2", "MALLARD.DDL"])
def test_an_application_s_own_message_is_none_of_mallard_s_business(prefix):
    assert schema_signal(message(b"\x00anything", prefix=prefix)) is None
    assert schema_signal(message(b"x", prefix=prefix, transaction=False)) is None


@pytest.mark.parametrize("value, named", [
    (b"not json", "not JSON"),
    (b'{"schema":{"type":"struct"},"payload":{"op":"c"}}', "not Debezium's envelope"),
    (message(signal(), transaction=False), "outside a transaction"),
    (message(b"{not json"), "not base64 JSON"),
    (message(signal()).replace(b'"content": "', b'"content": "%%%'), "not base64 JSON"),
    (message(signal(v=2)), "v"),
    (message(signal(table="")), "table"),
    (message(signal(table="t" * 300)), "table"),
    (message(signal(changes="x" * 5000)), "changes"),
    (message(signal(extra="field")), "extra"),
    (message(["a", "list"]), "mallard.ddl message"),
    (message(signal(schema=None)), "schema"),
])
def test_a_forged_or_broken_signal_is_poison_naming_what_is_wrong(value, named):
    with pytest.raises(PoisonMessage, match=named):
        schema_signal(value)
