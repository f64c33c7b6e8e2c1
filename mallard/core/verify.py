"""``mallard verify``'s pure part: the canonical text of a row both Postgres and DuckDB
compute, the SQL that hashes and lists key ranges on either side, and the range
bisection that narrows a difference down to its keys with few round trips.

Method. Each row becomes one canonical text, computed in SQL by each engine from its own
column (the same bytes on both sides for the same value), its md5 taken and the first 60
bits of it kept as a non-negative BIGINT: the row's hash. A key range is summarised as
(row count, sum of its rows' hashes) — order-independent, so neither side sorts. The
whole table is summarised first; where source and replica differ, the range is cut in up
to ``fanout`` buckets at quantiles of the key (taken on the side with more rows there) and
the buckets are summarised again, until a bucket holds at most ``leaf_rows`` rows on both
sides: then both sides list (key, row hash) and the keys that differ are known. One round
trip per side and level; ``log_fanout(rows / leaf_rows)`` levels.

The canonical text of a row is its columns' texts, each written as ``<bytes>:<text>`` (or
``-`` for NULL), concatenated: prefix-free, so no two rows share a text. Per type:

- integers: decimal text; numerics: decimal text without trailing fractional zeros
  (a replica may hold a numeric in another scale); numerics held as text: the text;
- real/double: 15 significant digits, ``%.14e`` (``0`` for ±0, ``nan``, ``inf``, ``-inf``):
  values that differ beyond the 15th digit are not told apart;
- boolean ``true``/``false``; text, varchar, char (padded), enums: the text itself;
- date: days since 1970-01-01; time: microseconds since midnight; timestamp and
  timestamptz: microseconds since the epoch (UTC); ``infinity``/``-infinity`` as such;
  time with time zone: its text; interval: ``months:days:microseconds``;
- uuid: lower-case text; json/jsonb: the text Postgres holds (what Debezium and the
  snapshotter send); bytea: lower-case hex;
- int[]/text[]: ``<length>:`` and each element encoded like a column.

Columns of a type mallard keeps as text without knowing it (point, ranges...) are not
hashed: Debezium's text of them is not Postgres' own.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Protocol

from mallard.core.sql import quote_ident as qi
from mallard.core.sql import quote_literal as ql
from mallard.core.type_registry import AS_TEXT, DAYS, DECIMAL_TEXT, ENUM, EPOCH_US, REGISTRY, Canon, PgType, VerifyAs

PG, DUCK = "pg", "duck"


def _by_typname(rows: tuple[PgType, ...]) -> dict[str, tuple[VerifyAs, ...]]:
    """pg_type.typname -> how verify compares it, per DuckDB type the replica holds it as."""
    return {name: row.verify for row in rows for name in row.names}


_VERIFY = _by_typname(REGISTRY)


@dataclass(frozen=True)
class Column:
    """A column as verify sees it: Postgres' type (pg_type.typname, and the element's for
    an array; enums are flagged) and the DuckDB type the replica holds it in."""

    name: str
    pg_type: str
    duck_type: str
    is_enum: bool = False
    element: str | None = None


def _verify_as(pg_type: str, duck_type: str, is_enum: bool = False) -> VerifyAs | None:
    d = duck_type.upper()
    for way in _VERIFY.get(pg_type, ()) + (ENUM.verify if is_enum else ()):
        if way.holds(d):
            return way
    return None


def _scalar_canon(pg_type: str, duck_type: str, is_enum: bool = False) -> Canon | str:
    """The canonical form of a scalar column, or why it is not hashed."""
    way = _verify_as(pg_type, duck_type, is_enum)
    if way is None:
        return f"Postgres {pg_type} kept as DuckDB {duck_type}: no common canonical text"
    return way.canon


def canon(col: Column) -> Canon | str:
    """The canonical text of ``col`` in both engines, or why the column is not hashed."""
    if col.element is not None:
        if not col.duck_type.endswith("[]"):
            return f"Postgres array of {col.element} kept as DuckDB {col.duck_type}: no common canonical text"
        inner = _scalar_canon(col.element, col.duck_type[:-2])
        if isinstance(inner, str):
            return inner
        pg_e = field_sql(PG, inner.pg.format('"_m_e"'), '"_m_e"')
        duck_e = field_sql(DUCK, inner.duck.format("_m_e"), "_m_e")
        return Canon(
            "(SELECT cardinality({0})::text || ':' || coalesce(string_agg(" + pg_e.replace("{", "{{").replace("}", "}}")
            + ", '' ORDER BY \"_m_o\"), '') FROM unnest({0}) WITH ORDINALITY AS \"_m_u\"(\"_m_e\", \"_m_o\"))",
            "(CAST(len({0}) AS VARCHAR) || ':' || array_to_string(list_transform({0}, lambda _m_e: "
            + duck_e.replace("{", "{{").replace("}", "}}") + "), ''))",
            note=inner.note)
    return _scalar_canon(col.pg_type, col.duck_type, col.is_enum)


def field_sql(engine: str, text: str, value: str) -> str:
    """One column's part of the row text: ``<bytes>:<text>``, or ``-`` for NULL."""
    length = f"octet_length({text})::text" if engine == PG else f"CAST(strlen({text}) AS VARCHAR)"
    return f"(CASE WHEN {value} IS NULL THEN '-' ELSE {length} || ':' || {text} END)"


