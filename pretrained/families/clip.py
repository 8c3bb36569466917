"""What the CLIP families (open_clip models: ``clip_vit``, ``clip_convnext``) share: loading by
open_clip, ``ClipEncoder`` as the frozen encoder, CLIP's tokenizer."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pretrained.families.base import EncoderFamily

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pretrained.backbone import BuiltEncoder, ClipEncoder
    from pretrained.presets import EncoderPreset


class ClipFamily(EncoderFamily):
    """An open_clip CLIP (``open_clip.CLIP``: ``.visual``, ``.encode_image``, ``.encode_text``)."""

    def build(
        self,
        preset: EncoderPreset,
        weights: str | os.PathLike | None,
        random_weights: bool,
        option: str,
    ) -> BuiltEncoder:
        from pretrained.backbone import create_clip

        return create_clip(preset, weights, random_weights)

    def architecture(self, preset: EncoderPreset) -> nn.Module:
        from pretrained.backbone import clip_architecture

        return clip_architecture(preset)

    def text_encoder_of(self, model: nn.Module, preset: EncoderPreset) -> ClipEncoder:
        from pretrained.backbone import ClipEncoder

        return ClipEncoder(model, preset)

    def tokenizer(self, preset: EncoderPreset):
        """Our own configs (``model_cfg``) use CLIP's BPE at their context; open_clip names their
        own tokenizer."""
        if preset.model_cfg is not None:
            return super().tokenizer(preset)
        import open_clip

        return open_clip.get_tokenizer(preset.open_clip_name)

    def adapt_input_size(self, visual: nn.Module, preset: EncoderPreset, image_size: int) -> None:
        """Make ``visual`` take ``image_size`` inputs (DPSeg's backbone at another size)."""

    def set_training(self, visual: nn.Module, mode: bool) -> None:
        """After ``ClipBackbone.train(mode)``: what of ``visual`` stays in eval mode (nothing)."""

    def dense_features(
        self, visual: nn.Module, x: torch.Tensor, levels: tuple[int, ...], gap: float
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Normalised images (B, 3, H, W) -> the final map projected into the joint space
        (B, D, h, w), with the modality ``gap`` per pixel (``backbone.modality_embedding``), and
        the level maps (B, C_j, h_j, w_j) at ``levels``."""
        raise NotImplementedError


def last_and_levels(
    visual: nn.Module, x: torch.Tensor, last: int, levels: tuple[int, ...]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One ``forward_intermediates`` pass: the (B, C, h, w) map at index ``last`` (what the dense
    features come from) and the maps at ``levels``."""
    indices = sorted(set(levels) | {last})
    out = visual.forward_intermediates(x, indices=indices, intermediates_only=True)
    maps = dict(zip(indices, out["image_intermediates"]))
    return maps[last], [maps[i] for i in levels]
