"""VIP's segmenter: alias queries, per-image alias weights, saliency-aware aggregation.

Every alias of every class is a query of its own (text: the 80 templates' normalised embeddings
averaged, so a pixel's score is its cosine averaged over templates, as the reference code). A
pixel's alias logit is ``logit_scale x cos``; a class's map is the weighted logsumexp of its
aliases (``model.vip.aggregation``) with weights from the image's mean patch feature.

Dual prompts (ours, what neither paper has): with a prompt bank, each alias query becomes
``(1 - w) x text + w x visual`` with the visual prompt of its class (DPSeg's averaging at
``w = 0.5``; the bank must be built with the same encoder, checked by fingerprint).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.vip.aggregation import VIPConfig, aggregate_aliases, alias_weights
from model.vip.dense import DenseCLIP


@dataclass
class AliasQueries:
    """The A alias queries of a K-class vocabulary."""

    text: torch.Tensor  # (A, D) template-averaged normalised text embeddings (norm <= 1)
    owner: torch.Tensor  # (A,) int64 class of each alias
    aliases: list[str]  # the A alias strings, class by class, canonical first
    num_classes: int  # K
    visual: torch.Tensor | None = None  # (K, D) the bank's visual prompts, or None

    def __post_init__(self) -> None:
        a = self.text.shape[0]
        if self.owner.shape != (a,) or len(self.aliases) != a:
            raise ValueError(
                f"text {tuple(self.text.shape)}, owner {tuple(self.owner.shape)} and "
                f"{len(self.aliases)} aliases must agree on A"
            )
        if self.visual is not None and self.visual.shape != (self.num_classes, self.text.shape[1]):
            raise ValueError(
                f"visual prompts {tuple(self.visual.shape)} must be (K={self.num_classes}, "
                f"D={self.text.shape[1]})"
            )

    def to(self, device) -> AliasQueries:
        visual = None if self.visual is None else self.visual.to(device)
        return AliasQueries(
            self.text.to(device), self.owner.to(device), self.aliases, self.num_classes, visual
        )

    def embeddings(self, visual_weight: float = 0.5) -> torch.Tensor:
        """(A, D) the queries pixels are compared with (dual when visual prompts are set)."""
        if self.visual is None:
            return self.text
        return (1 - visual_weight) * self.text + visual_weight * self.visual[self.owner]


@torch.no_grad()
def encode_aliases(clip_encoder, vocabulary, templates: list[str], tokenizer) -> AliasQueries:
    """Every alias of every class as its own query: (A, D), templates averaged.

    ``clip_encoder`` is a ``model.backbone.ClipEncoder``; ``vocabulary`` a
    ``data.vocabulary.Vocabulary`` whose synonyms are the aliases (VIP's ``cls_*.txt``).
    """
    from data.vocabulary import ClassName

    aliases, owner = [], []
    for k, cls in enumerate(vocabulary):
        aliases.extend(cls.synonyms)
        owner.extend([k] * len(cls.synonyms))
    singles = [ClassName((a,)) for a in aliases]
    per_template = clip_encoder.encode_class_texts(singles, templates, tokenizer)  # (A, P, D)
    return AliasQueries(
        per_template.mean(dim=1).float().cpu(),
        torch.tensor(owner, dtype=torch.long),
        aliases,
        len(vocabulary),
    )


class VIPSegmenter(nn.Module):
    """images (B, 3, H, W) in [0, 1] + alias queries -> class logits (B, K, h, w).

    The logits are already ``logit_scale`` x cosine, aggregated over aliases: a softmax over K
    gives VIP's probabilities (``model.vip.aggregation.assign_labels``).
    """

    def __init__(self, encoder: DenseCLIP, config: VIPConfig | None = None):
        super().__init__()
        self.encoder = encoder
        self.config = config or VIPConfig()

    def alias_logits(
        self, images: torch.Tensor, queries: AliasQueries
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, A, h, w) alias logits, (B, D) image embeddings, (A, D) the queries used."""
        features = F.normalize(self.encoder(images).float(), dim=1)  # (B, D, h, w)
        q = queries.embeddings(self.config.visual_weight).to(features)
        logits = self.config.logit_scale * torch.einsum("bdhw,ad->bahw", features, q)
        image = F.normalize(features.mean(dim=(2, 3)), dim=-1)  # VIP: the mean patch feature
        return logits, image, q

    def forward(self, images: torch.Tensor, queries: AliasQueries) -> torch.Tensor:
        logits, image, q = self.alias_logits(images, queries)
        weights = alias_weights(
            image, q, queries.owner, queries.num_classes, scale=self.config.alias_scale
        )
        return aggregate_aliases(
            logits, weights, queries.owner, queries.num_classes, self.config.tau
        )
