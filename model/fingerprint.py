"""A sha256 fingerprint of model weights, recorded by banks and checkpoints.

Two models share a fingerprint exactly when they have the same parameter and buffer names,
dtypes, shapes and bytes. A bank built by one encoder is refused by a model whose prompt encoder
has another fingerprint (DESIGN §4): comparing names of presets is not enough, since a local
weights file, a different torch version's initialisation or a cast to bf16 all change the weights.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 hex digest over (name, dtype, shape, bytes) of every tensor, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        tensor = tensor.contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # Reinterpret as bytes: works for every dtype, bf16 included (numpy has no bf16).
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_fingerprint(*modules: nn.Module, prefixes: tuple[str, ...] | None = None) -> str:
    """Fingerprint of one or several modules (e.g. a pipeline's unet, vae and text encoder).

    Args:
        modules: the modules whose ``state_dict`` is hashed.
        prefixes: a name per module, prepended to its keys (default ``m0.``, ``m1.``, ...).
    """
    prefixes = prefixes or tuple(f"m{i}" for i in range(len(modules)))
    if len(prefixes) != len(modules):
        raise ValueError(f"prefixes has {len(prefixes)} names for {len(modules)} modules")
    state: dict[str, torch.Tensor] = {}
    for prefix, module in zip(prefixes, modules):
        for key, value in module.state_dict().items():
            state[f"{prefix}.{key}"] = value
    return state_fingerprint(state)
