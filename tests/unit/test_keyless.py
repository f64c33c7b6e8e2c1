"""Tables without a primary key (issue 18), the pure parts: which publication each goes
into and what the user is told, the connector's publication list, the config option, the
decoder's before image, and the per-batch multiset reduction."""
from __future__ import annotations

import json

import pytest

from mallard.core.changes import ChangeEvent, Decoder, PoisonMessage, TableSchema
from mallard.core.connector import parse_connector_config, with_inserts_publication, with_streams
from mallard.core.keyless import (IDENTITY_FULL, IDENTITY_INDEX, INSERTS_ONLY, TableIdentity, keyless_modes,
                                  plan_publications, publication_names)
from mallard.core.merge import reduce
from mallard.core.pgtypes import column_type
from mallard.core.replication import ConfigError, parse_config
from mallard.core.transactions import Transaction
from mallard.config.settings import DEFAULT_CONNECTOR_CONFIG

KEYED, PLAIN, FULL, INDEX = (TableIdentity(True, "d"), TableIdentity(False, "d"), TableIdentity(False, "f"),
                             TableIdentity(False, "i"))


def test_each_keyless_table_gets_a_mode_and_keyed_tables_none():
    tables = {"public.orders": KEYED, "public.history": PLAIN, "public.audit": FULL, "public.events": PLAIN,
              "public.indexed": INDEX}
    modes = {m.stream: (m.mode, m.set_full) for m in keyless_modes(tables, full=["public.events"])}
    assert modes == {"public.history": (INSERTS_ONLY, False), "public.audit": (IDENTITY_FULL, False),
                     "public.events": (IDENTITY_FULL, True), "public.indexed": (IDENTITY_INDEX, False)}


def test_inserts_only_tables_stay_out_of_the_publication_of_updates_and_deletes():
    tables = {"public.orders": KEYED, "public.history": PLAIN, "public.audit": FULL, "public.events": PLAIN,
              "_mallard.heartbeat": KEYED}
    plan = plan_publications(tables, full=["public.events"])
    assert plan.main == ["public.orders", "public.audit", "public.events", "_mallard.heartbeat"]
    assert plan.inserts == ["public.history"]
    assert plan.set_full == ["public.events"]  # set before it enters main
    assert plan_publications({"public.orders": KEYED}).inserts == []


def test_the_user_is_told_what_is_replicated_and_what_full_would_add():
    audit, history, events = keyless_modes({"public.history": PLAIN, "public.audit": FULL, "s.events": PLAIN},
                                           full=["s.events"])  # by name
    text = history.describe("mallard_publication")
    assert "public.history has no primary key: inserts only" in text
    assert "mallard_publication_inserts" in text and "UPDATEs and DELETEs are not replicated" in text
    assert "ALTER TABLE public.history REPLICA IDENTITY FULL" in text and "replica_identity: full" in text
    assert audit.describe("p").startswith("public.audit has no primary key: REPLICA IDENTITY FULL")
    assert "mallard sets REPLICA IDENTITY FULL" in events.describe("p")
    items = keyless_modes({'public."Order Items"': PLAIN})[0].describe("p")
    assert 'ALTER TABLE public."Order Items" REPLICA IDENTITY FULL' in items  # the stream's one spelling is SQL


def test_the_connector_streams_from_both_publications_as_one_list():
    config = with_streams(parse_connector_config(DEFAULT_CONNECTOR_CONFIG.read_text()), ["public.h"])
    assert config.publication_name == "mallard_publication" and config.inserts_publication is None
    assert config.publication_marker is None
    both = with_inserts_publication(config)
    assert both.config["publication.name"] == publication_names("mallard_publication") \
        == "mallard_publication,mallard_publication_inserts"
    assert both.publication_name == "mallard_publication"
    assert both.inserts_publication == "mallard_publication_inserts"
    assert both.publication_marker == "mallard_publication,mallard_publication_inserts"
    assert with_inserts_publication(both).config == both.config  # idempotent


def test_the_derived_connector_config_lists_both_publications(tmp_path):
    from mallard.config.connector import derive_connector_config

    replication = tmp_path / "r.yaml"
    replication.write_text("streams:\n  public.h:\n")
    derived = derive_connector_config(DEFAULT_CONNECTOR_CONFIG, replication, tmp_path / "c.json")
    assert derived.inserts_publication == "mallard_publication_inserts"
    assert json.loads((tmp_path / "c.json").read_text())["config"]["publication.name"] == derived.publication_marker


