"""Live progress for long interactive work (``resnapshot --wait``, ``verify``): a rich
progress bar per stream with rows, rate and ETA on a terminal; plain lines when the
output is not one (a log, a pipe, CI)."""
from __future__ import annotations

from typing import IO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn


class SnapshotProgress:
    def __init__(self, streams: list[str], stream: IO[str]):
        self.console = Console(file=stream)
        self.interactive = self.console.is_terminal
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("rows {task.fields[rate]}"), TimeRemainingColumn(),
                                 console=self.console, transient=False) if self.interactive else None
        self.tasks: dict[str, TaskID] = {}
        self.streams = streams

    def __enter__(self) -> "SnapshotProgress":
        if self.progress is not None:
            self.progress.start()
            for name in self.streams:
                self.tasks[name] = self.progress.add_task(name, total=None, rate="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, stream: str, rows: int, estimate: int) -> None:
        """Rows read so far of the stream's snapshot, of about ``estimate``."""
        if self.progress is None or stream not in self.tasks:
            return
        task = self.tasks[stream]
        self.progress.update(task, completed=rows, total=max(estimate, rows) or None)
        speed = next(t.speed for t in self.progress.tasks if t.id == task)
        self.progress.update(task, rate=f"{speed:,.0f}/s" if speed else "")

    def finish(self, stream: str, ok: bool, rows: int, line: str) -> None:
        if self.progress is not None and stream in self.tasks:
            self.progress.update(self.tasks[stream], completed=rows, total=rows or 1,
                                 description=f"{stream} {'merged' if ok else 'abandoned'}")
        self.say(line, to_stdout=True)

    def say(self, line: str, to_stdout: bool = False) -> None:
        """A line for the reader: above the bars on a terminal, else a plain line."""
        if self.progress is not None:
            self.progress.console.print(line, markup=False, highlight=False)
        else:
            import sys

            print(line, file=sys.stdout if to_stdout else sys.stderr, flush=True)


class VerifyProgress:
    """``verify``: a bar per stream, filled when both sides of it are compared (rows of the
    larger side, and their rate); a line per stream when the output is not a terminal."""

    def __init__(self, stream: IO[str]):
        self.console = Console(file=stream)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("rows {task.fields[rate]}"), TimeRemainingColumn(),
                                 console=self.console, transient=False) if self.console.is_terminal else None
        self.tasks: dict[str, TaskID] = {}
        self.file = stream

    def __enter__(self) -> "VerifyProgress":
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def start(self, stream: str, estimate: int | None) -> None:
        """Comparing ``stream`` now, of about ``estimate`` rows (Postgres' statistics)."""
        if self.progress is not None:
            self.tasks[stream] = self.progress.add_task(f"{stream} comparing", total=estimate or None, rate="")

    def done(self, stream: str, rows: int, seconds: float, outcome: str) -> None:
        rate = f"{rows / seconds:,.0f}/s" if seconds > 0 else ""
        if self.progress is not None and stream in self.tasks:
            self.progress.update(self.tasks[stream], completed=rows, total=rows or 1, rate=rate,
                                 description=f"{stream} {outcome}")
        elif self.progress is None:
            print(f"verify: {stream} {outcome}: {rows:,} rows compared in {seconds:.1f}s ({rate or '-'})",
                  file=self.file, flush=True)
