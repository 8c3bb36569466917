"""Ctrl-C and SIGTERM as one exception (the bottom layer: every package may use it).

Inside :func:`interruptible`, the first SIGINT or SIGTERM raises :class:`Interrupted` where the
program is, so that ``finally`` blocks run (staged folders are removed, finished work is saved)
and ``cli.py`` ends in one line; a second signal waits for that to finish instead of cutting it
short. Outside it, in ``cli.py``'s own process, :func:`outside_the_command` ends the process in
one line too (a signal that comes just before the command starts or just after it ends).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading

_command = {"ended": False}  # set once interruptible()'s block has run (read by the late handler)


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
        _command["ended"] = True
        for s, h in previous.items():
            signal.signal(s, h)


STARTS_OVER = (
    "nothing partial is left (the output is written whole or not at all); run the same command "
    "again, which starts over"
)
PUSH_CUT = (
    "the URL may hold part of the upload, which no reader opens (the root file goes last); run the "
    "same command again to complete it"
)


@contextlib.contextmanager
def interruption_report(report: str):
    """A signal inside the block ends the command in ``report`` (what the interrupted command
    leaves behind and how to go on; ``{signal}`` is replaced by the signal's name), where the
    command did not say so itself."""
    try:
        yield
    except Interrupted as e:
        if e.report:
            raise
        raise Interrupted(e.signum, report.format(signal=e)) from None


def outside_the_command() -> None:
    """SIGINT/SIGTERM before the command's :func:`interruptible` block or after it end the
    process at once, with one line and 128 + the signal's number: before, nothing was done;
    after, the command's work is complete (its output is written; the signal only cut the
    interpreter's shutdown short). For ``cli.py``'s own process only (it calls ``os._exit``),
    never for a command run in-process (tests). Lightning chains the handlers it finds when
    its run starts: :func:`interruptible`'s, inside the command, never this one."""

    def handler(signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if _command["ended"]:
            line = f"error: interrupted by {name} as the command ended; its work is complete"
        else:
            line = f"error: interrupted by {name} before the command began; nothing was done"
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os.write(2, (line + "\n").encode())
        os._exit(128 + signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, handler)
    atexit.register(_ignored_in_the_last_teardown)


def _ignored_in_the_last_teardown() -> None:
    """The last exit function (registered before the command imports the libraries whose own
    exit functions run before it): past it the interpreter tears its C state down and restores
    the default actions of the signals it handled, so a SIGTERM in those last milliseconds
    ended a finished command in a silent 143 (a fault probe, 6 of 21 tries). Ignored instead:
    the command's own status stands. Ignoring survives the teardown (the default would not)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
