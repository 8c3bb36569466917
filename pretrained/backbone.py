"""CLIP image/text encoders from open_clip, built from an encoder preset (docs/design.md §6).

:func:`create_clip` is the one way a CLIP model enters dpseg: the prompt-bank builder (frozen
visual-prompt and text encoder) and the segmentation model (trainable image encoder) both use it,
so a bank and a model built from the same preset and weights share a fingerprint.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from pretrained.families import families, family_of
from pretrained.fingerprint import warn_if_unrecorded, weights_fingerprint
from pretrained.hub import hub_file, local_weights_file, refuse_weights_for_random
from pretrained.names import resolve_encoder
from pretrained.portable_init import build_portable
from pretrained.presets import EncoderPreset, PresetError

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


def _register_timm_architectures() -> None:
    """timm names for our own trunks (open_clip builds timm trunks by name only)."""
    import timm
    from timm.models import register_model

    if timm.models.is_model("dpseg_convnext_toy"):
        return

    @register_model
    def dpseg_convnext_toy(pretrained: bool = False, **kwargs):
        """(ours) the toy presets' ConvNeXt: 24/48/96/192 channels, 1/1/2/1 blocks, no layer
        scale (short training from scratch); strides 4/8/16/32 as every ConvNeXt. The head
        norms each pixel before the pool (``head_norm_first``), so the image embedding is the
        mean of the dense features DPSeg reads (docs/toy_world.md)."""
        from timm.models.convnext import _create_convnext

        args = {
            "depths": (1, 1, 2, 1),
            "dims": (24, 48, 96, 192),
            "ls_init_value": None,
            "head_norm_first": True,
        }
        return _create_convnext("convnext_atto", pretrained=False, **args, **kwargs)


def clip_architecture(preset: EncoderPreset) -> nn.Module:
    """The preset's architecture with seeded random weights.

    Offline presets (``tiny-*``, and the toy presets before their weights load) are drawn by
    :mod:`pretrained.portable_init`: the same bits on every machine. The full-size architectures with
    ``random_weights`` (speed only) keep torch's initialisers, whose bits depend on the CPU.
    """
    import open_clip

    _register_timm_architectures()

    def build() -> dict[str, nn.Module]:
        if preset.model_cfg is not None:
            cfg = dict(preset.model_cfg)
            model = open_clip.CLIP(
                embed_dim=cfg["embed_dim"],
                vision_cfg=dict(cfg["vision_cfg"]),
                text_cfg=dict(cfg["text_cfg"]),
                quick_gelu=preset.quick_gelu,
            )
        else:  # a preset, MODEL:TAG, or an open_clip folder's config (its weights not read)
            model = open_clip_architecture(preset)
        return {"clip": model}

    if preset.model_cfg is not None:
        return build_portable(build, preset.seed)["clip"]
    # Build on CPU inside a forked RNG: the caller's RNG state is left alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(preset.seed)
        return build()["clip"]


def _open_clip_model(preset: EncoderPreset, path: str, own_folder: bool) -> nn.Module:
    """open_clip's own loading of a weights file: by name and file (a preset, MODEL:TAG), or
    its folder (``local-dir:``, a hub snapshot: config and weights side by side)."""
    import open_clip

    if preset.location is None:
        return open_clip.create_model(
            preset.arch, pretrained=path, force_quick_gelu=preset.quick_gelu
        )
    if own_folder:
        return open_clip.create_model(
            f"local-dir:{os.path.dirname(path)}", force_quick_gelu=preset.quick_gelu
        )
    # the folder's config with another weights file (--encoder-weights)
    model = open_clip_architecture(preset)
    open_clip.load_checkpoint(model, path)
    return model


def open_clip_architecture(preset: EncoderPreset) -> nn.Module:
    """open_clip's model for the preset's name without its weights (torch's initialisers).
    open_clip warns that the model is "initialized randomly": here that is the intent."""
    import logging

    import open_clip

    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR
    try:
        return open_clip.create_model(
            preset.open_clip_name, load_weights=False, force_quick_gelu=preset.quick_gelu
        )
    finally:
        root.level = level


def create_clip(
    preset: str | EncoderPreset,
    weights: str | os.PathLike | None = None,
    random_weights: bool = False,
) -> BuiltEncoder:
    """Build the CLIP model of an encoder preset, in eval mode, fp32, on CPU.

    Args:
        preset: an encoder preset name (see ``python cli.py presets``), an open name
            (``pretrained.names``: MODEL:TAG, hf-hub:ORG/NAME, a folder) or a preset object.
        weights: a local weights file, or a folder holding one (a hub snapshot folder works),
            used instead of downloading the preset's pretrained weights.
        random_weights: the full-size architecture with seeded random weights, no download
            (used to measure speed on a GPU without weights).

    Raises:
        pretrained.presets.PresetError: unknown preset name.
        pretrained.hub.WeightsUnavailableError: pretrained weights neither local nor downloadable.
    """
    preset = resolve_encoder(preset)
    family = family_of(preset)
    if not family.segments:
        clips = [f.name for f in families().values() if f.segments]
        raise PresetError(
            f"encoder preset {preset.name!r} is {family.title}, an encoder for VIP and "
            f"prompt banks; DPSeg's image encoder is a CLIP: use a {', '.join(clips)} preset or "
            "open name (cli.py presets)"
        )

    if preset.is_random or random_weights:
        refuse_weights_for_random(preset.name, weights)
        model, source = clip_architecture(preset), f"random(seed={preset.seed})"
    elif preset.bundled is not None:  # the toy presets: our own pretrained file
        from pretrained.bundled_weights import bundled_path, load_weights

        model = clip_architecture(preset)
        path = weights if weights is not None else bundled_path(preset.bundled)
        load_weights(model, path, "--encoder-weights" if weights is not None else "the file")
        source = str(weights) if weights is not None else f"bundled:{preset.bundled}"
    else:
        if weights is not None:
            path = local_weights_file(weights, CLIP_WEIGHT_FILES, "--encoder-weights")
            source = path
        elif preset.origin == "local-dir":
            path = local_weights_file(
                preset.location, CLIP_WEIGHT_FILES, f"--encoder {preset.name}"
            )
            source = preset.location
        else:  # a preset, MODEL:TAG or hf-hub:ORG/NAME: the cache, else the hub
            repo_id = preset.hub_id or ""
            path = hub_file(
                repo_id,
                CLIP_WEIGHT_FILES,
                what=f"encoder {preset.name!r} ({preset.arch}, {preset.pretrained})",
                local_option="--encoder-weights PATH",
                revision=preset.revision,
            )
            if preset.revision is None:  # MODEL:TAG: the cached snapshot's commit, recorded
                from dataclasses import replace

                from pretrained.names import snapshot_revision

                preset = replace(preset, revision=snapshot_revision(path))
            source = f"{repo_id}@{preset.revision}" if preset.revision else repo_id
        model = _open_clip_model(preset, path, own_folder=weights is None)
    model.eval()
    fingerprint = weights_fingerprint(model)
    if (preset.is_random or preset.bundled) and not random_weights and weights is None:
        warn_if_unrecorded(preset.name, fingerprint)
    return BuiltEncoder(model, preset, fingerprint, source)


def create_encoder(
    preset: str | EncoderPreset,
    weights: str | os.PathLike | None = None,
    random_weights: bool = False,
    option: str = "--encoder-weights",
) -> BuiltEncoder:
    """Any encoder preset or open name, built by its family (``pretrained.families``): a CLIP
    (:func:`create_clip`) or dino.txt (``pretrained.dinotxt.create_dinotxt``). ``option`` names
    the weights option in messages."""
    preset = resolve_encoder(preset)
    return family_of(preset).build(preset, weights, random_weights, option)


def text_encoder_for(built: BuiltEncoder) -> ImageTextEncoder:
    """The image + text encoder of a built preset (``ClipEncoder`` or ``DinoTxtEncoder``)."""
    return family_of(built.preset).text_encoder(built)


@dataclass
class ImageEncoding:
    """What the frozen visual-prompt encoder gives for a batch of images."""

    embedding: torch.Tensor  # (B, D) L2-normalised final embedding
    levels: list[torch.Tensor]  # per level j: (B, C_j, h_j, w_j) intermediate feature maps

    def pooled_levels(self) -> list[torch.Tensor]:
        """Spatial means of the level maps: per level (B, C_j) (docs/design.md §2.2, ours)."""
        return [f.mean(dim=(-2, -1)) for f in self.levels]


class ImageTextEncoder(nn.Module):
    """What a frozen image + text encoder gives dpseg (a prompt bank's encoder, VIP's texts):
    images in [0, 1] -> ``ImageEncoding``, token ids -> normalised text embeddings. Subclasses:
    :class:`ClipEncoder` (open_clip) and ``pretrained.dinotxt.DinoTxtEncoder``.

    Images are resized to the preset's input size and normalised here, so callers (Stable
    Diffusion's ``output_type="pt"`` output, crops of the input image) pass plain RGB in [0, 1].
    """

    def __init__(self, preset: EncoderPreset):
        super().__init__()
        self.preset = preset
        self.register_buffer("mean", torch.tensor(preset.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preset.std).view(1, 3, 1, 1), persistent=False)

    @property
    def embed_dim(self) -> int:
        raise NotImplementedError

    def encode_images(self, images: torch.Tensor, size: int | None = None) -> ImageEncoding:
        raise NotImplementedError

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def level_dims(self) -> list[int]:
        """Channels C_j of each level, found by one small forward pass."""
        probe = torch.zeros(1, 3, self.preset.image_size, self.preset.image_size)
        probe = probe.to(self.mean.device)
        with torch.inference_mode():
            return [f.shape[1] for f in self.encode_images(probe).levels]

    def preprocess(self, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, 3, S, S) normalised at ``size`` (default: the
        preset's; ConvNeXt takes any size, a ViT only its own)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be (B, 3, H, W) RGB in [0, 1], got {tuple(images.shape)}"
            )
        size = size or self.preset.image_size
        if images.shape[-2:] != (size, size):
            images = nn.functional.interpolate(
                images, size=(size, size), mode="bicubic", antialias=True, align_corners=False
            ).clamp(0, 1)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def encode_class_texts(self, classes, templates: list[str], tokenizer, chunk: int = 256):
        """T (K, P, D): each class in each template, synonyms averaged, renormalised (§2.1)."""
        return encode_class_texts(self.encode_tokens, classes, templates, tokenizer, chunk)


class ClipEncoder(ImageTextEncoder):
    """A CLIP model seen as the encoders dpseg needs: images in [0, 1] and tokenised text.

    Levels are taken with ``forward_intermediates`` at the preset's indices (docs/design.md §8.6).
    """

    def __init__(self, clip: nn.Module, preset: EncoderPreset):
        super().__init__(preset)
        self.clip = clip

    @property
    def embed_dim(self) -> int:
        return int(self.clip.text_projection.shape[-1])

    def encode_images(self, images: torch.Tensor, size: int | None = None) -> ImageEncoding:
        """(B, 3, H, W) in [0, 1] -> normalised (B, D) embedding and the level maps."""
        out = self.clip.visual.forward_intermediates(
            self.preprocess(images, size), indices=list(self.preset.levels)
        )
        gap = self.preset.modality_gap
        embedding = modality_embedding(out["image_features"].float(), gap, "image")
        return ImageEncoding(embedding, list(out["image_intermediates"]))

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T, L) token ids (any device) -> (T, D) L2-normalised text embeddings."""
        tokens = tokens.to(self.mean.device)
        gap = self.preset.modality_gap
        return modality_embedding(self.clip.encode_text(tokens).float(), gap, "text")


def modality_embedding(
    features: torch.Tensor, gap: float, modality: Literal["image", "text"], dim: int = -1
) -> torch.Tensor:
    """Unit-norm embeddings of one modality, with the toy world's modality gap (ours).

    ``gap`` = 0: ``normalize(features)``. ``gap`` = g > 0: the last two coordinates (one
    direction per modality) are cleared, the rest normalised, and g times the modality's own
    direction added, then the sum divided by sqrt(1 + g^2) (unit norm again). A matching image
    and text then meet at cosine (their cosine without the gap) / (1 + g^2): the constant offset
    between the two modalities' centres that makes real CLIP's matching pairs meet at about 0.3.
    Rankings within a modality's comparisons are unchanged.
    """
    if gap == 0:
        return nn.functional.normalize(features, dim=dim)
    x = features.movedim(dim, -1)
    x = nn.functional.normalize(torch.cat([x[..., :-2], torch.zeros_like(x[..., -2:])], -1), dim=-1)
    offset = torch.zeros(x.shape[-1], dtype=x.dtype, device=x.device)
    offset[-1 if modality == "image" else -2] = gap
    return ((x + offset) / math.sqrt(1 + gap * gap)).movedim(-1, dim)


def encode_class_texts(
    encode_tokens, classes, templates: list[str], tokenizer, chunk: int = 256
) -> torch.Tensor:
    """T (K, P, D): each class in each template, synonyms averaged, renormalised (§2.1).

    ``encode_tokens`` maps (T, L) token ids to (T, D) normalised embeddings (any text tower);
    ``classes`` are ``data.vocabulary.ClassName`` (or anything with ``.synonyms``); ``templates``
    hold one ``{}``. Texts go through in fixed chunks, which bounds memory and keeps every
    embedding's bits independent of K.
    """
    prompts, owners = [], []
    for i, cls in enumerate(classes):
        for p, template in enumerate(templates):
            for synonym in cls.synonyms:
                prompts.append(template.format(synonym))
                owners.append(i * len(templates) + p)
    tokens = tokenizer(prompts)
    emb = torch.cat([encode_tokens(t) for t in tokens.split(chunk)])
    device = emb.device
    out = torch.zeros(len(classes), len(templates), emb.shape[-1], device=device)
    out.view(-1, emb.shape[-1]).index_add_(0, torch.tensor(owners, device=device), emb)
    return nn.functional.normalize(out, dim=-1)


def clip_tokenizer_for(preset: EncoderPreset):
    """The preset's tokenizer, as its family says (our presets use CLIP's BPE at their context)."""
    return family_of(preset).tokenizer(preset)


@dataclass
class BackboneFeatures:
    """Image features for the segmentation model (docs/design.md §1, §2.2)."""

    dense: torch.Tensor  # (B, D, h, w) final-layer features projected into the joint space
    levels: list[torch.Tensor]  # per level j = 1..L: (B, C_j, h_j, w_j) intermediate maps


class ClipBackbone(nn.Module):
    """The CLIP image encoder as a dense feature extractor (the trainable image encoder).

    Its family (``pretrained.families``) takes the features: ConvNeXt (timm trunk) the last
    stage's map through the trunk head's norm and the projection per pixel, as SED does
    (open_clip pools before them, docs/design.md §6); ViT the patch tokens of the last block
    through ``ln_post`` and ``proj``. Levels come from ``forward_intermediates`` at the preset's
    indices (ConvNeXt: strides 4/8/16/32; ViT: one stride, the blocks chosen by the preset).
    """

    def __init__(
        self,
        clip: nn.Module,
        preset: EncoderPreset,
        image_size: int | None = None,
        modality_gap: bool = True,
    ):
        """``modality_gap``: apply the preset's gap per pixel (False: the projection's own output,
        whose mean over a ConvNeXt's map is its pooled embedding before the gap)."""
        super().__init__()
        self.visual = clip.visual
        self.preset = preset
        self.gap = preset.modality_gap if modality_gap else 0.0
        self.image_size = image_size or preset.image_size
        self.family = family_of(preset)
        self.family.adapt_input_size(self.visual, preset, self.image_size)
        self.register_buffer("mean", torch.tensor(preset.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preset.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ClipBackbone:
        super().train(mode)
        self.family.set_training(self.visual, mode)  # e.g. a ResNet's BatchNorm stays in eval
        return self

    def forward(self, images: torch.Tensor) -> BackboneFeatures:
        """images (B, 3, H, W) RGB in [0, 1]; a ViT needs H = W = ``image_size``."""
        if self.family.fixed_input_size and tuple(images.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(
                f"{self.family.title} backbone ({self.preset.name}) takes {self.image_size}x"
                f"{self.image_size} images (its positional embedding), got "
                f"{tuple(images.shape[-2:])}; use a test protocol with square crops of that size, "
                "or build it with image_size="
            )
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        dense, levels = self.family.dense_features(
            self.visual, x, tuple(self.preset.levels), self.gap
        )
        return BackboneFeatures(dense, levels)
