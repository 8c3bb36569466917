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
    swallow it."""

    def __init__(self, signum: int):
        self.signum = signum
        self.saved = 0
        super().__init__(signal.Signals(signum).name)


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
