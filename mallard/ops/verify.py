"""``mallard verify``: is the DuckDB replica what Postgres holds? (The edge around
mallard/core/verify.py: Postgres and the replica as the two sides of its bisection.)

Consistency point: Postgres is read in one REPEATABLE READ transaction whose snapshot is
taken first, with ``pg_current_wal_lsn()``; then verify waits until the applier has caught
up with that position — it applied a transaction committed at or after it, or Debezium has
received the WAL up to it (``pg_stat_replication.write_lsn`` of the slot's sender) and the
applier has been idle since (nothing buffered, nothing applied, no snapshot staging) — and
compares. With a quiet source that is exact. With a busy one the replica may run ahead of
the Postgres snapshot, so every differing key is read again on both sides after another
catch-up: a key whose Postgres row changed in between is not reported, one that still
differs is.

The replica is read through the running applier's ``/query`` endpoint (each query sees
whole applied transactions), or from the file opened read-only when the applier is stopped
(then nothing catches up: the replica is compared as it is).
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mallard.core.verify import (
    DUCK, PG, Canon, Column, ColumnSets, Comparison, Difference, KeyRange, KeyType, Summary, TableSql, compare,
    compare_columns, confirm, key_type, parse_lsn, parse_split, parse_summaries, qi, row_hash_sql,
)
from mallard.core import verify as core
from mallard.runtime.health import client_request

MAX_SQL_CHARS = 30_000
"""A GET request line is limited (64 KiB in the applier's HTTP server): longer batches are split."""


# -- the replica ------------------------------------------------------------------------------

class Replica:
    """Reads the replica: ``run(sql)`` -> rows."""

    via: str

    def run(self, sql: str) -> list[list[Any]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ApplierReplica(Replica):
    """Through the running applier's HTTP endpoint (it alone may open the file)."""

    def __init__(self, url: str):
        self.base = url.rstrip("/")
        self.via = f"the applier ({self.base}/query)"

    def _get(self, path: str, **params: str) -> tuple[int, dict[str, Any]]:
        url = self.base + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(client_request(url, "verify"), timeout=120) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read() or b"{}")
            except ValueError:
                return e.code, {}

    def answers(self) -> bool:
        try:
            self._get("/healthz")
            return True
        except OSError:
            return False

    def state(self) -> dict[str, Any]:
        return self._get("/healthz")[1]

    def run(self, sql: str) -> list[list[Any]]:
        code, body = self._get("/query", sql=sql)
        if code != 200:
            raise RuntimeError(f"the replica refused a verify query: {body.get('error') or code}")
        return body["rows"]


class FileReplica(Replica):
    """The DuckDB file opened read-only (the applier must be stopped)."""

    def __init__(self, path: str):
        import duckdb

        try:
            self.con = duckdb.connect(path, read_only=True)
        except duckdb.Error as e:
            raise RuntimeError(f"cannot open the replica {path} read-only: {str(e).splitlines()[0]}") from None
        self.via = f"the file {path} (read-only; the applier is not running)"

    def run(self, sql: str) -> list[list[Any]]:
        return [list(r) for r in self.con.execute(sql).fetchall()]

    def close(self) -> None:
        self.con.close()


# -- the two sides ----------------------------------------------------------------------------

def _batched(items: Sequence, build: Callable[[Sequence], str], run: Callable[[str], list], size: int) -> list:
    """Run ``build(chunk)`` for chunks of ``items`` (smaller when the SQL gets too long), in order."""
    out: list = []
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        sql = build(chunk)
        if len(sql) > MAX_SQL_CHARS and len(chunk) > 1:
            out += _batched(chunk, build, run, max(1, len(chunk) // 2))
        else:
            out.append((chunk, run(sql)))
    return out


class SqlSide:
    """One side of the comparison (core.Side): the table's queries on one engine."""

    def __init__(self, sql: TableSql, run: Callable[[str], list]):
        self.sql, self.run = sql, run

    def summarize(self, ranges: Sequence[KeyRange]) -> list[Summary]:
        out: list[Summary] = []
        for chunk, rows in _batched(ranges, self.sql.summarize, self.run, 100):
            out += parse_summaries(rows, len(chunk))
        return out

    def split(self, cuts: Sequence[tuple[KeyRange, int]]) -> list[list[str]]:
        out: list[list[str]] = []
        for chunk, rows in _batched(cuts, self.sql.split, self.run, 100):
            out += parse_split(rows, len(chunk))
        return out

    def rows(self, ranges: Sequence[KeyRange]) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, rows in _batched(ranges, self.sql.rows, self.run, 100):
            out.update({str(k): int(h) for k, h in rows})
        return out

    def lookup(self, keys: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, rows in _batched(keys, self.sql.lookup, self.run, 200):
            out.update({str(k): int(h) for k, h in rows})
        return out


def _pg_runner(cur: Any) -> Callable[[str], list]:
    def run(sql: str) -> list:
        cur.execute(sql)  # no parameters: psycopg2 leaves % alone
        return cur.fetchall()

    return run


# -- what to compare ----------------------------------------------------------------------------

@dataclass
class Plan:
    stream: str
    status: str
    pg_table: str
    duck_table: str
    columns: list[tuple[Column, Canon]]
    key: KeyType | None
    notes: list[str] = field(default_factory=list)
    column_sets: ColumnSets = ColumnSets()

    def sides(self, pg_run: Callable[[str], list], duck_run: Callable[[str], list]) -> tuple[SqlSide, SqlSide]:
        return (SqlSide(TableSql(PG, self.pg_table, self.key, row_hash_sql(PG, self.columns)), pg_run),
                SqlSide(TableSql(DUCK, self.duck_table, self.key, row_hash_sql(DUCK, self.columns)), duck_run))


def replica_tables(replica: Replica) -> dict[str, dict[str, Any]]:
    rows = replica.run("SELECT stream, target, status, columns, key_columns, dropped_columns, unknown_columns "
                       "FROM _mallard.tables ORDER BY stream")
    out = {}
    for stream, target, status, columns, keys, dropped, unknown in rows:
        load = (lambda v: json.loads(v) if isinstance(v, str) else (v or []))
        out[stream] = {"target": target, "status": status, "columns": [tuple(c) for c in load(columns)],
                       "keys": load(keys), "dropped": load(dropped), "unknown": load(unknown)}
    return out


def plan(conn: Any, stream: str, table: dict[str, Any]) -> Plan:
    """Which columns are hashed and which key is ranged over, from both catalogues."""
    from mallard.adapters import postgres

    pg_cols = {c.name: c for c in postgres.table_columns(conn, stream)}
    pg_key = postgres.primary_key(conn, stream)
    duck_types = dict(table["columns"])
    notes: list[str] = []
    noted: dict[str, list[str]] = {}
    columns: list[tuple[Column, Canon]] = []
    column_sets = compare_columns(list(pg_cols), list(duck_types), table["dropped"])
    for name, pc in pg_cols.items():
        if name not in duck_types:
            continue  # a difference (column_sets), not a note
        if name in table["unknown"]:
            notes.append(f"column {name} ({pc.type_name}) is kept as text of unknown type (not hashed)")
            continue
        col = Column(name, pc.type_name, duck_types[name], pc.is_enum, pc.element)
        c = core.canon(col)
        if isinstance(c, str):
            notes.append(f"column {name}: {c} (not hashed)")
            continue
        if c.note:
            noted.setdefault(c.note, []).append(name)
        columns.append((col, c))
    notes += [f"{'column' if len(names) == 1 else 'columns'} {', '.join(names)}: {note}" for note, names in noted.items()]
    if column_sets.kept:
        notes.append(f"dropped in Postgres, kept in the replica (not hashed): {', '.join(column_sets.kept)}")
    key: KeyType | None = None
    if pg_key and list(pg_key) != list(table["keys"]):
        raise RuntimeError(f"{stream}: the primary key differs (Postgres {pg_key}, replica {table['keys']}); "
                           "re-snapshot it")
    if pg_key:
        k = key_type([Column(n, pg_cols[n].type_name, duck_types.get(n, "?")) for n in pg_key])
        if isinstance(k, str):
            notes.append(k + "; only the whole table's count and hash are compared")
        else:
            key = k
    else:
        notes.append(("no primary key: compared as multisets (the whole table's row count and sum of row "
                      "hashes, so a duplicate row counts)"))
    from mallard.core.names import quoted

    return Plan(stream, table["status"], quoted(stream), table["target"], columns, key, notes,
                column_sets)


def column_sets_now(conn: Any, stream: str, table: dict[str, Any]) -> ColumnSets:
    from mallard.adapters import postgres

    return compare_columns([c.name for c in postgres.table_columns(conn, stream)], [c for c, _ in table["columns"]],
                           table["dropped"])


# -- catching up ------------------------------------------------------------------------------

@dataclass
class CatchUp:
    caught_up: bool
    how: str


_COUNTERS = ("events_applied", "transactions_applied", "batches", "snapshots_merged", "snapshots_abandoned",
             "snapshot_rows_staged", "dead_letters")


def received_position(conn: Any, slot: str) -> int | None:
    """How far Debezium has received the WAL (its sender's write_lsn), or None if nothing streams the slot."""
    with conn.cursor() as cur:
        cur.execute("SELECT r.write_lsn::text FROM pg_stat_replication r JOIN pg_replication_slots s "
                    "ON s.active_pid = r.pid WHERE s.slot_name = %s", (slot,))
        row = cur.fetchone()
    return parse_lsn(row[0]) if row and row[0] else None


def catch_up(conn: Any, applier: ApplierReplica, slot: str, target: int, timeout: float, quiet_s: float = 1.0,
             sleep: Callable[[float], None] = time.sleep) -> CatchUp:
    """Wait until the replica holds every transaction Postgres committed before ``target``."""
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    last: tuple | None = None
    while True:
        state = applier.state()
        progress = state.get("progress") or {}
        applied = parse_lsn(progress["commit_lsn"]) if progress.get("commit_lsn") else 0
        if applied >= target:
            return CatchUp(True, f"the applier applied up to LSN {progress['commit_lsn']}")
        received = received_position(conn, slot)
        # Events held count as moving while their number changes; once it has stood still,
        # those of a transaction whose END has not come for tx_stuck_after_s are not waited for.
        counters = tuple(state.get(c) for c in (*_COUNTERS, "buffered_events"))
        orphans = state.get("events_without_end") or 0
        held = (state.get("buffered_events") or 0) - orphans
        staging = applier.run("SELECT count(*) FROM _mallard.snapshots WHERE status = 'staging'")[0][0]
        busy = held > 0 or state.get("waiting_transactions") or staging or not state.get("ready")
        now = time.monotonic()
        moving = counters != last
        last = counters
        if received is not None and received >= target and not busy and not moving:
            quiet_since = quiet_since or now
            if now - quiet_since >= quiet_s:
                return CatchUp(True, "Debezium has received the WAL past it and the applier is idle"
                               + (f" (applied up to LSN {progress['commit_lsn']})" if progress else "")
                               + (f"; {orphans} event(s) held for a transaction whose END has not come "
                                  "(past the applier's MALLARD_TX_STUCK_AFTER_S) were not waited for" if orphans else ""))
        else:
            quiet_since = None
        if now > deadline:
            why = ("nothing streams the replication slot " + slot if received is None else
                   "the applier is still busy" if busy or moving else "Debezium has not received it yet")
            return CatchUp(False, f"not caught up within {timeout:.0f}s ({why}): differences may be changes in flight")
        sleep(0.25)


# -- the whole run ----------------------------------------------------------------------------

@dataclass
class StreamResult:
    stream: str
    status: str
    plan: Plan | None = None
    comparison: Comparison | None = None
    differences: list[Difference] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    """Keys that changed in Postgres during verification (not differences)."""
    error: str | None = None

    @property
    def equal(self) -> bool:
        return self.rows_equal and self.plan is not None and not self.plan.column_sets.differ

    @property
    def rows_equal(self) -> bool:
        """The rows agree over the columns both sides hold."""
        if self.error is not None or self.comparison is None or self.plan is None:
            return False
        if self.plan.key is None:
            return self.comparison.equal
        return not self.differences


@dataclass
class Report:
    position: str
    via: str
    catch_up: CatchUp | None
    results: list[StreamResult]

    @property
    def equal(self) -> bool:
        return all(r.equal for r in self.results)


def verify(pg_settings: Any, replica: Replica, streams: Sequence[str] | None, slot: str, *,
           timeout: float = 120, fanout: int = 16, leaf_rows: int = 256, log: Callable[[str], None] = lambda _: None,
           on_stream: Any = None) -> Report:
    """``on_stream``: told as each stream starts (``start(stream, estimate)``) and ends
    (``done(stream, rows, seconds, outcome)``): runtime/progress.py's VerifyProgress."""
    from mallard.adapters import postgres

    applier = replica if isinstance(replica, ApplierReplica) else None
    control = postgres.connect(**pg_settings.pg_params())  # autocommit: positions, the slot's sender
    conn = postgres.connect(**pg_settings.pg_params())
    conn.autocommit = False
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    try:
        cur = conn.cursor()
        position = _read_snapshot_position(cur)  # the snapshot is taken here
        progress = None
        if applier is not None:
            progress = catch_up(control, applier, slot, position, timeout)
        tables = replica_tables(replica)  # after the catch-up: columns the applier added meanwhile count
        names = list(streams) if streams else [s for s, t in tables.items() if t["status"] != "absent"]
        results = []
        for stream in names:
            started = time.monotonic()
            if on_stream is not None:
                on_stream.start(stream, _estimate(cur, stream))
            result = _compare_stream(conn, cur, replica, stream, tables.get(stream), fanout, leaf_rows)
            results.append(result)
            if on_stream is not None:
                c = result.comparison
                on_stream.done(stream, max(c.source.count, c.replica.count) if c else 0, time.monotonic() - started,
                              "could not compare" if c is None else "equal" if result.equal else "DIFFERENT")
        conn.rollback()
        # Re-check what differs after another catch-up: a key Postgres changed meanwhile is not a difference.
        if any(r.differences or (r.comparison and not r.comparison.equal) or (r.plan and r.plan.column_sets.differ)
               for r in results):
            position2 = _read_snapshot_position(cur)
            how = (catch_up(control, applier, slot, position2, timeout).how if applier is not None
                   else "the replica is read as it is")
            log(f"verify: re-checking what differs against Postgres at LSN {_lsn(position2)}; {how}")
            tables = replica_tables(replica)
            for r in results:
                _recheck(cur, replica, r)
                if r.plan is not None and r.plan.column_sets.differ and r.stream in tables:
                    r.plan.column_sets = column_sets_now(conn, r.stream, tables[r.stream])
            conn.rollback()
        return Report(_lsn(position), replica.via, progress, results)
    finally:
        conn.close()
        control.close()


def _estimate(cur: Any, stream: str) -> int | None:
    """Postgres' own estimate of a table's rows (pg_class.reltuples: -1 before any ANALYZE)."""
    from mallard.core.names import StreamNameError, quoted

    try:
        cur.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)", (quoted(stream),))
    except StreamNameError:
        return None
    row = cur.fetchone()
    return row[0] if row and row[0] is not None and row[0] >= 0 else None


def _read_snapshot_position(cur: Any) -> int:
    cur.execute("SELECT pg_current_wal_lsn()::text")
    return parse_lsn(cur.fetchone()[0])


def _lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def _compare_stream(conn: Any, cur: Any, replica: Replica, stream: str, table: dict[str, Any] | None,
                    fanout: int, leaf_rows: int) -> StreamResult:
    if table is None:
        return StreamResult(stream, "absent", error="not in the replica")
    try:
        cur.execute("SAVEPOINT verify_stream")
        p = plan(conn, stream, table)
        source, rep = p.sides(_pg_runner(cur), replica.run)
        if p.key is None:  # whole-table summaries only
            s, r = source.summarize([KeyRange()])[0], rep.summarize([KeyRange()])[0]
            comparison = Comparison(s, r, round_trips=2, ranges_compared=1)
        else:
            comparison = compare(source, rep, fanout=fanout, leaf_rows=leaf_rows)
        cur.execute("RELEASE SAVEPOINT verify_stream")
        return StreamResult(stream, table["status"], p, comparison, list(comparison.differences))
    except Exception as e:  # noqa: BLE001 - one stream's failure is reported, the others go on
        cur.execute("ROLLBACK TO SAVEPOINT verify_stream")
        return StreamResult(stream, table["status"], error=str(e).strip().splitlines()[0])


def _recheck(cur: Any, replica: Replica, r: StreamResult) -> None:
    if r.plan is None or r.comparison is None:
        return
    source, rep = r.plan.sides(_pg_runner(cur), replica.run)
    if r.plan.key is None:
        if not r.comparison.equal:
            s, d = source.summarize([KeyRange()])[0], rep.summarize([KeyRange()])[0]
            r.comparison = Comparison(s, d, round_trips=r.comparison.round_trips + 2)
        return
    if not r.differences:
        return
    keys = [d.key for d in r.differences]
    r.differences, r.moved = confirm(r.differences, source.lookup(keys), rep.lookup(keys))


# -- what the command prints ----------------------------------------------------------------------

_KIND = {"changed": "differs", "missing": "missing in the replica", "extra": "only in the replica"}


def sorted_differences(r: StreamResult) -> list[Difference]:
    key = r.plan.key if r.plan else None
    return sorted(r.differences, key=(lambda d: key.sort_key(d.key)) if key else (lambda d: d.key))


def render(report: Report, limit: int = 50) -> list[str]:
    lines = [f"verify: Postgres snapshot at LSN {report.position}; replica read through {report.via}"]
    if report.catch_up is not None:
        lines.append(("caught up: " if report.catch_up.caught_up else "WARNING: ") + report.catch_up.how)
    width = max((len(r.stream) for r in report.results), default=0)
    for r in report.results:
        head = f"  {r.stream:<{width}}  "
        if r.error:
            lines.append(head + f"ERROR     {r.error}")
            continue
        c, p = r.comparison, r.plan
        rows = (f"{c.source.count:,} rows" if c.source.count == c.replica.count else
                f"{c.source.count:,} rows in Postgres, {c.replica.count:,} in the replica")
        how = f"{len(p.columns)} columns hashed, {c.round_trips} queries"
        if r.equal:
            lines.append(head + f"equal     {rows} ({how})")
        elif r.rows_equal:  # only the column sets differ
            lines.append(head + f"DIFFERENT {rows}: {p.column_sets.describe()} ({how})")
        elif p.key is None:
            lines.append(head + f"DIFFERENT {rows}: count or hash differ (no key to narrow it down; {how})")
        else:
            lines.append(head + f"DIFFERENT {rows}: {len(r.differences)} key(s) differ ({how})")
            for d in sorted_differences(r)[:limit]:
                lines.append(f"      {p.key.column} = {p.key.display(d.key)}: {_KIND[d.kind]}")
            if len(r.differences) > limit:
                lines.append(f"      ... and {len(r.differences) - limit} more")
        if p.column_sets.differ and not r.rows_equal:
            lines.append(f"      {p.column_sets.describe()}")
        if r.moved:
            lines.append(f"      ({len(r.moved)} key(s) changed in Postgres while verifying: not counted)")
        if r.status != "ok":
            lines.append(f"      (the replica marks this table {r.status})")
        for note in p.notes:
            lines.append(f"      note: {note}")
    same = sum(r.equal for r in report.results)
    lines.append(f"{same} of {len(report.results)} stream(s) equal" + ("" if report.equal else "; differences remain"))
    return lines


def as_json(report: Report) -> dict[str, Any]:
    out = {"position": report.position, "via": report.via, "equal": report.equal,
           "caught_up": report.catch_up.caught_up if report.catch_up else None,
           "catch_up": report.catch_up.how if report.catch_up else None, "streams": []}
    for r in report.results:
        item: dict[str, Any] = {"stream": r.stream, "equal": r.equal, "status": r.status, "error": r.error}
        if r.comparison and r.plan:
            key = r.plan.key
            item.update({
                "rows": {"postgres": r.comparison.source.count, "replica": r.comparison.replica.count},
                "key": key.column if key else None,
                "columns": [c.name for c, _ in r.plan.columns], "notes": r.plan.notes,
                "columns_missing": list(r.plan.column_sets.missing),
                "columns_extra": list(r.plan.column_sets.extra),
                "queries": r.comparison.round_trips,
                "differences": [{"key": key.display(d.key) if key else d.key, "kind": d.kind}
                                for d in sorted_differences(r)],
                "changed_while_verifying": len(r.moved)})
        out["streams"].append(item)
    return out


MAX_REPAIR_KEYS = 1000


def repair_request(r: StreamResult) -> tuple[str | None, bool]:
    """(where filter, full) of the snapshot that repairs a stream: its differing keys, or
    the whole table when there are too many or no key to name them by, or when the column
    sets differ (the replica's rows need the values of a column it lacks)."""
    if r.plan is not None and r.plan.column_sets.differ:
        return None, True
    if r.plan is None or r.plan.key is None or len(r.differences) > MAX_REPAIR_KEYS or not r.differences:
        return None, True
    return core.repair_filter(r.plan.key, [d.key for d in r.differences]), False
