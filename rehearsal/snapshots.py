"""Rehearsal snapshots: every hub preset (and SDXL-Turbo) as a folder in its hub's own layout,
with the published configuration files (``rehearsal/published/``, sources in its SOURCES.md)
and random weights at the real sizes, put into a local hub cache (``rehearsal.hub_cache``).

    python -m rehearsal.snapshots --home ~/.cache/dpseg-rehearsal           # full size
    python -m rehearsal.snapshots --home /tmp/h --scale reduced               # small numbers

A snapshot is written at the preset's pinned revision, so the preset loads it exactly as it would
load its download (``HF_HOME=HOME HF_HUB_OFFLINE=1``); dino.txt's two files, which come from
Meta and not from the hub, go to ``HOME/dinotxt-l16/`` under their official names (pass that
folder as the encoder weights, as a user would).

Ours: the weights are stored in float16 (half the disk of the float32 files most of these
repositories publish; every loader here casts them to the model's float32), drawn by torch's
initialisers under a fixed seed. ``reduced`` writes the same files in the same layout from the
project's tiny architectures (``tiny-convnext`` / ``tiny-vit``, ``tiny-sd`` / ``tiny-sdxl``,
``tiny-dinotxt``), so ``make test`` runs the loaders on them in seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from pretrained.dinotxt import DINOTXT_FILES
from pretrained.presets import get_encoder_preset, get_generator_preset
from prompt_bank.card import HF_LICENSES
from rehearsal.folders import diffusers_folder, open_clip_folder
from rehearsal.hub_cache import write_snapshot

PUBLISHED = Path(__file__).resolve().parent / "published"
Scale = Literal["full", "reduced"]


@dataclass(frozen=True)
class Snapshot:
    """One model to rehearse: the name a user types and what it is."""

    name: str  # the preset (or open name) it serves
    kind: Literal["open_clip", "diffusers", "dinotxt"]
    repo_id: str | None  # the hub repository (None: dino.txt's files, not on the hub)
    revision: str | None  # the pinned revision (None: the files' content revision)
    tiny: str  # the tiny preset whose architecture the reduced scale writes


SNAPSHOTS = (
    Snapshot("convnext-b-laion", "open_clip", None, None, "tiny-convnext"),
    Snapshot("convnext-l-laion", "open_clip", None, None, "tiny-convnext"),
    Snapshot("vit-b16-openai", "open_clip", None, None, "tiny-vit"),
    Snapshot("sd15", "diffusers", None, None, "tiny-sd"),
    Snapshot("sd21", "diffusers", None, None, "tiny-sd"),
    Snapshot("sd-turbo", "diffusers", None, None, "tiny-sd"),
    Snapshot("stabilityai/sdxl-turbo", "diffusers", "stabilityai/sdxl-turbo", None, "tiny-sdxl"),
    Snapshot("dinotxt-l16", "dinotxt", None, None, "tiny-dinotxt"),
)


def snapshot_named(name: str) -> Snapshot:
    for s in SNAPSHOTS:
        if s.name == name:
            return s
    raise KeyError(f"no rehearsal snapshot {name!r}; known: {', '.join(s.name for s in SNAPSHOTS)}")


def repo_and_revision(snapshot: Snapshot) -> tuple[str | None, str | None]:
    """Where the preset's loader looks: its hub repository and pinned revision."""
    if snapshot.kind == "open_clip":
        preset = get_encoder_preset(snapshot.name)
        return preset.hub_id, preset.revision
    if snapshot.kind == "diffusers" and snapshot.repo_id is None:
        preset = get_generator_preset(snapshot.name)
        return preset.model_id, preset.revision
    return snapshot.repo_id, snapshot.revision


def published_folder(repo_id: str) -> Path:
    return PUBLISHED / repo_id.replace("/", "--")


# The licences the repositories' model cards declare, as the hub writes them: the presets' from
# the bank card's table, SDXL-Turbo's (an open name) here.
SDXL_TURBO_LICENSE = ("other", "sai-nc-community")


# (ours) files no public copy was found of (published/SOURCES.md): derived from the model they
# were distilled from, with what differs. SD-Turbo is SD 2.1 distilled at 512 px (its model
# card): SD 2.1's UNet config at a 64-latent side, and SD 2.1's tokenizer.
_SD21 = "stabilityai/stable-diffusion-2-1"
DERIVED = {
    ("stabilityai/sd-turbo", "unet/config.json"): (_SD21, {"sample_size": 64}),
    ("stabilityai/sd-turbo", "tokenizer/tokenizer_config.json"): (_SD21, {}),
    ("stabilityai/sd-turbo", "tokenizer/special_tokens_map.json"): (_SD21, {}),
}


def published_config(repo_id: str, path: str) -> dict:
    """A published configuration file of ``repo_id``, or its :data:`DERIVED` stand-in."""
    file = published_folder(repo_id) / path
    if file.is_file():
        return json.loads(file.read_text())
    if (repo_id, path) in DERIVED:
        source, changes = DERIVED[(repo_id, path)]
        return {**published_config(source, path), **changes}
    raise FileNotFoundError(f"no published {path} of {repo_id} in {PUBLISHED}")


