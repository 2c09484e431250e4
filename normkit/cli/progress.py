"""Progress of a study: a live display (overall runs + the current run's steps) on a terminal, else plain lines."""

from __future__ import annotations

import sys
from typing import Any, TextIO


class Progress:
    """The interface `compare` drives; this base class shows nothing (`--progress none`)."""

    def start(self, total_runs: int, done_runs: int) -> None:
        pass

    def start_run(self, label: str, total_steps: int) -> None:
        pass

    def advance(self, steps: int = 1) -> None:
        pass

    def end_run(self, label: str, summary: str) -> None:
        pass

    def stop(self) -> None:
        pass


class PlainProgress(Progress):
    """One line per finished run (logs, CI, pipes)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.total = 0
        self.done = 0

    def start(self, total_runs: int, done_runs: int) -> None:
        self.total, self.done = total_runs, done_runs

    def end_run(self, label: str, summary: str) -> None:
        self.done += 1
        width = len(str(self.total))
        print(f"[{self.done:>{width}}/{self.total}] {label}  {summary}", file=self.stream, flush=True)


class RichProgress(Progress):
    """Two live bars: runs finished of the study, and steps of the run in progress."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as _RichProgress

        self.console = Console()
        self._bars = _RichProgress(
            TextColumn("{task.description}", style="bold"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._overall: Any = None
        self._run: Any = None

    def start(self, total_runs: int, done_runs: int) -> None:
        self._bars.start()
        self._overall = self._bars.add_task("study", total=total_runs, completed=done_runs)
        self._run = self._bars.add_task("run", total=1, completed=0)

    def start_run(self, label: str, total_steps: int) -> None:
        self._bars.update(self._run, description=label, total=max(total_steps, 1), completed=0)

    def advance(self, steps: int = 1) -> None:
        self._bars.advance(self._run, steps)

    def end_run(self, label: str, summary: str) -> None:
        self._bars.advance(self._overall, 1)
        self._bars.console.print(f"  {label}  {summary}", highlight=False)

    def stop(self) -> None:
        self._bars.stop()


def make(kind: str) -> Progress:
    """auto: the live display when stdout is a terminal and rich is installed, else plain lines."""
    if kind == "none":
        return Progress()
    if kind == "plain":
        return PlainProgress()
    try:
        import rich  # noqa: F401
    except ImportError:
        return PlainProgress()
    if kind == "rich" or sys.stdout.isatty():
        return RichProgress()
    return PlainProgress()
