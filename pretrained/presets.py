"""Every named preset in one place: image encoders, image generators, and bank presets.

Presets are plain frozen dataclasses (no torch, no download); builders live next to the code they
build (:func:`pretrained.backbone.create_clip`, :func:`prompt_bank.generator.create_generator`).
``tiny-*`` presets are random weights from a fixed seed, built offline in seconds, for tests, the
demo and CPU runs (docs/design.md §6). Real presets load pretrained weights from the Hugging Face hub or a
local path. ``python cli.py presets`` prints this registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from common.errors import SettingError
from pretrained.errors import PresetError

# ImageNet's input statistics (DINOv3 and dino.txt)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# OpenAI CLIP's input statistics (open_clip.constants' values; importing open_clip here would
# load all of it, 2.4 s, into every command that only lists or checks presets)
OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)


def _needs(preset: EncoderPreset | GeneratorPreset, hub_id: str | None, local_option: str) -> str:
    if preset.is_random:
        return f"nothing: random weights (seed {preset.seed}), built offline"
    return f"weights from hf-hub {hub_id} (or {local_option})"


@dataclass(frozen=True)
class EncoderPreset:
    """An image + text model: a CLIP from open_clip (``vit``, ``convnext``), or dino.txt
    (``dinotxt``: ``pretrained.dinotxt``, whose ``model_cfg`` holds ``DinoTxtConfig`` sizes)."""

    name: str
    family: str  # a registered encoder family (pretrained.families: vit, convnext, dinotxt),
    # which says how the model is built and how dense features and levels are taken
    arch: str  # open_clip model name (or a name for the custom config below)
    pretrained: str | None  # open_clip pretrained tag; None = random weights from `seed`
    image_size: int  # input side the weights were trained at
    levels: tuple[int, ...]  # forward_intermediates indices of the multi-scale levels 1..L
    description: str
    model_cfg: dict | None = field(default=None, compare=False)  # open_clip config (tiny only)
    quick_gelu: bool = False  # OpenAI weights were trained with QuickGELU
    seed: int = 0  # initialisation seed of random-weight presets
    mean: tuple[float, float, float] = OPENAI_DATASET_MEAN  # input normalisation
    std: tuple[float, float, float] = OPENAI_DATASET_STD
    bundled: str | None = None  # weights file shipped in pretrained/weights/ (the toy presets)
    revision: str | None = None  # hub commit of the weights repository (pinned)
    license: str = "Apache-2.0 (dpseg's own weights)"  # the weights' licence, for bank cards
    modality_gap: float = 0.0  # (ours, toy world) > 0: embeddings of each modality are offset
    # along a direction of their own (pretrained.backbone.modality_embedding), as real CLIP's
    # image and text embeddings lie apart (matching pairs at cosine ~0.3)
    origin: Literal["preset", "open_clip", "hf-hub", "local-dir"] = "preset"  # how the name was
    # given (pretrained.names): a preset, an open_clip MODEL:TAG, hf-hub:ORG/NAME or a folder
    location: str | None = field(default=None, compare=False)  # hf-hub / local-dir: the local
    # folder holding open_clip_config.json (the hub cache's snapshot folder)

    def __post_init__(self) -> None:
        if self.image_size <= 0 or not self.levels:
            raise PresetError(f"encoder preset {self.name!r}: image_size and levels must be set")
        if list(self.levels) != sorted(set(self.levels)):
            raise PresetError(f"encoder preset {self.name!r}: levels {self.levels} must increase")
        if self.modality_gap < 0:
            raise PresetError(f"encoder preset {self.name!r}: modality_gap must be >= 0")

    @property
    def is_random(self) -> bool:
        return self.pretrained is None and self.bundled is None

    @property
    def offline(self) -> bool:
        """Built without any download (random, or weights shipped in the package)."""
        return self.is_random or self.bundled is not None

    @property
    def context_length(self) -> int:
        """Tokens per text (CLIP's 77; the toy presets' text tower is shorter)."""
        if self.model_cfg is not None and "text_cfg" in self.model_cfg:
            return int(self.model_cfg["text_cfg"].get("context_length", 77))
        if self.model_cfg is not None:  # dino.txt: DinoTxtConfig's field
            return int(self.model_cfg.get("context_length", 77))
        return 77

    @property
    def open_clip_name(self) -> str:
        """The name open_clip's ``create_model`` and ``get_tokenizer`` take for this model."""
        return f"local-dir:{self.location}" if self.location else self.arch

    @property
    def hub_id(self) -> str | None:
        """The Hugging Face repository open_clip downloads this preset's weights from."""
        if self.origin == "hf-hub":
            return self.arch.removeprefix("hf-hub:")
        from pretrained.families import family_of

        if self.pretrained is None or not family_of(self).hub_weights or self.origin == "local-dir":
            return None
        import open_clip

        cfg = open_clip.get_pretrained_cfg(self.arch, self.pretrained)
        return cfg.get("hf_hub", "").rstrip("/") or cfg.get("url") or None

    @property
    def needs(self) -> str:
        if self.bundled is not None:
            return (
                f"nothing: pretrained on the toy world by dpseg (cli.py presets pretrain "
                f"{self.name}), shipped as pretrained/weights/{self.bundled}"
            )
        from pretrained.families import family_of

        return family_of(self).needs(self) or _needs(self, self.hub_id, "--encoder-weights PATH")


