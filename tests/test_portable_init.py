"""Portable random weights: exact values, the laws they follow, what is redrawn and what is kept."""

import math

import numpy as np
import open_clip
import pytest
import torch
from torch import nn

from pretrained.portable_init import VECTOR_STD, build_portable, portable_std, portable_uniform


def test_values_are_the_recorded_bits():
    """The stream is numpy's PCG64 (stable across numpy versions) turned into floats exactly:
    these values were recorded once and must never change (tiny banks depend on them)."""
    assert portable_uniform(0, "x", (4,), 1.0).tolist() == [
        -0.8954603672027588,
        -0.7959628701210022,
        -1.221376657485962,
        1.0830457210540771,
    ]
    assert portable_uniform(7, "unet.conv_in.weight", (3,), 0.5).tolist() == [
        -0.7139983177185059,
        -0.09475740045309067,
        0.234579399228096,
    ]


def test_values_follow_the_formula_from_raw_integers():
    seed, name, std = 3, "visual.proj", 0.25
    values = portable_uniform(seed, name, (2, 5), std)
    import hashlib

    digest = hashlib.sha256(name.encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    raw = np.random.PCG64(np.random.SeedSequence([seed, *words])).random_raw(10)
    expected = [
        np.float32((2 * ((int(r) >> 40) + 0.5) / 2**24 - 1) * std * math.sqrt(3)) for r in raw
    ]
    assert values.dtype == torch.float32 and values.shape == (2, 5)
    assert values.flatten().tolist() == [float(e) for e in expected]


def test_law_scale_and_independence():
    big = portable_uniform(0, "w", (200_000,), 0.1)
    assert abs(float(big.std()) - 0.1) < 0.001 and abs(float(big.mean())) < 0.001
    assert float(big.abs().max()) <= 0.1 * math.sqrt(3)
    assert not torch.equal(portable_uniform(0, "w", (8,), 1.0), portable_uniform(1, "w", (8,), 1.0))
    assert not torch.equal(portable_uniform(0, "w", (8,), 1.0), portable_uniform(0, "v", (8,), 1.0))
    torch.manual_seed(5)  # torch's global generator plays no part
    first = portable_uniform(0, "w", (8,), 1.0)
    torch.manual_seed(6)
    assert torch.equal(first, portable_uniform(0, "w", (8,), 1.0))
    assert portable_uniform(0, "empty", (0, 4), 1.0).shape == (0, 4)


@pytest.mark.parametrize(
    ("shape", "std"),
    [((64, 32), 32**-0.5), ((16, 8, 3, 3), 72**-0.5), ((77, 64), 0.125), ((64,), VECTOR_STD)],
)
def test_scale_comes_from_the_shape(shape, std):
    assert portable_std(shape) == pytest.approx(std)


def test_build_portable_redraws_random_tensors_and_keeps_constants():
    def build():
        model = nn.Sequential(nn.Linear(8, 4), nn.LayerNorm(4))
        model.register_buffer("scale", torch.full((3,), 0.07))
        return {"m": model}

    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch_draw = build()["m"][0].weight.detach().clone()
    torch.manual_seed(123)
    before = torch.rand(2)
    torch.manual_seed(123)
    model = build_portable(build, seed=4)["m"]
    assert torch.equal(torch.rand(2), before)  # the caller's RNG state is left alone
    assert torch.equal(model[0].weight, portable_uniform(4, "m.0.weight", (4, 8), 8**-0.5))
    assert torch.equal(model[0].bias, portable_uniform(4, "m.0.bias", (4,), VECTOR_STD))
    assert not torch.equal(model[0].weight, torch_draw)
    assert torch.equal(model[1].weight, torch.ones(4)) and torch.equal(
        model[1].bias, torch.zeros(4)
    )
    assert torch.equal(model.scale, torch.full((3,), 0.07))


def test_a_portable_clip_computes_informative_features():
    """The redrawn tiny CLIP is no degenerate network: distinct inputs, distinct embeddings."""
    from pretrained.backbone import create_clip

    model = create_clip("tiny-vit").model
    with torch.no_grad():
        images = model.encode_image(torch.randn(4, 3, 128, 128), normalize=True)
        texts = model.encode_text(open_clip.tokenize(["a red disc", "a blue square"]))
    assert torch.isfinite(images).all() and torch.isfinite(texts).all()
    cos = images @ images.T
    assert float(cos[~torch.eye(4, dtype=torch.bool)].max()) < 0.999
    assert not torch.allclose(texts[0], texts[1])
