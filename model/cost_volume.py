"""The dual-prompt cost volume and the visual cost volumes (docs/design.md §2.1, §2.2).

Axis names: B images, K classes, P templates, D joint embedding, C channels, h x w a grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from model.seeding import paired_conv

PromptMode = Literal["text", "visual", "avg", "cost-avg", "cost-concat"]
PROMPT_MODES = ("text", "visual", "avg", "cost-avg", "cost-concat")
PROMPT_PARTS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "visual": ("visual",),
    "avg": ("avg",),
    "cost-avg": ("text", "visual"),
    "cost-concat": ("text", "visual"),
}
"""The prompt embeddings each mode compares pixels with, one cost volume per part. ``avg`` is
the paper's dual prompt (the embeddings averaged, one cost volume); ``cost-avg`` and
``cost-concat`` are the rows it compares against (paper: "averaging outperforms concatenation
and fusion strategies at the cost volume level"): a text and a visual cost volume, averaged or
concatenated along the template axis (2P channels into the cost embedding). How the paper's
cost-level rows were built is not stated: these two are ours."""


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

    @property
    def device(self) -> torch.device:
        return self.text.device

    def to(self, device) -> Prompts:
        return Prompts(
            self.text.to(device), self.visual.to(device), [v.to(device) for v in self.visual_levels]
        )

    def select(self, index: torch.Tensor | slice) -> Prompts:
        """The prompts of a subset of classes."""
        return Prompts(self.text[index], self.visual[index], [v[index] for v in self.visual_levels])

    def with_visual(self, classes: torch.Tensor, visual: torch.Tensor, levels: list[torch.Tensor]):
        """A copy where `classes` get new visual prompts: visual (n, D), levels (n, C_j) each.

        Used by round II (docs/design.md §2.3): the crop's embedding replaces every template's V.
        """
        new_visual = self.visual.clone()
        new_visual[classes] = F.normalize(visual, dim=-1)[:, None, :].to(new_visual.dtype)
        new_levels = []
        for old, new in zip(self.visual_levels, levels):
            old = old.clone()
            old[classes] = new.to(old.dtype)
            new_levels.append(old)
        return Prompts(self.text, new_visual, new_levels)


def _unfused(prompts: Prompts, part: str) -> torch.Tensor:
    if part == "text":
        return prompts.text
    if part == "visual":
        return prompts.visual
    if part == "avg":
        return (prompts.text + prompts.visual) / 2
    raise ValueError(f"prompt part {part!r}: use text, visual or avg")


def fuse_prompts(
    prompts: Prompts, part: str, center: bool = False, mean: torch.Tensor | None = None
) -> torch.Tensor:
    """R (K, P, D): one set of prompt embeddings a cost volume compares pixels with.

    ``avg`` is the paper's dual prompt, R = normalize((T + V) / 2); ``text`` and ``visual`` are
    its ablation rows. ``center`` subtracts the mean over classes first (ours, docs/design.md §6: random
    tiny towers give nearly identical class embeddings; centring separates them); ``mean``
    (1, P, D) replaces the prompts' own class mean.
    """
    r = _unfused(prompts, part)
    if center and (mean is not None or r.shape[0] > 1):
        r = r - (r.mean(dim=0, keepdim=True) if mean is None else mean)
    return F.normalize(r.float(), dim=-1)


def prompt_embeddings(
    prompts: Prompts, mode: PromptMode, center: bool = False, mean: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Per part of ``mode`` (:data:`PROMPT_PARTS`) its R (K, P, D); ``mean`` (S, 1, P, D) the
    class means of the S parts (:func:`class_mean`) to centre with instead of their own."""
    if mode not in PROMPT_PARTS:
        raise ValueError(f"prompt mode {mode!r}: use one of {', '.join(PROMPT_MODES)}")
    return [
        fuse_prompts(prompts, part, center, None if mean is None else mean[i])
        for i, part in enumerate(PROMPT_PARTS[mode])
    ]


def combine_costs(costs: list[torch.Tensor], mode: PromptMode) -> torch.Tensor:
    """The parts' cost volumes (B, P, K, h, w) each -> the mode's: (B, P, K, h, w), or
    (B, 2P, K, h, w) for ``cost-concat`` (text templates first)."""
    if mode == "cost-concat":
        return torch.cat(costs, dim=1)
    if mode == "cost-avg":
        return torch.stack(costs).mean(dim=0)
    return costs[0]


def cost_channels(mode: PromptMode, num_templates: int) -> int:
    """Template channels of the mode's cost volume: 2P for ``cost-concat``, else P."""
    return 2 * num_templates if mode == "cost-concat" else num_templates


def class_mean(prompts: Prompts, mode: PromptMode) -> torch.Tensor:
    """(S, 1, P, D) the means over classes that ``center`` subtracts, one per part of the mode
    (round II keeps round I's, so a refined class does not move the prompts of the others)."""
    return torch.stack(
        [_unfused(prompts, part).mean(dim=0, keepdim=True) for part in PROMPT_PARTS[mode]]
    )


def cost_volume(dense: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pixel with every prompt.

    Args:
        dense: (B, D, h, w) image features.
        prompts: (K, P, D) normalised prompt embeddings, the same for every image; or
            (B, K, P, D), each image its own (round II's refined prompts).
    Returns:
        (B, P, K, h, w) cosine similarities.
    """
    features = F.normalize(dense.float(), dim=1)
    equation = "bdhw,bkpd->bpkhw" if prompts.ndim == 4 else "bdhw,kpd->bpkhw"
    return torch.einsum(equation, features, prompts.float())


def visual_cost_volume(features: torch.Tensor, prompt_features: torch.Tensor) -> torch.Tensor:
    """F_v^j = cos(E_j, V_j): (B, C_j, h_j, w_j) x (K, C_j) -> (B, K, h_j, w_j); per-image
    prompts (B, K, C_j) as :func:`cost_volume`'s."""
    e = F.normalize(features.float(), dim=1)
    v = F.normalize(prompt_features.float(), dim=-1)
    return torch.einsum("bchw,bkc->bkhw" if v.ndim == 3 else "bchw,kc->bkhw", e, v)


class CostEmbedding(nn.Module):
    """Embeds the P template channels of each class's cost map into C channels (shared over K).

    A 7x7 convolution, as SED and CAT-Seg: (B, P, K, h, w) -> (B, K, C, h, w).
    ``shared_templates`` (default: all) are the channels every prompt mode has (P; cost-concat
    adds P visual ones): their initial weights are the same whatever the mode
    (``model.seeding.paired_conv``).
    """

    def __init__(
        self,
        num_templates: int,
        channels: int,
        kernel: int = 7,
        shared_templates: int | None = None,
    ):
        super().__init__()
        self.num_templates = num_templates
        shared = num_templates if shared_templates is None else shared_templates
        if not 0 < shared <= num_templates:
            raise ValueError(f"shared_templates={shared} must be in 1..{num_templates}")
        self.conv = paired_conv(
            "conv", shared, num_templates - shared, channels, kernel, padding=kernel // 2
        )

    def forward(self, cost: torch.Tensor) -> torch.Tensor:
        b, p, k, h, w = cost.shape
        if p != self.num_templates:
            raise ValueError(
                f"the cost volume has {p} templates but the model was built for "
                f"{self.num_templates}; build the bank and the model with the same templates"
            )
        x = cost.permute(0, 2, 1, 3, 4).reshape(b * k, p, h, w)
        return self.conv(x).view(b, k, -1, h, w)
