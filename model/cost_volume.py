"""The dual-prompt cost volume and the visual cost volumes (DESIGN §2.1, §2.2).

Axis names: B images, K classes, P templates, D joint embedding, C channels, h x w a grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

PromptMode = Literal["text", "visual", "avg"]
PROMPT_MODES = ("text", "visual", "avg")


@dataclass
class Prompts:
    """The prompts of K classes, as the model consumes them (built from a bank by I/O code)."""

    text: torch.Tensor  # (K, P, D) normalised text embeddings
    visual: torch.Tensor  # (K, P, D) normalised visual embeddings (mean over the N images)
    visual_levels: list[torch.Tensor]  # per level j = 1..L: (K, C_j) pooled prompt features

    def __post_init__(self) -> None:
        if self.text.shape != self.visual.shape or self.text.ndim != 3:
            raise ValueError(
                f"text {tuple(self.text.shape)} and visual {tuple(self.visual.shape)} prompts "
                "must both be (K, P, D)"
            )
        k = self.text.shape[0]
        for j, level in enumerate(self.visual_levels, start=1):
            if level.ndim != 2 or level.shape[0] != k:
                raise ValueError(f"visual level {j} is {tuple(level.shape)}, expected ({k}, C_{j})")

    @property
    def num_classes(self) -> int:
        return self.text.shape[0]

    def to(self, device) -> Prompts:
        return Prompts(
            self.text.to(device), self.visual.to(device), [v.to(device) for v in self.visual_levels]
        )

    def select(self, index: torch.Tensor | slice) -> Prompts:
        """The prompts of a subset of classes."""
        return Prompts(self.text[index], self.visual[index], [v[index] for v in self.visual_levels])

    def with_visual(self, classes: torch.Tensor, visual: torch.Tensor, levels: list[torch.Tensor]):
        """A copy where `classes` get new visual prompts: visual (n, D), levels (n, C_j) each.

        Used by round II (DESIGN §2.3): the crop's embedding replaces every template's V.
        """
        new_visual = self.visual.clone()
        new_visual[classes] = F.normalize(visual, dim=-1)[:, None, :].to(new_visual.dtype)
        new_levels = []
        for old, new in zip(self.visual_levels, levels):
            old = old.clone()
            old[classes] = new.to(old.dtype)
            new_levels.append(old)
        return Prompts(self.text, new_visual, new_levels)


def fuse_prompts(
    prompts: Prompts, mode: PromptMode, center: bool = False, mean: torch.Tensor | None = None
) -> torch.Tensor:
    """R (K, P, D): the prompt embeddings the cost volume compares pixels with.

    ``avg`` is the paper's dual prompt, R = normalize((T + V) / 2); ``text`` and ``visual`` are
    its ablation rows. ``center`` subtracts the mean over classes first (ours, DESIGN §6: random
    tiny towers give nearly identical class embeddings; centring separates them).
    """
    if mode == "text":
        r = prompts.text
    elif mode == "visual":
        r = prompts.visual
    elif mode == "avg":
        r = (prompts.text + prompts.visual) / 2
    else:
        raise ValueError(f"prompt mode {mode!r}: use one of {', '.join(PROMPT_MODES)}")
    if center and (mean is not None or r.shape[0] > 1):
        r = r - (class_mean(prompts, mode) if mean is None else mean)
    return F.normalize(r.float(), dim=-1)


def class_mean(prompts: Prompts, mode: PromptMode) -> torch.Tensor:
    """(1, P, D) the mean over classes that ``center`` subtracts (round II keeps round I's, so
    a refined class does not move the prompts of the others)."""
    r = {"text": prompts.text, "visual": prompts.visual}.get(mode)
    if r is None:
        r = (prompts.text + prompts.visual) / 2
    return r.mean(dim=0, keepdim=True)


def cost_volume(dense: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pixel with every prompt.

    Args:
        dense: (B, D, h, w) image features.
        prompts: (K, P, D) normalised prompt embeddings.
    Returns:
        (B, P, K, h, w) cosine similarities.
    """
    features = F.normalize(dense.float(), dim=1)
    return torch.einsum("bdhw,kpd->bpkhw", features, prompts.float())


def visual_cost_volume(features: torch.Tensor, prompt_features: torch.Tensor) -> torch.Tensor:
    """F_v^j = cos(E_j, V_j): (B, C_j, h_j, w_j) x (K, C_j) -> (B, K, h_j, w_j)."""
    e = F.normalize(features.float(), dim=1)
    v = F.normalize(prompt_features.float(), dim=-1)
    return torch.einsum("bchw,kc->bkhw", e, v)


class CostEmbedding(nn.Module):
    """Embeds the P template channels of each class's cost map into C channels (shared over K).

    A 7x7 convolution, as SED and CAT-Seg: (B, P, K, h, w) -> (B, K, C, h, w).
    """

    def __init__(self, num_templates: int, channels: int, kernel: int = 7):
        super().__init__()
        self.num_templates = num_templates
        self.conv = nn.Conv2d(num_templates, channels, kernel, padding=kernel // 2)

    def forward(self, cost: torch.Tensor) -> torch.Tensor:
        b, p, k, h, w = cost.shape
        if p != self.num_templates:
            raise ValueError(
                f"the cost volume has {p} templates but the model was built for "
                f"{self.num_templates}; build the bank and the model with the same templates"
            )
        x = cost.permute(0, 2, 1, 3, 4).reshape(b * k, p, h, w)
        return self.conv(x).view(b, k, -1, h, w)
