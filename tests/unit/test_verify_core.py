"""verify's pure core: the range bisection finds exactly the keys that differ, with few
round trips; the SQL it writes runs on DuckDB for every key type; the re-check and the
repair filter."""
from __future__ import annotations

import math
import random
from bisect import bisect_left
from datetime import date, datetime, timedelta

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mallard.core.verify import (
    DUCK, Column, Difference, KeyRange, KeyType, Summary, TableSql, canon, compare, confirm, key_type,
    parse_split, parse_summaries, repair_filter, row_hash_sql,
)


class FakeSide:
    """A side over {int key: row hash}, counting its round trips."""

    def __init__(self, rows: dict[int, int]):
        self.keys = sorted(rows)
        self.rows_ = rows
        self.calls = 0

    def _in(self, r: KeyRange) -> list[int]:
        lo = 0 if r.low is None else bisect_left(self.keys, int(r.low))
        hi = len(self.keys) if r.high is None else bisect_left(self.keys, int(r.high))
        return self.keys[lo:hi]

    def summarize(self, ranges):
        self.calls += 1
        return [Summary(len(ks), sum(self.rows_[k] for k in ks)) for ks in map(self._in, ranges)]

    def split(self, cuts):
        self.calls += 1
        return [[str(k) for k in self._in(r)[step::step]] for r, step in cuts]

    def rows(self, ranges):
        self.calls += 1
        return {str(k): self.rows_[k] for r in ranges for k in self._in(r)}


def h(key: int, version: int = 0) -> int:
    return random.Random(key * 7919 + version).getrandbits(60)


@st.composite
def tables(draw):
    rnd = random.Random(draw(st.integers(0, 2**32)))
    keys = rnd.sample(range(-10_000, 10_000), draw(st.integers(0, 3000)))
    source = {k: h(k) for k in keys}
    replica = dict(source)
    n = draw(st.integers(0, 40))
    for _ in range(n):
        what = rnd.choice(["change", "delete", "insert"])
        if what == "insert":
            k = rnd.randint(-12_000, 12_000)
            if k not in source:
                replica[k] = h(k, 1)
        elif keys:
            k = rnd.choice(keys)
            if what == "change":
                replica[k] = h(k, rnd.randint(1, 5))
            else:
                replica.pop(k, None)
    return source, replica


def expected(source: dict[int, int], replica: dict[int, int]) -> set[tuple[str, str]]:
    out = set()
    for k in source.keys() | replica.keys():
        if source.get(k) != replica.get(k):
            kind = "missing" if k not in replica else "extra" if k not in source else "changed"
            out.add((str(k), kind))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables(), st.integers(2, 20), st.integers(1, 100))
def test_the_bisection_finds_exactly_the_keys_that_differ(table, fanout, leaf_rows):
    source, replica = table
    result = compare(FakeSide(source), FakeSide(replica), fanout=fanout, leaf_rows=leaf_rows)
    assert {(d.key, d.kind) for d in result.differences} == expected(source, replica)
    assert result.equal == (source == replica)
    assert (result.source.count, result.replica.count) == (len(source), len(replica))
    for d in result.differences:
        assert d.source == source.get(int(d.key)) and d.replica == replica.get(int(d.key))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60_000), st.integers(0, 2**32))
def test_one_difference_takes_a_logarithmic_number_of_round_trips(n, seed):
    rnd = random.Random(seed)
    source = {k: h(k) for k in range(0, 2 * n, 2)}
    replica = dict(source)
    victim = rnd.randrange(0, 2 * n, 2)
    replica[victim] = h(victim, 1)
    a, b = FakeSide(source), FakeSide(replica)
    result = compare(a, b, fanout=16, leaf_rows=256)
    assert [(d.key, d.kind) for d in result.differences] == [(str(victim), "changed")]
    levels = max(0, math.ceil(math.log(n / 256, 16))) if n > 256 else 0
    # the whole table, then per level one split and two summaries, then the leaf on both sides
    assert result.round_trips == a.calls + b.calls <= 2 + 3 * (levels + 1) + 2
    assert result.ranges_compared <= 1 + 16 * (levels + 1)


def test_equal_tables_take_one_query_a_side():
    rows = {k: h(k) for k in range(10_000)}
    a, b = FakeSide(rows), FakeSide(dict(rows))
    result = compare(a, b)
    assert result.equal and result.round_trips == 2 and a.calls == b.calls == 1


