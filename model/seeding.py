"""Paired initialisation: every trainable part of DPSeg drawn from its own random stream.

An ablation row changes one part of the network (cost-concat doubles the cost embedding's input;
``visual_levels`` adds or removes the decoder's F_v inputs). Drawn from the one global stream, a
changed part shifts the draws of every part built after it, and of the data order drawn after
the model, so two rows of one seed would differ in much more than the claim they test. Built
under :func:`part_rng`, each part gets its own stream, derived from the run's base seed
(``torch.initial_seed()``, set by ``--seed_everything``) and the part's name, and the global stream
is left as it was:

- a part of the same shape has bit-identical initial weights in every row of a seed;
- the global RNG state after the model is built (hence the data order) is the same in every row;
- another base seed gives other weights.

Names nest: a ``part_rng`` inside another derives from the outer part's seed, so
``part_rng("decoder")`` around ``part_rng("stage0")`` names the decoder's first stage.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def derive_seed(base: int, name: str) -> int:
    """A 63-bit seed from a base seed and a part's name, the same in every process (a blake2b
    digest; Python's ``hash`` of a string changes from process to process)."""
    digest = hashlib.blake2b(f"{base}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@contextmanager
def part_rng(name: str) -> Iterator[int]:
    """Run the block on the CPU stream seeded with ``derive_seed(torch.initial_seed(), name)``
    (yielded), then restore the stream as it was before the block.

    Only the CPU generator is touched (modules are built on CPU): seeding with
    ``torch.manual_seed`` would reseed the CUDA generators too, which ``fork_rng(devices=[])``
    does not restore."""
    seed = derive_seed(torch.initial_seed(), name)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield seed


def paired_conv(
    name: str, shared: int, extra: int, out_channels: int, kernel: int, **kwargs
) -> nn.Conv2d:
    """A ``Conv2d`` over ``shared`` input channels that every configuration has, then ``extra``
    channels that only some have (a decoder stage's F_v; cost-concat's visual templates).

    The shared channels' weights and the bias are one draw under ``part_rng(name)``, whatever
    ``extra`` is; the extra channels have their own draw (``part_rng(name + ".extra")``). So
    rows with and without the extra input start from the same weights on what they share, up to
    the factor that keeps PyTorch's default initialisation (uniform, bound 1/sqrt(fan-in)) for
    the wider convolution: sqrt(shared / (shared + extra)). With ``extra`` 0 it is exactly
    ``nn.Conv2d(shared, ...)`` built under ``part_rng(name)``.
    """
    with part_rng(name):
        conv = nn.Conv2d(shared, out_channels, kernel, **kwargs)
    if not extra:
        return conv
    with part_rng(f"{name}.extra"):
        wide = nn.Conv2d(shared + extra, out_channels, kernel, **kwargs)
    scale = math.sqrt(shared / (shared + extra))
    with torch.no_grad():
        wide.weight[:, :shared] = conv.weight * scale
        if wide.bias is not None:
            wide.bias.copy_(conv.bias * scale)
    return wide
