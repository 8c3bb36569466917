"""Open model names: any open_clip encoder or diffusers generator, beside the presets.

The presets (``pretrained.presets``) stay the short names of the papers' settings. Any other
model a user has is named the way its own library names it:

    encoder    convnext-b-laion                      a preset (cli.py presets)
               convnext_base_w:laion2b_s13b_b82k     an open_clip MODEL:TAG (open_clip.list_pretrained())
               hf-hub:laion/CLIP-ViT-B-16-laion2B-s34B-b88K[@REV]   an open_clip repository on the hub
               ./my_clip  or  local-dir:./my_clip     a folder with open_clip_config.json + weights
    generator  sd15                                   a preset
               stabilityai/sdxl-turbo[@REV]           a diffusers repository on the hub
               ./my_sd                                a folder with model_index.json (save_pretrained)

Each resolves to an ``EncoderPreset`` / ``GeneratorPreset`` built from the model's own
configuration files (read from the hub cache or the folder; nothing is downloaded before a file
is needed, and offline a missing file ends in one line), so everything downstream (banks, cards,
checkpoints, fingerprints) treats a named model as it treats a preset. Defaults a model's files do
not give are ours, per family (:data:`GENERATOR_DEFAULTS`, ``EncoderFamily.default_levels``).
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from dataclasses import replace
from pathlib import Path

from pretrained.presets import (
    ENCODERS,
    GENERATORS,
    OPENAI_DATASET_MEAN,
    OPENAI_DATASET_STD,
    EncoderPreset,
    GeneratorPreset,
    PresetError,
)

HF_HUB = "hf-hub:"
LOCAL_DIR = "local-dir:"
ENCODER_FORMS = (
    "a preset (cli.py presets), an open_clip MODEL:TAG (e.g. "
    "convnext_base_w:laion2b_s13b_b82k_augreg), hf-hub:ORG/NAME[@REVISION], or a folder with "
    "open_clip_config.json"
)
GENERATOR_FORMS = (
    "a preset (cli.py presets), a diffusers repository ORG/NAME[@REVISION] (e.g. "
    "stabilityai/sdxl-turbo), or a folder with model_index.json"
)
# diffusers pipeline classes dpseg drives, and the family each is (prompt_bank.generator)
PIPELINE_FAMILIES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}
# (ours) sampling defaults per family where a repository gives none: SD 1.x/2.x as the sd15
# preset (25 DPM-Solver++ steps, guidance 7.5); SDXL's pipeline default guidance 5.0; the
# distilled Turbo models 1 step without guidance (their model cards: 1-4 steps, guidance 0).
GENERATOR_DEFAULTS = {
    "sd": {"scheduler": "DPMSolverMultistepScheduler", "steps": 25, "guidance": 7.5},
    "sdxl": {"scheduler": "DPMSolverMultistepScheduler", "steps": 25, "guidance": 5.0},
    "turbo": {"scheduler": "default", "steps": 1, "guidance": 0.0, "max_steps": 4},
}


def split_revision(name: str) -> tuple[str, str | None]:
    """``ORG/NAME@REV`` -> (``ORG/NAME``, ``REV``); no ``@``: (name, None)."""
    repo, at, revision = name.partition("@")
    return repo, (revision or None) if at else None


def snapshot_revision(path: str | Path) -> str | None:
    """The commit of a file in the Hugging Face cache (``.../snapshots/<commit>/file``)."""
    parts = Path(path).parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def closest(name: str, candidates: list[str], n: int = 3) -> str:
    """'; did you mean a, b?' for the names closest to ``name`` ('' when none is close)."""
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    return f"; did you mean {', '.join(found)}?" if found else ""


@functools.lru_cache(maxsize=1)
def _open_clip_names() -> list[str]:
    import open_clip

    return [f"{model}:{tag}" for model, tag in open_clip.list_pretrained()]


def _card_license(folder: Path) -> str | None:
    """The ``license:`` of a model card's front matter (README.md), if the folder has one."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(errors="replace")
    match = re.match(r"---\s*\n(.*?)\n---", text, re.S)
    if match:
        found = re.search(r"^license:\s*(\S.*)$", match.group(1), re.M)
        named = re.search(r"^license_name:\s*(\S.*)$", match.group(1), re.M)
        if found and found.group(1).strip() == "other" and named:
            return f"other ({named.group(1).strip()})"
        if found:
            return found.group(1).strip()
    return None