def test_a_replica_with_rows_the_source_never_had_is_split_on_its_own_keys():
    source = {}
    replica = {k: h(k) for k in range(5000)}
    result = compare(FakeSide(source), FakeSide(replica), fanout=4, leaf_rows=10)
    assert len(result.differences) == 5000 and {d.kind for d in result.differences} == {"extra"}


def test_the_recheck_keeps_what_still_differs_and_drops_keys_postgres_changed_meanwhile():
    first = [Difference("1", 10, 11), Difference("2", 20, None), Difference("3", None, 30), Difference("4", 40, 41)]
    source_now = {"1": 10, "2": 21, "4": 40}      # 2 changed in Postgres meanwhile
    replica_now = {"1": 11, "2": 21, "3": 30, "4": 40}  # 4 caught up
    remaining, moved = confirm(first, source_now, replica_now)
    assert [(d.key, d.kind) for d in remaining] == [("1", "changed"), ("3", "extra")]
    assert moved == ["2"]


def test_summaries_and_splits_are_parsed_per_range():
    assert parse_summaries([[2, 3, "12345678901234567890123"], [0, 1, "5"]], 3) == [
        Summary(1, 5), Summary(0, 0), Summary(3, 12345678901234567890123)]
    assert parse_split([[0, "5", 2], [1, "x", 3], [0, "9", 4]], 2) == [["5", "9"], ["x"]]


