"""Factories: the two methods' models composed from an encoder preset, in one place.

The LightningModules, the predictors and the benchmarks all get their networks here, so a
benchmark measures exactly what ``cli.py fit`` trains (docs/design.md §8):

    dpseg = build_dpseg("tiny-convnext", num_templates=2)
    logits = dpseg.segmenter(images, prompts)   # (B, 3, H, W), Prompts -> (B, K, H/4, W/4)

    vip = build_vip("tiny-dinotxt")
    queries = encode_aliases(vip.text_encoder, vocabulary, templates, vip.tokenizer)
    logits = vip.segmenter(images, queries)     # (B, 3, H, W) -> (B, K, h, w)
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass

from model.dpseg import DPSeg, DPSegConfig
from model.refine import RefineConfig, TwoRoundSegmenter
from model.vip.aggregation import VIPConfig
from model.vip.dense import create_dense_encoder
from model.vip.segmenter import VIPSegmenter
from pretrained.backbone import (
    BuiltEncoder,
    ClipBackbone,
    ClipEncoder,
    ImageTextEncoder,
    clip_tokenizer_for,
    create_clip,
    create_encoder,
    text_encoder_for,
)
from pretrained.presets import EncoderPreset


@dataclass
class DPSegParts:
    """DPSeg as built from a CLIP preset.

    ``segmenter`` holds the trainable network (``segmenter.model``: a copy of the CLIP image
    tower as backbone, the cost volume and the decoder) and runs one or two rounds.
    ``prompt_encoder`` is the frozen original CLIP (text prompts; round II's crops), kept out of
    the network's state dict; its ``level_dims`` are the widths C_j of the bank's level features.
    """

    segmenter: TwoRoundSegmenter
    prompt_encoder: ClipEncoder
    tokenizer: Callable
    fingerprint: str  # sha256 of the encoder's weights as built (banks must match it)
    weights: str  # "random(seed=0)", a local path or a hub id
    preset: EncoderPreset  # the encoder's preset, or the description of an open name

    @property
    def model(self) -> DPSeg:
        return self.segmenter.model

    @property
    def level_dims(self) -> tuple[int, ...]:
        return tuple(self.prompt_encoder.level_dims())


def build_dpseg(
    encoder: str,
    num_templates: int,
    config: DPSegConfig | None = None,
    inference: RefineConfig | None = None,
    encoder_weights: str | os.PathLike | None = None,
    image_size: int | None = None,
    random_weights: bool = False,
) -> DPSegParts:
    """DPSeg on a CLIP encoder preset (``cli.py presets``), in train mode, on CPU.

    Args:
        encoder: a CLIP encoder preset or open name (``pretrained.names``); dino.txt is
            refused (DPSeg needs CLIP's levels).
        num_templates: P, the templates of the banks the model will read.
        config, inference: the network's and the rounds' settings (defaults if None).
        encoder_weights: a local weights file or folder instead of the hub.
        image_size: a ViT's input size (positional embedding resampled); ConvNeXt ignores it.
        random_weights: the full-size architecture with seeded random weights (benchmarks).
    """
    built = create_clip(encoder, weights=encoder_weights, random_weights=random_weights)
    # The frozen prompt encoder keeps the original weights; the backbone is a trainable copy.
    prompt_encoder = ClipEncoder(
        copy.deepcopy(built.model).requires_grad_(False).eval(), built.preset
    )
    backbone = ClipBackbone(built.model, built.preset, image_size=image_size)
    level_dims = tuple(prompt_encoder.level_dims())
    model = DPSeg(backbone, num_templates, level_dims, config or DPSegConfig())
    segmenter = TwoRoundSegmenter(model, prompt_encoder, inference or RefineConfig())
    return DPSegParts(
        segmenter=segmenter.train(),
        prompt_encoder=prompt_encoder,
        tokenizer=clip_tokenizer_for(built.preset),
        fingerprint=built.fingerprint,
        weights=built.weights,
        preset=built.preset,
    )


@dataclass
class VIPParts:
    """VIP as built from an encoder preset: the dense segmenter and the text side.

    ``text_encoder`` embeds aliases once per vocabulary and is kept out of the segmenter's
    parameters; ``attention`` is the dense path the segmenter uses (``proxy``, ``clear``, ...).
    """

    segmenter: VIPSegmenter
    text_encoder: ImageTextEncoder
    tokenizer: Callable
    built: BuiltEncoder  # the encoder model, its preset, fingerprint and weights source
    attention: str

    @property
    def fingerprint(self) -> str:
        return self.built.fingerprint

    @property
    def weights(self) -> str:
        return self.built.weights


def build_vip(
    encoder: str = "dinotxt-l16",
    attention: str | None = None,
    config: VIPConfig | None = None,
    encoder_weights: str | os.PathLike | None = None,
    random_weights: bool = False,
    option: str = "--encoder-weights",
) -> VIPParts:
    """VIP on any encoder preset (dino.txt or CLIP), frozen, in eval mode, on CPU.

    Args:
        encoder: an encoder preset; VIP's own is ``dinotxt-l16``.
        attention: the dense path (``model.vip.dense``); None: the preset's default.
        config: VIP's inference settings (defaults if None).
        encoder_weights: local weights; ``option`` names that option in error messages.
        random_weights: the full-size architecture with seeded random weights (benchmarks).
    """
    config = config or VIPConfig()
    built = create_encoder(
        encoder, weights=encoder_weights, random_weights=random_weights, option=option
    )
    dense = create_dense_encoder(built, attention, config.proxy_beta, config.proxy_gamma)
    segmenter = VIPSegmenter(dense, config).eval().requires_grad_(False)
    return VIPParts(
        segmenter=segmenter,
        text_encoder=text_encoder_for(built),
        tokenizer=clip_tokenizer_for(built.preset),
        built=built,
        attention=dense.attention,
    )