def row_text_sql(engine: str, columns: Sequence[tuple[Column, Canon]]) -> str:
    parts = []
    for col, c in columns:
        ident = qi(col.name)
        parts.append(field_sql(engine, (c.pg if engine == PG else c.duck).format(ident), ident))
    return " || ".join(parts) if parts else "''"


def row_hash_sql(engine: str, columns: Sequence[tuple[Column, Canon]]) -> str:
    """The row's hash: the first 60 bits of the md5 of its canonical text, a BIGINT >= 0."""
    text = row_text_sql(engine, columns)
    if engine == PG:
        return f"('x' || substr(md5({text}), 1, 15))::bit(60)::bigint"
    return f"CAST('0x' || substr(md5({text}), 1, 15) AS BIGINT)"


# -- the column sets -----------------------------------------------------------------------

@dataclass(frozen=True)
class ColumnSets:
    """How the table's columns in Postgres and in the replica compare. Rows are hashed over
    the columns both hold, so a column on one side only must be reported on its own: the
    replica learns of a column added in Postgres only with the table's next change event."""

    missing: tuple[str, ...] = ()
    """In Postgres, not in the replica: a difference."""
    extra: tuple[str, ...] = ()
    """In the replica only, and not known there as dropped in Postgres: a difference (the
    replica has not seen the drop yet)."""
    kept: tuple[str, ...] = ()
    """Dropped in Postgres and kept in the replica on purpose (NULL in new rows): a note."""

    @property
    def differ(self) -> bool:
        return bool(self.missing or self.extra)

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"not in the replica: {', '.join(self.missing)}")
        if self.extra:
            parts.append(f"only in the replica: {', '.join(self.extra)}")
        return "columns " + "; ".join(parts)


def compare_columns(source: Sequence[str], replica: Sequence[str], dropped: Iterable[str] = ()) -> ColumnSets:
    """Compare the source's and the replica's column names (``dropped``: the columns the
    replica records as dropped in Postgres and keeps). Order is each side's own."""
    dropped_set, source_set, replica_set = set(dropped), set(source), set(replica)
    return ColumnSets(
        missing=tuple(c for c in source if c not in replica_set),
        extra=tuple(c for c in replica if c not in source_set and c not in dropped_set),
        kept=tuple(c for c in replica if c not in source_set and c in dropped_set))


# -- keys ---------------------------------------------------------------------------------