@dataclass(frozen=True)
class GeneratorPreset:
    """A Stable Diffusion text-to-image pipeline from diffusers, with its sampling settings."""

    name: str
    model_id: str | None  # diffusers repository; None = tiny random pipeline built in code
    scheduler: str  # diffusers scheduler class; "default" keeps the repository's own
    steps: int  # denoising steps
    guidance: float  # classifier-free guidance scale; <= 1 means no unconditional pass
    height: int
    width: int
    description: str
    max_steps: int = 1000  # distilled models (turbo) are only good for a few steps
    revision: str | None = None  # repository commit (pinned for every hub preset)
    license: str = "Apache-2.0 (dpseg's own random weights)"  # the weights' licence (bank cards)
    seed: int = 0  # initialisation seed of the tiny pipeline
    kind: Literal["diffusers", "toy-render"] = "diffusers"  # a diffusers pipeline, or the toy
    # world's renderer (prompt -> picture, data.toy_world; no weights)
    family: Literal["sd", "sdxl"] = "sd"  # StableDiffusionPipeline (1.x, 2.x, Turbo) or
    # StableDiffusionXLPipeline (SDXL, SDXL-Turbo): how prompts condition it
    origin: Literal["preset", "hub", "local-dir"] = "preset"  # pretrained.names: a preset, a
    # diffusers repository id, or a local folder (model_id is then its absolute path)

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= self.max_steps:
            raise PresetError(
                f"generator preset {self.name!r}: steps={self.steps} must be in 1..{self.max_steps}"
            )
        if self.height % 8 or self.width % 8:
            raise PresetError(
                f"generator preset {self.name!r}: height={self.height}, width={self.width} must "
                "be multiples of 8 (the VAE downsamples by 8)"
            )

    @property
    def is_random(self) -> bool:
        return self.model_id is None

    @property
    def offline(self) -> bool:
        """Built without any download (random tiny pipeline, or the toy renderer)."""
        return self.model_id is None or self.origin == "local-dir"

    @property
    def needs(self) -> str:
        if self.kind == "toy-render":
            return "nothing: draws the toy world, no weights"
        return _needs(self, self.model_id, "--generator-weights DIR")


@dataclass(frozen=True)
class BankPreset:
    """A generator and an encoder that build a prompt bank together (docs/design.md §4)."""

    name: str
    generator: str
    encoder: str
    description: str

    @property
    def needs(self) -> str:
        gen, enc = get_generator_preset(self.generator), get_encoder_preset(self.encoder)
        if gen.is_random and enc.is_random:
            return "nothing: built offline"
        return f"{gen.name} + {enc.name} weights"


