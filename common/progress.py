"""One progress bar for all long work (the bottom layer: every package may use it).

    with ProgressBar("bank items", total, unit="items", enabled=show) as bar:
        bar.advance(n)
        bar.log("a line above the bar")

A row reads ``label | bar | done/total | rate unit/s | elapsed | ETA``. With ``unit="bytes"`` the
row shows MB and MB/s instead. It goes to stderr, so that stdout keeps only the results (a
table, JSON). When the bar is disabled, ``advance`` does nothing and ``log`` prints to stderr.
The rate is rich's estimate over the last 30 s. ``info`` is free text after the rate, for
example a training loss.

Listeners (:func:`listen`) see every bar's progress in this thread, shown or not: the web app
(``app``) shows a bank build's progress in the page this way.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable

Listener = Callable[[str, int, "int | None"], None]  # (label, done, total or None)
_local = threading.local()


@contextlib.contextmanager
def listen(listener: Listener):
    """Call ``listener(label, done, total)`` whenever a bar of this thread starts or advances."""
    listeners = getattr(_local, "listeners", [])
    _local.listeners = [*listeners, listener]
    try:
        yield
    finally:
        _local.listeners = listeners


def _notify(label: str, done: int, total: int | None) -> None:
    for listener in getattr(_local, "listeners", ()):
        listener(label, done, total)


class ProgressBar:
    """A rich progress bar as a context manager; a silent stand-in when ``enabled`` is False."""

    def __init__(
        self,
        label: str,
        total: int | None,
        unit: str = "items",
        enabled: bool = True,
        transient: bool = True,
    ):
        self._bar = None
        self._label, self._done, self._total = label, 0, total
        _notify(label, 0, total)
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        console = Console(stderr=True)
        if transient and not console.is_terminal:  # nothing would show but the blank line rich
            return  # leaves on exit (found by a fault probe: errors became two lines)
        if unit == "bytes":
            counts = (DownloadColumn(), TransferSpeedColumn())
        else:
            counts = (MofNCompleteColumn(), _rate_column())
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            *counts,
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=transient,
        )
        self._task = self._bar.add_task(label, total=total, info="", unit=unit)

    def __enter__(self) -> ProgressBar:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False

    def advance(self, n: int = 1) -> None:
        self._done += n
        _notify(self._label, self._done, self._total)
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def update(
        self,
        label: str | None = None,
        total: int | None = None,
        info: str | None = None,
        unit: str | None = None,
        restart: bool = False,
    ) -> None:
        """A new label, total, free text or unit (not for bytes); ``restart`` counts again from
        0 (a new phase)."""
        self._label = self._label if label is None else label
        self._total = self._total if total is None else total
        self._done = 0 if restart else self._done
        _notify(self._label, self._done, self._total)
        if self._bar is None:
            return
        task = next(t for t in self._bar.tasks if t.id == self._task)
        fields = {
            **task.fields,
            **({} if info is None else {"info": info}),
            **({} if unit is None else {"unit": unit}),
        }
        if label is not None:
            fields["description"] = label
        if total is not None:
            fields["total"] = total
        if restart:
            self._bar.reset(self._task, **fields)
        else:
            self._bar.update(self._task, **fields)

    @property
    def done(self) -> int:
        """How many units were counted (shown or not)."""
        return self._done

    @property
    def speed(self) -> float | None:
        """Units per second over the last 30 s (None before two updates or when disabled)."""
        return None if self._bar is None else self._bar.tasks[0].speed

    def log(self, message: str) -> None:
        """A line on stderr, above the bar when it shows."""
        if self._bar is not None:
            self._bar.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=sys.stderr, flush=True)


def _rate_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """``12.3 items/s`` from rich's speed estimate (``-`` before there is one)."""

        def render(self, task) -> Text:
            speed, unit = task.finished_speed or task.speed, task.fields["unit"]
            return Text(f"{speed:.1f} {unit}/s" if speed else f"- {unit}/s")

    return RateColumn()