def test_replica_identity_full_is_a_stream_option():
    config = parse_config("streams:\n  public.h:\n    replica_identity: full\n  public.o:\n")
    assert config.streams["public.h"].replica_identity == "full"
    assert config.streams["public.o"].replica_identity is None
    with pytest.raises(ConfigError, match=r"r.yaml:3: streams.public.h.replica_identity"):
        parse_config("streams:\n  public.h:\n    replica_identity: nothing\n", "r.yaml")


# -- the decoder: a keyless update or delete carries its before image --------------------

ROW = {"type": "struct", "optional": True, "name": "mallard.public.h.Value",
       "fields": [{"field": "a", "type": "int32", "optional": True}, {"field": "b", "type": "string", "optional": True}]}
ENVELOPE = {"type": "struct", "optional": False, "name": "mallard.public.h.Envelope", "fields": [
    {**ROW, "field": "before"}, {**ROW, "field": "after"},
    {"field": "source", "type": "struct", "optional": False, "fields": []},
    {"field": "op", "type": "string", "optional": False},
    {"field": "transaction", "type": "struct", "optional": True, "fields": []}]}


def message(op: str, before: dict | None, after: dict | None) -> bytes:
    payload = {"before": before, "after": after, "source": {"schema": "public", "table": "h", "txId": 500, "ts_ms": 1},
               "op": op, "ts_ms": 1, "transaction": {"id": "500:99", "total_order": 1, "data_collection_order": 1}}
    return json.dumps({"schema": ENVELOPE, "payload": payload}, separators=(",", ":")).encode()


@pytest.mark.parametrize("typed", [True, False])
def test_a_keyless_update_and_delete_carry_the_before_image(typed):
    d = Decoder(typed=typed)
    insert = d.decode_change("mallard.public.h", 0, 0, None, message("c", None, {"a": 1, "b": "x"}))
    assert insert.key is None and insert.row == (1, "x") and insert.schema.key_columns == ()
    update = d.decode_change("mallard.public.h", 0, 1, None, message("u", {"a": 1, "b": "x"}, {"a": 1, "b": "y"}))
    assert update.key == (1, "x") and update.row == (1, "y")
    delete = d.decode_change("mallard.public.h", 0, 2, None, message("d", {"a": 1, "b": None}, None))
    assert delete.key == (1, None) and delete.row is None


def test_a_keyless_update_without_a_before_image_is_poison():
    d = Decoder()
    with pytest.raises(PoisonMessage, match="REPLICA IDENTITY is not FULL"):
        d.decode_change("mallard.public.h", 0, 0, None, message("u", None, {"a": 1, "b": "y"}))


# -- the multiset reduction of one batch -------------------------------------------------

SCHEMA = TableSchema("public.h", ("a", "b"), (column_type({"type": "int32"}), column_type({"type": "string"})), ())


def tx(xid: int, lsn: int, *events: tuple) -> Transaction:
    return Transaction(xid, lsn, 0, [ChangeEvent("h", 0, 0, "public.h", op, xid, n, 0, before, after, frozenset(),
                                                 SCHEMA) for n, (op, before, after) in enumerate(events, start=1)])


def test_a_batch_appends_inserts_and_removes_one_equal_row_per_update_or_delete():
    (step,) = reduce([tx(100, 1, ("c", None, (1, "x")), ("c", None, (1, "x")), ("c", None, (2, "z"))),
                      tx(101, 2, ("d", (1, "x"), None), ("u", (3, "s"), (3, "t")), ("d", (9, "q"), None))])
    changes = step["public.h"]
    assert changes.keyless and not changes.states
    assert [s.row for s in changes.inserted] == [(1, "x"), (2, "z"), (3, "t")]  # one (1, 'x') taken back
    removed = [(r.row, r.tx_id, r.matched_tx_id) for r in changes.removed]
    # in the batch: the insert of tx 100; stored rows (matched by the adapter): the others
    assert removed == [((1, "x"), 101, 100), ((3, "s"), 101, None), ((9, "q"), 101, None)]
    assert changes.events == 6


def test_a_truncate_forgets_the_batch_before_it():
    (step,) = reduce([tx(100, 1, ("c", None, (1, "x")), ("d", (2, "y"), None)), tx(101, 2, ("t", None, None)),
                      tx(102, 3, ("c", None, (5, "n")))])
    changes = step["public.h"]
    assert changes.truncated and changes.truncated_tx_id == 101
    assert [s.row for s in changes.inserted] == [(5, "n")] and changes.removed == []


def test_unhashable_values_are_matched_too():
    (step,) = reduce([tx(100, 1, ("c", None, (1, ["a"])), ("d", (1, ["a"]), None))])
    assert step["public.h"].inserted == [] and step["public.h"].removed[0].matched_tx_id == 100
