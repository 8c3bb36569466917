"""The rehearsal in its reduced form (make rehearse's files and structure, small numbers): the
hub presets' loaders run on snapshots in a real local hub cache, offline, so they cannot break
unseen. The full-size run is ``make rehearse`` (docs/results.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rehearsal.hub_cache import repo_folder
from rehearsal.snapshots import SNAPSHOTS, build_snapshot, published_config, repo_and_revision

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("rehearsal")
    for snapshot in SNAPSHOTS:
        build_snapshot(snapshot, home, scale="reduced")
    return home


def test_snapshots_sit_at_the_presets_pinned_revisions(home):
    for snapshot in SNAPSHOTS:
        if snapshot.kind == "dinotxt":
            assert sorted(p.name for p in (home / snapshot.name).iterdir())[0].startswith("dinov3_")
            continue
        repo, revision = repo_and_revision(snapshot)
        folder = repo_folder(home, repo)
        main = (folder / "refs" / "main").read_text()
        assert revision is None or main == revision
        files = {
            p.relative_to(folder / "snapshots" / main).as_posix()
            for p in (folder / "snapshots" / main).rglob("*")
            if p.is_file()
        }
        expected = {
            "open_clip": {"open_clip_config.json", "open_clip_model.safetensors"},
            "diffusers": {
                "model_index.json",
                "unet/config.json",
                "vae/config.json",
                "scheduler/scheduler_config.json",
            },
        }[snapshot.kind]
        assert expected <= files, (snapshot.name, expected - files)


def test_sd_turbo_unet_config_is_derived_from_sd21_at_512_px():
    unet = published_config("stabilityai/sd-turbo", "unet/config.json")
    sd21 = published_config("stabilityai/stable-diffusion-2-1", "unet/config.json")
    assert unet["sample_size"] == 64 and sd21["sample_size"] == 96
    assert {k: v for k, v in unet.items() if k != "sample_size"} == {
        k: v for k, v in sd21.items() if k != "sample_size"
    }


def run_rehearsal(home: Path, tmp_path: Path, rows: list[str]):
    """``python -m rehearsal.run --scale reduced --rows ROWS``: (its table, the process)."""
    out = tmp_path / "rows.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rehearsal.run",
            "--home",
            str(home),
            "--scale",
            "reduced",
            "--rows",
            *rows,
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ),
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    table = json.loads(out.read_text())
    assert list(table) == rows
    return table, result


def test_reduced_rehearsal_runs_the_generator_and_vip_rows(home, tmp_path):
    """A generator of each family (SD preset, SDXL open name) and VIP on dino.txt's two files
    (make test; the DPSeg row, 35 s more, is the e2e test below)."""
    table, _ = run_rehearsal(home, tmp_path, ["sd15", "stabilityai/sdxl-turbo", "dinotxt-l16"])
    assert table["sd15"]["shapes"].startswith("image 3x512x512; levels ")
    assert table["stabilityai/sdxl-turbo"]["shapes"].startswith("image 3x64x64")
    assert table["dinotxt-l16"]["shapes"] == "logits 1x20x4x4"


@pytest.mark.e2e  # 70 s: make test-all (CI) runs it
def test_reduced_rehearsal_runs_every_kind_of_row(home, tmp_path):
    """A generator of each family (SD preset, SDXL open name), DPSeg fit + test from a paper
    config on a hub encoder, and VIP on dino.txt's two files: the make rehearse table."""
    rows = ["sd15", "stabilityai/sdxl-turbo", "convnext-b-laion", "dinotxt-l16"]
    table, result = run_rehearsal(home, tmp_path, rows)
    # the generators' real resolutions (their configs), 1 step, encoded into 4 levels
    assert table["sd15"]["shapes"].startswith("image 3x512x512; levels ")
    assert len(table["sd15"]["shapes"].split("levels ")[1].split()) == 4
    assert table["stabilityai/sdxl-turbo"]["shapes"].startswith("image 3x64x64")
    assert table["convnext-b-laion"]["what"] == "fit 1 step + test rounds I+II on 1 image"
    assert table["dinotxt-l16"]["shapes"] == "logits 1x20x4x4"
    assert "| convnext-b-laion |" in result.stdout
