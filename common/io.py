"""Small file helpers shared by the dataset writers."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from PIL import Image

from common.errors import UserError


class ConcurrentWriteError(UserError):
    """Another process wrote the same file at the same time: what it wrote is whole and stays
    (a caller must not remove it as its own partial work)."""


def write_atomic(path: Path, data: bytes, taken: Exception | None = None) -> None:
    """Write a whole file or nothing (temp file + rename): a killed run leaves no truncated file.
    Python writes the bytes and checks every write (a full disk, a file size limit), and the
    error names ``path``. When the temporary file goes away before the rename (another process
    writing the same file renamed it first), one :class:`ConcurrentWriteError` says so; a folder
    in the way is an OSError naming ``path`` (EISDIR). ``taken``: the file must not exist: it is
    linked into place (never replacing one), and ``taken`` (a user error naming the option) is
    raised when another process made it first."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        try:
            tmp.write_bytes(data)
        except OSError as e:  # name the file (a write error names none)
            raise OSError(e.errno, e.strerror, str(path)) from None
        try:
            if taken is None:
                try:
                    os.replace(tmp, path)
                except IsADirectoryError as e:  # a folder where the file goes: named as such
                    raise OSError(e.errno, e.strerror, str(path)) from None
            else:
                try:
                    os.link(tmp, path)  # atomic, and fails where a file is
                except FileExistsError:
                    raise taken from None
        except FileNotFoundError:  # another process renamed it first (found by a fault probe)
            raise ConcurrentWriteError(
                f"{path}: another process was writing this file at the same time (its "
                f"temporary file {tmp.name} went away); run one command per output folder"
            ) from None
    finally:
        tmp.unlink(missing_ok=True)


def save_image_atomic(image: Image.Image, path: Path, fmt: str | None = None, **kwargs) -> None:
    """An image written whole or not at all (:func:`write_atomic`), in ``fmt`` (default: the
    format of ``path``'s suffix, as ``Image.save``). It is encoded in memory: PIL's encoders
    write to the file descriptor themselves and ignore a short write (a full disk, a file size
    limit), which left truncated images without an error."""
    import io

    if fmt is None:
        fmt = Image.registered_extensions().get(Path(path).suffix.lower())
        if fmt is None:
            raise ValueError(f"unknown file extension: {Path(path).suffix!r}")
    encoded = io.BytesIO()
    image.save(encoded, format=fmt, **kwargs)
    write_atomic(Path(path), encoded.getvalue())


def check_picture_out(path: str | os.PathLike, option: str) -> None:
    """An output picture's name checked before any work: its suffix must be a format PIL writes
    (.png, .jpg, ...). One line naming ``option`` (:class:`~common.errors.SettingError`)."""
    from common.errors import SettingError

    Image.init()  # every plugin: the full table of suffixes
    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        what = f"unknown image file extension {suffix!r}" if suffix else "no file extension"
        raise SettingError(
            f"{option} {str(path)!r}: {what}; give a .png path (or another image format PIL "
            "writes: .jpg, .webp, ...)"
        )


def save_figure_atomic(figure, path: Path, **kwargs) -> None:
    """A matplotlib figure written whole or not at all (:func:`write_atomic`), in the format of
    ``path``'s suffix (PNG without one), as ``savefig`` would."""
    import io

    encoded = io.BytesIO()
    figure.savefig(encoded, format=Path(path).suffix.lstrip(".").lower() or "png", **kwargs)
    write_atomic(Path(path), encoded.getvalue())


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` in UTF-8, written whole or not at all (:func:`write_atomic`)."""
    write_atomic(Path(path), text.encode("utf-8"))


def write_json_atomic(path: Path, record: object) -> None:
    """``record`` as indented JSON in UTF-8, written whole or not at all (:func:`write_atomic`).
    Text stays readable (no \\u escapes), except where a string holds a name that is not UTF-8
    (a file name's raw bytes, kept by Python as surrogates): then every non-ASCII character is
    escaped, which json reads back to the same string (``os.fsencode`` gives the bytes)."""
    import json

    try:
        text = json.dumps(record, indent=2, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(record, indent=2).encode("ascii")
    write_atomic(path, text + b"\n")


def move_into_place(staging: str | os.PathLike, out: str | os.PathLike, taken: Exception) -> None:
    """Rename a finished ``staging`` folder onto ``out`` (absent or an empty folder); raise
    ``taken`` (a user error naming the option and the fix) when another process filled ``out``
    while this one worked."""
    try:
        os.rename(staging, out)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        raise taken from None


def remove_staging(path: str | os.PathLike, settle: float = 0.1, limit: float = 2.0) -> None:
    """Remove a failed run's staging folder, again until it stays gone for ``settle`` seconds
    (at most ``limit``): zarr's writes run on its own event-loop thread, and one failed write
    (a full disk) does not stop the others, which may still create files after a first removal."""
    import shutil
    import time

    deadline = time.monotonic() + limit
    while os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)
        time.sleep(settle)
        if time.monotonic() > deadline:
            return


def special_file_kind(path: str | os.PathLike, folders: bool = False) -> str | None:
    """What ``path`` is where a regular file belongs ("a pipe", "a folder", "a link that leads
    nowhere", ...), or None for a regular file or nothing at all. A pipe would block a read
    forever and a device (a link to /dev/zero) be read without end: one ``stat``, no read.
    ``folders``: a folder passes too."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a link that leads nowhere" if os.path.islink(path) else None
    except OSError as e:  # a link that loops, a path through a file
        what = "a link" if os.path.islink(path) else "a path"
        return f"{what} that cannot be followed ({e.strerror})"
    if stat.S_ISREG(mode) or (folders and stat.S_ISDIR(mode)):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a pipe" if stat.S_ISFIFO(mode) else "a device, socket or other special file"


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 4 MiB blocks (weights of any size)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def command_line() -> str:
    """The command this process runs, as a user would type it again (``python cli.py ...``)."""
    import shlex
    import sys

    return " ".join(shlex.quote(a) for a in ["python", "cli.py", *sys.argv[1:]])
