"""Open model names (pretrained.names): hub repositories and folders loaded through the code that
loads a download, from a real local hub cache (rehearsal.hub_cache) in offline mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pretrained.backbone import create_clip
from pretrained.names import resolve_encoder, resolve_generator
from pretrained.presets import PresetError, get_encoder_preset
from prompt_bank.generator import create_generator
from rehearsal.folders import diffusers_folder, open_clip_folder
from rehearsal.hub_cache import write_snapshot

ROOT = Path(__file__).resolve().parents[1]
CLIP_REPO, SDXL_REPO, SD_REPO = (
    "dpseg-rehearsal/tiny-clip",
    "dpseg-rehearsal/tiny-sdxl-turbo",
    "dpseg-rehearsal/tiny-sd",
)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A hub cache with a tiny open_clip repository (tiny-convnext's weights), a tiny SDXL
    'turbo' pipeline and a tiny SD pipeline; the folders they came from are kept too."""
    root = tmp_path_factory.mktemp("hub")
    preset = get_encoder_preset("tiny-convnext")
    clip = create_clip(preset)
    folders = {
        "clip": open_clip_folder(
            clip.model, preset.model_cfg, root / "src/clip", preset.mean, preset.std
        ),
        "sdxl": diffusers_folder(
            create_generator("tiny-sdxl").pipeline, root / "src/sdxl", ("openrail++", None)
        ),
        "sd": diffusers_folder(create_generator("tiny-sd").pipeline, root / "src/sd"),
    }
    home = root / "hf_home"
    snapshots = {
        key: write_snapshot(home, repo, folders[key])
        for key, repo in (("clip", CLIP_REPO), ("sdxl", SDXL_REPO), ("sd", SD_REPO))
    }
    return {"home": home, "folders": folders, "snapshots": snapshots, "clip": clip}