# toy-dinotxt's LayerScale init (ours; the official 1e-5 suits a head on a trained backbone).
# A short trial (300 steps, 3000 pictures) from scratch, zero-shot on 300 held-out pictures
# with VIP's proxy head / the plain head / the 2C global embedding: 1.0 -> 15 / 32 / 33%,
# 0.1 -> 15 / 20 / 36%, 1e-5 -> 3 / 15 / 32% (chance 3.2%): 1.0 for the patch side VIP uses.
LAYER_SCALE_TOY = 1.0
# Steps the committed toy weights were pretrained with (PretrainConfig's default elsewhere):
# a toy dino.txt step costs 1.5x a toy-vit step, so 2000 keep its time close to toy-vit's.
PRETRAIN_STEPS = {"toy-dinotxt": 2000}

_TINY_TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
# The toy world's captions are short: 32 tokens (ours) keep the text tower 2.4x cheaper.
_TOY_TEXT_CFG = {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}

ENCODERS: dict[str, EncoderPreset] = {
    p.name: p
    for p in [
        EncoderPreset(
            name="tiny-vit",
            family="vit",
            arch="dpseg-tiny-vit",
            pretrained=None,
            image_size=128,
            levels=(0, 1, 2, 3),
            description="ViT, patch 8, width 64, 4 blocks; text width 64 x 2 layers; embed 64",
            model_cfg={
                "embed_dim": 64,
                "vision_cfg": {
                    "image_size": 128,
                    "patch_size": 8,
                    "width": 64,
                    "layers": 4,
                    "head_width": 16,
                },
                "text_cfg": _TINY_TEXT_CFG,
            },
        ),
        EncoderPreset(
            name="tiny-convnext",
            family="convnext",
            arch="dpseg-tiny-convnext",
            pretrained=None,
            image_size=128,
            levels=(0, 1, 2, 3),
            description="timm convnext_atto (strides 4/8/16/32); text width 64 x 2 layers; embed 64",
            model_cfg={
                "embed_dim": 64,
                "vision_cfg": {
                    "timm_model_name": "convnext_atto",
                    "timm_model_pretrained": False,
                    "timm_pool": "",
                    "timm_proj": "linear",
                    "image_size": 128,
                },
                "text_cfg": _TINY_TEXT_CFG,
            },
        ),
        EncoderPreset(
            name="toy-convnext",
            family="convnext",
            arch="dpseg-toy-convnext",
            pretrained=None,
            bundled="toy-convnext.safetensors",
            image_size=64,
            levels=(0, 1, 2, 3),
            modality_gap=1.4,  # (ours) matching image and text meet at ~0.3, as in real CLIP
            description="ConvNeXt 24/48/96/192 x 1/1/2/1 blocks (strides 4/8/16/32), norm "
            "before pool, 64 px; text 64 x 2 layers, context 32; embed 64; pretrained on the toy "
            "world",
            model_cfg={
                "embed_dim": 64,
                "vision_cfg": {
                    "timm_model_name": "dpseg_convnext_toy",
                    "timm_model_pretrained": False,
                    "timm_pool": "",
                    "timm_proj": "linear",
                    "image_size": 64,
                },
                "text_cfg": _TOY_TEXT_CFG,
            },
        ),
        EncoderPreset(
            name="toy-vit",
            family="vit",
            arch="dpseg-toy-vit",
            pretrained=None,
            bundled="toy-vit.safetensors",
            image_size=64,
            levels=(0, 1, 2, 3),
            description="ViT, patch 8, width 96, 4 blocks, 64 px, mean-pooled patches; text 64 "
            "x 2 layers, context 32; embed 64; pretrained on the toy world",
            model_cfg={
                "embed_dim": 64,
                "vision_cfg": {
                    "image_size": 64,
                    "patch_size": 8,
                    "width": 96,
                    "layers": 4,
                    "head_width": 24,
                    "pool_type": "avg",  # (ours) the embedding is the mean patch feature
                },
                "text_cfg": _TOY_TEXT_CFG,
            },
        ),
        EncoderPreset(
            name="tiny-dinotxt",
            family="dinotxt",
            arch="dinotxt",
            pretrained=None,
            image_size=128,
            levels=(0, 1),
            description="dino.txt's code at small width: DINOv3 ViT patch 16, width 64, 2 blocks; "
            "head 2 blocks; text 64 x 2 layers; embed 2 x 64",
            model_cfg={  # pretrained.dinotxt.DinoTxtConfig's fields; layer scale 1 (ours): random
                # blocks that matter
                "width": 64,
                "depth": 2,
                "heads": 4,
                "head_mlp": 192,
                "text_width": 64,
                "text_depth": 2,
                "text_heads": 4,
                "layer_scale": 1.0,
            },
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        ),
        EncoderPreset(
            name="toy-dinotxt",
            family="dinotxt",
            arch="dinotxt",
            pretrained=None,
            bundled="toy-dinotxt.safetensors",
            image_size=64,
            levels=(0, 1, 2, 3),
            description="dino.txt's code at the toy world's scale: DINOv3 ViT patch 8, width 96, "
            "4 blocks; head 2 blocks; text 64 x 2 layers, context 32; embed 2 x 96; pretrained "
            "on the toy world",
            # weights: cli.py presets pretrain toy-dinotxt --steps 2000 (a step costs 1.5x
            # toy-vit's: 2000 steps took 1040 s on 2 cores; the file's metadata has the report)
            model_cfg={  # pretrained.dinotxt.DinoTxtConfig's fields (sizes ours, at toy-vit's scale)
                "width": 96,
                "depth": 4,
                "heads": 4,
                "patch": 8,
                "head_mlp": 256,
                "text_width": 64,
                "text_depth": 2,
                "text_heads": 4,
                "context_length": 32,
                "layer_scale": LAYER_SCALE_TOY,
            },
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        ),
        EncoderPreset(
            name="dinotxt-l16",
            family="dinotxt",
            arch="dinotxt",
            pretrained="lvd1689m",
            image_size=224,  # the head was trained at 224 px; VIP runs it on 336 px windows
            levels=(5, 11, 17, 23),  # (ours) every sixth of the 24 backbone blocks
            description="dino.txt: DINOv3 ViT-L/16 (LVD-1689M) + dino.txt vision head and text "
            "tower (VIP's encoder); the two official files, no hub",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            license="DINOv3 License (Meta; facebookresearch/dinov3 LICENSE.md)",
        ),
        EncoderPreset(
            name="vit-b16-openai",
            family="vit",
            arch="ViT-B-16",
            pretrained="openai",
            image_size=224,
            levels=(2, 5, 8, 11),  # (ours) every third of the 12 blocks
            quick_gelu=True,
            description="OpenAI CLIP ViT-B/16 (CAT-Seg's ViT-B)",
            revision="977e3dd0ec55ab8da155f2fbeb6b5f54948b6e3d",
            license="MIT (OpenAI CLIP)",
        ),
        EncoderPreset(
            name="convnext-b-laion",
            family="convnext",
            arch="convnext_base_w_320",
            pretrained="laion_aesthetic_s13b_b82k",
            image_size=320,
            levels=(0, 1, 2, 3),
            description="LAION ConvNeXt-B/w 320 (SED's and DPSeg's ConvNeXt-B)",
            revision="933ffb0c401227b58c9fe283bc488c7b58da4278",
            license="MIT (LAION OpenCLIP)",
        ),
        EncoderPreset(
            name="convnext-l-laion",
            family="convnext",
            arch="convnext_large_d_320",
            pretrained="laion2b_s29b_b131k_ft_soup",
            image_size=320,
            levels=(0, 1, 2, 3),
            description="LAION ConvNeXt-L/d 320 soup (SED's and DPSeg's ConvNeXt-L)",
            revision="39918dfbdf69ccd2172e6510a430e92337ee23e1",
            license="MIT (LAION OpenCLIP)",
        ),
    ]
}