def test_key_literals_read_back_as_the_same_values():
    con = duckdb.connect()
    for kind, value, canon_text in [
        ("int", -42, "-42"), ("numeric", "1.5", "1.5"), ("text", "it's", "it's"),
        ("uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ("date", date(2024, 2, 29), str((date(2024, 2, 29) - date(1970, 1, 1)).days)),
        ("timestamp", datetime(1969, 12, 31, 23, 59, 59, 999999), "-1"),
        ("timestamptz", "2025-06-01 08:00:00.5+00", str(int((datetime(2025, 6, 1, 8, 0, 0, 500000)
                                                              - datetime(1970, 1, 1)) / timedelta(microseconds=1)))),
    ]:
        k = KeyType(kind, "k")
        back = con.execute(f"SELECT {k.literal(canon_text)}").fetchone()[0]
        if kind == "timestamptz":
            assert back.timestamp() == datetime.fromisoformat(value).timestamp()
        elif kind == "numeric":
            assert str(back) == value
        else:
            assert str(back) == str(value), kind
    with pytest.raises(ValueError):
        KeyType("int", "k").literal("1; DROP TABLE x")


def test_keys_verify_cannot_range_over_are_refused_with_the_reason():
    assert "composite" in key_type([Column("a", "int4", "INTEGER"), Column("b", "int4", "INTEGER")])
    assert "no primary key" in key_type([])
    assert "point" in key_type([Column("p", "point", "VARCHAR")])
    assert key_type([Column("id", "int8", "BIGINT")]) == KeyType("int", "id")
    assert "no common canonical text" in canon(Column("p", "point", "VARCHAR"))


def test_the_repair_filter_names_exactly_the_keys_in_sql_duckdb_runs():
    con = duckdb.connect()
    con.execute("CREATE TABLE t (id VARCHAR PRIMARY KEY)")
    con.execute("INSERT INTO t VALUES ('a'), ('b''c'), ('d'), ('e\\f')")
    where = repair_filter(KeyType("text", "id"), ["b'c", "e\\f", "zz"])
    assert con.execute(f"SELECT id FROM t WHERE {where} ORDER BY id").fetchall() == [("b'c",), ("e\\f",)]


# -- the SQL on DuckDB: both sides in one in-memory database, every key type ---------------------

KEY_TYPES = {
    "int": ("BIGINT", lambda i: i * 3 - 500),
    "numeric": ("DECIMAL(12,3)", lambda i: f"{i * 1.5 - 100:.3f}"),
    "text": ("VARCHAR", lambda i: f"key-{i * 7919 % 10007:05d}-é{'Z' if i % 3 else 'a'}"),
    "uuid": ("UUID", lambda i: f"{(i * 2654435761) % 2**128:032x}"),
    "date": ("DATE", lambda i: (date(1970, 1, 1) + timedelta(days=i * 37 - 5000)).isoformat()),
    "timestamp": ("TIMESTAMP", lambda i: (datetime(2020, 1, 1) + timedelta(seconds=i * 3601, microseconds=i)).isoformat()),
    "timestamptz": ("TIMESTAMPTZ", lambda i: (datetime(2020, 1, 1) + timedelta(minutes=i * 61)).isoformat() + "+00"),
}


class DuckSide:
    def __init__(self, con, table, key, columns):
        self.con = con
        self.sql = TableSql(DUCK, table, key, row_hash_sql(DUCK, columns))

    def summarize(self, ranges):
        return parse_summaries(self.con.execute(self.sql.summarize(ranges)).fetchall(), len(ranges))

    def split(self, cuts):
        return parse_split(self.con.execute(self.sql.split(cuts)).fetchall(), len(cuts))

    def rows(self, ranges):
        return {str(k): int(v) for k, v in self.con.execute(self.sql.rows(ranges)).fetchall()}


@pytest.mark.parametrize("kind", list(KEY_TYPES))
def test_the_duckdb_queries_find_the_differences_for_every_key_type(kind):
    duck_type, value = KEY_TYPES[kind]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for t in ("src", "rep"):
        con.execute(f"CREATE TABLE {t} (k {duck_type} PRIMARY KEY, v INTEGER, s VARCHAR, d DOUBLE)")
    rows = pa.table({"k": [str(value(i)) for i in range(1500)], "v": list(range(1500)),
                     "s": [f"s{i}" if i % 5 else None for i in range(1500)], "d": [i / 7 for i in range(1500)]})
    con.register("rows", rows)
    con.execute(f"INSERT INTO src SELECT CAST(k AS {duck_type}), v, s, d FROM rows")
    con.execute("INSERT INTO rep SELECT * FROM src")
    changed, deleted, extra = value(10), value(700), value(5000)
    con.execute("UPDATE rep SET s = 'x' WHERE k = ?", [changed])
    con.execute("DELETE FROM rep WHERE k = ?", [deleted])
    con.execute("INSERT INTO rep VALUES (?, 1, NULL, NULL)", [extra])
    key = KeyType(kind, "k")
    cols = [(c, canon(c)) for c in (Column("k", {"int": "int8", "numeric": "numeric", "text": "text"}.get(kind, kind),
                                           duck_type), Column("v", "int4", "INTEGER"), Column("s", "text", "VARCHAR"),
                                    Column("d", "float8", "DOUBLE"))]
    result = compare(DuckSide(con, "src", key, cols), DuckSide(con, "rep", key, cols), fanout=8, leaf_rows=20)
    found = {(key.display(d.key), d.kind) for d in result.differences}
    lit = {d.kind: con.execute(f"SELECT CAST(CAST({key.literal(d.key)} AS {duck_type}) AS VARCHAR)").fetchone()[0]
           for d in result.differences}
    expect = {"changed": changed, "missing": deleted, "extra": extra}
    assert {k for _, k in found} == {"changed", "missing", "extra"} and len(found) == 3
    for kind_, v in expect.items():
        assert con.execute(f"SELECT CAST(CAST(? AS {duck_type}) AS VARCHAR)", [v]).fetchone()[0] == lit[kind_]
    where = repair_filter(key, [d.key for d in result.differences])
    assert con.execute(f"SELECT count(*) FROM src WHERE {where}").fetchone()[0] == 2
    assert con.execute(f"SELECT count(*) FROM rep WHERE {where}").fetchone()[0] == 2


@pytest.mark.parametrize("value, duck_type, text", [
    ("0.00000000000000000000000000000000000001", "DECIMAL(38,38)", "0.00000000000000000000000000000000000001"),
    ("-0.5", "DECIMAL(3,3)", "-0.5"), ("0", "DECIMAL(3,3)", "0"), ("-12.340", "DECIMAL(12,3)", "-12.34"),
    ("100", "DECIMAL(12,2)", "100"),
])
def test_decimals_are_written_as_postgres_writes_numerics_even_without_integer_digits(value, duck_type, text):
    """DuckDB prints DECIMAL(p,p) as '.5': the canonical text puts Postgres' zero back."""
    from mallard.core.type_registry import DECIMAL_TEXT

    assert duckdb.connect().execute("SELECT " + DECIMAL_TEXT.duck.format(f"CAST('{value}' AS {duck_type})")).fetchone() == (text,)


# -- the column sets ---------------------------------------------------------------------------

def test_a_column_postgres_has_and_the_replica_lacks_is_a_difference():
    from mallard.core.verify import compare_columns

    sets = compare_columns(["id", "name", "price", "weight"], ["id", "name", "price"])
    assert sets.missing == ("weight",) and sets.extra == () and sets.kept == () and sets.differ
    assert sets.describe() == "columns not in the replica: weight"


def test_a_column_only_in_the_replica_is_a_difference_until_the_replica_records_it_dropped():
    from mallard.core.verify import compare_columns

    unseen = compare_columns(["id", "name"], ["id", "name", "legacy"])
    assert unseen.extra == ("legacy",) and unseen.differ
    assert unseen.describe() == "columns only in the replica: legacy"
    kept = compare_columns(["id", "name"], ["id", "name", "legacy"], dropped=["legacy"])
    assert kept.kept == ("legacy",) and kept.extra == () and not kept.differ


def test_equal_column_sets_in_any_order_do_not_differ_and_both_kinds_are_described():
    from mallard.core.verify import compare_columns

    assert not compare_columns(["a", "b", "c"], ["c", "a", "b"]).differ
    both = compare_columns(["id", "new"], ["id", "old"])
    assert both.describe() == "columns not in the replica: new; only in the replica: old"


def _stream_result(column_sets, differences=()):
    from mallard.core.verify import Comparison
    from mallard.ops.verify import Plan, StreamResult

    key = KeyType("int", "id")
    p = Plan("public.products", "ok", '"public"."products"', '"main"."products"', [], key, [], column_sets)
    comparison = Comparison(Summary(3, 30), Summary(3, 30) if not differences else Summary(3, 31),
                            list(differences))
    return StreamResult("public.products", "ok", p, comparison, list(differences))


def test_verify_reports_a_column_difference_even_when_every_row_hash_agrees():
    from mallard.core.verify import ColumnSets
    from mallard.ops.verify import Report, as_json, render, repair_request

    r = _stream_result(ColumnSets(missing=("weight",)))
    assert r.rows_equal and not r.equal
    report = Report("0/1", "the file", None, [r])
    text = "\n".join(render(report))
    assert "DIFFERENT 3 rows: columns not in the replica: weight" in text
    assert text.endswith("0 of 1 stream(s) equal; differences remain")
    item = as_json(report)["streams"][0]
    assert item["equal"] is False and item["columns_missing"] == ["weight"] and item["columns_extra"] == []
    assert repair_request(r) == (None, True)  # the replica's rows need the new column's values: whole table


def test_kept_dropped_columns_are_a_note_not_a_difference():
    from mallard.core.verify import ColumnSets
    from mallard.ops.verify import Report, render

    r = _stream_result(ColumnSets(kept=("legacy",)))
    r.plan.notes.append("dropped in Postgres, kept in the replica (not hashed): legacy")
    assert r.equal
    text = "\n".join(render(Report("0/1", "the file", None, [r])))
    assert "equal     3 rows" in text and "note: dropped in Postgres, kept in the replica" in text


def test_a_column_difference_is_shown_with_the_keys_that_differ():
    from mallard.core.verify import ColumnSets
    from mallard.ops.verify import Report, render

    r = _stream_result(ColumnSets(extra=("legacy",)), [Difference("7", 1, 2)])
    text = "\n".join(render(Report("0/1", "the file", None, [r])))
    assert "1 key(s) differ" in text and "id = 7: differs" in text and "columns only in the replica: legacy" in text


def test_verify_progress_is_a_line_per_stream_off_a_terminal():
    import io

    from mallard.runtime.progress import VerifyProgress

    out = io.StringIO()
    with VerifyProgress(out) as progress:
        progress.start("public.orders", 5000)
        progress.done("public.orders", 5000, 0.5, "equal")
        progress.start('public."Order Items"', None)
        progress.done('public."Order Items"', 0, 0.0, "could not compare")
    assert out.getvalue().splitlines() == [
        "verify: public.orders equal: 5,000 rows compared in 0.5s (10,000/s)",
        'verify: public."Order Items" could not compare: 0 rows compared in 0.0s (-)']
