"""Snapshot work: what the snapshot topic's messages become (stage a begin, rows, merge
an end, abandon), queued for DuckDB, applied there, then accounted for."""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from mallard.core.errors import TerminalError, cause
from mallard.core.snapshots import SnapshotTracker, SnapshotWork
from mallard.services.applier.ports import Replica


class SnapshotQueue:
    """Snapshot work waiting for DuckDB, and how many rows it holds (the snapshot side's bound)."""

    def __init__(self) -> None:
        self.work: deque[SnapshotWork] = deque()
        self.rows_waiting = 0

    def __bool__(self) -> bool:
        return bool(self.work)

    def put(self, work: list[SnapshotWork]) -> None:
        for w in work:
            self.work.append(w)
            self.rows_waiting += w.row_count if w.kind == "rows" else 0

    def last_kind(self) -> str:
        return self.work[-1].kind

    def take(self, stage_rows: int) -> list[SnapshotWork]:
        taken, rows = [], 0
        while self.work and rows < stage_rows:
            w = self.work.popleft()
            if w.kind == "rows":
                rows += w.row_count
                self.rows_waiting -= w.row_count
            taken.append(w)
        return taken


def apply_snapshot_work(replica: Replica, work: list[SnapshotWork], abandoned: set[str] | None = None,
                        retrying: Callable[..., Any] | None = None) -> list[tuple[SnapshotWork, Any, float]]:
    """On the DuckDB thread: stage, merge or abandon; what came of each, and how long it took.

    A snapshot DuckDB refuses while staging (a TerminalError: a value it cannot store) is
    abandoned with the reason, and what comes of it later is skipped (kind ``skip``): the
    other streams go on. ``abandoned``: the snapshot ids abandoned so, kept by the caller
    across calls. ``retrying(what, fn, *args)``: runs a step again after a TransientError."""
    abandoned = set() if abandoned is None else abandoned
    run = retrying or (lambda what, fn, *args: fn(*args))
    done = []
    for i, w in enumerate(work):
        started = time.monotonic()
        result = None
        if w.frame.snapshot_id in abandoned and w.kind != "abandon":
            w.columns = None
            done.append((SnapshotWork("skip", w.frame, row_count=w.row_count), None, 0.0))
            continue
        try:
            if w.kind == "begin":
                run("staging a snapshot", replica.begin_snapshot, w.frame)
            elif w.kind == "rows":
                # Consecutive batches of one snapshot go in as one insert.
                if i + 1 < len(work) and work[i + 1].kind == "rows" and work[i + 1].frame is w.frame:
                    work[i + 1].columns = pa.concat_tables([w.columns, work[i + 1].columns])
                else:
                    run("staging a snapshot's rows", replica.stage_rows, w.frame, w.columns)
                w.columns = None
            elif w.kind == "end":
                try:
                    result = replica.finish_snapshot(w.frame)
                except Exception as e:  # noqa: BLE001 - rolled back: the table keeps its content
                    w = SnapshotWork("abandon", w.frame, reason=f"merging it failed: {e}")
                    replica.abandon_snapshot(w.frame, w.reason)
            else:
                replica.abandon_snapshot(w.frame, w.reason or "abandoned")
        except TerminalError as e:  # DuckDB refuses what it stages: this snapshot only, abandoned
            w.columns = None
            w = SnapshotWork("abandon", w.frame, reason=f"DuckDB refused it while staging: {cause(e)}")
            abandoned.add(w.frame.snapshot_id)
            run("abandoning a snapshot", replica.abandon_snapshot, w.frame, w.reason)
        done.append((w, result, time.monotonic() - started))
    return done


class SnapshotAccounting:
    def __init__(self, snapshots: SnapshotTracker, counts: dict[str, int], log: Any,
                 request_snapshot: Callable[..., None], loss: Any):
        self.snapshots, self.counts, self.log = snapshots, counts, log
        self.request_snapshot, self.loss = request_snapshot, loss

    def account(self, done: list[tuple[SnapshotWork, Any, float]]) -> None:
        """On the main loop: what DuckDB did with snapshot work, counted and said."""
        staged, elapsed, frame = 0, 0.0, None

        def log_staged() -> None:  # one line per chunk of rows
            if staged:
                self.counts["snapshot_rows_staged"] += staged
                frame.staged += staged
                rate = staged / elapsed if elapsed else 0
                self.log.info("snapshot %s of %s: staged %d rows (%d so far) in %.0f ms (%.0f rows/s)",
                              frame.snapshot_id, frame.stream, staged, frame.staged, elapsed * 1000, rate,
                              extra={"kind": "snapshot_staged", "stream": frame.stream,
                                     "snapshot_id": frame.snapshot_id, "rows": staged, "rows_total": frame.staged,
                                     "elapsed_ms": round(elapsed * 1000), "rate": round(rate)})

        for w, result, seconds in done:
            self.snapshots.done(w)
            f = w.frame
            if w.kind == "skip":  # of a snapshot abandoned before (said then)
                continue
            if w.kind == "rows":
                if frame is not None and frame is not f:
                    log_staged()
                    staged, elapsed = 0, 0.0
                staged += w.row_count
                elapsed += seconds
                frame = f
                continue
            log_staged()
            staged, elapsed = 0, 0.0
            if w.kind == "begin":
                self.log.info("snapshot %s of %s: staging (cut %d:%d, %d in progress%s)", f.snapshot_id, f.stream,
                              f.cut.xmin, f.cut.xmax, len(f.cut.xip), f", where {f.where}" if f.where else "")
            elif w.kind == "end":
                self.counts["snapshots_merged"] += 1
                self.log.info("snapshot %s of %s merged: %d rows staged, %d applied, %d kept (newer CDC changes), "
                              "%d deleted (gone from Postgres) in %.0f ms", f.snapshot_id, f.stream, result.staged,
                              result.applied, result.staged - result.applied, result.deleted, seconds * 1000,
                              extra={"kind": "snapshot_merged", "stream": f.stream, "snapshot_id": f.snapshot_id,
                                     "rows": result.staged, "rows_applied": result.applied,
                                     "rows_kept": result.staged - result.applied, "rows_deleted": result.deleted,
                                     "elapsed_ms": round(seconds * 1000)})
                if result.resnapshot_again:
                    self.request_snapshot([f.stream], "changes were held back, or a schema change rewrote rows, "
                                                      "after the last snapshot's cut", True)
                self.loss.snapshot_merged(f)
            else:
                # Its later messages are skipped (when DuckDB gave it up before its end arrived).
                self.snapshots.abandon(f, w.reason or "abandoned")
                self.counts["snapshots_abandoned"] += 1
                self.log.error("snapshot %s of %s abandoned: %s; the table keeps its content, and the snapshot "
                               "must be taken again (mallard resnapshot %s)", f.snapshot_id, f.stream, w.reason,
                               f.stream)
        log_staged()