GENERATORS: dict[str, GeneratorPreset] = {
    p.name: p
    for p in [
        GeneratorPreset(
            name="tiny-sd",
            model_id=None,
            scheduler="DDIMScheduler",
            steps=2,
            guidance=7.5,
            height=64,
            width=64,
            description="random UNet/VAE/CLIP text encoder, 64x64, 2 steps (tests, demo)",
        ),
        GeneratorPreset(
            name="tiny-sdxl",
            model_id=None,
            scheduler="DDIMScheduler",
            steps=2,
            guidance=5.0,
            height=64,
            width=64,
            family="sdxl",
            description="random SDXL-structured pipeline (two text towers, pooled and size "
            "conditioning), 64x64, 2 steps (tests of the SDXL path)",
        ),
        GeneratorPreset(
            name="toy-render",
            model_id=None,
            scheduler="none",
            steps=1,
            guidance=0.0,
            height=64,
            width=64,
            max_steps=1,
            kind="toy-render",
            description="the toy world's Stable Diffusion: draws what a prompt names, in the "
            "style its template asks for (close-up, many, sketch, low resolution, ...), 64x64",
            license="Apache-2.0 (dpseg's own renderer; no weights)",
        ),
        GeneratorPreset(
            name="sd15",
            model_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
            scheduler="DPMSolverMultistepScheduler",  # (ours) 25 DPM++ steps ~ 50 PNDM steps
            steps=25,
            guidance=7.5,
            height=512,
            width=512,
            description="Stable Diffusion 1.5, 512x512, 25 DPM-Solver++ steps, guidance 7.5",
            revision="f03de327dd89b501a01da37fc5240cf4fdba85a1",
            license="CreativeML Open RAIL-M (creativeml-openrail-m)",
        ),
        GeneratorPreset(
            name="sd21",
            model_id="stabilityai/stable-diffusion-2-1",
            scheduler="DPMSolverMultistepScheduler",
            steps=25,
            guidance=7.5,
            height=768,
            width=768,
            description="Stable Diffusion 2.1 (v-prediction), 768x768, 25 steps, guidance 7.5",
            revision="5cae40e6a2745ae2b01ad92ae5043f95f23644d6",
            license="CreativeML Open RAIL++-M (openrail++)",
        ),
        GeneratorPreset(
            name="sd-turbo",
            model_id="stabilityai/sd-turbo",
            scheduler="default",
            steps=1,
            guidance=0.0,
            height=512,
            width=512,
            max_steps=4,
            description="SD-Turbo (distilled SD 2.1), 512x512, 1-4 steps, no guidance",
            revision="b261bac6fd2cf515557d5d0707481eafa0485ec2",
            license="Stability AI Non-Commercial Research Community License (sai-nc-community): "
            "non-commercial use only",
        ),
    ]
}

