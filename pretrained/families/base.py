"""What an encoder family says about its encoders (``pretrained.families``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from torch import nn

    from pretrained.backbone import BuiltEncoder, ImageTextEncoder
    from pretrained.presets import EncoderPreset


class EncoderFamily:
    """One family of image + text encoders. Subclasses set the class attributes and implement
    the methods that raise ``NotImplementedError``; the rest have defaults."""

    name: ClassVar[str]  # the presets' ``family``
    title: ClassVar[str]  # how messages name it
    segments: ClassVar[bool] = True
    """Can be DPSeg's trainable image encoder (``pretrained.backbone.ClipBackbone`` over its
    ``adapt_input_size`` and ``dense_features``); False: banks and VIP only."""
    fixed_input_size: ClassVar[bool] = False
    """Takes square inputs of the preset's ``image_size`` only (a ViT's positional embedding):
    DPSeg then infers in sliding windows and round II crops at that size."""
    vip_attentions: ClassVar[tuple[str, ...]] = ("proxy", "none")
    """VIP's ``--model.attention`` choices for this family, the default first."""
    hub_weights: ClassVar[bool] = True
    """Pretrained weights come from open_clip's hub entry for ``arch:pretrained``."""

    # -- names (pretrained.names) --------------------------------------------------------------

    def matches(self, vision_cfg: dict) -> bool:
        """Whether an open_clip config's ``vision_cfg`` is an image tower of this family."""
        return False

    def default_levels(self, vision_cfg: dict) -> tuple[int, ...]:
        """(ours) the level indices of an open name of this family."""
        raise NotImplementedError

    # -- building -------------------------------------------------------------------------------

    def build(
        self,
        preset: EncoderPreset,
        weights: str | os.PathLike | None,
        random_weights: bool,
        option: str,
    ) -> BuiltEncoder:
        """The preset's model in eval mode, fp32, on CPU (``option`` names the weights option
        in messages)."""
        raise NotImplementedError

    def architecture(self, preset: EncoderPreset) -> nn.Module:
        """The preset's architecture with seeded random weights (what pretraining starts from)."""
        raise NotImplementedError

    def text_encoder(self, built: BuiltEncoder) -> ImageTextEncoder:
        """The frozen image + text encoder of a built model (banks, VIP's texts)."""
        return self.text_encoder_of(built.model, built.preset)

    def text_encoder_of(self, model: nn.Module, preset: EncoderPreset) -> ImageTextEncoder:
        """The same over a model and its preset (pretraining's encoder)."""
        raise NotImplementedError

    def tokenizer(self, preset: EncoderPreset):
        """open_clip's CLIP BPE at the preset's context length (override for other towers)."""
        import open_clip

        return open_clip.get_tokenizer("ViT-B-16", context_length=preset.context_length)

    # -- the toy world's pretraining (pretrained.toy_pretrain) ---------------------------------

    def pretraining_parts(self, model: nn.Module, preset: EncoderPreset):
        """(the module the optimiser trains, the encoder the losses and zero-shot use)."""
        return model, self.text_encoder_of(model, preset)

    def pretraining_report(self, model: nn.Module, trainee: nn.Module, preset, zero_shot) -> dict:
        """Family-specific figures for the pretrained file's metadata (``zero_shot(encoder)``
        scores an encoder on the held-out plain pictures)."""
        return {}

    def needs(self, preset: EncoderPreset) -> str | None:
        """What the preset's weights need, where it is not the hub's file (None: the hub's)."""
        return None
