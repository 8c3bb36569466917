"""VIP's segmenter: alias queries, per-image alias weights, saliency-aware aggregation.

Every alias of every class is a query of its own. Text: each template's normalised embedding;
a pixel's alias score is its cosine averaged over the templates (the reference code's mean of
cosines, which equals the dot product with the unrenormalised template mean). A pixel's alias
logit is ``logit_scale x`` that score; a class's map is the weighted logsumexp of its aliases
(``model.vip.aggregation``) with weights from the image's mean patch feature.

Dual prompts (ours, what neither paper has), fused as DPSeg fuses its prompts: with a prompt
bank, each alias and template's query becomes ``r = normalize((1 - w) t + w v)`` (``w = 0.5``:
DPSeg's ``normalize((t + v) / 2)``) before the similarity, ``v`` being the visual prompt of the
alias's class in the same template when the bank was built with VIP's templates, otherwise the
normalised mean of the bank's templates. The bank must come from the same encoder (checked by
fingerprint); with dino.txt, ``v`` is the generated images' patch embeddings pooled after the
same proxy head the pixels go through (``pretrained.dinotxt.DinoTxtEncoder``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.vip.aggregation import VIPConfig, aggregate_aliases, alias_weights


@dataclass
class AliasQueries:
    """The A alias queries of a K-class vocabulary.

    ``text`` is (A, P, D): each alias in each of P templates, L2-normalised (an (A, D) tensor is
    taken as one template). ``visual`` is (K, P, D) per template, (K, 1, D) one per class, or
    None (an (K, D) tensor is one per class).
    """

    text: torch.Tensor
    owner: torch.Tensor  # (A,) int64 class of each alias
    aliases: list[str]  # the A alias strings, class by class, canonical first
    num_classes: int  # K
    visual: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.text.ndim == 2:
            self.text = self.text[:, None]
        if self.visual is not None and self.visual.ndim == 2:
            self.visual = self.visual[:, None]
        a, p, d = self.text.shape
        if self.owner.shape != (a,) or len(self.aliases) != a:
            raise ValueError(
                f"text {tuple(self.text.shape)}, owner {tuple(self.owner.shape)} and "
                f"{len(self.aliases)} aliases must agree on A"
            )
        if self.visual is not None and (
            self.visual.shape[0] != self.num_classes
            or self.visual.shape[1] not in (1, p)
            or self.visual.shape[2] != d
        ):
            raise ValueError(
                f"visual prompts {tuple(self.visual.shape)} must be (K={self.num_classes}, "
                f"P={p} or 1, D={d})"
            )

    @property
    def device(self) -> torch.device:
        return self.owner.device

    def to(self, device) -> AliasQueries:
        visual = None if self.visual is None else self.visual.to(device)
        return AliasQueries(
            self.text.to(device), self.owner.to(device), self.aliases, self.num_classes, visual
        )

    def embeddings(self, visual_weight: float = 0.5) -> torch.Tensor:
        """(A, D) the queries pixels are compared with: the template mean of the text queries,
        or of the fused ``normalize((1 - w) t + w v)`` when visual prompts are set."""
        if self.visual is None:
            return self.text.mean(dim=1)
        v = self.visual[self.owner]  # (A, P or 1, D)
        fused = F.normalize((1 - visual_weight) * self.text + visual_weight * v, dim=-1)
        return fused.mean(dim=1)


@torch.no_grad()
def encode_aliases(text_encoder, vocabulary, templates: list[str], tokenizer) -> AliasQueries:
    """Every alias of every class as its own query: (A, P, D), one per template.

    ``text_encoder`` is a ``pretrained.backbone.ImageTextEncoder`` (CLIP or dino.txt);
    ``vocabulary`` a ``data.vocabulary.Vocabulary`` whose synonyms are the aliases (VIP's
    ``cls_*.txt``).
    """
    from data.vocabulary import ClassName

    aliases, owner = [], []
    for k, cls in enumerate(vocabulary):
        aliases.extend(cls.synonyms)
        owner.extend([k] * len(cls.synonyms))
    singles = [ClassName((a,)) for a in aliases]
    per_template = text_encoder.encode_class_texts(singles, templates, tokenizer)  # (A, P, D)
    return AliasQueries(
        per_template.float().cpu(),
        torch.tensor(owner, dtype=torch.long),
        aliases,
        len(vocabulary),
    )


class VIPSegmenter(nn.Module):
    """images (B, 3, H, W) in [0, 1] + alias queries -> class logits (B, K, h, w).

    ``encoder``: images -> (B, D, h, w) dense features (``model.vip.dense.create_dense_encoder``).

    The logits are already ``logit_scale`` x cosine, aggregated over aliases: a softmax over K
    gives VIP's probabilities (``model.vip.aggregation.assign_labels``).
    """

    def __init__(self, encoder: nn.Module, config: VIPConfig | None = None):
        super().__init__()
        self.encoder = encoder
        self.config = config or VIPConfig()

    def alias_logits(
        self, images: torch.Tensor, queries: AliasQueries
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, A, h, w) alias logits, (B, D) image embeddings, (A, D) the queries used."""
        features = F.normalize(self.encoder(images).float(), dim=1)  # (B, D, h, w)
        q = queries.embeddings(self.config.visual_weight).to(features)  # (A, D)
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
