"""DPSeg: the dual-prompt cost volume and the cost-volume-guided decoder (docs/design.md §1, §2).

    image ──> ClipBackbone ──> dense E (B, D, h, w) + levels E_j
    prompts ─> R = fuse(T, V) (K, P, D)  (cost-level rows: R_T and R_V, one cost volume each)
    cost volume F_c = cos(E, R) (B, P, K, h, w) ──> CostEmbedding ──> (B, K, C, h, w)
    visual cost volumes F_v^j = cos(E_j, V_j) (B, K, h_j, w_j)
    CVGD decoder ──> logits (B, K, H/4, W/4) ──> bilinear ──> (B, K, H, W)

The module is pure: prompts come in as tensors (``Prompts``), built from a bank by the I/O code.
``forward`` accepts precomputed backbone features so round II reuses round I's (docs/design.md §2.3).
The cost embedding and the decoder are initialised on their own random streams
(``model.seeding``): the ablation rows of one seed start from the same weights where their shapes
agree, and the data order after the model is built is the same in every row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import SettingError
from common.settings import check_fields
from model.cost_volume import (
    CostEmbedding,
    PromptMode,
    Prompts,
    combine_costs,
    cost_channels,
    cost_volume,
    prompt_embeddings,
    visual_cost_volume,
)
from model.decoder import CVGDecoder, DecoderAttention
from model.rejection import RejectionOrder, kept_classes, scatter_kept
from model.seeding import part_rng
from pretrained.backbone import BackboneFeatures, ClipBackbone


@dataclass
class DPSegConfig:
    """Model settings; every ablation of the paper is one field."""

    prompt_mode: str = "avg"  # "avg" (the dual prompt), "text", "visual", or a cost-level
    # fusion: "cost-avg", "cost-concat" (model.cost_volume.PROMPT_PARTS)
    visual_levels: tuple[int, ...] = (2, 3, 4)  # F_v^j in the decoder: (), (2,), (2, 3, 4)
    center_prompts: bool = False  # subtract the class mean from R (ours, for random tiny towers)
    cost_channels: int = 128  # channels of the embedded cost volume per class
    decoder_channels: tuple[int, int, int] = (128, 64, 32)
    guidance_channels: tuple[int, int, int] = (64, 32, 16)
    attention_heads: int = 4  # 0 disables the decoder's self-attention
    attention: str = "coarse"  # where the decoder attends (ours; model.decoder.DecoderAttention):
    # "coarse" (first stage only: 3% over none at K = 150, 768 px), "global" (every stage, all
    # positions: the decoder before issue 29, 3.4x the FLOPs), "window", "none"
    attention_window: int = 8  # positions per window side for attention="window" (ours)
    class_chunk: int = 64  # classes through the decoder at once (memory for K = 847)

    def __post_init__(self) -> None:
        self.visual_levels = tuple(self.visual_levels)
        self.decoder_channels = tuple(self.decoder_channels)
        self.guidance_channels = tuple(self.guidance_channels)
        check_fields(
            self,
            "model.dpseg",
            prompt_mode=PromptMode,
            attention=DecoderAttention,
            attention_window=">= 1",
            class_chunk=">= 1",
            cost_channels=">= 1",
            attention_heads=">= 0",
        )
        for name in ("decoder_channels", "guidance_channels"):  # found by a probe: -1 crashed
            values = getattr(self, name)
            if len(values) != 3 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values
            ):
                raise SettingError(
                    f"model.dpseg.{name}={list(values)!r}: must be 3 channel counts (the "
                    "decoder's stages), each >= 1"
                )


@dataclass
class DPSegOutput:
    logits: torch.Tensor  # (B, K, H, W) per-class logits at the input resolution
    cost: torch.Tensor  # (B, P, K, h, w) the dual-prompt cost volume (for an auxiliary loss;
    # (B, 2P, K, h, w) for cost-concat)
    features: BackboneFeatures = field(repr=False)  # reusable by round II
    coarse: torch.Tensor | None = None  # (B, K, H/16, W/16) the coarse head's logits (training:
    # class early rejection's detector learns from them; model.rejection)


class DPSeg(nn.Module):
    """The trained half of DPSeg. Parts are given in the constructor (docs/design.md §8.1)."""

    def __init__(
        self,
        backbone: ClipBackbone,
        num_templates: int,
        level_dims: tuple[int, ...],
        config: DPSegConfig | None = None,
    ):
        super().__init__()
        self.config = config or DPSegConfig()
        self.backbone = backbone
        self.num_templates = num_templates  # P of the banks
        # Paired initialisation (model.seeding): each trainable part on its own random stream,
        # derived from the base seed and its name, so the rows of one seed start from the same
        # weights on what they share and leave the global stream (the data order) as it was.
        with part_rng("cost_embedding"):
            self.cost_embedding = CostEmbedding(
                cost_channels(self.config.prompt_mode, num_templates),
                self.config.cost_channels,
                shared_templates=num_templates,
            )
        with part_rng("decoder"):
            self.decoder = CVGDecoder(
                self.config.cost_channels,
                tuple(level_dims),
                channels=self.config.decoder_channels,
                guidance_channels=self.config.guidance_channels,
                visual_levels=self.config.visual_levels,
                attention_heads=self.config.attention_heads,
                attention=self.config.attention,
                attention_window=self.config.attention_window,
                class_chunk=self.config.class_chunk,
            )

    def forward(
        self,
        images: torch.Tensor,
        prompts: Prompts,
        features: BackboneFeatures | None = None,
        classes: torch.Tensor | None = None,
        center_mean: torch.Tensor | None = None,
    ) -> DPSegOutput:
        """images (B, 3, H, W) in [0, 1]; prompts of K classes -> logits (B, K, H, W).

        ``classes`` (K',) decodes only those classes (logits (B, K', H, W)), exactly as they
        would be in the full output: prompts are fused (and centred) over all K first, and the
        decoder treats every class alone. Round II uses it to redo only the refined classes,
        with ``center_mean`` = round I's class mean (``cost_volume.class_mean``), so that with
        ``center_prompts`` the classes it does not refine keep exactly their round I prompts.
        """
        if features is None:
            features = self.backbone(images)
        rs, visual_levels = self._class_prompts(prompts, classes, center_mean)
        logits, cost, coarse = self._decode(images.shape[-2:], features, rs, visual_levels)
        return DPSegOutput(logits, cost, features, coarse)

    def decode_per_image(
        self,
        size: tuple[int, int],
        features: BackboneFeatures,
        prompts: list[Prompts],
        classes: list[torch.Tensor],
        center_mean: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Decode, in one call, image b's ``classes[b]`` (k_b,) with image b's own ``prompts[b]``
        (K classes each) on its ``features`` (batch B) -> per image logits (k_b, H, W) at ``size``.

        Round II's re-decode: each image refines its own classes with its own crops. Each
        image's classes are padded to the largest k_b with copies of its last one (their logits
        are dropped; the decoder treats classes alone, so they change nothing else). Equal to B
        calls of ``forward(..., classes=classes[b], center_mean=center_mean)``.
        """
        out = self.decode_classes(size, features, prompts, classes, center_mean)
        return [out.logits[b, : len(ids)] for b, ids in enumerate(classes)]

    def decode_classes(
        self,
        size: tuple[int, int],
        features: BackboneFeatures,
        prompts: list[Prompts],
        classes: list[torch.Tensor],
        center_mean: torch.Tensor | None = None,
    ) -> DPSegOutput:
        """:meth:`decode_per_image` before the padding is dropped: logits (B, k, H, W), the
        cost volume (B, P, k, h, w) and coarse logits (B, k, h', w'), k the largest k_b
        (training decodes k classes per image: ``model.lightning.LossConfig.classes_per_image``)."""
        k = max(len(c) for c in classes)
        parts, levels = [], []
        for image_prompts, ids in zip(prompts, classes):
            padded = torch.cat([ids, ids[-1:].expand(k - len(ids))])
            rs, visual_levels = self._class_prompts(image_prompts, padded, center_mean)
            parts.append(rs)
            levels.append(visual_levels)
        rs = [torch.stack(per_part) for per_part in zip(*parts)]  # each (B, k, P, D)
        visual_levels = [torch.stack(per_level) for per_level in zip(*levels)]  # (B, k, C_j)
        logits, cost, coarse = self._decode(size, features, rs, visual_levels)
        return DPSegOutput(logits, cost, features, coarse)

    @torch.no_grad()
    def class_scores(self, features: BackboneFeatures, prompts: Prompts) -> torch.Tensor:
        """How strongly each class shows anywhere in each image: the template-averaged cost
        volume's highest value over positions, (B, K). Training uses it to pick each image's
        hardest absent classes (``LossConfig.hard_classes``)."""
        return self._all_classes_cost(features, prompts)[0].mean(dim=1).amax(dim=(-2, -1))

    @torch.no_grad()
    def coarse_logits(self, features: BackboneFeatures, prompts: Prompts) -> torch.Tensor:
        """The decoder's first stage and coarse head over all K classes -> (B, K, h', w') at
        1/16 of the image (ConvNeXt): what class early rejection reads."""
        cost, visual_levels = self._all_classes_cost(features, prompts)
        return self.decoder.coarse_logits(
            self.cost_embedding(cost), features.levels, self._visual_costs(features, visual_levels)
        )

    def forward_kept(
        self,
        images: torch.Tensor,
        prompts: Prompts,
        threshold: float | None = None,
        top_k: int | None = None,
        max_classes: int | None = None,
        features: BackboneFeatures | None = None,
        order: RejectionOrder = "standout",
    ) -> tuple[DPSegOutput, list[torch.Tensor]]:
        """Round I with class early rejection (``model.rejection.kept_classes``): the first
        stage runs for all K classes, and only the classes its coarse head finds (probability
        >= ``threshold`` somewhere, among some position's ``top_k``, at most ``max_classes``
        per image in ``order``) go on through the finer stages (again from the cost volume). Returns
        the output, whose logits are (B, K, H, W) with ``REJECTED_LOGIT`` for the rejected
        classes (the kept ones exactly as ``forward`` gives them) and whose cost volume is that
        of the kept classes (B, P, k, h, w), and per image the kept ids (k_b,)."""
        if features is None:
            features = self.backbone(images)
        coarse = self.coarse_logits(features, prompts)
        kept = kept_classes(coarse, threshold, top_k, max_classes, order)
        out = self.decode_classes(images.shape[-2:], features, [prompts] * len(kept), kept)
        logits = scatter_kept(out.logits, kept, prompts.num_classes)
        return DPSegOutput(logits, out.cost, features), kept

    def _all_classes_cost(
        self, features: BackboneFeatures, prompts: Prompts
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The cost volume of all K classes (B, P, K, h, w) and their visual level prompts."""
        rs, visual_levels = self._class_prompts(prompts, None, None)
        cost = combine_costs([cost_volume(features.dense, r) for r in rs], self.config.prompt_mode)
        return cost, visual_levels

    def _class_prompts(
        self, prompts: Prompts, classes: torch.Tensor | None, center_mean: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The mode's R per part (K', P, D) and the visual level prompts (K', C_j) of
        ``classes`` (None: all K), as fusing all K and keeping those rows would give them.

        Fusion is per class except centring on the prompts' own class mean; so the classes are
        selected first (round II: K' refined of K) unless that mean is needed."""
        mode, center = self.config.prompt_mode, self.config.center_prompts
        if classes is not None and (center_mean is not None or not center):
            prompts, classes = prompts.select(classes), None
        rs = prompt_embeddings(prompts, mode, center, center_mean)
        if classes is not None:
            rs, prompts = [r[classes] for r in rs], prompts.select(classes)
        return rs, prompts.visual_levels

    def _decode(
        self,
        size: tuple[int, int],
        features: BackboneFeatures,
        rs: list[torch.Tensor],
        visual_levels: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Cost volume, its embedding and the decoder -> logits (B, K, H, W) at ``size``, the
        cost volume (B, P, K, h, w) and, in training, the coarse head's logits (B, K, h', w').
        ``rs`` and ``visual_levels`` are shared by the images ((K, P, D), (K, C_j)) or per
        image ((B, K, P, D), (B, K, C_j))."""
        mode = self.config.prompt_mode
        cost = combine_costs([cost_volume(features.dense, r) for r in rs], mode)  # (B, P, K, h, w)
        class_maps = self.cost_embedding(cost)  # (B, K, C, h, w)
        visual_costs = self._visual_costs(features, visual_levels)
        coarse = None
        if self.training:  # the coarse head learns beside the decoder (model.rejection)
            logits, coarse = self.decoder(class_maps, features.levels, visual_costs, coarse=True)
        else:
            logits = self.decoder(class_maps, features.levels, visual_costs)
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits, cost, coarse

    def _visual_costs(
        self, features: BackboneFeatures, visual_levels: list[torch.Tensor]
    ) -> dict[int, torch.Tensor]:
        """F_v^j = cos(E_j, V_j), {j: (B, K, h_j, w_j)}, for the configured levels."""
        return {
            j: visual_cost_volume(features.levels[j - 1], visual_levels[j - 1])
            for j in self.config.visual_levels
        }
