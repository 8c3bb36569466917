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
``bank verify`` on a bank that fails verification (the command itself ran as asked); 128 + N
when signal N (SIGINT, SIGTERM) stopped it, after one line saying what was kept
(``common.signals.Interrupted``).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path


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


class StorageError(UserError, OSError):
    """A write stopped by the storage (``STORAGE_ERRNOS``), reported by the command that knows
    what it was writing: one line, exit 2."""


_FULL = "free some space or choose another folder"
_DENIED = "choose a folder you may write to, or fix the permissions of this one"
STORAGE_ERRNOS = {
    errno.ENOSPC: _FULL,
    errno.EDQUOT: _FULL,
    errno.EFBIG: "a file size limit stops the write (ulimit -f); raise it or write elsewhere",
    errno.EACCES: _DENIED,
    errno.EPERM: _DENIED,
    errno.EROFS: "the file system is read-only; choose a folder on a writable one",
}
"""OSErrors of the storage rather than of dpseg, each with its fix: a full disk or quota, a file
size limit, a folder the user may not write to. They end in one line, exit 2."""

PATH_ERRNOS = {
    errno.ENOTDIR: "a folder on that path is a file: choose a path under a folder",
    errno.EEXIST: "a file of that name is in the way: remove it or choose another path",
    errno.ENAMETOOLONG: "a name on that path, or the whole path, is longer than the file system "
    "allows (most: 255 bytes a name, 4096 a path): choose a shorter one",
    errno.EISDIR: "a folder of that name is in the way: remove it, then run the command again",
}
"""OSErrors of a path the user gave (``--out photo.jpg/x``), each with its fix: one line, exit 2."""

KEPT = "finished work is kept: run the command again then"
NOTHING_LEFT = "nothing partial is left: run the command again then"


def storage_fault(error: OSError, where: str | None = None, after: str = KEPT) -> str:
    """One line for a storage error: the file it names (else ``where``, such as ``writing in
    OUT``), the reason, and the fix. A denied *read* (an existing file the user may not read)
    has its own fix; a stopped write gets the errno's and ``after`` (what the run left)."""
    name = error.filename
    code = errno.errorcode.get(error.errno, error.errno)
    place = f"{name}: " if name else f"{where}: " if where else ""
    denied = error.errno in (errno.EACCES, errno.EPERM) and isinstance(name, str | bytes)
    if denied and os.path.exists(name) and not os.access(name, os.R_OK):
        fix = "you may not read it: fix its permissions (chmod) or run as its owner"
    elif error.errno in PATH_ERRNOS:
        fix = PATH_ERRNOS[error.errno]
    else:
        fix = f"{STORAGE_ERRNOS[error.errno]} ({after})"
    return f"{place}{error.strerror or error} ({code}); {fix}"


@contextlib.contextmanager
def staged_write(staging: str | os.PathLike, where: str):
    """A storage error (``STORAGE_ERRNOS``) while a run writes into ``staging``, a folder that
    goes when it fails, becomes one line naming the output instead (``where``: ``writing --out
    OUT``) and saying that nothing partial is left."""
    try:
        yield
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS or isinstance(e, UserError):
            raise
        if e.filename is None or str(e.filename).startswith(str(staging)):
            e.filename = None
        raise StorageError(storage_fault(e, where, NOTHING_LEFT)) from None


def printable(text: object) -> str:
    """``text`` with every character that would break its line or hide (a newline in a path,
    control characters) escaped as Python writes it: what one-line messages quote."""
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in str(text))


def before_bytes(text: object) -> str:
    """``text`` up to the first bytes literal it quotes (``b'(\\xb5/...'``)."""
    import re

    return re.split(r"""(?:^|\s)b['"]""", str(text), maxsplit=1)[0]


def without_bytes(error: BaseException) -> str:
    """``TYPE: message`` on one line, cut before the first bytes literal it quotes (a codec's
    "Stored: b'\\xdc...'" checksum, a parser's raw input: a probe found them in error lines)."""
    whole = one_line(error)
    text = before_bytes(whole)
    if text != whole and ". " in text:  # the sentence that quotes the bytes goes too
        text = text[: text.rindex(". ") + 1]
    text = text.rstrip(" :")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def say(text: str, file=None) -> None:
    """Print a one-line report, its paths' control characters escaped (:func:`printable`)."""
    print(printable(text), file=file)


def not_json_answer(url: str, name: str, raw: bytes) -> str:
    """The server answered a JSON file of ``url`` (``name``) with ``raw``, which is not JSON:
    most often a login or error page (a proxy, an expired link), not damage to what it holds."""
    return (
        f"{url}: the server answered {name} with something that is not JSON (it begins "
        f"{raw[:40]!r}): a login or error page, or a wrong URL; check the URL and the "
        "credentials (--storage-options, $DPSEG_STORAGE_OPTIONS)"
    )


def one_line(text: object) -> str:
    """``text`` on one line (newlines and runs of spaces folded), for messages that quote
    third-party errors."""
    return " ".join(str(text).split())


def _blocking_file(path) -> object | None:
    """The first existing component of ``path`` above it that is not a folder (a file where a
    folder would have to be), or None."""
    from pathlib import Path

    return file_in_the_way(Path(path).parent)


