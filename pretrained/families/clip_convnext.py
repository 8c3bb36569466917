"""CLIP ConvNeXts (a timm ConvNeXt trunk in open_clip): four stages at strides 4/8/16/32, any
input size (SED)."""

from __future__ import annotations

import torch
from torch import nn

from pretrained.families import register
from pretrained.families.clip import ClipFamily


@register
class ClipConvNeXt(ClipFamily):
    name = "convnext"
    title = "a CLIP ConvNeXt"

    def matches(self, vision_cfg: dict) -> bool:
        return str(vision_cfg.get("timm_model_name") or "").startswith("convnext")

    def default_levels(self, vision_cfg: dict) -> tuple[int, ...]:
        """(ours, as the presets) the four stages."""
        return (0, 1, 2, 3)

    def dense_features(
        self, visual: nn.Module, x: torch.Tensor, levels: tuple[int, ...], gap: float
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last stage's map through the trunk head's norm and the projection per pixel (a
        linear one, or ConvNeXt-L/D's MLP), as SED does (open_clip pools before them,
        docs/design.md §6); levels are the stages' maps."""
        from pretrained.backbone import modality_embedding

        trunk = visual.trunk
        final, maps = trunk.forward_intermediates(x, indices=list(levels))
        # LayerNorm2d over channels, per pixel (a head_norm_first trunk has normed already)
        head_norm = getattr(trunk.head, "norm", None)
        normed = final if head_norm is None else head_norm(final)
        head = visual.head
        if hasattr(head, "proj"):  # a linear projection (ConvNeXt-B/W)
            dense = torch.einsum("bchw,dc->bdhw", normed, head.proj.weight)
        else:  # an MLP head (ConvNeXt-L/D), per pixel, as SED applies it
            dense = head(normed.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
        if gap:  # the pooled embedding's gap, per pixel
            dense = modality_embedding(dense, gap, "image", dim=1)
        return dense, list(maps)
