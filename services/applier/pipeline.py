"""The DuckDB side of the applier: one thread that takes batches of whole transactions (or
snapshot work), prepares each (reduce per key, Arrow tables, the script) while the one
before it commits, and reports what DuckDB committed back to the main loop.

Errors, by kind (mallard/core/errors.py):
- transient (I/O, memory, a lost connection): the same work is retried with backoff, and
  that is said once per episode;
- terminal (DuckDB refuses a value, a constraint, a type): the batch is bisected, whole
  transactions by halves, down to the one transaction, then to the one event, that DuckDB
  refuses. That event is set aside (dead-lettered by the main loop), its stream is marked
  for a re-snapshot (its changes are held back until then), and everything else is applied.
  Finding the event never applies part of a Postgres transaction: events are tried in
  DuckDB transactions that are rolled back (``Replica.probe``).

A spilled transaction (too big to hold in memory, mallard/core/spill.py) comes alone in
its batch: its events are read back in chunks of ``chunk_events``, each reduced per key
and prepared as the one before it goes to DuckDB, all in ONE DuckDB transaction
(``Replica.commit_chunks``). Tables it creates or alters are settled first. DuckDB
refusing one of its events (terminal) is not bisected (that would read it whole, many
times): the streams it touches are marked for a re-snapshot and it is applied again
without them.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from mallard.core.changes import ChangeEvent
from mallard.core.errors import TerminalError, TransientError, cause
from mallard.core.merge import TableChanges, reduce
from mallard.core.replica_sql import ApplyStats, PreparedBatch
from mallard.core.spill import chunks
from mallard.core.transactions import Transaction
from mallard.services.applier.ports import Clock, Replica
from mallard.services.applier.snapshot_work import apply_snapshot_work

BACKOFF_S = (0.1, 5.0)
"""Retrying transient errors: the first wait, and the longest (doubled in between)."""


@dataclasses.dataclass
class Applied:
    """A batch DuckDB committed, for the main loop to account for."""

    transactions: list[Transaction]
    stats: ApplyStats
    seconds: float
    set_aside: list[tuple[ChangeEvent, str]] = dataclasses.field(default_factory=list)
    """Events DuckDB refused (terminal errors): to dead-letter; their streams are marked for a re-snapshot."""


class Pipeline:
    def __init__(self, *, replica: Replica, lock: threading.Lock, clock: Clock, stopping: threading.Event,
                 log: logging.Logger, read_copy_path: str = "", read_copy_interval_s: float = 60.0,
                 chunk_events: int = 50_000):
        self.replica, self.lock, self.clock, self.stopping, self.log = replica, lock, clock, stopping, log
        self.read_copy_path, self.read_copy_interval_s = read_copy_path, read_copy_interval_s
        self.chunk_events = chunk_events
        """Events of a spilled transaction read back and sent to DuckDB at a time."""
        # At most one batch waits for DuckDB; what it did comes back on `applied`.
        self.to_apply: queue.Queue = queue.Queue(maxsize=1)
        self.applied: queue.Queue = queue.Queue()
        self.read_copy: dict[str, Any] | None = None
        """The last read-only copy published: path, bytes, tables, seconds, published_at."""
        self._copy_due = 0.0  # monotonic time of the next copy; 0: as soon as the replica is open
        self._changed_since_copy = True
        self._thread: threading.Thread | None = None
        self.abandoned_snapshots: set[str] = set()
        """Snapshots DuckDB refused while staging (the DuckDB thread's): what comes of them is skipped."""

    # -- the main loop's side -----------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="duckdb-apply", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 120) -> None:
        # A DuckDB thread that died (what killed it is raised by ``done``) takes nothing more:
        # never wait for room in its queue then.
        while self._thread is None or self._thread.is_alive():
            try:
                self.to_apply.put(None, timeout=0.5)
                break
            except queue.Full:
                continue
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def full(self) -> bool:
        return self.to_apply.full()

    def put(self, kind: str, work: Any) -> None:
        self.to_apply.put((kind, work))

    def done(self) -> list[Any]:
        """What DuckDB committed since the last call (Applied, ("snapshot", done), or ("signals",
        [(signal, hold token, whether to ask for a snapshot)])); raises
        what stopped the DuckDB thread."""
        items = []
        while not self.applied.empty():
            item = self.applied.get()
            if isinstance(item, BaseException):
                raise RuntimeError(f"applying to DuckDB failed: {item}") from item
            items.append(item)
        return items

    # -- the DuckDB thread ----------------------------------------------------------------

    def run(self) -> None:
        # Preparing a batch (Python: reduce per key, Arrow tables) overlaps with committing
        # the one before it (DuckDB, in the writer process: its GIL is its own). Anything
        # else on the connection (snapshot work, a schema change, pruning) waits for the commit.
        committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb-commit")
        running: tuple[Any, list[Transaction], float, PreparedBatch] | None = None
        prepared = 0

        def finish() -> bool:
            """Wait for the running commit; True if it had to be bisected (streams may have
            been marked for a re-snapshot since the next batch was prepared)."""
            nonlocal running
            if running is None:
                return False
            (future, transactions, started, batch), running = running, None
            try:
                future.result()
                return False
            except TerminalError as e:  # nothing of it was applied: bisected, here, before anything else
                self.applied.put(self._set_aside(transactions, e, started, batch.stats.needs_resnapshot))
                return True

        def committed(transactions: list, started: float):
            def report(future) -> None:  # in commit order: one commit at a time
                try:
                    self.applied.put(Applied(transactions, future.result(), self.clock.monotonic() - started))
                except TerminalError:
                    pass  # finish() bisects it
                except BaseException as e:  # terminal for the service: surfaced on the main thread
                    self.applied.put(e)
            return report

        try:
            while True:
                if self.to_apply.empty():
                    finish()  # idle: the read-only copy, if due, holds what was committed
                if (item := self._next_work()) is None:
                    break
                self._changed_since_copy = True
                kind, work = item
                if kind == "signals":  # DDL signals (routing): each stream marked converging
                    finish()
                    with self.lock:
                        self.applied.put(("signals", [
                            (signal, token, self.retrying("a schema change signal", self.replica.converge, signal.stream,
                                                          signal.tx_id, signal.changes))
                            for signal, token in work]))
                    continue
                if kind == "snapshot":
                    finish()
                    with self.lock:
                        self.applied.put(("snapshot", apply_snapshot_work(self.replica, work,
                                                                          self.abandoned_snapshots, self.retrying)))
                    continue
                transactions = work
                started = self.clock.monotonic()
                if transactions[0].spilled is not None:  # alone in its batch (TransactionAssembler.take_ready)
                    finish()
                    self.applied.put(self._apply_spilled(transactions[0], started))
                    continue
                try:
                    batch = self._prepare(transactions, finish)
                    if finish():  # a stream may no longer take changes: prepared again
                        marked = batch.stats.needs_resnapshot
                        batch = self._prepare(transactions, finish)
                        _keep(batch.stats.needs_resnapshot, marked)
                except TerminalError as e:  # a value that does not go into its table's types
                    finish()
                    self.applied.put(self._set_aside(transactions, e, started))
                    continue
                running = (committer.submit(self._commit, batch), transactions, started, batch)
                running[0].add_done_callback(committed(transactions, started))
                prepared += 1
                if prepared % 100 == 0:
                    finish()
                    with self.lock:
                        self.replica.prune_recent()
            finish()
        except BaseException as e:  # terminal for the service: surfaced on the main thread, nothing committed
            self.applied.put(e)
        finally:
            committer.shutdown(wait=True)

    def _prepare(self, transactions: list[Transaction], finish: Callable[[], bool] | None = None) -> PreparedBatch:
        steps = reduce(transactions, self.replica.snapshot_cuts())
        if self.replica.changes_schema(steps):  # statements on the client's connection
            if finish is not None:
                finish()
            with self.lock:
                return self.retrying("preparing a batch", self.replica.prepare, steps, transactions)
        return self.retrying("preparing a batch", self.replica.prepare, steps, transactions)

    # -- a spilled transaction: in chunks, one DuckDB transaction ---------------------------

    def _apply_spilled(self, tx: Transaction, started: float) -> Applied:
        try:
            stats = self.retrying("applying a spilled transaction to DuckDB", self._commit_spilled, tx)
        except TerminalError as e:
            streams = sorted({schema.stream for schema in tx.spilled.schemas})
            reason = f"DuckDB refused an event of spilled transaction {tx.tx_id} ({tx.live} events): {cause(e)}"
            self.log.error("%s; %s re-snapshotted, the transaction applied without them", reason, ", ".join(streams))
            with self.lock:
                for stream in streams:
                    self.replica.mark_for_resnapshot(stream, reason, tx.tx_id)
            stats = self.retrying("applying a spilled transaction to DuckDB", self._commit_spilled, tx)
            _keep(stats.needs_resnapshot, streams)
        self.log.info("spilled transaction %d: %d events read back from disk and applied in chunks of %d, in one "
                      "DuckDB transaction", tx.tx_id, tx.live, self.chunk_events,
                      extra={"kind": "spilled_transaction", "tx_id": tx.tx_id, "events": tx.live})
        return Applied([tx], stats, self.clock.monotonic() - started)

    def _commit_spilled(self, tx: Transaction) -> ApplyStats:
        store = tx.spilled
        total = ApplyStats()
        layouts = [{schema.stream: TableChanges(schema, keyless=schema.key_known and not schema.key_columns)}
                   for schema in store.schemas]
        if self.replica.changes_schema(layouts):  # created or altered before the rows (as prepare does)
            with self.lock:
                _keep(total.needs_resnapshot, self.replica.prepare(layouts, []).stats.needs_resnapshot)
        cuts = self.replica.snapshot_cuts()

        def batches():
            for events in chunks(store.events(), self.chunk_events):
                batch = self.replica.prepare(reduce([dataclasses.replace(tx, events=events, spilled=None, dead=0)],
                                                    cuts), [])
                _add(total, batch.stats)
                yield batch
            yield self.replica.prepare([], [tx], total.events)  # the position it reaches

        if self.replica.commits_apart:
            self.replica.commit_chunks(batches())
        else:
            with self.lock:
                self.replica.commit_chunks(batches())
        total.transactions, total.dead = 1, tx.dead
        return total

    def _commit(self, batch: PreparedBatch) -> ApplyStats:
        return self.retrying("applying a batch to DuckDB", self._commit_once, batch)

    def _commit_once(self, batch: PreparedBatch) -> ApplyStats:
        if self.replica.commits_apart:  # a connection of its own: the client's stays free
            return self.replica.commit(batch)
        with self.lock:
            return self.replica.commit(batch)

    def retrying(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, again after each TransientError, with backoff; said once per episode.
        Gives up (raises) only when the service stops."""
        wait, failing = BACKOFF_S[0], False
        while True:
            try:
                result = fn(*args)
            except TransientError as e:
                if self.stopping.is_set():
                    raise
                if not failing:
                    failing = True
                    self.log.warning("%s failed (%s); retrying with backoff up to %.0fs, said once", what, e,
                                     BACKOFF_S[1], extra={"kind": "transient_error", "error": str(e)})
                self.clock.sleep(wait)
                wait = min(wait * 2, BACKOFF_S[1])
                continue
            if failing:
                self.log.info("%s works again", what)
            return result

    # -- terminal errors: bisect, set the event aside, go on --------------------------------

    def _set_aside(self, transactions: list[Transaction], error: TerminalError, started: float,
                   marked: list[str] | None = None) -> Applied:
        """Apply ``transactions`` but the events DuckDB refuses (``error`` came from all of them).
        ``marked``: streams preparing them marked for a re-snapshot (said with the result)."""
        self.log.warning("DuckDB refused a batch of %d transaction(s) (%s): looking for the event that causes it",
                         len(transactions), cause(error))
        total, set_aside = ApplyStats(), []
        _keep(total.needs_resnapshot, marked or [])
        self._bisect(transactions, error, total, set_aside)
        return Applied(transactions, total, self.clock.monotonic() - started, set_aside)

    def _bisect(self, transactions: list[Transaction], error: TerminalError | None, total: ApplyStats,
                set_aside: list[tuple[ChangeEvent, str]]) -> None:
        """Whole transactions, in commit order, by halves: the halves that go in are committed."""
        if error is None:
            error = self._try(transactions, total)
            if error is None:
                return
        if len(transactions) > 1:
            half = len(transactions) // 2
            self._bisect(transactions[:half], None, total, set_aside)
            self._bisect(transactions[half:], None, total, set_aside)
            return
        tx = transactions[0]
        while error is not None:  # one transaction: its events DuckDB refuses, one at a time
            event = self._culprit(tx, total)
            if event is None:  # no single event explains it: as before, the service stops
                raise error
            reason = f"DuckDB refused it: {cause(error)}"
            with self.lock:
                self.replica.mark_for_resnapshot(event.stream, f"an event was dead-lettered ({reason})", tx.tx_id)
            set_aside.append((event, reason))
            self.log.error("transaction %d: %s[%d]@%d of %s set aside (%s); %s is re-snapshotted, the other "
                           "streams go on", tx.tx_id, event.topic, event.partition, event.offset, event.stream,
                           reason, event.stream)
            tx = dataclasses.replace(tx, events=[e for e in tx.events if e is not event], dead=tx.dead + 1)
            error = self._try([tx], total)

    def _try(self, transactions: list[Transaction], total: ApplyStats) -> TerminalError | None:
        """Prepare and commit: the TerminalError it raised, or None (then ``total`` counts it)."""
        batch = None
        try:
            batch = self._prepare(transactions)
            stats = self._commit(batch)
        except TerminalError as e:
            if batch is not None:  # prepared: the streams it marked for a re-snapshot stay marked
                _keep(total.needs_resnapshot, batch.stats.needs_resnapshot)
            return e
        _add(total, stats)
        return None

    def _culprit(self, tx: Transaction, total: ApplyStats) -> ChangeEvent | None:
        """The first event of ``tx`` whose prefix DuckDB refuses, by halves; tried in DuckDB
        transactions that are rolled back. None if even the whole transaction goes in."""
        if self._refuses(tx, len(tx.events), total) is None:
            return None
        lo, hi = 0, len(tx.events)  # the prefix of hi events is refused, of lo is not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._refuses(tx, mid, total) is None:
                lo = mid
            else:
                hi = mid
        return tx.events[hi - 1]

    def _refuses(self, tx: Transaction, n: int, total: ApplyStats) -> Exception | None:
        if n == 0:
            return None
        part = dataclasses.replace(tx, events=tx.events[:n])
        try:
            batch = self._prepare([part])
        except TerminalError as e:
            return e
        _keep(total.needs_resnapshot, batch.stats.needs_resnapshot)
        with self.lock:
            return self.retrying("trying an event in DuckDB", self.replica.probe, batch)

    # -- the read-only copy ------------------------------------------------------------

    def _next_work(self) -> Any:
        """The next batch for DuckDB; while none comes, publish the read-only copy when due."""
        if not self.read_copy_path:
            return self.to_apply.get()
        while True:
            self._publish_copy_if_due()
            try:
                wait = self._copy_due - self.clock.monotonic() if self._changed_since_copy else 1.0
                return self.to_apply.get(timeout=max(0.05, min(1.0, wait)))
            except queue.Empty:
                continue

    def _publish_copy_if_due(self) -> None:
        """On the DuckDB thread, between batches: the copy holds whole applied transactions."""
        if not self._changed_since_copy or self.clock.monotonic() < self._copy_due:
            return
        self._copy_due = self.clock.monotonic() + self.read_copy_interval_s
        try:
            with self.lock:
                copy = self.replica.publish_copy(self.read_copy_path)
        except Exception as e:  # noqa: BLE001 - readers keep the previous copy; applying goes on
            self.log.error("read-only copy to %s failed (the previous one stays; next try in %.0fs): %s",
                           self.read_copy_path, self.read_copy_interval_s, e)
            return
        self._changed_since_copy = False
        self.read_copy = {**copy, "published_at": datetime.now(timezone.utc).isoformat()}
        self.log.info("read-only copy published: %s (%.1f MB, %d tables) in %.0f ms", copy["path"],
                      copy["bytes"] / 1e6, copy["tables"], copy["seconds"] * 1000)


def _add(total: ApplyStats, stats: ApplyStats) -> None:
    for f in ("transactions", "events", "upserts", "deletes", "truncates", "skipped", "covered", "dead"):
        setattr(total, f, getattr(total, f) + getattr(stats, f))
    for stream, n in stats.events_by_stream.items():
        total.events_by_stream[stream] = total.events_by_stream.get(stream, 0) + n
    _keep(total.needs_resnapshot, stats.needs_resnapshot)


def _keep(streams: list[str], more: list[str]) -> None:
    streams += [s for s in more if s not in streams]