def cli(hub, *args, check=True):
    env = dict(os.environ, HF_HOME=str(hub["home"]), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def bank_attrs(bank: Path) -> dict:
    return json.loads((bank / "zarr.json").read_text())["attributes"]


def test_bank_from_hub_names_records_ids_and_revisions(hub, tmp_path):
    bank = tmp_path / "bank.zarr"
    cli(
        hub,
        "bank",
        "build",
        "--vocab",
        "cat; dog",
        "--templates",
        "single",
        "--quiet",
        "--generator",
        SDXL_REPO,
        "--encoder",
        f"hf-hub:{CLIP_REPO}",
        "--out",
        str(bank),
    )
    attrs = bank_attrs(bank)
    gen, enc = attrs["generator"], attrs["encoder"]
    assert gen["model_id"] == SDXL_REPO and gen["family"] == "sdxl"
    assert gen["revision"] == hub["snapshots"]["sdxl"].name
    assert gen["license"] == "openrail++"  # the repository's card
    # a "turbo" name: 1 step, no guidance; the size from the UNet (8) and VAE (x 8) configs
    assert (gen["steps"], gen["guidance"], gen["height"], gen["width"]) == (1, 0.0, 64, 64)
    assert gen["fingerprint"] == create_generator("tiny-sdxl").fingerprint
    assert enc["arch"] == f"hf-hub:{CLIP_REPO}"
    assert enc["revision"] == hub["snapshots"]["clip"].name
    assert enc["fingerprint"] == hub["clip"].fingerprint  # the very weights written
    card = (bank / "README.md").read_text()
    for text in (SDXL_REPO, CLIP_REPO, gen["revision"], enc["revision"]):
        assert text in card
    # the bank verifies by rebuilding an item from the recorded names
    result = cli(hub, "bank", "verify", str(bank), "--regenerate", "1")
    assert "max diff 0.00e+00" in result.stdout + result.stderr


def test_bank_from_folders_with_overrides(hub, tmp_path):
    bank = tmp_path / "bank.zarr"
    folders = hub["folders"]
    cli(
        hub,
        "bank",
        "build",
        "--vocab",
        "cat; dog",
        "--templates",
        "single",
        "--quiet",
        "--generator",
        str(folders["sd"]),
        "--encoder",
        str(folders["clip"]),
        "--steps",
        "2",
        "--guidance",
        "3",
        "--resolution",
        "48",
        "--out",
        str(bank),
    )
    gen, enc = bank_attrs(bank)["generator"], bank_attrs(bank)["encoder"]
    assert gen["model_id"] == str(folders["sd"].resolve()) and gen["family"] == "sd"
    assert (gen["steps"], gen["guidance"], gen["height"], gen["width"]) == (2, 3.0, 48, 48)
    assert enc["arch"] == f"local-dir:{folders['clip'].resolve()}"
    assert enc["fingerprint"] == hub["clip"].fingerprint


def test_generator_defaults_per_family(hub):
    sd = resolve_generator(str(hub["folders"]["sd"]))
    assert (sd.family, sd.steps, sd.guidance, sd.height, sd.scheduler) == (
        "sd",
        25,
        7.5,
        64,
        "DPMSolverMultistepScheduler",
    )
    assert sd.origin == "local-dir" and sd.offline


def test_open_clip_model_tag_resolves_to_its_hub_repository():
    convnext = resolve_encoder("convnext_base_w:laion2b_s13b_b82k_augreg")
    assert (convnext.family, convnext.image_size, convnext.levels) == (
        "convnext",
        256,
        (0, 1, 2, 3),
    )
    assert convnext.hub_id == "laion/CLIP-convnext_base_w-laion2B-s13B-b82K-augreg"
    vit = resolve_encoder("ViT-B-16:openai")
    assert (vit.family, vit.levels, vit.quick_gelu) == ("vit", (2, 5, 8, 11), True)
    # the preset of the paper's setting and the open name are the same model
    assert vit.hub_id == get_encoder_preset("vit-b16-openai").hub_id


def test_dpseg_on_a_hub_encoder_records_its_revision(hub, monkeypatch):
    from model.factory import build_dpseg

    monkeypatch.setenv("HF_HOME", str(hub["home"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub["home"] / "hub"))
    parts = build_dpseg(f"hf-hub:{CLIP_REPO}", num_templates=1)
    assert parts.fingerprint == hub["clip"].fingerprint
    assert parts.preset.revision == hub["snapshots"]["clip"].name


@pytest.mark.parametrize(
    "option, name, expected",
    [
        ("--encoder", "convnext-b-laoin", "did you mean convnext-b-laion"),
        ("--encoder", "ViT-B-16:opneai", "did you mean ViT-B-16:openai"),
        ("--encoder", "ViT-B-16", "needs its pretrained tag: ViT-B-16:openai"),
        ("--encoder", "laion/CLIP-x", "written hf-hub:laion/CLIP-x"),
        (
            "--encoder",
            "EVA02-B-16:merged2b_s8b_b131k",
            "the timm model 'eva02_base_patch16_clip_224'",
        ),
        ("--generator", "sd-trubo", "did you mean sd-turbo"),
    ],
)
def test_a_name_neither_preset_nor_model_is_one_line_with_the_closest(option, name, expected):
    resolve = resolve_encoder if option == "--encoder" else resolve_generator
    with pytest.raises(PresetError) as caught:
        resolve(name)
    message = str(caught.value)
    assert message.startswith(f"{option} {name!r}") and expected in message
    assert "\n" not in message


def test_the_command_line_ends_in_that_line_before_loading_anything(hub, tmp_path):
    for option, name, expected in (
        ("--encoder", "convnext-b-laoin", "did you mean convnext-b-laion"),
        ("--encoder", "hf-hub:dpseg-rehearsal/absent", "not in the local cache"),
    ):
        result = cli(
            hub,
            "bank",
            "build",
            "--vocab",
            "cat",
            "--templates",
            "single",
            option,
            name,
            "--out",
            str(tmp_path / "b.zarr"),
            check=False,
        )
        assert result.returncode == 2
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "b.zarr").exists()


def test_a_folder_without_the_config_is_refused(tmp_path):
    with pytest.raises(PresetError, match=r"has no open_clip_config\.json"):
        resolve_encoder(str(tmp_path))
    with pytest.raises(PresetError, match=r"has no model_index\.json"):
        resolve_generator(str(tmp_path))


def test_random_weights_of_a_named_generator_are_refused_in_one_line(hub):
    from common.errors import SettingError

    with pytest.raises(
        SettingError, match=r"^--random-weights with generator .*\(drop --random-weights\)$"
    ):
        create_generator(str(hub["folders"]["sd"]), random_weights=True)
