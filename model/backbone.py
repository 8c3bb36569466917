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


@dataclass
class ImageEncoding:
    """What the frozen visual-prompt encoder gives for a batch of images."""

    embedding: torch.Tensor  # (B, D) L2-normalised final embedding
    levels: list[torch.Tensor]  # per level j: (B, C_j, h_j, w_j) intermediate feature maps

    def pooled_levels(self) -> list[torch.Tensor]:
        """Spatial means of the level maps: per level (B, C_j) (DESIGN §2.2, ours)."""
        return [f.mean(dim=(-2, -1)) for f in self.levels]


class ClipEncoder(nn.Module):
    """A CLIP model seen as the encoders dpseg needs: images in [0, 1] and tokenised text.

    Images are resized to the preset's input size and normalised here, so callers (Stable
    Diffusion's ``output_type="pt"`` output, crops of the input image) pass plain RGB in [0, 1].
    Levels are taken with ``forward_intermediates`` at the preset's indices (DESIGN §8.6).
    """

    def __init__(self, clip: nn.Module, preset: EncoderPreset):
        super().__init__()
        self.clip = clip
        self.preset = preset
        self.register_buffer("mean", torch.tensor(preset.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preset.std).view(1, 3, 1, 1), persistent=False)

    @property
    def embed_dim(self) -> int:
        return int(self.clip.text_projection.shape[-1])

    def level_dims(self) -> list[int]:
        """Channels C_j of each level, found by one small forward pass."""
        probe = torch.zeros(1, 3, self.preset.image_size, self.preset.image_size)
        probe = probe.to(self.mean.device)
        with torch.inference_mode():
            return [f.shape[1] for f in self.encode_images(probe).levels]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, 3, S, S) normalised at the preset's size S."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be (B, 3, H, W) RGB in [0, 1], got {tuple(images.shape)}"
            )
        size = self.preset.image_size
        if images.shape[-2:] != (size, size):
            images = nn.functional.interpolate(
                images, size=(size, size), mode="bicubic", antialias=True, align_corners=False
            ).clamp(0, 1)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def encode_images(self, images: torch.Tensor) -> ImageEncoding:
        """(B, 3, H, W) in [0, 1] -> normalised (B, D) embedding and the level maps."""
        out = self.clip.visual.forward_intermediates(
            self.preprocess(images), indices=list(self.preset.levels)
        )
        embedding = nn.functional.normalize(out["image_features"].float(), dim=-1)
        return ImageEncoding(embedding, list(out["image_intermediates"]))

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T, L) token ids -> (T, D) L2-normalised text embeddings."""
        return nn.functional.normalize(self.clip.encode_text(tokens).float(), dim=-1)


def clip_tokenizer_for(preset: EncoderPreset):
    """open_clip's tokenizer for the preset (the tiny presets use CLIP's BPE, context 77)."""
    import open_clip

    if preset.model_cfg is not None:
        return open_clip.get_tokenizer("ViT-B-16")  # CLIP's SimpleTokenizer, context 77
    return open_clip.get_tokenizer(preset.arch)
