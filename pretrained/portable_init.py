"""Random weights that are the same bits on every machine (the offline ``tiny-*`` presets).

torch's initialisers (``normal_``, ``trunc_normal_``, ``uniform_``) run vectorised kernels whose
transcendental functions round differently under AVX-512, AVX2 and scalar code, so the same seed
gives other bits on another CPU (or under ``ATEN_CPU_CAPABILITY=default``), and a tiny bank or
checkpoint made on one machine was refused on another by its encoder fingerprint.

Here (ours) a model is built as usual, then every tensor that torch filled from its random
generator is drawn again from arithmetic that no CPU kernel touches:

1. *Which tensors are random*: the model is built twice under two torch seeds; a floating tensor
   that differs between the two came from the RNG. Tensors that do not (LayerNorm ones and
   zeros, ``logit_scale``'s fill, ConvNeXt's layer-scale ``1e-6``) are exact constants and keep
   torch's value.
2. *Their values*: per tensor, a PCG64 stream (numpy's bit generator, whose raw output is
   stable across numpy versions and platforms) seeded by ``SeedSequence([seed, sha256(name)])``;
   the top 24 bits of each raw 64-bit word give ``u = (k + 1/2) / 2**24`` exactly, and the value
   is ``(2u - 1) * std * sqrt(3)`` (a uniform law of standard deviation ``std``), rounded to
   float32. Every step is an integer operation or one correctly rounded IEEE operation, so the
   bits cannot depend on the CPU, its vector units, the thread count or the library versions.
3. *Their scale* comes from the shape alone (not from torch's draw, whose statistics vary in the
   last bits): ``std = fan_in ** -0.5`` with ``fan_in = numel / shape[0]`` for matrices and
   convolution kernels (unit gain, as LeCun's init), and ``std = 0.02`` for vectors (biases,
   class embeddings). The laws differ from torch's (uniform rather than normal, other biases);
   the weights are random either way, for plumbing, tests and speed, never for accuracy.

Seeding per tensor name keeps each tensor's values independent of the others: adding a layer
does not change the rest.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

VECTOR_STD = 0.02  # (ours) scale of random vectors: biases, class and positional rows


def _stream(seed: int, name: str) -> np.random.PCG64:
    digest = hashlib.sha256(name.encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.PCG64(np.random.SeedSequence([seed, *words]))


def portable_std(shape: tuple[int, ...]) -> float:
    """The standard deviation a random tensor of this shape is drawn with (see the module)."""
    if len(shape) >= 2 and shape[0] > 0:
        return (math.prod(shape) // shape[0]) ** -0.5
    return VECTOR_STD


def portable_uniform(seed: int, name: str, shape: tuple[int, ...], std: float) -> torch.Tensor:
    """float32 values of a uniform law with standard deviation ``std``, the same bits on every
    machine: ``(2 (k + 1/2) / 2**24 - 1) * std * sqrt(3)`` for 24-bit integers ``k`` of a PCG64
    stream seeded by ``seed`` and ``name``."""
    count = math.prod(shape)
    raw = _stream(seed, name).random_raw(count) if count else np.zeros(0, np.uint64)
    k = (np.asarray(raw, dtype=np.uint64) >> np.uint64(40)).astype(np.float64)  # exact
    u = (k + 0.5) / float(2**24)  # exact: k < 2**24
    values = (2.0 * u - 1.0) * (std * math.sqrt(3.0))  # 2u - 1 exact; one rounded multiply
    return torch.from_numpy(values.astype(np.float32).reshape(shape))


def build_portable(build: Callable[[], dict[str, nn.Module]], seed: int) -> dict[str, nn.Module]:
    """Build modules with ``build()`` and redraw every randomly initialised tensor portably.

    Args:
        build: returns named modules (e.g. ``{"unet": ..., "vae": ...}``); it is called twice,
            under torch seeds 0 and 1, to tell random tensors from constants, and must draw
            all of its randomness from torch's global generator.
        seed: the preset's seed; with a tensor's name it seeds that tensor's stream.

    Returns:
        The first build's modules, their random tensors replaced in place.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        modules = build()
        torch.manual_seed(1)
        probe = build()
    with torch.no_grad():
        for prefix, module in modules.items():
            other = probe[prefix].state_dict()
            for name, tensor in module.state_dict().items():
                if not tensor.is_floating_point() or torch.equal(tensor, other[name]):
                    continue  # integers, and constants that no draw produced
                full = f"{prefix}.{name}"
                shape = tuple(tensor.shape)
                tensor.copy_(portable_uniform(seed, full, shape, portable_std(shape)))
    return modules