_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_EPOCH_DATE = date(1970, 1, 1)
_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True)
class KeyType:
    """A single-column primary key verify can range over: its canonical text (the key's
    identity on both sides), a literal both engines read back as the same value, and an
    order the two engines agree on."""

    kind: str  # int, numeric, text, uuid, date, timestamp, timestamptz
    column: str

    def canon_sql(self, engine: str) -> str:
        ident = qi(self.column)
        c = KEY_CANON[self.kind]
        return (c.pg if engine == PG else c.duck).format(ident)

    def order_sql(self, engine: str) -> str:
        """The key as ranges compare it: Postgres orders text by bytes (``COLLATE "C"``), as DuckDB does."""
        ident = qi(self.column)
        return f'{ident} COLLATE "C"' if engine == PG and self.kind == "text" else ident

    def literal(self, key: str) -> str:
        """SQL for the key whose canonical text is ``key`` (the same in both engines)."""
        k = self.kind
        if k in ("int", "numeric"):
            if not _NUMBER.match(key):
                raise ValueError(f"not a number: {key!r}")
            return key
        if k == "text":
            return ql(key)
        if k == "uuid":
            return f"CAST({ql(key)} AS UUID)"
        if key in ("infinity", "-infinity"):
            return f"CAST({ql(key)} AS {'TIMESTAMPTZ' if k == 'timestamptz' else k.upper()})"
        return {"date": "DATE", "timestamp": "TIMESTAMP", "timestamptz": "TIMESTAMPTZ"}[k] + " " + ql(self.display(key))

    def display(self, key: str) -> str:
        """The key as a person reads it (and as both engines parse it)."""
        k = self.kind
        if key in ("infinity", "-infinity") or k in ("int", "numeric", "text", "uuid"):
            return key
        if k == "date":
            return (_EPOCH_DATE + timedelta(days=int(key))).isoformat()
        text = (_EPOCH + timedelta(microseconds=int(key))).isoformat(sep=" ")
        return text + "+00" if k == "timestamptz" else text

    def sort_key(self, key: str) -> tuple:
        if key in ("infinity", "-infinity"):
            return (1 if key == "infinity" else -1, Decimal(0), "")
        if self.kind in ("int", "numeric", "date", "timestamp", "timestamptz"):
            return (0, Decimal(key), "")
        return (0, Decimal(0), key.encode())


KEY_CANON = {
    "int": AS_TEXT,
    "numeric": DECIMAL_TEXT,
    "text": Canon("{}::text", "CAST({} AS VARCHAR)"),
    "uuid": AS_TEXT,
    "date": DAYS,
    "timestamp": EPOCH_US,
    "timestamptz": EPOCH_US,
}


def key_type(key_columns: Sequence[Column]) -> KeyType | str:
    """The key verify ranges over, or why it cannot."""
    if not key_columns:
        return ("no primary key: compared as multisets (the whole table's row count and sum of row "
                "hashes, so a duplicate row counts)")
    if len(key_columns) > 1:
        return (f"a composite primary key ({', '.join(c.name for c in key_columns)}): verify ranges over "
                "single-column keys only")
    col = key_columns[0]
    way = _verify_as(col.pg_type, col.duck_type)
    if way is not None and way.key is not None:
        return KeyType(way.key, col.name)
    return (f"primary key {col.name} of type {col.pg_type}: verify ranges over integer, numeric, text, uuid, date "
            "and timestamp keys")


# -- ranges and the SQL over them -----------------------------------------------------------

@dataclass(frozen=True)
class KeyRange:
    """Keys ``low <= k < high`` (canonical texts; None: unbounded)."""

    low: str | None = None
    high: str | None = None


@dataclass(frozen=True)
class Summary:
    count: int
    hash: int


