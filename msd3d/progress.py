"""Rich progress bars with it/s and ETA, shared by every long-running command."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Iterations per second (or seconds per iteration when slower than 1 it/s)."""

    def render(self, task: Task) -> Text:
        if not task.fields.get("show_rate", True):  # one-shot stages (e.g. "mesh"): no rate to show
            return Text("")
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("-- it/s", style="progress.data.speed")
        if speed >= 1:
            return Text(f"{speed:.2f} it/s", style="progress.data.speed")
        return Text(f"{1 / speed:.2f} s/it", style="progress.data.speed")


class _NullProgress:
    """Progress's interface, doing nothing (for tests, batch workers and --quiet)."""

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        pass

    def advance(self, *args, **kwargs) -> None:
        pass


@contextlib.contextmanager
def make_progress(enabled: bool = True, console: Console | None = None) -> Iterator[Progress | _NullProgress]:
    """A rich progress bar showing step M/N, it/s, elapsed and ETA, plus task fields
    ``loss`` and ``lam`` when a task sets them."""
    if not enabled:
        yield _NullProgress()
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=console or Console(stderr=True), transient=False) as progress:
        yield _FieldDefaults(progress)


class _FieldDefaults:
    """Wraps Progress so tasks may pass ``loss``/``lam``; shown as one ``info`` text field."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def add_task(self, description: str, **kwargs) -> int:
        info = _info(kwargs.pop("loss", None), kwargs.pop("lam", ""))
        return self._progress.add_task(description, info=info, **kwargs)

    def update(self, task: int, **kwargs) -> None:
        if "loss" in kwargs or "lam" in kwargs:
            kwargs["info"] = _info(kwargs.pop("loss", None), kwargs.pop("lam", ""))
        self._progress.update(task, **kwargs)

    def advance(self, task: int, amount: float = 1) -> None:
        self._progress.advance(task, amount)


def _info(loss: float | None, lam: str) -> str:
    if loss is None or loss != loss:
        return lam
    return f"loss {loss:.4g}{lam}"