def file_in_the_way(folder) -> object | None:
    """The first existing one of ``folder`` and its parents when it is not a folder (a file
    where a folder would have to be), or None."""
    from pathlib import Path

    folder = Path(folder)
    for p in (folder, *folder.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def refuse_unwritable(path, option: str, fix: str | None = None) -> None:
    """Refuse, before any work, an output ``path`` (a file or a folder, there or to be made) in a
    folder this user may not write in: one :class:`StorageError` naming ``option``, the folder,
    why (a read-only file system, or its permissions) and the fix (default: choose another
    folder), so that no work is done and then lost at the first write (ours)."""
    from pathlib import Path

    p = Path(path)
    folder = p if p.is_dir() else next((q for q in p.parents if q.exists()), None)
    if folder is None or not folder.is_dir() or os.access(folder, os.W_OK | os.X_OK):
        return
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    why = (
        f"{str(folder)!r} is on a read-only file system (EROFS)"
        if read_only
        else f"this user may not write in {str(folder)!r} (EACCES)"
    )
    fix = fix or ("choose a folder on a writable one" if read_only else _DENIED)
    raise StorageError(f"{option} {str(path)!r}: {why}; {fix} (nothing was done)")


def refuse_empty(path, option: str, what: str) -> None:
    """An empty path given for an output reads as the working folder: refused in one line
    (``segment --out ''`` wrote into it; found by a probe)."""
    if not str(path).strip():
        raise SettingError(f"{option} {str(path)!r}: empty; give the path of a {what}")


def check_output_folder(path, option: str) -> None:
    """Refuse, before any work, an output folder that cannot be one: an existing file, a path
    below a file (:class:`SettingError`) or a folder this user may not write in
    (:func:`refuse_unwritable`). One line naming ``option``, the path and the fix."""
    from pathlib import Path

    refuse_empty(path, option, "folder")
    link = broken_link(path)  # a link to nowhere: named, not "a file is in the way"
    if link is not None:
        raise SettingError(f"{option} {link}")
    p = Path(path)
    if p.exists() and not p.is_dir():
        kind = "a file" if p.is_file() else "a pipe, device or other special file"
        raise SettingError(
            f"{option} {str(path)!r} is {kind}, not a folder: give a new or existing folder "
            "for the outputs"
        )
    blocking = _blocking_file(p)
    if blocking is not None:
        raise SettingError(
            f"{option} {str(path)!r}: {str(blocking)!r} is a file, so no folder can be made "
            "there; give a path under a folder"
        )
    refuse_unwritable(p, option)


def check_output_file(path, option: str, example: str = "out.txt") -> None:
    """Refuse, before any work, an output file that cannot be written: an existing folder, a path
    below a file (:class:`SettingError`; ``example``: a file name to suggest inside a folder given
    by mistake) or one in a folder this user may not write in (:func:`refuse_unwritable`). One
    line naming ``option``, the path and the fix."""
    from pathlib import Path

    refuse_empty(path, option, "file")
    p = Path(path)
    if p.is_dir():
        raise SettingError(
            f"{option} {str(path)!r} is a folder; give a file path, e.g. {str(p / example)!r}"
        )
    blocking = _blocking_file(p)
    if blocking is not None:
        raise SettingError(
            f"{option} {str(path)!r}: {str(blocking)!r} is a file, not a folder; give a path "
            "under a folder"
        )
    refuse_unwritable(p, option)


def check_device(device, option: str = "--device") -> str:
    """``device`` (a string or a torch.device) checked before any work; None: cuda when
    available, else cpu. An unknown device type, or a GPU this machine does not have, is one
    line naming ``option``, the value and the choices (:class:`SettingError`) instead of
    torch's error. Imports torch when called (this module stays light)."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    text = str(device)
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        parsed = None
    known = ("cpu", "cuda", "mps") if has_mps else ("cpu", "cuda")
    if parsed is None or parsed.type not in known:
        choices = "cpu, cuda, cuda:N" + (", mps" if has_mps else "")
        raise SettingError(f"{option} {text!r}: not a device here; use one of {choices}")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SettingError(
                f"{option} {text!r}: no CUDA GPU is available here; use {option} cpu"
            )
        if parsed.index is not None and parsed.index >= count:
            raise SettingError(
                f"{option} {text!r}: this machine has {count} CUDA GPU(s); use cuda:0 to "
                f"cuda:{count - 1}, cuda or cpu"
            )
    return text


def broken_link(path: str | os.PathLike) -> str | None:
    """What is wrong when ``path``, or a folder above it, is a symbolic link that loops or
    points nowhere ("out: a symbolic link that loops (to out); ..."), the outermost first;
    None when no link on the way is broken."""
    path = Path(path)
    for link in reversed([path, *path.parents]):
        if not link.is_symlink():
            continue
        try:
            os.stat(link)
        except OSError as e:
            target = os.readlink(link)
            if e.errno == errno.ELOOP:
                return (
                    f"{link}: a symbolic link that loops (to {target}); remove it or point it "
                    "at a real folder"
                )
            return (
                f"{link}: a symbolic link to {target}, which does not exist; create that or "
                "remove the link"
            )
    return None