@dataclass(frozen=True)
class TableSql:
    """Everything needed to write verify's queries for one table on one engine."""

    engine: str
    table: str
    """The table, quoted (``"public"."orders"`` in Postgres, ``"main"."orders"`` in DuckDB)."""
    key: KeyType | None
    row_hash: str

    def _range_sql(self, r: KeyRange) -> str:
        assert self.key is not None
        k = self.key.order_sql(self.engine)
        parts = []
        if r.low is not None:
            parts.append(f"{k} >= {self.key.literal(r.low)}")
        if r.high is not None:
            parts.append(f"{k} < {self.key.literal(r.high)}")
        return " AND ".join(parts) or "TRUE"

    def summarize(self, ranges: Sequence[KeyRange]) -> str:
        """(range index, rows, sum of row hashes as text) per range that has rows."""
        if self.key is None:
            assert len(ranges) == 1
            bucket, where = "0", "TRUE"
        else:
            bucket = "CASE " + " ".join(f"WHEN {self._range_sql(r)} THEN {i}" for i, r in enumerate(ranges)) + " END"
            where = " OR ".join(f"({self._range_sql(r)})" for r in ranges)
        total = "sum(h)::text" if self.engine == PG else "CAST(sum(h) AS VARCHAR)"
        return (f"SELECT b, count(*), {total} FROM (SELECT {bucket} AS b, {self.row_hash} AS h "
                f"FROM {self.table} WHERE {where}) AS _m GROUP BY b")

    def split(self, cuts: Sequence[tuple[KeyRange, int]]) -> str:
        """(range index, boundary) rows: every ``step``-th key of each range after its first."""
        assert self.key is not None
        k, c = self.key.order_sql(self.engine), self.key.canon_sql(self.engine)
        parts = [f"SELECT {i} AS b, k, n FROM (SELECT {c} AS k, row_number() OVER (ORDER BY {k}) AS n "
                 f"FROM {self.table} WHERE {self._range_sql(r)}) AS _m{i} WHERE n > 1 AND (n - 1) % {step} = 0"
                 for i, (r, step) in enumerate(cuts)]
        return " UNION ALL ".join(parts) + " ORDER BY b, n"

    def rows(self, ranges: Sequence[KeyRange]) -> str:
        """(key, row hash) of every row in the ranges."""
        assert self.key is not None
        where = " OR ".join(f"({self._range_sql(r)})" for r in ranges)
        return f"SELECT {self.key.canon_sql(self.engine)}, {self.row_hash} FROM {self.table} WHERE {where}"

    def lookup(self, keys: Sequence[str]) -> str:
        """(key, row hash) of the rows with these keys."""
        assert self.key is not None
        listed = ", ".join(self.key.literal(k) for k in keys)
        return (f"SELECT {self.key.canon_sql(self.engine)}, {self.row_hash} FROM {self.table} "
                f"WHERE {self.key.order_sql(self.engine)} IN ({listed})")


def repair_filter(key: KeyType, keys: Iterable[str]) -> str:
    """A snapshot ``where`` selecting exactly these keys, in SQL both engines run (the
    snapshotter reads with it, the applier's end-of-snapshot delete stays inside it)."""
    return f"{qi(key.column)} IN ({', '.join(key.literal(k) for k in sorted(set(keys), key=key.sort_key))})"


# -- the bisection ----------------------------------------------------------------------------

class Side(Protocol):
    """One side of the comparison, able to answer for many ranges in one round trip."""

    def summarize(self, ranges: Sequence[KeyRange]) -> list[Summary]: ...

    def split(self, cuts: Sequence[tuple[KeyRange, int]]) -> list[list[str]]:
        """For each (range, step): every step-th key of the range after its first, ascending."""
        ...

    def rows(self, ranges: Sequence[KeyRange]) -> dict[str, int]: ...


@dataclass(frozen=True)
class Difference:
    key: str
    source: int | None
    """The row's hash in the source (None: no such row there)."""
    replica: int | None

    @property
    def kind(self) -> str:
        if self.replica is None:
            return "missing"  # in the source, not in the replica
        if self.source is None:
            return "extra"  # in the replica only
        return "changed"


@dataclass
class Comparison:
    source: Summary
    replica: Summary
    differences: list[Difference] = field(default_factory=list)
    leaves: list[KeyRange] = field(default_factory=list)
    """The smallest ranges found to differ."""
    round_trips: int = 0
    ranges_compared: int = 0

    @property
    def equal(self) -> bool:
        return self.source == self.replica and not self.differences


