"""Ctrl-C and SIGTERM as one exception (the bottom layer: every package may use it).

Inside :func:`interruptible`, the first SIGINT or SIGTERM raises :class:`Interrupted` where the
program is, so that ``finally`` blocks run (staged folders are removed, finished work is saved)
and ``cli.py`` ends in one line; a second signal waits for that to finish instead of cutting it
short.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; finished items were saved (``saved`` of them by this run).

    A BaseException, as KeyboardInterrupt: library code's ``except Exception`` must not
    swallow it. ``report`` is the one line the command ends in (what was saved and how to go
    on); ``cli.py`` prints it and exits with 128 + ``signum``, the shell's status for a process
    stopped by that signal, whether or not work was saved (one rule for every command)."""

    def __init__(self, signum: int, report: str = ""):
        self.signum = signum
        self.saved = 0
        self.report = report
        super().__init__(signal.Signals(signum).name)


def stopped(signal_name: str | None, report: str) -> Interrupted:
    """The :class:`Interrupted` a command ends in after saving its work: ``report`` says what
    was saved and how to go on. ``signal_name`` None: another rank's signal stopped this one,
    which then exits as if asked to stop by SIGTERM (ours)."""
    return Interrupted(signal.Signals[signal_name or "SIGTERM"], report)


@contextlib.contextmanager
def interruptible():
    """SIGINT/SIGTERM raise :class:`Interrupted` once; later ones wait for the clean-up to end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum, frame):
        if received:
            return  # already stopping: let the clean-up finish
        received.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
