"""Weights shipped inside the package (the toy presets), as small safetensors files.

The toy CLIP presets are pretrained by our own code (``pretrained.toy_pretrain``) and committed, so
every machine loads the same bits (training on CPU gives other bits on other CPUs). A CLIP text
tower's token table (49408 x width) is most of its size but the toy world uses about a hundred
tokens, so the file stores (ours) only the rows that training changed:
``<name>.rows`` (R,) int64 and ``<name>.values`` (R, width); the other rows are the portable
initial values (``pretrained.portable_init``), the same bits everywhere. Everything else is stored
whole. Files are read with safetensors (no pickle, nothing executed), strictly: a missing or
unexpected tensor is an error that lists them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from common.errors import SettingError, check_output_file
from common.io import write_atomic
from pretrained.hub import WeightsUnavailableError

WEIGHTS_DIR = Path(__file__).with_name("weights")
SPARSE = ("text.token_embedding.weight", "token_embedding.weight")  # stored by changed rows


def bundled_path(filename: str) -> Path:
    return WEIGHTS_DIR / filename


def _is_sparse(name: str) -> bool:
    return name.endswith(SPARSE)


def save_weights(
    model: nn.Module,
    path: str | os.PathLike,
    initial: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    overwrite: bool = True,
) -> int:
    """Write ``model``'s state to ``path``, whole or not at all; token tables keep only rows that
    differ from ``initial`` (the state the training started from). ``overwrite=False``: a file
    already at ``path`` (made by another process meanwhile) is never replaced. Returns the
    file's size in bytes."""
    from safetensors.torch import save

    tensors = {}
    for name, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        if _is_sparse(name):
            rows = (value != initial[name]).any(dim=1).nonzero().flatten()
            tensors[f"{name}.rows"] = rows.to(torch.int64).contiguous()
            tensors[f"{name}.values"] = value[rows].contiguous()
        else:
            tensors[name] = value
    check_output_file(path, "--out", example="weights.safetensors")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # encoded in memory, then written by Python (a full disk: an OSError naming the file)
    taken = None if overwrite else existing_weights_error(path)
    write_atomic(path, save(tensors, metadata=metadata or {}), taken)
    return path.stat().st_size


def existing_weights_error(path: str | os.PathLike) -> SettingError:
    """What ``presets pretrain`` says of an ``--out`` that holds a file (ours: weights, maybe a
    preset's own, are not replaced unasked)."""
    return SettingError(
        f"--out {str(path)!r} already holds a file (earlier weights?); give another path, or "
        "--overwrite to replace it"
    )


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_weights(model: nn.Module, path: str | os.PathLike, option: str) -> None:
    """Load a file written by :func:`save_weights` into ``model`` (built with its portable
    initial weights), in place.

    Raises:
        WeightsUnavailableError: the file is missing, unreadable, or its tensors do not match
            the model's (missing or unexpected names, other shapes), named in one line.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"{option} {str(path)!r} does not exist")
    try:
        stored = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise WeightsUnavailableError(
            f"{option} {str(path)!r} is not a readable safetensors file ({e})"
        ) from None
    state = model.state_dict()
    expected = set()
    for name in state:
        expected |= {f"{name}.rows", f"{name}.values"} if _is_sparse(name) else {name}
    missing, unexpected = sorted(expected - set(stored)), sorted(set(stored) - expected)
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"{option} {str(path)!r} does not fit the preset's architecture: missing "
            f"{', '.join(missing[:8]) or 'none'}; unexpected {', '.join(unexpected[:8]) or 'none'}"
        )
    with torch.no_grad():
        for name, value in state.items():
            if _is_sparse(name):
                rows, values = stored[f"{name}.rows"], stored[f"{name}.values"]
                if values.shape[1:] != value.shape[1:] or (
                    len(rows) and int(rows.max()) >= len(value)
                ):
                    raise WeightsUnavailableError(
                        f"{option} {str(path)!r}: {name} rows do not fit {tuple(value.shape)}"
                    )
                value[rows] = values.to(value.dtype)
            elif stored[name].shape != value.shape:
                raise WeightsUnavailableError(
                    f"{option} {str(path)!r}: {name} has shape {tuple(stored[name].shape)}, "
                    f"the preset's architecture {tuple(value.shape)}"
                )
            else:
                value.copy_(stored[name])
