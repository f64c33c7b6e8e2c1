"""Schema changes as the event schema shows them (mallard/core/schema_diff.py): what the
replica does in place, and which changes may have rewritten existing rows without row
events (the table is then re-snapshotted: issue 18)."""
from __future__ import annotations

import itertools

import pytest

from mallard.core.schema_diff import diff, renames

BASE = [("id", "INTEGER"), ("email", "VARCHAR"), ("price", "INTEGER"), ("note", "VARCHAR")]


def test_the_same_columns_are_no_change():
    change = diff(BASE, ["id"], BASE, ["id"])
    assert change.empty and change.rewrite_reason is None


def test_an_added_column_may_have_been_filled_by_a_default():
    # Debezium's schema cannot tell `DEFAULT now()` (or a NOT NULL constant default) from no default.
    change = diff(BASE, ["id"], [*BASE, ("in_stock", "BOOLEAN")], ["id"])
    assert change.add == [("in_stock", "BOOLEAN")] and not change.rename and not change.dropped
    assert "in_stock" in change.rewrite_reason and "default" in change.rewrite_reason


def test_a_rename_keeps_its_place_and_is_a_rename():
    new = [("id", "INTEGER"), ("email_address", "VARCHAR"), ("price", "INTEGER"), ("note", "VARCHAR")]
    change = diff(BASE, ["id"], new, ["id"])
    assert change.rename == [("email", "email_address")]
    assert change.add == [] and change.dropped == []
    assert "email -> email_address" in change.rewrite_reason


def test_a_rename_of_the_last_column_and_an_added_column():
    new = [("id", "INTEGER"), ("email", "VARCHAR"), ("price", "INTEGER"), ("remark", "VARCHAR"), ("x", "DATE")]
    change = diff(BASE, ["id"], new, ["id"])
    assert change.rename == [("note", "remark")] and change.add == [("x", "DATE")] and change.dropped == []


def test_a_column_gone_and_another_of_another_type_at_its_place_are_a_drop_and_an_add():
    new = [("id", "INTEGER"), ("contact", "BIGINT"), ("price", "INTEGER"), ("note", "VARCHAR")]
    change = diff(BASE, ["id"], new, ["id"])
    assert change.rename == [] and change.add == [("contact", "BIGINT")] and change.dropped == ["email"]
    assert change.rewrite_reason is not None


def test_a_dropped_column_rewrites_nothing_and_is_kept():
    new = [("id", "INTEGER"), ("price", "INTEGER"), ("note", "VARCHAR")]
    change = diff(BASE, ["id"], new, ["id"])
    assert change.dropped == ["email"] and not change.rename and not change.add
    assert change.rewrite_reason is None


def test_a_column_kept_after_its_drop_is_not_renamed_from_later():
    stored = [*BASE]  # email was dropped in Postgres earlier; the replica keeps it
    now = [("id", "INTEGER"), ("price", "INTEGER"), ("note", "VARCHAR")]
    assert diff(stored, ["id"], now, ["id"], kept=["email"]).empty is False  # still listed as dropped
    assert diff(stored, ["id"], now, ["id"], kept=["email"]).rewrite_reason is None
    renamed = [("id", "INTEGER"), ("price", "INTEGER"), ("remark", "VARCHAR")]
    change = diff(stored, ["id"], renamed, ["id"], kept=["email"])
    assert change.rename == [("note", "remark")] and change.dropped == ["email"]


def test_a_type_change_may_have_used_a_using_clause():
    new = [("id", "INTEGER"), ("email", "VARCHAR"), ("price", "BIGINT"), ("note", "VARCHAR")]
    change = diff(BASE, ["id"], new, ["id"])
    assert change.widen == [("price", "INTEGER", "BIGINT")]
    assert "USING" in change.rewrite_reason


def test_a_type_change_that_does_not_widen_rebuilds_the_table():
    new = [("id", "INTEGER"), ("email", "VARCHAR"), ("price", "INTEGER"), ("note", "INTEGER")]
    change = diff(BASE, ["id"], new, ["id"])
    assert "does not widen" in change.incompatible
    assert change.rewrite_reason is None  # rebuilt by a snapshot anyway


