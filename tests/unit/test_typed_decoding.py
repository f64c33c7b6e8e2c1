"""The typed pass (msgspec) decodes the common change event; everything else takes the
general path. Whatever a message holds — valid values of every type, values of the
wrong JSON kind, bad base64, decimals that do not fit, NaN tokens, TOAST placeholders,
missing blocks — both paths give the very same event (values and their Python types)
or the very same poison reason."""
from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mallard.core.changes import Decoder, PoisonMessage

TOPIC = "mallard.public.every_type"
NAN = object()  # written as the bare NaN token Jackson emits


def b64(n: int, width: int | None = None) -> str:
    return base64.b64encode(n.to_bytes(width or (n.bit_length() + 8) // 8 or 1, "big", signed=True)).decode()


PLACEHOLDER = "__debezium_unavailable_value"
COLUMNS: list[tuple[dict[str, Any], list[Any], list[Any]]] = [  # (schema, valid values, values that are not)
    ({"type": "int64", "optional": False}, [1, 2, 2**40], [None, "1", 1.0]),  # the key
    ({"type": "int16"}, [0, -5, 2**15 - 1, None], [10**20, 1.0, True, "7"]),
    ({"type": "int32"}, [7, -(2**31), 2**31 - 1, None], [2**63, 1.5, False]),
    ({"type": "float64"}, [1.5, 0, -0.0, 1e308, 3, "NaN", "Infinity", "-Infinity", None], ["nan", True, NAN]),
    ({"type": "float32"}, [0.1, 7, None], ["x"]),
    ({"type": "boolean"}, [True, False, None], [0, "true"]),
    ({"type": "string"}, ["x", "", "ünïcode \u0000 \n", None], [PLACEHOLDER, 5, ["a"]]),
    ({"type": "bytes"}, ["AQI=", "", None], ["not base64!", "AQI", base64.b64encode(PLACEHOLDER.encode()).decode(), 5]),
    ({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
      "parameters": {"scale": "2", "connect.decimal.precision": "12"}},
     [b64(1234), b64(-1), b64(0), b64(10**12 - 1), b64(5, 8), None], [b64(10**12), "garbage!", 5]),
    ({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
      "parameters": {"scale": "5", "connect.decimal.precision": "30"}},
     [b64(123456789), b64(-(10**29) + 1), None], [b64(10**30), ""]),
    ({"type": "struct", "name": "io.debezium.data.VariableScaleDecimal"},
     [{"scale": 2, "value": b64(1234)}, None], [{"scale": "x", "value": "AQI="}, {"value": "AQI="}, "1.5"]),
    ({"type": "int32", "name": "io.debezium.time.Date"}, [19000, -1, None], ["2026-01-01"]),
    ({"type": "int64", "name": "io.debezium.time.MicroTimestamp"}, [1_780_000_000_000_000, -1, None], [1.5]),
    ({"type": "string", "name": "io.debezium.time.ZonedTimestamp"},
     ["2026-01-02T03:04:05.678901Z", "2026-01-02T03:04:05+02:00", "0001-01-01T00:00:00Z", None],
     ["2026-01-02T03:04:05", "garbage", 5]),
    ({"type": "string", "name": "io.debezium.time.Interval"}, ["P1Y2M3DT4H5M6.5S", "PT0S", None], ["garbage", 5]),
    ({"type": "string", "name": "io.debezium.data.Uuid"}, ["6e1f6b4c-0000-4000-8000-000000000001", None], [5]),
    ({"type": "string", "name": "io.debezium.data.Json"}, ['{"a": [1, 2]}', None], [{"a": 1}]),
    ({"type": "array", "items": {"type": "int32"}}, [[1, 2, None], [], None], ["x", [1, "a"], [PLACEHOLDER]]),
    ({"type": "array", "items": {"type": "string"}}, [["a", None], None], [[1], [PLACEHOLDER]]),
    ({"type": "struct", "name": "io.debezium.data.geometry.Point"}, [{"x": 1.5, "y": 2}, "s", 5, None], []),
]


def mostly(valid: list[Any], invalid: list[Any]) -> st.SearchStrategy:
    """A valid value 39 times in 40: the typed pass must get whole messages to decode."""
    return st.integers(0, 39).flatmap(lambda n: st.sampled_from(invalid if n == 0 and invalid else valid))


NAMES = ["id"] + [f"col {i}" for i in range(1, len(COLUMNS))]  # names need not be identifiers
FIELDS = [{**schema, "optional": schema.get("optional", True), "field": name}
          for name, (schema, _, _) in zip(NAMES, COLUMNS)]
ROW = {"type": "struct", "optional": True, "fields": FIELDS}
SCHEMA = json.dumps({"type": "struct", "fields": [
    {**ROW, "field": "before"}, {**ROW, "field": "after"},
    {"type": "struct", "field": "source", "fields": []}, {"type": "string", "field": "op"},
    {"type": "int64", "optional": True, "field": "ts_ms"},
    {"type": "struct", "optional": True, "field": "transaction", "fields": []}]}, separators=(",", ":"))
KEY = ('{"schema":{"type":"struct","fields":[{"type":"int64","optional":false,"field":"id"}]},'
       '"payload":{"id":%s}}')


def text(value: Any) -> str:
    """JSON as Debezium's JsonConverter writes it, bare NaN tokens included."""
    if value is NAN:
        return "NaN"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(text(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


images = st.fixed_dictionaries({name: mostly(valid, invalid) for name, (_, valid, invalid) in zip(NAMES, COLUMNS)})
payloads = st.fixed_dictionaries({
    "before": st.one_of(st.none(), images),
    "after": mostly([0, 1], [2, 3]).flatmap(lambda n: st.none() if n == 2 else images.map(
        lambda i: {k: i[k] for k in list(i)[::n + 1]})),  # whole, half the columns, none
    "source": st.fixed_dictionaries(
        {"schema": st.just("public"), "table": mostly(["every_type"], ["other"]), "txId": mostly([501, 2**40], ["502", None])},
        optional={"ts_ms": st.sampled_from([1_780_000_000_000, 0])}),
    "op": mostly(["c", "u", "r"], ["d", "t", "x", 1]),
    "transaction": mostly([{"id": "501:1000", "total_order": 1}, {"total_order": 2}],
                          [None, {}, {"total_order": "3"}, {"total_order": None}]),
}, optional={"ts_ms": st.sampled_from([1_780_000_000_001, None])})


def outcome(decoder: Decoder, key: bytes, value: bytes) -> Any:
    try:
        e = decoder.decode_change(TOPIC, 0, 9, key, value)
    except PoisonMessage as p:
        return "poison", str(p)
    typed = lambda values: None if values is None else tuple((type(v).__name__, repr(v)) for v in values)  # noqa: E731
    return (e.op, e.stream, e.tx_id, e.total_order, e.committed_at_ms, typed(e.key), typed(e.row),
            sorted(e.unavailable), e.schema.stream, e.schema.columns, e.schema.key_columns)


COMMON = {"before": None, "after": {"id": 1, "col 1": 5, "col 8": "AQI=", "col 13": "2026-01-02T03:04:05Z"},
          "source": {"schema": "public", "table": "every_type", "txId": 501, "ts_ms": 1}, "op": "c",
          "transaction": {"total_order": 1}}


def both_paths(payload: dict[str, Any], key_id: int | None = 1) -> tuple[Any, Any]:
    value = ('{"schema":' + SCHEMA + ',"payload":' + text(payload) + "}").encode()
    key = None if key_id is None else (KEY % key_id).encode()
    typed, general = Decoder(), Decoder(typed=False)
    # The layout is known (the typed pass runs), and so are the key and value schemas of a
    # common message on the topic (the typed pass starts from them).
    warm = ('{"schema":' + SCHEMA + ',"payload":{}}').encode()
    common = ('{"schema":' + SCHEMA + ',"payload":' + text(COMMON) + "}").encode()
    for d in (typed, general):
        try:
            d.decode_change(TOPIC, 0, 0, key, warm)
        except PoisonMessage:
            pass
        d.decode_change(TOPIC, 0, 0, (KEY % 1).encode(), common)
    return outcome(typed, key, value), outcome(general, key, value)


@settings(max_examples=1500, deadline=None)
@given(payload=payloads, key_id=st.sampled_from([1, 2, None]))
def test_the_typed_pass_and_the_general_path_agree_on_every_message(payload, key_id):
    typed, general = both_paths(payload, key_id)
    assert typed == general


@settings(max_examples=600, deadline=None)
@given(payload=payloads, key_id=st.sampled_from([1, 2, None]))
def test_the_paths_agree_on_deletes(payload, key_id):
    """A delete's key is read from its before image by a second typed pass."""
    typed, general = both_paths({**payload, "op": "d"}, key_id)
    assert typed == general


def test_the_typed_pass_decodes_a_delete():
    value = ('{"schema":' + SCHEMA + ',"payload":' + text({**COMMON, "op": "d", "after": None,
                                                            "before": {"id": 7, "col 1": 5}}) + "}").encode()
    d = Decoder()
    for offset in range(2):
        d.decode_change(TOPIC, 0, offset, (KEY % 7).encode(), value)
    layout = d._value_prefixes[TOPIC][0][1]
    event = d._fast_change(TOPIC, 0, 2, (KEY % 7).encode(), layout, text({**COMMON, "op": "d", "after": None,
                                                                          "before": {"id": 7}}).encode())
    assert event is not None and (event.op, event.key, event.row) == ("d", (7,), None)


@pytest.mark.parametrize("column, value", [(name, v) for name, (_, valid, invalid) in zip(NAMES, COLUMNS)
                                           for v in valid + invalid],
                         ids=lambda v: "NaN-token" if v is NAN else repr(v))  # the same in every xdist worker
def test_every_value_of_every_type_alone_gives_the_same_on_both_paths(column, value):
    after = {name: valid[0] for name, (_, valid, _) in zip(NAMES, COLUMNS)}
    after[column] = value
    typed, general = both_paths({"before": None, "after": after, "op": "u", "transaction": {"total_order": 1},
                                 "source": {"schema": "public", "table": "every_type", "txId": 501}})
    assert typed == general


def test_the_typed_pass_runs_for_the_common_case():
    """(Else the agreement above would hold trivially.) The second message with the same
    schemas starts from what the first one left."""
    value = ('{"schema":' + SCHEMA + ',"payload":' + text(COMMON) + "}").encode()
    d = Decoder()
    d.decode_change(TOPIC, 0, 0, (KEY % 1).encode(), value)
    layout = d._value_prefixes[TOPIC][0][1]
    assert d._fast_change(TOPIC, 0, 1, (KEY % 1).encode(), layout, text(COMMON).encode()) is not None
    assert TOPIC not in d._known  # the first message of a schema is parsed whole
    d.decode_change(TOPIC, 0, 1, (KEY % 1).encode(), value)
    known = d._known[TOPIC]
    assert known.matches((KEY % 2).encode(), value) and not known.matches(None, value)
    d._value_prefixes.clear()
    assert d.decode_change(TOPIC, 0, 2, (KEY % 2).encode(), value).key == (1,)
    assert not d._value_prefixes  # no lookup


@settings(max_examples=300, deadline=None)
@given(status=st.sampled_from(["BEGIN", "END", "OTHER", 5]), tx_id=st.sampled_from(["501:1000", "501", "x:1", "", 7]),
       count=st.sampled_from([3, None, "4"]), ts=st.sampled_from([1, None, "2"]))
def test_transaction_markers_agree_too(status, tx_id, count, ts):
    payload = text({"status": status, "id": tx_id, "event_count": count, "ts_ms": ts})
    value = ('{"schema":{"type":"struct","fields":[]},"payload":' + payload + "}").encode()

    def marker(d: Decoder) -> Any:
        try:
            d.decode_transaction("mallard.transaction", 0, 0, value)  # learns the prefix
            return d.decode_transaction("mallard.transaction", 0, 1, value)
        except PoisonMessage as p:
            return str(p)

    assert marker(Decoder()) == marker(Decoder(typed=False))
