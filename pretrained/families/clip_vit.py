"""CLIP ViTs (open_clip's ``VisionTransformer``): one stride, levels are blocks; square inputs of
the size the positional embedding was trained at (CAT-Seg's sliding windows)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from pretrained.families import register
from pretrained.families.clip import ClipFamily, last_and_levels

if TYPE_CHECKING:
    from pretrained.presets import EncoderPreset


@register
class ClipViT(ClipFamily):
    name = "vit"
    title = "a CLIP ViT"
    fixed_input_size = True
    vip_attentions = ("clear", "sclip", "vanilla", "proxy", "none")  # ClearCLIP's block first

    def matches(self, vision_cfg: dict) -> bool:
        return (
            not vision_cfg.get("timm_model_name")
            and isinstance(vision_cfg.get("layers"), int)
            and "patch_size" in vision_cfg
        )

    def default_levels(self, vision_cfg: dict) -> tuple[int, ...]:
        """(ours, as the presets) the blocks at each quarter of the depth (ViT-B/16: 2, 5, 8, 11)."""
        layers = int(vision_cfg["layers"])
        return tuple(sorted({max(0, layers * q // 4 - 1) for q in (1, 2, 3, 4)}))

    def adapt_input_size(self, visual: nn.Module, preset: EncoderPreset, image_size: int) -> None:
        if image_size != preset.image_size:
            resample_vit_positions(visual, image_size)

    def dense_features(
        self, visual: nn.Module, x: torch.Tensor, levels: tuple[int, ...], gap: float
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last block's patch tokens through ``ln_post`` and ``proj``; levels are the
        blocks' patch tokens, (B, C, h, w) each."""
        from pretrained.backbone import modality_embedding

        last, maps = last_and_levels(visual, x, len(visual.transformer.resblocks) - 1, levels)
        tokens = visual.ln_post(last.permute(0, 2, 3, 1))  # (B, h, w, C)
        dense = (tokens @ visual.proj).permute(0, 3, 1, 2)  # (B, D, h, w)
        if gap:
            dense = modality_embedding(dense, gap, "image", dim=1)
        return dense.contiguous(), maps


def resample_vit_positions(visual: nn.Module, image_size: int) -> None:
    """Resize a ViT's positional embedding to a new input size (bicubic over the patch grid),
    as CAT-Seg does to train ViT-B/16 at 384 px; the class token's embedding is kept."""
    patch = visual.patch_size[0] if isinstance(visual.patch_size, tuple) else visual.patch_size
    if image_size % patch:
        raise ValueError(f"image_size={image_size} must be a multiple of the patch size {patch}")
    pos = visual.positional_embedding.data  # (1 + g*g, C)
    old = round((pos.shape[0] - 1) ** 0.5)
    new = image_size // patch
    grid = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    resized = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(new * new, -1)])
    visual.positional_embedding = nn.Parameter(resized)
    visual.grid_size = (new, new)
    visual.image_size = (image_size, image_size)
