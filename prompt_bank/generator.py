"""Stable Diffusion pipelines from a generator preset (DESIGN §2.1, §6).

``tiny-sd`` is a real diffusers ``StableDiffusionPipeline`` whose UNet, VAE and CLIP text
encoder are tiny and randomly initialised from a fixed seed, with a CLIP tokenizer built from
open_clip's bundled BPE vocabulary, so the whole bank-building path runs offline. Real presets
load a diffusers repository from the hub, its cache, or a local folder.
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass

import torch

from model.fingerprint import weights_fingerprint
from model.hub import (
    WeightsUnavailableError,
    ensure_hub_reachable_or_cached,
    refuse_weights_for_random,
)
from model.presets import GeneratorPreset, get_generator_preset

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


def _tiny_pipeline(preset: GeneratorPreset):
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    latent = preset.height // 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(preset.seed)
        unet = UNet2DConditionModel(
            sample_size=latent,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,  # 4 blocks: downsampling by 8 as in SD
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=preset.height,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                projection_dim=32,
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
            )
        )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler(**SD_SCHEDULE),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _pretrained_pipeline(preset: GeneratorPreset, weights: str | os.PathLike | None):
    from diffusers import StableDiffusionPipeline

    kwargs = {"safety_checker": None, "requires_safety_checker": False}
    if weights is not None:
        if not os.path.isdir(weights) or not os.path.isfile(
            os.path.join(weights, "model_index.json")
        ):
            raise WeightsUnavailableError(
                f"--generator-weights {str(weights)!r} is not a diffusers folder (it needs "
                "model_index.json with unet/, vae/, text_encoder/, tokenizer/, scheduler/); "
                f"download one with: hf download {preset.model_id} --local-dir DIR"
            )
        return StableDiffusionPipeline.from_pretrained(weights, **kwargs), str(weights)
    try:  # the cache first: no network, no retries
        pipeline = StableDiffusionPipeline.from_pretrained(
            preset.model_id, revision=preset.revision, local_files_only=True, **kwargs
        )
        return pipeline, preset.model_id
    except (OSError, ValueError):
        pass
    ensure_hub_reachable_or_cached(
        False,
        what=f"generator preset {preset.name!r}",
        model_id=preset.model_id,
        local_option="--generator-weights DIR",
    )
    pipeline = StableDiffusionPipeline.from_pretrained(
        preset.model_id, revision=preset.revision, **kwargs
    )
    return pipeline, preset.model_id


def create_generator(
    preset: str | GeneratorPreset, weights: str | os.PathLike | None = None
) -> BuiltGenerator:
    """Build the Stable Diffusion pipeline of a generator preset (fp32, CPU, progress bar off).

    Args:
        preset: a generator preset name (see ``python cli.py presets``) or a preset object.
        weights: a local diffusers folder (``model_index.json`` and component folders) used
            instead of the hub.

    Raises:
        model.presets.PresetError: unknown preset name.
        model.hub.WeightsUnavailableError: weights neither local nor downloadable.
    """
    if isinstance(preset, str):
        preset = get_generator_preset(preset)
    if preset.is_random:
        refuse_weights_for_random(preset.name, weights)
        pipeline, source = _tiny_pipeline(preset), f"random(seed={preset.seed})"
    else:
        pipeline, source = _pretrained_pipeline(preset, weights)
        if preset.scheduler != "default":
            import diffusers

            scheduler_cls = getattr(diffusers, preset.scheduler)
            pipeline.scheduler = scheduler_cls.from_config(pipeline.scheduler.config)
        pipeline.set_progress_bar_config(disable=True)
    fingerprint = weights_fingerprint(
        pipeline.unet, pipeline.vae, pipeline.text_encoder, prefixes=("unet", "vae", "text")
    )
    return BuiltGenerator(pipeline, preset, fingerprint, source)
