"""Paired initialisation (model/seeding.py): the ablation rows of one seed start from the same
weights where their shapes agree, and building the model leaves the global stream as it was."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from model.dpseg import DPSeg, DPSegConfig
from model.seeding import derive_seed, paired_conv, part_rng

P = 3
DIMS = (24, 48, 96, 192)  # the toy ConvNeXt's level widths
SMALL = dict(
    cost_channels=16, decoder_channels=(16, 8, 8), guidance_channels=(8, 4, 4), attention_heads=2
)


def build(seed: int, **config) -> DPSeg:
    """The trained half of DPSeg after ``torch.manual_seed(seed)`` (the backbone is loaded from
    pretrained weights in real runs: a stand-in here)."""
    torch.manual_seed(seed)
    return DPSeg(nn.Identity(), P, DIMS, DPSegConfig(**{**SMALL, **config}))


def head_state(model: DPSeg) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}


def test_derive_seed_is_stable_and_depends_on_both():
    assert derive_seed(0, "decoder") == derive_seed(0, "decoder")
    assert derive_seed(0, "decoder") == 5414260982634214721  # the same in every process
    assert len({derive_seed(0, "a"), derive_seed(1, "a"), derive_seed(0, "b")}) == 3
    assert 0 <= derive_seed(2**64 - 1, "x") < 2**63


def test_part_rng_restores_the_stream_and_nests():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    with part_rng("a") as seed:
        assert torch.initial_seed() == seed == derive_seed(7, "a")
        first = torch.rand(2)
        with part_rng("b") as inner:
            assert inner == derive_seed(seed, "b")
        assert torch.initial_seed() == seed
    assert torch.initial_seed() == 7
    torch.testing.assert_close(torch.rand(3), expected)
    torch.rand(5)  # draws from the global stream do not move a part's stream
    with part_rng("a"):
        torch.testing.assert_close(torch.rand(2), first, rtol=0, atol=0)
    torch.manual_seed(8)
    with part_rng("a"):
        assert not torch.equal(torch.rand(2), first)


def test_paired_conv_shares_the_common_channels():
    torch.manual_seed(3)
    narrow = paired_conv("fuse", 10, 0, 4, 3, padding=1)
    wide = paired_conv("fuse", 10, 2, 4, 3, padding=1)
    with part_rng("fuse"):
        plain = nn.Conv2d(10, 4, 3, padding=1)
    torch.testing.assert_close(narrow.weight, plain.weight, rtol=0, atol=0)
    scale = math.sqrt(10 / 12)  # keeps PyTorch's default bound 1/sqrt(fan-in) of the wide conv
    torch.testing.assert_close(wide.weight[:, :10], narrow.weight * scale)
    torch.testing.assert_close(wide.bias, narrow.bias * scale)
    bound = 1 / math.sqrt(12 * 9)
    assert wide.weight.abs().max() <= bound and wide.bias.abs().max() <= bound
    assert wide.weight[:, 10:].abs().max() > 0.5 * bound  # drawn, not left at zero


@pytest.mark.parametrize(
    "other",
    [
        {"visual_levels": ()},
        {"visual_levels": (2,)},
        {"prompt_mode": "cost-concat"},
        {"prompt_mode": "text", "visual_levels": ()},
    ],
)
def test_rows_of_one_seed_share_their_common_parts(other):
    full, row = head_state(build(1)), head_state(build(1, **other))
    assert full.keys() == row.keys()  # F_v is an input channel, not a module
    widened = {k.removesuffix(".weight") for k in full if full[k].shape != row[k].shape}
    assert widened and all(k.endswith(("fuse.0", "cost_embedding.conv")) for k in widened)
    for k in full:
        conv = k.rsplit(".", 1)[0]
        if conv not in widened:
            torch.testing.assert_close(full[k], row[k], rtol=0, atol=0, msg=k)
            continue
        # a convolution with a wider input: the shared channels and the bias, scaled
        n, m = sorted((full[f"{conv}.weight"].shape[1], row[f"{conv}.weight"].shape[1]))
        narrow, wide = (
            (full[k], row[k]) if full[f"{conv}.weight"].shape[1] == n else (row[k], full[k])
        )
        torch.testing.assert_close(
            wide[:, :n] if wide.dim() > 1 else wide, narrow * math.sqrt(n / m)
        )


def test_another_seed_draws_other_weights():
    a, b = head_state(build(0)), head_state(build(1))
    for k, v in a.items():
        if not k.endswith(("norm.weight", "norm.bias")) and v.numel() > 1 and v.std() > 0:
            assert not torch.equal(v, b[k]), k


@pytest.mark.parametrize(
    "config", [{}, {"visual_levels": ()}, {"prompt_mode": "cost-concat"}, {"attention_heads": 0}]
)
def test_building_leaves_the_global_stream_alone(config):
    """The data order (drawn after the model) is the same in every row: building draws nothing."""
    torch.manual_seed(5)
    expected = torch.rand(1)
    build(5, **config)
    torch.testing.assert_close(torch.rand(1), expected, rtol=0, atol=0)


def test_build_dpseg_pairs_the_rows():
    """As ``cli.py fit`` builds it: the same heads and the same stream after the build."""
    from model.factory import build_dpseg

    def built(config):
        torch.manual_seed(2)
        parts = build_dpseg("tiny-convnext", P, DPSegConfig(**{**SMALL, **config}))
        return head_state(parts.model), torch.rand(1)

    (a, after_a), (b, after_b) = built({}), built({"visual_levels": (), "prompt_mode": "text"})
    torch.testing.assert_close(after_a, after_b, rtol=0, atol=0)
    torch.testing.assert_close(a["decoder.head.weight"], b["decoder.head.weight"], rtol=0, atol=0)
    torch.testing.assert_close(
        a["cost_embedding.conv.weight"], b["cost_embedding.conv.weight"], rtol=0, atol=0
    )