def test_key_changes_rebuild_the_table():
    assert "primary key changed" in diff(BASE, ["id"], BASE, ["email"]).incompatible
    renamed_key = [("key", "INTEGER"), *BASE[1:]]
    assert "primary key changed" in diff(BASE, ["id"], renamed_key, ["key"]).incompatible
    retyped_key = [("id", "BIGINT"), *BASE[1:]]
    assert "key column 'id'" in diff(BASE, ["id"], retyped_key, ["id"]).incompatible


def test_several_changes_at_once_are_all_named():
    new = [("id", "INTEGER"), ("mail", "VARCHAR"), ("price", "BIGINT"), ("added", "TIMESTAMP WITH TIME ZONE")]
    change = diff(BASE, ["id"], new, ["id"])
    assert change.rename == [("email", "mail")] and change.widen == [("price", "INTEGER", "BIGINT")]
    assert change.dropped == ["note"] and change.add == [("added", "TIMESTAMP WITH TIME ZONE")]
    for word in ("added", "USING", "renamed"):
        assert word in change.rewrite_reason


def test_renames_between_the_same_neighbours_pair_in_order():
    old = [("a", "INTEGER"), ("b", "VARCHAR"), ("c", "VARCHAR"), ("d", "INTEGER"), ("e", "VARCHAR")]
    new = [("a", "INTEGER"), ("b2", "VARCHAR"), ("c2", "VARCHAR"), ("d", "INTEGER"), ("e2", "VARCHAR")]
    assert renames(old, new) == [("b", "b2"), ("c", "c2"), ("e", "e2")]
    # a dropped column before a renamed one: the run pairs by order, up to a type that differs
    new = [("a", "INTEGER"), ("c2", "VARCHAR"), ("d", "INTEGER"), ("e", "VARCHAR")]
    assert renames(old, new) == [("b", "c2")]
    assert renames(old, [("d", "INTEGER"), ("a", "INTEGER")]) == []  # reordered: no place to go by


def test_every_single_change_of_a_small_table_is_told_right():
    """Exhaustive over one DDL statement on a 4-column table: add (any type), drop, rename,
    retype (widening) of each column: the kind found, and whether a re-snapshot follows."""
    types = ["INTEGER", "VARCHAR"]
    for cols in itertools.product(types, repeat=3):
        old = [("id", "INTEGER"), *((f"c{i}", t) for i, t in enumerate(cols))]
        for t in types:
            c = diff(old, ["id"], [*old, ("x", t)], ["id"])
            assert c.add == [("x", t)] and not (c.rename or c.dropped or c.widen) and c.rewrite_reason
        for i in range(1, 4):
            name, t = old[i]
            dropped = old[:i] + old[i + 1:]
            c = diff(old, ["id"], dropped, ["id"])
            assert c.dropped == [name] and not (c.add or c.rename) and c.rewrite_reason is None
            renamed = old[:i] + [(name + "_new", t)] + old[i + 1:]
            c = diff(old, ["id"], renamed, ["id"])
            assert c.rename == [(name, name + "_new")] and not (c.add or c.dropped) and c.rewrite_reason
            if t == "INTEGER":
                retyped = old[:i] + [(name, "BIGINT")] + old[i + 1:]
                c = diff(old, ["id"], retyped, ["id"])
                assert c.widen == [(name, "INTEGER", "BIGINT")] and c.rewrite_reason and not c.rename


@pytest.mark.parametrize("kept", [[], ["gone"]])
def test_a_column_added_again_under_a_kept_name(kept):
    stored = [("id", "INTEGER"), ("gone", "VARCHAR")]
    change = diff(stored, ["id"], [("id", "INTEGER"), ("gone", "VARCHAR")], ["id"], kept=kept)
    if kept:  # the replica kept its values from before the drop: stale now
        assert change.readded == ["gone"] and "gone" in change.rewrite_reason and not change.add
    else:
        assert change.empty
