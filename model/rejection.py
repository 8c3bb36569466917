"""Class early rejection in round I (ours, after SED's category early rejection; docs/dpseg.md).

The decoder's first stage runs for all K classes; its coarse head (a 1x1 convolution, trained
with BCE on where each class is at 1/16 of the image: ``LossConfig.coarse_weight``) gives each
class a probability per position. A class passes when that probability reaches ``threshold``
somewhere in the image and, with ``top_k``, when some position ranks it among its ``top_k``
classes (SED's per-pixel top-k); only the classes that pass go on through the finer stages.
``max_classes`` bounds the decode: at most that many per image, those that stand out most
(``standout``: the class's logit standardised over the vocabulary at some position; or, with
``order="rank"``, by their best rank at any position, then their peak probability). So round I's fine stages cost what min(K, passing,
``max_classes``) classes cost.

Differences from SED (ours): one rejection point (after the first stage) instead of one per
layer, and a presence probability with a threshold beside SED's top-k. A rejected class gets
``REJECTED_LOGIT`` everywhere: never the argmax, probability 0, so round II (which refines the
classes round I's argmax detects) and the evaluation work on the full (B, K, H, W) logits.
"""

from __future__ import annotations

from typing import Literal

import torch

from common.errors import SettingError

REJECTED_LOGIT = -1.0e4
"""The logit of a rejected class at every pixel (sigmoid 0, never the argmax; finite, so that
sliding-window protocols can average it)."""


def check_rejection(threshold: float | None, top_k: int | None, max_classes: int | None) -> None:
    """SettingError naming the setting for a threshold outside (0, 1), or a ``top_k`` or
    ``max_classes`` below 1."""
    if threshold is not None and not 0 < threshold < 1:
        raise SettingError(f"rejection_threshold={threshold}: a probability in (0, 1), or None")
    if top_k is not None and top_k < 1:
        raise SettingError(f"rejection_top_k={top_k}: use None (no rank test) or >= 1")
    if max_classes is not None and max_classes < 1:
        raise SettingError(f"rejection_max_classes={max_classes}: use None (no bound) or >= 1")


RejectionOrder = Literal["standout", "rank"]


def standout(coarse: torch.Tensor) -> torch.Tensor:
    """coarse (B, K, h, w) logits -> (B, K): how far each class stands out of the vocabulary
    somewhere: the maximum over positions of its logit standardised over the K classes at that
    position ((x - mean) / std). Ours: scale-free, so a vocabulary of names the coarse head
    gives a broadly raised logit (unknown words, many near-copies of one class) does not outrank
    a class that stands out at its own object (docs/results.md, rejection's recall)."""
    if coarse.shape[1] < 2:
        return coarse.flatten(2).amax(dim=2)
    mean = coarse.mean(dim=1, keepdim=True)
    std = coarse.std(dim=1, keepdim=True).clamp_min(1e-6)
    return ((coarse - mean) / std).flatten(2).amax(dim=2)


def kept_classes(
    coarse: torch.Tensor,
    threshold: float | None = None,
    top_k: int | None = None,
    max_classes: int | None = None,
    order: RejectionOrder = "standout",
) -> list[torch.Tensor]:
    """coarse (B, K, h, w) logits of the coarse head -> per image the (k_b,) ascending ids of
    the classes whose probability reaches ``threshold`` somewhere and (with ``top_k``) that some
    position ranks among its ``top_k``. With ``max_classes``, at most that many, in ``order``:

    - ``"standout"`` (default): the highest :func:`standout`, then the lower id;
    - ``"rank"``: the best rank at any position first (a class some position ranks first before
      one ranked second everywhere), then the highest peak, then the lower id.

    Every image keeps at least its highest-peak class."""
    peak = coarse.flatten(2).amax(dim=2)  # (B, K) logits; sigmoid is monotonic
    ranks = coarse.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
    best = ranks.flatten(2).amin(dim=2)  # (B, K): each class's best rank over positions
    stands = standout(coarse) if order == "standout" else None
    passing = torch.ones_like(peak, dtype=torch.bool)
    if threshold is not None:
        passing &= peak.sigmoid() >= threshold
    if top_k is not None:
        passing &= best < top_k
    kept = []
    for image in range(coarse.shape[0]):
        ids = torch.nonzero(passing[image]).flatten()
        if len(ids) == 0:
            ids = peak[image].argmax().view(1)
        if max_classes is not None and len(ids) > max_classes:
            if stands is not None:
                order_ids = stands[image, ids].argsort(descending=True, stable=True)
            else:
                by_peak = peak[image, ids].argsort(descending=True, stable=True)
                order_ids = by_peak[best[image, ids][by_peak].argsort(stable=True)]
            ids = ids[order_ids[:max_classes]].sort().values
        kept.append(ids)
    return kept


def scatter_kept(logits: torch.Tensor, kept: list[torch.Tensor], num_classes: int) -> torch.Tensor:
    """logits (B, k, H, W) of each image's kept classes (image b's first ``len(kept[b])`` rows)
    -> (B, K, H, W), ``REJECTED_LOGIT`` for the rest."""
    b, _, h, w = logits.shape
    out = logits.new_full((b, num_classes, h, w), REJECTED_LOGIT)
    for image, ids in enumerate(kept):
        out[image, ids.to(out.device)] = logits[image, : len(ids)]
    return out
