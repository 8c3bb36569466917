"""dino.txt (``pretrained.dinotxt``): DINOv3 ViT-L/16 + its vision head and text tower. An
encoder for VIP and prompt banks, not DPSeg's trainable image encoder; its weights are two
official files, not an open_clip hub entry. Its tokenizer is CLIP's BPE at 77 tokens (the base
class's; the toy preset's text tower takes 32)."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from pretrained.families import register
from pretrained.families.base import EncoderFamily

if TYPE_CHECKING:
    from torch import nn

    from pretrained.backbone import BuiltEncoder
    from pretrained.dinotxt import DinoTxtEncoder
    from pretrained.presets import EncoderPreset


@register
class DinoTxtFamily(EncoderFamily):
    name = "dinotxt"
    title = "dino.txt"
    segments = False
    hub_weights = False

    def build(
        self,
        preset: EncoderPreset,
        weights: str | os.PathLike | None,
        random_weights: bool,
        option: str,
    ) -> BuiltEncoder:
        from pretrained.dinotxt import create_dinotxt

        return create_dinotxt(preset, weights, random_weights, option)

    def architecture(self, preset: EncoderPreset) -> nn.Module:
        from pretrained.dinotxt import dinotxt_architecture

        return dinotxt_architecture(preset)

    def text_encoder_of(self, model: nn.Module, preset: EncoderPreset) -> DinoTxtEncoder:
        from pretrained.dinotxt import DinoTxtEncoder

        return DinoTxtEncoder(model, preset)  # as VIP uses it: proxy head, patch side

    def pretraining_parts(self, model: nn.Module, preset: EncoderPreset):
        return DinoTxtContrastive(model), self.text_encoder_of(model, preset)

    def pretraining_report(self, model: nn.Module, trainee: nn.Module, preset, zero_shot) -> dict:
        """Zero-shot with the plain head (VIP's ``--model.attention none``) and on the 2C global
        embedding, and the learned logit scale (its log, as the official file stores it)."""
        report = {}
        for key, proxy, side in (("plain_head", False, "patch"), ("global", False, "global")):
            report[f"zero_shot_plain_{key}"] = zero_shot(
                zero_shot_encoder(model, preset, proxy, side)
            )
        report["logit_scale"] = round(float(trainee.logit_scale.detach()), 4)
        return report

    def needs(self, preset: EncoderPreset) -> str | None:
        from pretrained.dinotxt import DINOTXT_FILES

        if preset.is_random or preset.bundled is not None:
            return None
        return f"the two official files {' and '.join(DINOTXT_FILES)} (--encoder-weights DIR)"


class DinoTxtContrastive(torch.nn.Module):
    """dino.txt seen as the training loop sees a CLIP: ``encode_image`` (the global embedding
    [CLS_out, mean patch_out], plain-attention head), ``encode_text`` (2C) and a learned
    ``logit_scale`` (CLIP's init, log(1/0.07)) kept beside the model, not in its file."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images, proxy=False)[0]

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def zero_shot_encoder(model, preset, proxy: bool, side: str):
    """A ``DinoTxtEncoder`` whose images go through the head with or without proxy attention,
    compared on the patch half (``side="patch"``, VIP's) or the full 2C global embedding."""
    from pretrained.backbone import ImageEncoding
    from pretrained.dinotxt import DinoTxtEncoder

    class ZeroShot(DinoTxtEncoder):
        def encode_images(self, images, size=None):
            global_, _, _ = self.model.encode_image(self.preprocess(images, size), proxy=proxy)
            c = self.model.config.width
            chosen = global_[:, c:] if side == "patch" else global_
            return ImageEncoding(F.normalize(chosen.float(), dim=-1), [])

        def encode_tokens(self, tokens):
            text = self.model.encode_text(tokens.to(self.mean.device)).float()
            c = self.model.config.width
            return F.normalize(text[:, c:] if side == "patch" else text, dim=-1)

    return ZeroShot(model, preset)
