"""Stable Diffusion pipelines from a generator preset (docs/design.md §2.1, §6).

``tiny-sd`` is a real diffusers ``StableDiffusionPipeline`` whose UNet, VAE and CLIP text
encoder are tiny and randomly initialised from a fixed seed, with a CLIP tokenizer built from
open_clip's bundled BPE vocabulary, so the whole bank-building path runs offline. Real presets
load a diffusers repository from the hub, its cache, or a local folder.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from common.errors import SettingError
from pretrained.fingerprint import warn_if_unrecorded, weights_fingerprint
from pretrained.hub import (
    WeightsUnavailableError,
    ensure_hub_reachable_or_cached,
)
from pretrained.names import resolve_generator
from pretrained.portable_init import build_portable
from pretrained.presets import GeneratorPreset

# SD 1.x's noise schedule (the tiny pipeline uses it too, so samplers behave as on the real one).
SD_SCHEDULE = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


@dataclass
class BuiltGenerator:
    """A diffusers pipeline with the preset it came from and the fingerprint of its weights."""

    pipeline: object  # diffusers.StableDiffusionPipeline
    preset: GeneratorPreset
    fingerprint: str  # sha256 over the unet, vae and text encoder weights as loaded
    weights: str  # "random(seed=0)", a local folder, or the hub id


@functools.lru_cache(maxsize=1)
def clip_tokenizer(context_length: int = 77):
    """CLIP's BPE tokenizer as a ``transformers.CLIPTokenizer``, from open_clip's bundled vocab.

    The vocabulary is rebuilt the way OpenAI's CLIP builds it: 256 byte symbols, the same with an
    end-of-word marker, one entry per merge, then the start/end tokens (49408 in all).
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab)},
        merges=merges,
        model_max_length=context_length,
    )


_CLIP_TOKENS = {
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}

# Architectures of the random-weight pipelines: the tiny one, and the real presets' (their
# configs on the hub, written out so full-size speed can be measured with no download).
ARCHITECTURES = {
    "tiny-sd": {
        "unet": {
            "layers_per_block": 1,
            "block_out_channels": (32, 64),
            "cross_attention_dim": 32,
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "attention_head_dim": 8,
        },
        # 4 blocks: the VAE downsamples by 8 as in SD
        "vae": {"block_out_channels": (8, 16, 32, 32), "layers_per_block": 1, "norm_num_groups": 8},
        "text": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "projection_dim": 32,
        },
    },
    "sd15": {
        "unet": {"cross_attention_dim": 768, "attention_head_dim": 8},  # the rest: defaults
        "vae": {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2},
        "text": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "projection_dim": 768,
            "hidden_act": "quick_gelu",
        },
    },
    "sd21": {
        "unet": {
            "cross_attention_dim": 1024,
            "attention_head_dim": (5, 10, 20, 20),
            "use_linear_projection": True,
        },
        "vae": {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2},
        "text": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 23,
            "num_attention_heads": 16,
            "projection_dim": 512,
            "hidden_act": "gelu",
        },
    },
}
ARCHITECTURES["sd-turbo"] = ARCHITECTURES["sd21"]
# (ours) SDXL's structure at the tiny scale: two text towers whose hidden states are
# concatenated (32 + 32 = the UNet's cross-attention width 64), the second one's pooled
# projection (32) and the 6 size/crop ids (6 x 8) in the "text_time" embedding: 80.
ARCHITECTURES["tiny-sdxl"] = {
    "unet": {
        "layers_per_block": 1,
        "block_out_channels": (32, 64),
        "cross_attention_dim": 64,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": (2, 4),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "transformer_layers_per_block": (1, 2),
        "projection_class_embeddings_input_dim": 80,
    },
    "vae": ARCHITECTURES["tiny-sd"]["vae"],
    "text": ARCHITECTURES["tiny-sd"]["text"],
}