def _hub_config(repo: str, revision: str | None, filename: str, what: str, option: str) -> Path:
    from pretrained.hub import hub_file

    return Path(hub_file(repo, (filename,), what=what, local_option=option, revision=revision))


# ---------------------------------------------------------------------------------------------
# encoders


def encoder_family(name: str, vision_cfg: dict):
    """The family (``pretrained.families``) whose image tower the config describes: ``vit``
    (open_clip's VisionTransformer), ``convnext`` (a timm ConvNeXt trunk), ``resnet`` (open_clip's
    ModifiedResNet); any other image tower is refused in one line."""
    from pretrained.families import families

    known = families()
    for family in known.values():
        if family.matches(vision_cfg):
            return family
    timm_name = vision_cfg.get("timm_model_name")
    tower = f"the timm model {timm_name!r}" if timm_name else "an image tower dpseg does not know"
    clip = [f.title.removeprefix("a ") for f in known.values() if f.hub_weights]
    raise PresetError(
        f"--encoder {name!r}: its image tower is {tower}; dpseg takes dense multi-level features "
        f"from {', '.join(clip)} (e.g. ViT-B-16:openai, convnext_base_w:laion2b_s13b_b82k_augreg, "
        "RN50:openai); a new family is one file in pretrained/families/ (docs/design.md §8.9)"
    )


def _encoder(name: str, model_cfg: dict, preprocess: dict, **fields) -> EncoderPreset:
    vision = model_cfg.get("vision_cfg", {})
    family = encoder_family(name, vision)
    size = vision.get("image_size", 224)
    return EncoderPreset(
        name=name,
        family=family.name,
        image_size=int(size[0] if isinstance(size, (list, tuple)) else size),
        levels=family.default_levels(vision),  # (ours, as the presets)
        description=f"{name} ({family.name}, open name)",
        quick_gelu=bool(model_cfg.get("quick_gelu", False) or preprocess.get("quick_gelu")),
        mean=tuple(preprocess.get("mean", OPENAI_DATASET_MEAN)),
        std=tuple(preprocess.get("std", OPENAI_DATASET_STD)),
        **fields,
    )


def _folder_encoder(name: str, config_path: Path, **fields) -> EncoderPreset:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise PresetError(f"--encoder {name!r}: {config_path} is not readable JSON ({e})") from None
    model_cfg = config.get("model_cfg", config)
    folder = config_path.parent
    license_ = _card_license(folder) or "unknown (not in the model's files: see its model card)"
    return _encoder(
        name,
        model_cfg,
        config.get("preprocess_cfg", {}),
        location=str(folder),
        license=license_,
        **fields,
    )


def resolve_encoder(name: str | EncoderPreset) -> EncoderPreset:
    """An encoder preset, or the preset-like description of an open name (module docstring).

    Raises:
        PresetError: neither a preset nor a loadable model (one line, with the closest names).
        pretrained.hub.WeightsUnavailableError: a hub name whose files are not in the cache and
            cannot be downloaded.
    """
    if isinstance(name, EncoderPreset):
        return name
    if name in ENCODERS:
        return ENCODERS[name]
    if name.startswith(HF_HUB):
        repo, revision = split_revision(name[len(HF_HUB) :])
        path = _hub_config(
            repo,
            revision,
            "open_clip_config.json",
            f"--encoder {name!r}",
            "a folder (--encoder DIR)",
        )
        return _folder_encoder(
            name,
            path,
            arch=f"{HF_HUB}{repo}",
            pretrained="hf-hub",
            origin="hf-hub",
            revision=snapshot_revision(path) or revision,
        )
    folder = Path(name.removeprefix(LOCAL_DIR)).expanduser()
    if name.startswith(LOCAL_DIR) or folder.is_dir():
        if not (folder / "open_clip_config.json").is_file():
            raise PresetError(
                f"--encoder {name!r}: "
                + (
                    "no such folder"
                    if not folder.is_dir()
                    else "the folder has no open_clip_config.json"
                )
                + " (an open_clip model folder holds open_clip_config.json and its weights, as "
                "open_clip's push_to_hf_hub writes them)"
            )
        return _folder_encoder(
            name,
            folder / "open_clip_config.json",
            arch=f"{LOCAL_DIR}{folder.resolve()}",
            pretrained="local-dir",
            origin="local-dir",
        )
    model, colon, tag = name.partition(":")
    if colon:
        import open_clip

        if tag in open_clip.list_pretrained_tags_by_model(model):
            pretrained = open_clip.get_pretrained_cfg(model, tag)
            model_cfg = open_clip.get_model_config(model) or {}
            hub = (pretrained.get("hf_hub") or "").rstrip("/")
            return _encoder(
                name,
                model_cfg,
                pretrained,
                arch=model,
                pretrained=tag,
                origin="open_clip",
                license=f"see the model card of {hub or model}",
            )
    hint = ""
    if "/" in name and not folder.exists():
        hint = f"; a hub repository is written hf-hub:{name}"
    elif not colon and name in _open_clip_models():
        import open_clip

        tags = ", ".join(f"{name}:{t}" for t in open_clip.list_pretrained_tags_by_model(name)[:4])
        hint = f"; an open_clip model needs its pretrained tag: {tags or 'it has none'}"
    raise PresetError(
        f"--encoder {name!r} is not {ENCODER_FORMS}"
        + (hint or closest(name, [*ENCODERS, *_open_clip_names()]))
    )


