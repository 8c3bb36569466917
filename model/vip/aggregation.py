"""VIP's training-free parts (docs/design.md §3): proxy attention, alias weights, saliency-aware
aggregation, the background threshold.

Axis names: B images, N patches, A aliases (all classes' aliases, concatenated), K classes,
H x W a grid. ``owner`` (A,) gives the class of each alias. Pure tensor maths: the segmenter
that feeds them dense CLIP features is ``model.vip.segmenter``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from common.settings import check_fields
from pretrained.proxy_attention import proxy_attention

__all__ = ["VIPConfig", "aggregate_aliases", "alias_weights", "assign_labels", "proxy_attention"]

BackgroundMode = Literal["class", "ignore"]
BACKGROUND_MODES: tuple[str, ...] = get_args(BackgroundMode)


@dataclass
class VIPConfig:
    """VIP's inference settings (docs/design.md §3); per-dataset values in configs/vip_*.yaml."""

    logit_scale: float = 40.0  # alias logit = cosine x this (before aggregation and softmax)
    tau: float = 3.0  # sharpness of the logsumexp over a class's aliases (VOC21: 3, ADE: 5)
    prob_thd: float = 0.0  # pixels whose top probability is below this are low-confidence
    background: str = "ignore"  # low-confidence pixels: "class" -> background_id; "ignore"
    background_id: int = 0  # the background class (VOC21, PC60, COCO-Object: 0)
    alias_scale: float = 1.0  # alias weights: softmax of cos x this (the reference: 1 / tem, 1)
    visual_weight: float = 0.5  # dual prompts: query = (1 - w) text + w visual (DPSeg: 0.5)
    proxy_beta: float = 1.5  # S' = (S - beta * mean(S)) * gamma, entries <= 0 masked
    proxy_gamma: float = 0.5

    def __post_init__(self) -> None:
        check_fields(
            self,
            "model.vip",
            background=BackgroundMode,
            logit_scale="> 0",
            tau="> 0",
            alias_scale="> 0",
            visual_weight="in [0, 1]",
            prob_thd="in [0, 1)",
        )


def alias_weights(
    image_embedding: torch.Tensor,
    alias_embeddings: torch.Tensor,
    owner: torch.Tensor,
    num_classes: int,
    scale: float = 1.0,
) -> torch.Tensor:
    """Per-image alias weights from image-level similarity: (B, D), (A, D) -> (B, A).

    Within each class: softmax over its aliases of ``scale x cos(image, alias)``, rescaled so
    the class's weights average 1 (a class with one alias gets weight 1).
    """
    sim = (
        scale
        * F.normalize(image_embedding.float(), dim=-1)
        @ F.normalize(alias_embeddings.float(), dim=-1).T
    )  # (B, A)
    b = sim.shape[0]
    index = owner.to(sim.device).expand(b, -1)
    peak = sim.new_full((b, num_classes), float("-inf")).scatter_reduce(
        1, index, sim, "amax", include_self=True
    )
    e = (sim - peak.gather(1, index)).exp()
    total = sim.new_zeros(b, num_classes).index_add(1, owner.to(sim.device), e)
    count = torch.bincount(owner, minlength=num_classes).to(sim)
    return e / total.gather(1, index) * count[owner.to(sim.device)]


def aggregate_aliases(
    logits: torch.Tensor, weights: torch.Tensor, owner: torch.Tensor, num_classes: int, tau: float
) -> torch.Tensor:
    """Saliency-aware aggregation: (B, A, H, W) alias logits, (B, A) weights -> (B, K, H, W).

    class map = (1 / tau) * logsumexp_a(tau * w_a * logit_a) over the class's aliases.
    """
    x = tau * weights[:, :, None, None] * logits.float()
    b, _, h, w = x.shape
    owner = owner.to(x.device)
    index = owner[None, :, None, None].expand_as(x)
    peak = x.new_full((b, num_classes, h, w), float("-inf"))
    peak = peak.scatter_reduce(1, index, x, "amax", include_self=True)
    total = x.new_zeros(b, num_classes, h, w).index_add(1, owner, (x - peak[:, owner]).exp())
    return (peak + total.log()) / tau


def assign_labels(
    class_logits: torch.Tensor, config: VIPConfig, ignore_index: int = -1
) -> torch.Tensor:
    """(B, K, H, W) class logits (already x logit_scale) -> (B, H, W) ids.

    Probabilities are ``softmax(logits)`` over classes; a pixel whose top probability is under
    ``prob_thd`` becomes ``background_id`` (``background="class"``) or ``ignore_index``
    (``"ignore"``: those pixels are not scored, which inflates mIoU).
    """
    k = class_logits.shape[1]
    if config.background == "class" and not 0 <= config.background_id < k:
        raise ValueError(
            f"background_id={config.background_id} is not one of the {k} classes; set "
            "vip.background_id to the background class, or vip.background to ignore"
        )
    probs = class_logits.float().softmax(dim=1)
    top, labels = probs.max(dim=1)
    if config.prob_thd > 0:
        fill = config.background_id if config.background == "class" else ignore_index
        labels = labels.masked_fill(top < config.prob_thd, fill)
    return labels