def _random_pipeline(preset: GeneratorPreset, seed: int):
    """The preset's architecture with seeded random weights (built on CPU, fp32)."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    arch = ARCHITECTURES[preset.name]
    family = conditioning_for(preset)

    def build() -> dict[str, torch.nn.Module]:
        vae_blocks = len(arch["vae"]["block_out_channels"])
        text = CLIPTextConfig(**_CLIP_TOKENS, **arch["text"])
        parts = {
            "unet": UNet2DConditionModel(sample_size=preset.height // 8, **arch["unet"]),
            "vae": AutoencoderKL(
                down_block_types=("DownEncoderBlock2D",) * vae_blocks,
                up_block_types=("UpDecoderBlock2D",) * vae_blocks,
                latent_channels=4,
                sample_size=preset.height,
                **arch["vae"],
            ),
            "text": CLIPTextModel(text),
        }
        return parts | family.extra_text_towers(text)

    if preset.is_random:  # the offline preset: the same bits on every machine
        parts = build_portable(build, seed)
    else:  # full-size architectures, for speed only: torch's initialisers
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            parts = build()
    scheduler_name = "DDIMScheduler" if preset.scheduler == "default" else preset.scheduler
    scheduler = getattr(diffusers, scheduler_name).from_config(SD_SCHEDULE)
    common = {
        "vae": parts["vae"],
        "text_encoder": parts["text"],
        "tokenizer": clip_tokenizer(),
        "unet": parts["unet"],
        "scheduler": scheduler,
    }
    pipeline_class = getattr(diffusers, family.pipeline_class)
    pipeline = pipeline_class(**common, **family.random_pipeline_parts(parts))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _pretrained_pipeline(preset: GeneratorPreset, weights: str | os.PathLike | None):
    import diffusers

    family = conditioning_for(preset)
    pipeline_class = getattr(diffusers, family.pipeline_class)
    # float32 whatever the files hold: transformers keeps a float16 file's dtype for the text
    # encoder, whose half embeddings then met the UNet's float32 weights (found by the rehearsal)
    kwargs = {**family.load_kwargs, "dtype": torch.float32}
    folder = (
        weights
        if weights is not None
        else (preset.model_id if preset.origin == "local-dir" else None)
    )
    if folder is not None:
        if not os.path.isdir(folder) or not os.path.isfile(
            os.path.join(folder, "model_index.json")
        ):
            raise WeightsUnavailableError(
                f"--generator-weights {str(folder)!r} is not a diffusers folder (it needs "
                "model_index.json with unet/, vae/, text_encoder/, tokenizer/, scheduler/); "
                f"download one with: hf download {preset.model_id} --local-dir DIR"
            )
        return pipeline_class.from_pretrained(folder, **kwargs), str(folder)
    source = f"{preset.model_id}@{preset.revision}" if preset.revision else preset.model_id
    try:  # the cache first: no network, no retries
        pipeline = pipeline_class.from_pretrained(
            preset.model_id, revision=preset.revision, local_files_only=True, **kwargs
        )
        return pipeline, source
    except (OSError, ValueError):
        pass
    ensure_hub_reachable_or_cached(
        False,
        what=f"generator {preset.name!r}",
        model_id=preset.model_id,
        local_option="--generator-weights DIR",
    )
    pipeline = pipeline_class.from_pretrained(preset.model_id, revision=preset.revision, **kwargs)
    return pipeline, source


class SDConditioning:
    """Stable Diffusion 1.x / 2.x / SD-Turbo: how the pipeline loads and is conditioned, one
    (L, C) prompt embedding per row; classifier-free guidance's unconditional embedding (of "")
    computed once."""

    pipeline_class = "StableDiffusionPipeline"
    load_kwargs: ClassVar[dict] = {"safety_checker": None, "requires_safety_checker": False}

    def __init__(self):
        self._uncond: torch.Tensor | None = None

    def extra_text_towers(self, text_config) -> dict[str, torch.nn.Module]:
        """Text towers beside CLIPTextModel in a random pipeline: none."""
        return {}

    def random_pipeline_parts(self, parts: dict) -> dict:
        """The pipeline's arguments beside the common ones (``_random_pipeline``)."""
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def encode(self, pipe, prompts: list[str], device) -> list:
        return list(pipe.encode_prompt(prompts, device, 1, False)[0])

    def call_kwargs(self, pipe, rows: list, guidance: float, device) -> dict:
        kwargs = {"prompt_embeds": torch.stack(rows)}
        if guidance > 1:
            if self._uncond is None:
                self._uncond = pipe.encode_prompt([""], device, 1, False)[0]
            kwargs["negative_prompt_embeds"] = self._uncond.expand(len(rows), -1, -1)
        return kwargs


class SDXLConditioning:
    """SDXL / SDXL-Turbo (no safety checker): per row the two text towers' (L, C) embedding and
    the pooled one; the pipeline makes the unconditional side itself (zeros where its config
    says so)."""

    pipeline_class = "StableDiffusionXLPipeline"
    load_kwargs: ClassVar[dict] = {}

    def extra_text_towers(self, text_config) -> dict[str, torch.nn.Module]:
        """The second text tower, with the pooled projection."""
        from transformers import CLIPTextModelWithProjection

        return {"text_2": CLIPTextModelWithProjection(text_config)}

    def random_pipeline_parts(self, parts: dict) -> dict:
        return {"text_encoder_2": parts["text_2"], "tokenizer_2": clip_tokenizer()}

    def encode(self, pipe, prompts: list[str], device) -> list:
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return list(zip(embeds, pooled))

    def call_kwargs(self, pipe, rows: list, guidance: float, device) -> dict:
        return {
            "prompt_embeds": torch.stack([e for e, _ in rows]),
            "pooled_prompt_embeds": torch.stack([p for _, p in rows]),
        }