BANKS: dict[str, BankPreset] = {
    p.name: p
    for p in [
        BankPreset("paper", "sd15", "convnext-b-laion", "the paper's setting (SD + ConvNeXt-B)"),
        BankPreset("fast", "sd-turbo", "convnext-b-laion", "1-step SD-Turbo + ConvNeXt-B"),
        BankPreset("vit", "sd-turbo", "vit-b16-openai", "1-step SD-Turbo + ViT-B/16"),
        BankPreset("tiny", "tiny-sd", "tiny-convnext", "random tiny models, offline (tests)"),
        BankPreset(
            "toy",
            "toy-render",
            "toy-convnext",
            "the toy world: renderer + pretrained toy ConvNeXt, offline (demo, claims)",
        ),
        BankPreset("toy-vit", "toy-render", "toy-vit", "the toy world for VIP's dual prompts"),
        BankPreset(
            "toy-dinotxt",
            "toy-render",
            "toy-dinotxt",
            "the toy world for VIP's dual prompts on dino.txt",
        ),
    ]
}

_REGISTRIES = {"encoder": ENCODERS, "generator": GENERATORS, "bank": BANKS}


def _get(kind: str, name: str):
    registry = _REGISTRIES[kind]
    if name not in registry:
        import difflib

        close = difflib.get_close_matches(str(name), list(registry), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise PresetError(
            f"unknown {kind} preset {name!r}; {hint}known {kind} presets: {', '.join(registry)} "
            "(python cli.py presets lists them with what each needs)"
        )
    return registry[name]


def get_encoder_preset(name: str) -> EncoderPreset:
    return _get("encoder", name)


def get_generator_preset(name: str) -> GeneratorPreset:
    return _get("generator", name)


def get_bank_preset(name: str) -> BankPreset:
    return _get("bank", name)


def list_presets(kind: str | None = None) -> list[EncoderPreset | GeneratorPreset | BankPreset]:
    """All presets, or those of one kind (``encoder``, ``generator``, ``bank``)."""
    if kind is not None and kind not in _REGISTRIES:
        raise PresetError(f"unknown preset kind {kind!r}; use one of {', '.join(_REGISTRIES)}")
    kinds = [kind] if kind else list(_REGISTRIES)
    return [p for k in kinds for p in _REGISTRIES[k].values()]


@dataclass(frozen=True)
class PretrainConfig:
    """How a toy preset is pretrained (recorded in the weights file's metadata)."""

    steps: int = 3000  # training steps
    batch_size: int = 128  # captioned pictures per step
    lr: float = 2e-3  # peak learning rate (AdamW)
    weight_decay: float = 0.05  # AdamW's
    warmup_steps: int = 100  # linear warm-up, then cosine decay
    pool: int = 12000  # captioned pictures rendered once and reused
    distractors: int = 1  # at most this many small other objects per picture
    groups: float = 0.25  # share of photos of 2-3 objects captioned with all of them
    seed: int = 0  # of the pictures and the initial weights
    eval_images: int = 600  # held-out pictures for the zero-shot accuracy
    scene_batch: int = 16  # (ours) multi-object scenes per step for the region loss (0: off)
    scene_pool: int = 3000  # scenes rendered once (fresh seeds: no dataset image)
    scene_size: int = 128  # px: the side DPSeg trains at (a 4 x 4 dense map for ConvNeXt)
    scene_weight: float = 1.0  # weight of the region loss beside the picture-caption loss

    def __post_init__(self) -> None:
        # SettingError: a user error (one line, exit status 2) and a ValueError
        import dataclasses
        import math

        def option(name: str) -> str:
            return f"--{name.replace('_', '-')} {getattr(self, name)!r}"

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(value, bool) or not isinstance(value, int)):
                raise SettingError(f"{option(f.name)}: must be a whole number")
            if f.type in ("float", float) and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise SettingError(f"{option(f.name)}: must be a finite number")
        for name in ("steps", "batch_size", "pool", "eval_images"):
            if getattr(self, name) < 1:
                raise SettingError(
                    f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1"
                )
        for name, most in (("pool", 200_000), ("scene_pool", 50_000), ("scene_size", 1024)):
            if getattr(self, name) > most:  # ours: rendered and held in memory at once
                raise SettingError(f"{option(name)}: must be at most {most} (held in memory)")
        for name in ("warmup_steps", "distractors", "seed", "scene_batch", "scene_pool"):
            if getattr(self, name) < 0:
                raise SettingError(f"{option(name)}: must be >= 0")
        if self.lr <= 0:
            raise SettingError(f"--lr {self.lr}: must be > 0")
        if self.weight_decay < 0:
            raise SettingError(f"{option('weight_decay')}: must be >= 0")
        if self.scene_weight < 0:
            raise SettingError(f"{option('scene_weight')}: must be >= 0")
        if self.scene_size < 32 or self.scene_size % 32:
            raise SettingError(f"{option('scene_size')}: must be a multiple of 32 (>= 32)")
        if self.scene_batch and self.scene_batch > self.scene_pool:
            raise SettingError(
                f"{option('scene_batch')}: must be at most --scene-pool {self.scene_pool}"
            )
        if not 0 <= self.groups <= 1:
            raise SettingError(
                f"{option('groups')}: must be a share in [0, 1] (0.25: a quarter of the photos "
                "show 2-3 objects)"
            )