def compare(source: Side, replica: Side, *, fanout: int = 16, leaf_rows: int = 256,
            max_leaf_batch: int = 5000) -> Comparison:
    """Find every key whose row differs between ``source`` and ``replica``.

    Ranges whose summaries agree are taken as equal (a sum of 60-bit hashes and a count:
    a difference hiding in them is as likely as an md5 collision)."""
    if fanout < 2 or leaf_rows < 1:
        raise ValueError("fanout must be >= 2 and leaf_rows >= 1")
    whole = KeyRange()
    s, r = source.summarize([whole])[0], replica.summarize([whole])[0]
    result = Comparison(s, r, round_trips=2, ranges_compared=1)
    pending = [] if s == r else [(whole, s, r)]
    while pending:
        leaves = [(rng, s, r) for rng, s, r in pending if max(s.count, r.count) <= leaf_rows]
        big = [(rng, s, r) for rng, s, r in pending if max(s.count, r.count) > leaf_rows]
        _compare_leaves(source, replica, leaves, result, max_leaf_batch)
        pending = []
        if not big:
            break
        # Split each range at quantiles of the side holding more of it.
        by_side: dict[int, list[int]] = {0: [], 1: []}
        for i, (_, s, r) in enumerate(big):
            by_side[0 if s.count >= r.count else 1].append(i)
        bounds: dict[int, list[str]] = {}
        for side_no, indexes in by_side.items():
            if not indexes:
                continue
            side = source if side_no == 0 else replica
            cuts = []
            for i in indexes:
                rng, s, r = big[i]
                n = max(s.count, r.count)
                cuts.append((rng, max(1, -(-n // fanout))))
            for i, b in zip(indexes, side.split(cuts)):
                bounds[i] = b
            result.round_trips += 1
        children: list[KeyRange] = []
        unsplittable: list[tuple[KeyRange, Summary, Summary]] = []
        for i, (rng, s, r) in enumerate(big):
            points = [rng.low, *bounds.get(i, []), rng.high]
            parts = [KeyRange(points[j], points[j + 1]) for j in range(len(points) - 1)]
            if len(parts) < 2:  # no key to cut at (should not happen with unique keys): list it whole
                unsplittable.append((rng, s, r))
            else:
                children += parts
        _compare_leaves(source, replica, unsplittable, result, max_leaf_batch)
        if children:
            ss, rs = source.summarize(children), replica.summarize(children)
            result.round_trips += 2
            result.ranges_compared += len(children)
            pending = [(c, a, b) for c, a, b in zip(children, ss, rs) if a != b]
    return result


def _compare_leaves(source: Side, replica: Side, leaves: list[tuple[KeyRange, Summary, Summary]],
                    result: Comparison, max_batch: int) -> None:
    """List the rows of small differing ranges on both sides (in batches of at most
    ``max_batch`` rows a side) and keep the keys whose rows differ."""
    batch: list[KeyRange] = []
    rows = 0
    for i, (rng, s, r) in enumerate(leaves):
        batch.append(rng)
        result.leaves.append(rng)
        rows += max(s.count, r.count)
        last = i == len(leaves) - 1
        if last or rows + max(leaves[i + 1][1].count, leaves[i + 1][2].count) > max_batch:
            a, b = source.rows(batch), replica.rows(batch)
            result.round_trips += 2
            result.differences += diff_rows(a, b)
            batch, rows = [], 0


def diff_rows(source: dict[str, int], replica: dict[str, int]) -> list[Difference]:
    return [Difference(k, source.get(k), replica.get(k))
            for k in sorted(source.keys() | replica.keys()) if source.get(k) != replica.get(k)]


def confirm(first: Sequence[Difference], source_now: dict[str, int], replica_now: dict[str, int]) -> tuple[
        list[Difference], list[str]]:
    """The re-check after another catch-up: (differences that remain, keys that changed in the
    source in between — not differences: the pipeline had not caught up with them)."""
    remaining, moved = [], []
    for d in first:
        now_s, now_r = source_now.get(d.key), replica_now.get(d.key)
        if now_s != d.source:
            moved.append(d.key)
        elif now_s != now_r:
            remaining.append(Difference(d.key, now_s, now_r))
    return remaining, moved


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def parse_summaries(rows: Iterable[Sequence], n: int) -> list[Summary]:
    """``summarize``'s rows -> one Summary per range (empty ranges: (0, 0))."""
    out = [Summary(0, 0)] * n
    for b, count, total in rows:
        if b is not None:
            out[int(b)] = Summary(int(count), int(Decimal(str(total))) if total is not None else 0)
    return out


def parse_split(rows: Iterable[Sequence], n: int) -> list[list[str]]:
    out: list[list[str]] = [[] for _ in range(n)]
    for b, k, _ in rows:
        out[int(b)].append(str(k))
    return out


def parse_lsn(text: str) -> int:
    """Postgres' 'X/Y' LSN text -> an integer."""
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)
