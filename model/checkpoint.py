"""Checking a checkpoint file the user named before torch unpickles it.

``torch.load`` of a file that is not a checkpoint ends in a 30-line unpickling error that
suggests ``weights_only=False`` (which would run whatever the file holds). Here such a file ends
in one :class:`CheckpointError` that names the option, the file and the fix.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

from common.errors import UnreadableFileError, one_line

LIGHTNING_SHORTHANDS = ("last", "best", "hpc", "registry")
"""``--ckpt_path`` values Lightning resolves itself (not files)."""


class CheckpointError(UnreadableFileError):
    """A file given as a checkpoint is not one (garbage, truncated, or another kind of file)."""


def _fix(option: str, path: str) -> str:
    """The message template (``{why}`` to fill); braces of the path doubled, so that a file named
    ``a{b}.ckpt`` is named, not a KeyError of ``str.format``."""
    quoted = repr(path).replace("{", "{{").replace("}", "}}")
    return (
        f"{option} {quoted}: not a checkpoint of cli.py fit ({{why}}); pass a .ckpt file that "
        "cli.py fit wrote (runs/dpseg/version_N/checkpoints/last.ckpt)"
    )


def check_checkpoint(path: str | os.PathLike, option: str = "--ckpt") -> Path:
    """``path`` if it can be a checkpoint (a torch zip archive with a pickle); else a user error.

    Reads the whole file once: every member's CRC-32 (which torch writes and never checks) is
    compared, so a checkpoint changed after it was saved is refused rather than run with
    damaged weights (a fault probe's 64 bytes overwritten in a tensor gave one class everywhere,
    exit 0). That costs about a second per GB. A missing file is FileNotFoundError.
    """
    p = Path(path)
    if p.exists() and not p.is_file():
        raise CheckpointError(
            f"{option} {str(path)!r}: not a regular file (a folder, device or pipe); pass a "
            ".ckpt file that cli.py fit wrote"
        )
    if not p.is_file():
        raise FileNotFoundError(f"{option} {str(path)!r}: no such checkpoint file")
    message = _fix(option, str(path))
    try:
        with zipfile.ZipFile(p) as archive:
            names = archive.namelist()
            if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
                raise CheckpointError(message.format(why="a zip archive without torch's data.pkl"))
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):
        raise CheckpointError(message.format(why="not a torch zip archive")) from None
    if damaged is not None:
        raise CheckpointError(
            f"{option} {str(path)!r}: damaged (its member {damaged} does not match the CRC-32 "
            "saved with it: the file changed after cli.py fit wrote it); copy it again from "
            "where it was made, or use another checkpoint"
        )
    return p


def reading_failed(error: BaseException, path: str | os.PathLike, option: str = "--ckpt"):
    """The :class:`CheckpointError` for an error torch or Lightning raised reading ``path``
    (an archive that passed :func:`check_checkpoint` but whose content is not a checkpoint).

    A pickle that names code (a class, a function: what ``weights_only=True`` refuses) is said
    to be so, without torch's advice to load it with ``weights_only=False``, which would run
    that code (a fault probe: the one line repeated it)."""
    text = str(error)
    if "weights_only" in text or "Weights only load failed" in text:
        named = re.search(r"GLOBAL ([\w.]{1,80})", text)
        what = f", such as {named.group(1)}" if named else ""
        why = (
            f"it holds objects other than tensors and plain data{what}, so it is not loaded: "
            "loading it could run code"
        )
        return CheckpointError(_fix(option, str(path)).format(why=why))
    first = one_line(text.strip().splitlines()[0] if text.strip() else type(error))
    return CheckpointError(_fix(option, str(path)).format(why=f"{type(error).__name__}: {first}"))


def weights_misfit(error: RuntimeError) -> str | None:
    """The first line of torch's ``load_state_dict`` error when the weights do not fit the module
    the recorded settings build (size mismatch, missing or unexpected keys); None otherwise."""
    text = str(error)
    if "Error(s) in loading state_dict" not in text:
        return None
    lines = [line.strip() for line in text.splitlines()[1:] if line.strip()]
    return one_line(lines[0] if lines else text)[:200]


def load_module(path: str | os.PathLike, option: str = "--ckpt"):
    """The ``DPSegModule`` of a checkpoint of ``cli.py fit``, checked first
    (:func:`check_checkpoint`); a file whose content is not a checkpoint, or whose weights do
    not fit the settings it records (its ``hyper_parameters`` edited), is one CheckpointError."""
    import pickle

    from model.lightning import DPSegModule
    from pretrained.errors import PresetError, recorded_encoder_error

    check_checkpoint(path, option)  # garbage: one line, not torch's unpickling error
    try:
        return DPSegModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except PresetError as e:  # an encoder this installation cannot build
        reason = recorded_encoder_error(e, f"{option} {str(path)!r}")
        raise CheckpointError(f"{reason}; use the checkpoint as cli.py fit wrote it") from None
    except (pickle.UnpicklingError, EOFError, KeyError) as e:  # an archive, not ours
        raise reading_failed(e, path, option) from None
    except RuntimeError as e:
        misfit = weights_misfit(e)
        if misfit is None:
            raise
        raise CheckpointError(
            f"{option} {str(path)!r}: its weights do not fit the model its recorded settings "
            f"(hyper_parameters) build ({misfit}); the settings were edited or belong to "
            "another run: use the checkpoint as cli.py fit wrote it"
        ) from None
