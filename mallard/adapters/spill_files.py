"""Spilled transactions on disk (mallard/core/spill.py): one file per transaction, in a
folder beside the replica file that only the applier writes.

A file's name comes from the applier alone (a counter), never from what Kafka sent. The
folder is emptied of spill files when the applier starts: after a crash, Kafka gives the
transaction again (its offsets are committed only after DuckDB commits it), so what was
left is of no use. A file is deleted once its transaction is applied or dropped.

Format: frames of pickled events (pickle, as the file is the applier's own, written and
read by the same process; table layouts are written once and referred to by number).
Events come from several partitions, each in commit order: a run per partition (a new
run where the order goes back, which Debezium never does), each a list of frames
located by offset; reading merges the runs by ``total_order``.
"""
from __future__ import annotations

import io
import itertools
import os
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path

from mallard.core.changes import ChangeEvent, TableSchema
from mallard.core.spill import merge_runs, note_schema

SUFFIX = ".spill"
FRAME_EVENTS = 2_000
_LEN = struct.Struct("!Q")


class SpillFolder:
    """Where spilled transactions go; a ``SpillFactory`` (call it with the xid)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.removed = 0
        for left in self.path.glob(f"tx-*{SUFFIX}"):  # a crash's leftovers: Kafka gives them again
            left.unlink(missing_ok=True)
            self.removed += 1
        self._ids = itertools.count()

    def __call__(self, tx_id: int) -> SpillFile:
        return SpillFile(self.path / f"tx-{next(self._ids)}{SUFFIX}")

    def files(self) -> list[Path]:
        return sorted(self.path.glob(f"tx-*{SUFFIX}"))


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, schemas: dict[int, int]):
        super().__init__(file, protocol=5)
        self.schemas = schemas

    def persistent_id(self, obj: object) -> int | None:
        if type(obj) is TableSchema:
            return self.schemas[id(obj)]
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, schemas: list[TableSchema]):
        super().__init__(file)
        self.schemas = schemas

    def persistent_load(self, pid: int) -> TableSchema:
        return self.schemas[pid]


class SpillFile:
    """One transaction's events in a file (``SpilledEvents``)."""

    def __init__(self, path: Path):
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._end = 0
        self.count = 0
        self.schemas: list[TableSchema] = []
        self._numbers: dict[int, int] = {}  # id(schema) -> its number in ``_all``
        self._all: list[TableSchema] = []  # kept alive: their ids stay theirs
        self._runs: list[list[tuple[int, int]]] = []  # per run, its frames' (offset, size)
        self._open: dict[tuple[str, int], tuple[int, list]] = {}  # partition -> (run, events not yet written)
        self._last: dict[tuple[str, int], int] = {}

    def add(self, total_order: int, event: ChangeEvent) -> None:
        schema = event.schema
        if id(schema) not in self._numbers:
            self._numbers[id(schema)] = len(self._all)
            self._all.append(schema)
            note_schema(self.schemas, schema)
        tp = (event.topic, event.partition)
        run = self._open.get(tp)
        if run is None or total_order < self._last[tp]:
            if run is not None:
                self._flush(*run)
            run = self._open[tp] = (len(self._runs), [])
            self._runs.append([])
        self._last[tp] = total_order
        run[1].append((total_order, event))
        self.count += 1
        if len(run[1]) >= FRAME_EVENTS:
            self._flush(*run)

    def _flush(self, run: int, pending: list) -> None:
        if not pending:
            return
        buffer = io.BytesIO()
        _Pickler(buffer, self._numbers).dump(pending)
        data = buffer.getbuffer()
        os.pwrite(self._fd, data, self._end)
        self._runs[run].append((self._end, data.nbytes))
        self._end += data.nbytes
        pending.clear()

    def _read(self, frames: list[tuple[int, int]]) -> Iterator[tuple[int, ChangeEvent]]:
        for offset, size in frames:
            data = os.pread(self._fd, size, offset)
            if len(data) != size:
                raise OSError(f"spill file {self.path} is shorter than written")
            yield from _Unpickler(io.BytesIO(data), self._all).load()

    def events(self) -> Iterator[ChangeEvent]:
        for run in self._open.values():
            self._flush(*run)
        return merge_runs([self._read(frames) for frames in self._runs if frames])

    @property
    def bytes(self) -> int:
        return self._end

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)
        self._open.clear()
        self._runs.clear()
