"""CLIP image/text encoders from open_clip, built from an encoder preset (DESIGN §6).

:func:`create_clip` is the one way a CLIP model enters dpseg: the prompt-bank builder (frozen
visual-prompt and text encoder) and the segmentation model (trainable image encoder) both use it,
so a bank and a model built from the same preset and weights share a fingerprint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from model.fingerprint import weights_fingerprint
from model.hub import hub_file, local_weights_file, refuse_weights_for_random
from model.presets import EncoderPreset, get_encoder_preset

# What open_clip's hub repositories and snapshot folders call their weights, best first.
CLIP_WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)


@dataclass
class BuiltEncoder:
    """A CLIP model with the preset it came from and the fingerprint of its weights."""

    model: nn.Module  # open_clip.CLIP: .visual, .encode_image, .encode_text
    preset: EncoderPreset
    fingerprint: str  # sha256 of the weights as built (fp32, before any cast)
    weights: str  # "random(seed=0)", a local path, or the hub id they came from


def _random_clip(preset: EncoderPreset) -> nn.Module:
    """The preset's architecture with seeded random weights, identical on every machine."""
    import open_clip

    # Build on CPU inside a forked RNG: the same bytes whatever the caller's device or RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(preset.seed)
        if preset.model_cfg is not None:
            cfg = dict(preset.model_cfg)
            return open_clip.CLIP(
                embed_dim=cfg["embed_dim"],
                vision_cfg=dict(cfg["vision_cfg"]),
                text_cfg=dict(cfg["text_cfg"]),
                quick_gelu=preset.quick_gelu,
            )
        return open_clip.create_model(
            preset.arch, pretrained=None, force_quick_gelu=preset.quick_gelu
        )


def create_clip(
    preset: str | EncoderPreset,
    weights: str | os.PathLike | None = None,
    random_weights: bool = False,
) -> BuiltEncoder:
    """Build the CLIP model of an encoder preset, in eval mode, fp32, on CPU.

    Args:
        preset: an encoder preset name (see ``python cli.py presets``) or a preset object.
        weights: a local weights file, or a folder holding one (a hub snapshot folder works),
            used instead of downloading the preset's pretrained weights.
        random_weights: the full-size architecture with seeded random weights, no download
            (used to measure speed on a GPU without weights).

    Raises:
        model.presets.PresetError: unknown preset name.
        model.hub.WeightsUnavailableError: pretrained weights neither local nor downloadable.
    """
    if isinstance(preset, str):
        preset = get_encoder_preset(preset)
    import open_clip

    if preset.is_random or random_weights:
        refuse_weights_for_random(preset.name, weights)
        model, source = _random_clip(preset), f"random(seed={preset.seed})"
    else:
        if weights is not None:
            path = local_weights_file(weights, CLIP_WEIGHT_FILES, "--encoder-weights")
            source = path
        else:
            repo_id = preset.hub_id or ""
            path = hub_file(
                repo_id,
                CLIP_WEIGHT_FILES,
                what=f"encoder preset {preset.name!r} ({preset.arch}, {preset.pretrained})",
                local_option="--encoder-weights PATH",
            )
            source = repo_id
        model = open_clip.create_model(
            preset.arch, pretrained=path, force_quick_gelu=preset.quick_gelu
        )
    model.eval()
    return BuiltEncoder(model, preset, weights_fingerprint(model), source)