def _half(module: torch.nn.Module) -> torch.nn.Module:
    """float16 weights (diffusers' advice to cast at loading is for inference, not files)."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        return module.to(torch.float16)
    finally:
        diffusers_logging.set_verbosity(level)


# ---------------------------------------------------------------------------------------------
# open_clip


def _open_clip_files(snapshot: Snapshot, scale: Scale, out: Path) -> None:
    import open_clip

    from pretrained.backbone import clip_architecture, open_clip_architecture

    preset = get_encoder_preset(snapshot.name)
    if scale == "reduced":
        tiny = get_encoder_preset(snapshot.tiny)
        model, model_cfg = clip_architecture(tiny), tiny.model_cfg
    else:
        published = published_folder(preset.hub_id) / "open_clip_config.json"
        if published.is_file():
            model_cfg = json.loads(published.read_text())["model_cfg"]
        else:  # (ours, published/SOURCES.md) open_clip's own config of the model, as the hub
            # files of its siblings hold it, with the QuickGELU flag of OpenAI's weights
            model_cfg = open_clip.get_model_config(preset.arch)
            if preset.quick_gelu:
                model_cfg["quick_gelu"] = True
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip_architecture(preset)
    licence = ("mit", None) if preset.license.startswith("MIT") else ("other", None)
    open_clip_folder(_half(model), model_cfg, out, preset.mean, preset.std, licence, preset.name)


# ---------------------------------------------------------------------------------------------
# diffusers


def _full_pipeline(repo_id: str):
    """The pipeline of a repository's published configs, with torch's random initial weights."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from prompt_bank.generator import clip_tokenizer

    def config(path: str) -> dict:
        return published_config(repo_id, path)

    index = config("model_index.json")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        parts = {
            "unet": diffusers.UNet2DConditionModel.from_config(config("unet/config.json")),
            "vae": diffusers.AutoencoderKL.from_config(config("vae/config.json")),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**config("text_encoder/config.json"))),
            "tokenizer": clip_tokenizer(),
        }
        if "text_encoder_2" in index:
            parts["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig(**config("text_encoder_2/config.json"))
            )
            parts["tokenizer_2"] = clip_tokenizer()
    scheduler_cfg = config("scheduler/scheduler_config.json")
    parts["scheduler"] = getattr(diffusers, scheduler_cfg["_class_name"]).from_config(scheduler_cfg)
    if index["_class_name"] == "StableDiffusionXLPipeline":
        return diffusers.StableDiffusionXLPipeline(**parts)
    return diffusers.StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def _diffusers_files(snapshot: Snapshot, scale: Scale, out: Path) -> None:
    from prompt_bank.generator import create_generator

    repo_id, _ = repo_and_revision(snapshot)
    if scale == "reduced":
        pipeline = create_generator(snapshot.tiny).pipeline
    else:
        pipeline = _full_pipeline(repo_id)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(pipeline, name, None) is not None:
            _half(getattr(pipeline, name))
    license_ = HF_LICENSES.get(snapshot.name, SDXL_TURBO_LICENSE)
    diffusers_folder(pipeline, out, license_, snapshot.name)
    del pipeline
    if scale == "full":  # the published files themselves, over what save_pretrained wrote
        for path in sorted(published_folder(repo_id).rglob("*")):
            if path.is_file():
                target = out / path.relative_to(published_folder(repo_id))
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
        for (repo, path), _ in DERIVED.items():
            if repo == repo_id and not (published_folder(repo_id) / path).is_file():
                (out / path).write_text(json.dumps(published_config(repo, path), indent=2))


# ---------------------------------------------------------------------------------------------
# dino.txt


def _dinotxt_files(snapshot: Snapshot, scale: Scale, out: Path) -> None:
    from pretrained.dinotxt import dinotxt_config
    from rehearsal.dinotxt_files import official_backbone_state, official_dinotxt_state

    preset = get_encoder_preset(snapshot.tiny if scale == "reduced" else snapshot.name)
    config = dinotxt_config(preset)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    for state, name in (
        (official_backbone_state, DINOTXT_FILES[0]),
        (official_dinotxt_state, DINOTXT_FILES[1]),
    ):
        torch.save(state(config, generator, torch.float16), out / name)


WRITERS = {"open_clip": _open_clip_files, "diffusers": _diffusers_files, "dinotxt": _dinotxt_files}


def build_snapshot(snapshot: Snapshot, home: str | Path, scale: Scale = "full") -> Path:
    """Write ``snapshot`` into the hub cache at ``home`` (dino.txt: ``home/dinotxt-l16``);
    returns the folder the loader will read."""
    home = Path(home)
    if snapshot.kind == "dinotxt":
        folder = home / snapshot.name
        if folder.exists():
            shutil.rmtree(folder)
        _dinotxt_files(snapshot, scale, folder)
        return folder
    repo_id, revision = repo_and_revision(snapshot)
    with tempfile.TemporaryDirectory(dir=home if home.exists() else None) as tmp:
        WRITERS[snapshot.kind](snapshot, scale, Path(tmp) / "files")
        return write_snapshot(home, repo_id, Path(tmp) / "files", revision=revision, move=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True, help="the hub cache's HF_HOME")
    parser.add_argument("--scale", choices=("full", "reduced"), default="full")
    parser.add_argument("--only", nargs="*", help="these snapshots (default: all)")
    args = parser.parse_args(argv)
    Path(args.home).mkdir(parents=True, exist_ok=True)
    chosen = [snapshot_named(n) for n in args.only] if args.only else list(SNAPSHOTS)
    for i, snapshot in enumerate(chosen, 1):
        start = time.perf_counter()
        folder = build_snapshot(snapshot, args.home, args.scale)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**30
        print(
            f"[{i}/{len(chosen)}] {snapshot.name}: {folder} ({size:.2f} GiB) in "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