@functools.lru_cache(maxsize=1)
def _open_clip_models() -> frozenset[str]:
    import open_clip

    return frozenset(open_clip.list_models())


# ---------------------------------------------------------------------------------------------
# generators


def _read_json(path: Path, name: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PresetError(f"--generator {name!r}: {path} is not readable JSON ({e})") from None


def _generator(name: str, index: dict, unet: dict, vae: dict, **fields) -> GeneratorPreset:
    cls = index.get("_class_name", "")
    family = PIPELINE_FAMILIES.get(cls)
    if family is None:
        raise PresetError(
            f"--generator {name!r} is a {cls or 'pipeline without _class_name'}; dpseg drives "
            f"{' and '.join(PIPELINE_FAMILIES)} (SD 1.x, 2.x, SD-Turbo, SDXL, SDXL-Turbo)"
        )
    # the pipelines' own default size: the UNet's latent side times the VAE's downsampling
    scale = 2 ** (len(vae.get("block_out_channels", (0, 0, 0, 0))) - 1)
    side = int(unet.get("sample_size", 64)) * scale
    defaults = GENERATOR_DEFAULTS["turbo" if "turbo" in name.lower() else family]
    return GeneratorPreset(
        name=name,
        height=side,
        width=side,
        family=family,
        description=f"{name} ({cls}, open name), {side}x{side}, {defaults['steps']} steps, "
        f"guidance {defaults['guidance']}",
        **defaults,
        **fields,
    )


def resolve_generator(name: str | GeneratorPreset) -> GeneratorPreset:
    """A generator preset, or the preset-like description of a diffusers repository id or
    folder (module docstring); errors as :func:`resolve_encoder`'s."""
    if isinstance(name, GeneratorPreset):
        return name
    if name in GENERATORS:
        return GENERATORS[name]
    folder = Path(name).expanduser()
    if folder.is_dir():
        index = folder / "model_index.json"
        if not index.is_file():
            raise PresetError(
                f"--generator {name!r}: the folder has no model_index.json (a diffusers "
                "pipeline folder, as save_pretrained or hf download writes it)"
            )
        parts = [
            _read_json(folder / f, name)
            for f in ("model_index.json", "unet/config.json", "vae/config.json")
        ]
        license_ = _card_license(folder) or "unknown (not in the model's files: see its model card)"
        return _generator(
            name, *parts, model_id=str(folder.resolve()), origin="local-dir", license=license_
        )
    repo, revision = split_revision(name)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        what, option = f"--generator {name!r}", "a folder (--generator DIR)"
        files = [
            _hub_config(repo, revision, f, what, option)
            for f in ("model_index.json", "unet/config.json", "vae/config.json")
        ]
        parts = [_read_json(f, name) for f in files]
        license_ = _card_license(files[0].parent)
        return _generator(
            name,
            *parts,
            model_id=repo,
            origin="hub",
            revision=snapshot_revision(files[0]) or revision,
            license=license_ or f"see the model card of {repo}",
        )
    raise PresetError(
        f"--generator {name!r} is not {GENERATOR_FORMS}" + closest(name, list(GENERATORS))
    )


def with_sampling(preset: GeneratorPreset, resolution: int | None) -> GeneratorPreset:
    """The generator at another square resolution (``--resolution``; a multiple of 8)."""
    if resolution is None or resolution == preset.height == preset.width:
        return preset
    return replace(preset, height=resolution, width=resolution)
