"""A rich progress bar on stderr for commands of many runs: done of total, runs/s, ETA (and explore's counts).

Off under ``--quiet`` and when stderr is not a terminal (``ATS_STRESS_PROGRESS=1`` forces it on).
"""

from __future__ import annotations

import os

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from .app import err_console


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- runs/s" if speed is None else f"{speed:.1f} runs/s")


def progress_wanted(quiet: bool) -> bool:
    return not quiet and (err_console.is_terminal or os.environ.get("ATS_STRESS_PROGRESS") == "1")


class RunProgress:
    """``with RunProgress("compare", 12, quiet) as bar: ... bar.advance()``; ``fields`` name extra
    counts shown after the bar (``bar.update(violations=2)``)."""

    def __init__(self, label: str, total: int | None, quiet: bool, fields: tuple[str, ...] = ()):
        self.enabled = progress_wanted(quiet)
        self.fields = fields
        self._progress: Progress | None = None
        self._task = None
        self._label = label
        self._total = total

    def __enter__(self) -> "RunProgress":
        if self.enabled:
            extra = [TextColumn(f"{f.replace('_', ' ')} {{task.fields[{f}]}}") for f in self.fields]
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      _Rate(), TextColumn("ETA"), TimeRemainingColumn(), *extra,
                                      console=err_console, transient=False)
            self._progress.start()
            self._task = self._progress.add_task(self._label, total=self._total, **{f: 0 for f in self.fields})
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def update(self, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task, **fields)
