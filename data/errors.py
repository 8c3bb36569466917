"""The one base type of user errors (the bottom layer: every package may import it).

A *user error* is a mistake in what the user gave: an argument, an option, a file or a folder
named on the command line or in a config (an unknown name, an unreadable or damaged file, a value
out of range, weights that are not there). It is not a bug of ours. ``cli.py`` catches every
:class:`UserError` and prints it as ONE line on stderr, ``error: MESSAGE``, then exits with status
2; so the message must be a single line that names the argument, the value given and the fix
(``--vocab 'ade15O': unknown vocabulary; did you mean ade150? ...``). Anything else that escapes a
command is a bug and keeps its traceback.

The specific errors (``VocabularyError``, ``DatasetError``, ``BankFormatError``, ...) subclass
:class:`UserError` and keep their historical base (``ValueError``, ``RuntimeError``) so existing
``except ValueError`` clauses keep working.

Exit statuses of ``cli.py``: 0 success; 2 a user error (this type, argparse's own usage errors,
and an input with no readable image); 1 only where a command reports a *result* that failed, e.g.
``bank verify`` on a bank that fails verification (the command itself ran as asked).
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input: one line naming the argument, the value and the fix; exit 2."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileExistsError, FileNotFoundError)
"""What a command ends in ONE line and exit status 2: our :class:`UserError` and Python's
FileNotFoundError / FileExistsError, which are raised for paths the user named (``--out`` of an
existing bank, a missing ``--images`` file) and whose message names the path."""


class UnreadableFileError(UserError, ValueError):
    """A file the user named exists but cannot be read as what it should be (an image that does
    not decode, a checkpoint that is not one, a config that is not UTF-8 text)."""


class SettingError(UserError, ValueError):
    """A setting (a command-line option or a config value) out of its range: the message names
    the option, the value and the range (``--steps 0: must be >= 1``)."""


def one_line(text: object) -> str:
    """``text`` on one line (newlines and runs of spaces folded), for messages that quote
    third-party errors."""
    return " ".join(str(text).split())
