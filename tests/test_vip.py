"""VIP's training-free maths on hand-made inputs where the right answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from model.vip import VIPConfig, aggregate_aliases, alias_weights, assign_labels, proxy_attention


def test_proxy_attention_matches_the_formula_and_guards_the_all_masked_row():
    f = torch.tensor([[[1.0, 0, 0], [1, 0.1, 0], [1, 0, 0.1], [0, 0, 1]]])
    attention = proxy_attention(f, beta=1.5, gamma=0.5)
    n = torch.nn.functional.normalize(f, dim=-1)
    shifted = (n @ n.mT - 1.5 * (n @ n.mT).mean()) * 0.5
    expected = shifted.masked_fill(shifted <= 0, float("-inf")).softmax(-1)
    torch.testing.assert_close(attention, expected)
    assert attention[0, 0, 3] == 0 and attention[0, 3, 3] == 1  # masked; only itself left
    # Mean similarity above 2/3: every entry (self included) is <= 0 after the shift, so every
    # row is fully masked; the reference code gives NaN, the guard gives "attend to yourself".
    alike = torch.cat([torch.ones(1, 6, 3), torch.tensor([[[1.0, -1, 0]]])], dim=1)
    guarded = proxy_attention(alike)
    assert torch.isfinite(guarded).all()
    torch.testing.assert_close(guarded, torch.eye(7)[None])


def test_alias_weights_softmax_per_class_with_mean_one():
    image = torch.tensor([[1.0, 0.0]])
    aliases = torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    )  # class 0: aliases 0, 1; class 1: 2
    owner = torch.tensor([0, 0, 1])
    w = alias_weights(image, aliases, owner, num_classes=2, scale=2.0)
    e0, e1 = math.exp(2 * 1.0), math.exp(2 * 0.0)
    expected = torch.tensor([[2 * e0 / (e0 + e1), 2 * e1 / (e0 + e1), 1.0]])
    torch.testing.assert_close(w, expected)
    assert w[0, :2].mean().item() == pytest.approx(1.0)


def test_aggregation_is_a_weighted_logsumexp_per_class():
    logits = torch.tensor([0.2, 0.5, 0.3]).view(1, 3, 1, 1)
    weights = torch.tensor([[1.5, 0.5, 1.0]])
    owner = torch.tensor([0, 0, 1])
    out = aggregate_aliases(logits, weights, owner, num_classes=2, tau=3.0)
    c0 = math.log(math.exp(3 * 1.5 * 0.2) + math.exp(3 * 0.5 * 0.5)) / 3
    assert out.shape == (1, 2, 1, 1)
    assert out[0, 0, 0, 0].item() == pytest.approx(c0, rel=1e-6)
    assert out[0, 1, 0, 0].item() == pytest.approx(0.3, rel=1e-6)  # one alias: its own logit
    # large tau: the aggregation tends to the max of the weighted logits
    sharp = aggregate_aliases(logits, weights, owner, 2, tau=1000.0)
    assert sharp[0, 0, 0, 0].item() == pytest.approx(max(1.5 * 0.2, 0.5 * 0.5), abs=1e-3)


def test_background_threshold_to_a_class_or_to_ignore():
    logits = torch.tensor([[0.30, 0.31], [0.1, 0.5]]).T.reshape(1, 2, 1, 2)  # pixel 0 unsure
    confident = VIPConfig(prob_thd=0.0)
    assert assign_labels(logits, confident).tolist() == [[[1, 1]]]
    as_class = VIPConfig(prob_thd=0.9, background="class")
    assert assign_labels(logits, as_class, background_id=0).tolist() == [[[0, 1]]]
    as_ignore = VIPConfig(prob_thd=0.9, background="ignore")
    assert assign_labels(logits, as_ignore).tolist() == [[[-1, 1]]]
    with pytest.raises(ValueError, match="background_id"):
        assign_labels(logits, as_class)
    with pytest.raises(ValueError, match="background='sky'"):
        VIPConfig(background="sky")
