"""CLIP ResNets (open_clip's ``ModifiedResNet``: RN50, RN101, RN50x4, ...): a stem and four
stages at strides 4/8/16/32, then an attention pool. Any input size: the dense path leaves the
pool's positional embedding out.

Dense features (ours, MaskCLIP's recipe, Zhou et al., ECCV 2022): each pixel of the last stage
goes through the attention pool's value and output projections (``v_proj``, ``c_proj``), which
is what the pool gives a token that attends only to itself; the pool's query, key and positional
embedding are not used. Levels: ``forward_intermediates`` indices 1-4 (the stages; 0 is the
stem)."""

from __future__ import annotations

import torch
from torch import nn

from pretrained.families import register
from pretrained.families.clip import ClipFamily, last_and_levels


@register
class ClipResNet(ClipFamily):
    name = "resnet"
    title = "a CLIP ResNet"
    vip_attentions = ("none",)  # VIP has no dense path for it (model.vip.dense refuses it)

    def matches(self, vision_cfg: dict) -> bool:
        return not vision_cfg.get("timm_model_name") and isinstance(
            vision_cfg.get("layers"), (list, tuple)
        )

    def default_levels(self, vision_cfg: dict) -> tuple[int, ...]:
        """(ours) the four stages, strides 4/8/16/32."""
        return (1, 2, 3, 4)

    def set_training(self, visual: nn.Module, mode: bool) -> None:
        """(ours) BatchNorm keeps CLIP's statistics while DPSeg trains the tower: a few images
        per batch would re-estimate them badly (detectron2's FrozenBatchNorm2d, SED's practice);
        its affine weights still train."""
        for module in visual.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
                module.eval()

    def dense_features(
        self, visual: nn.Module, x: torch.Tensor, levels: tuple[int, ...], gap: float
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        from pretrained.backbone import modality_embedding

        last, maps = last_and_levels(visual, x, 4, levels)  # 4: layer4, the last stage
        pool = visual.attnpool
        tokens = last.permute(0, 2, 3, 1)  # (B, h, w, C)
        dense = pool.c_proj(pool.v_proj(tokens)).permute(0, 3, 1, 2)  # (B, D, h, w)
        if gap:
            dense = modality_embedding(dense, gap, "image", dim=1)
        return dense.contiguous(), maps