def conditioning_for(preset: GeneratorPreset) -> SDConditioning | SDXLConditioning:
    """The conditioning object of the preset's pipeline family."""
    return {"sd": SDConditioning, "sdxl": SDXLConditioning}[preset.family]()


TOY_RENDER_VERSION = "toy-render/1"  # bump when data.toy_world.render_prompt draws otherwise


class ToyRenderer:
    """The toy world's stand-in for Stable Diffusion: each prompt drawn by
    :func:`data.toy_world.render_prompt` (the class it names, in its template's style), one
    seed per image; no weights, no noise schedule."""

    def __init__(self, preset: GeneratorPreset):
        self.preset = preset

    def to(self, *args, **kwargs) -> ToyRenderer:
        return self  # numpy on the CPU whatever the build device

    def render(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """N prompts and seeds -> (N, 3, H, W) float32 in [0, 1]."""
        from data.toy_world import render_prompt

        pictures = [render_prompt(p, s, size=self.preset.height)[0] for p, s in zip(prompts, seeds)]
        return torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255.0


def create_generator(
    preset: str | GeneratorPreset,
    weights: str | os.PathLike | None = None,
    random_weights: bool = False,
) -> BuiltGenerator:
    """Build the Stable Diffusion pipeline of a generator preset (fp32, CPU, progress bar off).

    Args:
        preset: a generator preset name (see ``python cli.py presets``), a diffusers repository
            id or folder (``pretrained.names``), or a preset object.
        weights: a local diffusers folder (``model_index.json`` and component folders) used
            instead of the hub.
        random_weights: the full-size architecture with seeded random weights, no download
            (to measure speed on a GPU without weights).

    Raises:
        pretrained.presets.PresetError: unknown preset name.
        pretrained.hub.WeightsUnavailableError: weights neither local nor downloadable.
    """
    preset = resolve_generator(preset)
    if preset.kind == "toy-render":
        if weights is not None:
            raise SettingError(
                f"--generator-weights {str(weights)!r}: generator {preset.name!r} draws the toy "
                "world and takes no weights (they would be ignored); drop --generator-weights"
            )
        identity = f"{TOY_RENDER_VERSION}|{preset.height}x{preset.width}".encode()
        return BuiltGenerator(
            ToyRenderer(preset), preset, hashlib.sha256(identity).hexdigest(), TOY_RENDER_VERSION
        )
    if preset.is_random or random_weights:
        if preset.name not in ARCHITECTURES:
            raise SettingError(
                f"--random-weights with generator {preset.name!r}: random full-size weights are "
                f"built for the presets {', '.join(n for n in ARCHITECTURES if not n.startswith('tiny'))} "
                "only; a named model is loaded with its own weights (drop --random-weights)"
            )
        if weights is not None:
            why = (
                f"generator {preset.name!r} has random weights"
                if preset.is_random
                else "--random-weights builds random weights"
            )
            raise SettingError(
                f"--generator-weights {str(weights)!r}: {why} and reads no weights file (it "
                "would be ignored); drop --generator-weights, or use a pretrained preset"
            )
        pipeline, source = _random_pipeline(preset, preset.seed), f"random(seed={preset.seed})"
    else:
        pipeline, source = _pretrained_pipeline(preset, weights)
        if preset.scheduler != "default":
            import diffusers

            scheduler_cls = getattr(diffusers, preset.scheduler)
            pipeline.scheduler = scheduler_cls.from_config(pipeline.scheduler.config)
        pipeline.set_progress_bar_config(disable=True)
    parts = [("unet", pipeline.unet), ("vae", pipeline.vae), ("text", pipeline.text_encoder)]
    if getattr(pipeline, "text_encoder_2", None) is not None:  # SDXL's second text tower
        parts.append(("text2", pipeline.text_encoder_2))
    fingerprint = weights_fingerprint(
        *(m for _, m in parts), prefixes=tuple(name for name, _ in parts)
    )
    if preset.is_random:
        warn_if_unrecorded(preset.name, fingerprint)
    return BuiltGenerator(pipeline, preset, fingerprint, source)
