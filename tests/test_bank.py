"""The prompt bank: format v2 layout, determinism, resume after SIGKILL, several processes, tools."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import ROOT, run_cli

from data.templates import load_templates
from data.vocabulary import load_vocabulary
from prompt_bank.build import BuildConfig, build_bank, item_seed
from prompt_bank.format import BankFormatError, BankMismatchError
from prompt_bank.store import Bank

# A small bank: 8 classes x 3 templates x 2 images, 4 shards of 2 classes, batches of 4.
SMALL = [
    "--vocab",
    "synthetic",
    "--preset",
    "tiny",
    "--templates",
    "imagenet80:3",
    "--images-per-prompt",
    "2",
    "--classes-per-shard",
    "2",
    "--batch-size",
    "4",
    "--cpu-threads",
    "1",
    "--quiet",
]


def small_config(**overrides) -> BuildConfig:
    fields = dict(
        vocabulary=load_vocabulary("synthetic"),
        templates=load_templates("imagenet80:3"),
        images_per_prompt=2,
        generator="tiny-sd",
        encoder="tiny-convnext",
        classes_per_shard=2,
        batch_size=4,
        cpu_threads=1,
        progress=False,
    )
    return BuildConfig(**{**fields, **overrides})


def arrays_of(location) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(location), mode="r")
    out = {}
    for sub in ("text", "visual"):
        for name, array in group[sub].arrays():
            out[f"{sub}/{name}"] = array[:]
    return out


def assert_same_bank(a, b):
    x, y = arrays_of(a), arrays_of(b)
    assert sorted(x) == sorted(y)
    for path in x:
        assert x[path].dtype == y[path].dtype, path
        assert np.array_equal(x[path], y[path]), f"{path} differs"  # bit-identical
    ax = dict(zarr.open_group(str(a), mode="r").attrs)
    ay = dict(zarr.open_group(str(b), mode="r").attrs)
    for attrs in (ax, ay):  # when and how it was run, not what it holds
        attrs.pop("created"), attrs.pop("command", None)
    assert ax == ay


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted single-process build that other tests compare against."""
    location = tmp_path_factory.mktemp("ref") / "bank.zarr"
    summary = build_bank(small_config(keep_images=True), location)
    assert summary.items_done == summary.items_total == 48
    return location


def test_plain_zarr_reads_design_layout(reference):
    """The contract of docs/bank_format.md, read by plain zarr in a process that never imports
    dpseg."""
    code = """
import json, sys, zarr
g = zarr.open_group(sys.argv[1], mode="r")
out = {"attrs": dict(g.attrs), "arrays": {}}
for sub in ("text", "visual"):
    for name, a in g[sub].arrays():
        out["arrays"][f"{sub}/{name}"] = [list(a.shape), str(a.dtype), float(a[:].astype("float64").sum())]
print(json.dumps(out))
"""
    result = subprocess.run(
        [sys.executable, "-c", code, str(reference)], capture_output=True, text=True, cwd="/"
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    arrays = {k: (tuple(v[0]), v[1]) for k, v in seen["arrays"].items()}
    assert arrays == {
        "text/embeddings": ((8, 3, 64), "float32"),
        "visual/embeddings": ((8, 3, 2, 64), "float32"),
        "visual/level_1": ((8, 3, 2, 40), "float16"),
        "visual/level_2": ((8, 3, 2, 80), "float16"),
        "visual/level_3": ((8, 3, 2, 160), "float16"),
        "visual/level_4": ((8, 3, 2, 320), "float16"),
        "visual/images": ((8, 3, 2, 64, 64, 3), "uint8"),
        "visual/done": ((8, 3, 2), "bool"),
    }
    attrs = seen["attrs"]
    assert attrs["format"] == "dpseg-prompt-bank" and attrs["format_version"] == 2
    assert attrs["classes"] == load_vocabulary("synthetic").entries
    assert attrs["templates"] == load_templates("imagenet80:3")
    assert attrs["images_per_prompt"] == 2
    for key in (
        "preset",
        "model_id",
        "revision",
        "scheduler",
        "steps",
        "guidance",
        "height",
        "width",
        "base_seed",
        "dtype",
        "fingerprint",
    ):
        assert key in attrs["generator"], key
    for key in (
        "preset",
        "arch",
        "pretrained",
        "image_size",
        "levels",
        "embed_dim",
        "level_dims",
        "fingerprint",
    ):
        assert key in attrs["encoder"], key
    assert attrs["encoder"]["level_dims"] == [40, 80, 160, 320]
    assert attrs["builder"]["name"] == "dpseg" and attrs["created"]


def test_values_are_normalised_and_distinct(reference):
    data = arrays_of(reference)
    assert data["visual/done"].all()
    for path in ("text/embeddings", "visual/embeddings"):
        np.testing.assert_allclose(np.linalg.norm(data[path], axis=-1), 1.0, atol=1e-5)
    emb = data["visual/embeddings"].reshape(-1, 64)
    assert len(np.unique(emb.round(6), axis=0)) == len(emb)  # every item its own image
    assert data["visual/images"].std() > 1  # real pictures, not zeros
    assert np.isfinite(data["visual/level_4"].astype(np.float32)).all()


def test_same_command_same_bits(reference, tmp_path):
    build_bank(small_config(keep_images=True), tmp_path / "again.zarr")
    assert_same_bank(reference, tmp_path / "again.zarr")


def test_item_seed_is_a_pure_function():
    assert item_seed(0, "cat", 1, 2) == item_seed(0, "cat", 1, 2)
    seeds = {
        item_seed(s, c, p, n)
        for s in (0, 1)
        for c in ("pot", "pot, flowerpot")
        for p in (0, 1)
        for n in (0, 1)
    }
    assert len(seeds) == 16 and all(0 <= s < 2**63 for s in seeds)


def wait_for_done(location: Path, at_least: int, process, timeout: float = 120) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"the build ended before it could be killed: {process.stderr.read()}"
            )
        try:
            done = int(zarr.open_group(str(location), mode="r")["visual/done"][:].sum())
            if done >= at_least:
                return done
        except Exception:
            pass  # not created yet
        time.sleep(0.02)
    raise AssertionError("the build made no progress")


@pytest.mark.parametrize("kill_after", [1, 16])
def test_sigkill_and_resume_is_bit_identical(reference, tmp_path, kill_after):
    location = tmp_path / "killed.zarr"
    args = [
        sys.executable,
        str(ROOT / "cli.py"),
        "bank",
        "build",
        *SMALL,
        "--keep-images",
        "--flush-seconds",
        "0",
        "--out",
        str(location),
    ]
    process = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    done = wait_for_done(location, kill_after, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = int(zarr.open_group(str(location), mode="r")["visual/done"][:].sum())
    assert done <= partial < 48, "killed too late to test a resume"
    resumed = run_cli("bank", "build", *SMALL, "--keep-images", "--out", str(location))
    assert resumed.returncode == 0, resumed.stderr
    assert f"{48 - partial} items built" in resumed.stdout
    assert_same_bank(reference, location)


def test_rerun_of_complete_bank_does_nothing(reference, tmp_path):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(reference, copy)
    summary = build_bank(small_config(keep_images=True), copy)
    assert summary.items_done == 0 and summary.skipped_shards == 4
    assert_same_bank(reference, copy)


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_match_one(reference, tmp_path, launcher):
    location = tmp_path / f"{launcher}.zarr"
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    else:
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
    command += [
        str(ROOT / "cli.py"),
        "bank",
        "build",
        *SMALL,
        "--keep-images",
        "--out",
        str(location),
    ]
    env = {**os.environ, "MASTER_PORT": str(29500 + os.getpid() % 1000), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("items built") == 1  # rank 0 reports
    assert "48 items built by 2 processes (24 + 24)" in result.stdout
    assert_same_bank(reference, location)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"templates": load_templates("imagenet80:4")}, "templates: stored 3, now 4"),
        ({"steps": 1}, r"generator.steps: stored 2, now 1"),
        ({"encoder": "tiny-vit"}, r"encoder.fingerprint: stored"),
        ({"vocabulary": load_vocabulary("voc20")}, "vocabulary: stored 8 classes, now 20"),
        ({"batch_size": 8}, r"build.batch_size: stored 4, now 8"),
    ],
)
def test_resume_with_other_settings_refused(reference, tmp_path, change, match):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(reference, copy)
    with pytest.raises(BankMismatchError, match=match):
        build_bank(small_config(keep_images=True, **change), copy)
    assert_same_bank(reference, copy)  # nothing was touched


def test_fsspec_memory_url():
    location = "memory://dpseg-test/bank.zarr"
    build_bank(small_config(), location)
    bank = Bank.open(location)
    assert bank.done().all() and bank.layout.num_classes == 8
    assert bank.read("visual/embeddings").shape == (8, 3, 2, 64)


def test_info_and_gallery(reference, tmp_path):
    info = run_cli("bank", "info", str(reference), "--json")
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["complete"] and data["items_done"] == 48 and data["shards"] == 4
    assert data["arrays"]["visual/images"]["shape"] == [8, 3, 2, 64, 64, 3]
    assert data["bytes_stored"] > 0
    text = run_cli("bank", "info", str(reference))
    assert "tiny-sd" in text.stdout and "48/48 items" in text.stdout
    gallery = run_cli("bank", "gallery", str(reference), "--out", str(tmp_path / "g.png"))
    assert gallery.returncode == 0, gallery.stderr
    from PIL import Image

    sheet = Image.open(tmp_path / "g.png")
    assert sheet.size == (160 + 6 * 64, 8 * 64)  # one row per class, 3 templates x 2 images


def test_verify_catches_wrong_values(reference, tmp_path):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(reference, copy)
    group = zarr.open_group(str(copy), mode="r+")
    emb = group["visual/embeddings"][:]
    emb[3, 1, 0] *= 2.0  # a valid chunk with an unnormalised embedding
    group["visual/embeddings"][:] = emb
    done = group["visual/done"][:]
    done[0, 0, 0] = False
    group["visual/done"][:] = done
    result = run_cli("bank", "verify", str(copy))
    assert result.returncode == 1
    # Written behind the builder's back: both objects differ from their manifests.
    assert "FAIL  objects: shard 0: object visual/done/c/0/0/0 has sha256" in result.stdout
    assert "shard 1: object visual/embeddings/c/1/0/0/0 has sha256" in result.stdout
    assert f"rebuild the damaged shards with `python cli.py bank repair {copy}`" in result.stdout
    # Without manifests (a v1 bank) the values themselves are checked.
    attrs = dict(group.attrs)
    attrs.pop("contents")  # v1 banks are never sealed
    group.attrs.put({**attrs, "format_version": 1})
    result = run_cli("bank", "verify", str(copy))
    assert "FAIL  normalised: visual/embeddings max |norm-1| = 1.00e+00" in result.stdout
    assert "FAIL  complete: 47/48 items done" in result.stdout


def _malform(path: Path, how: str) -> None:
    group = zarr.open_group(str(path), mode="r+")
    if how == "format":
        group.attrs["format"] = "something-else"
    elif how == "version":
        group.attrs["format_version"] = 3
    elif how == "dtype":
        del group["visual"]["level_2"]
        group["visual"].create_array("level_2", shape=(8, 3, 2, 80), dtype="float64")
    elif how == "shape":
        del group["visual"]["embeddings"]
        group["visual"].create_array("embeddings", shape=(8, 3, 1, 64), dtype="float32")
    elif how == "missing":
        del group["text"]["embeddings"]
    elif how == "no text group":  # found by the re-probe: the line named no fix
        shutil.rmtree(path / "text")
    elif how == "strings":  # a non-numeric array where numbers belong is refused unread
        del group["text"]["embeddings"]
        group["text"].create_array("embeddings", shape=(8, 3, 64), dtype=str)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("format", "attribute format is 'something-else', expected 'dpseg-prompt-bank'"),
        ("version", "has format_version 3; this dpseg reads versions 1, 2"),
        ("dtype", "array visual/level_2 has dtype float64, expected float16"),
        ("shape", r"array visual/embeddings has shape \(8, 3, 1, 64\), expected \(8, 3, 2, 64\)"),
        ("missing", r"lacks the array text/embeddings \(expected \(8, 3, 64\) float32\)"),
        ("strings", "array text/embeddings has dtype"),
        ("no text group", r"lacks the group text/ \(removed or damaged since it was made\)"),
    ],
)
def test_malformed_bank_refused(reference, tmp_path, how, message):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(reference, copy)
    _malform(copy, how)
    with pytest.raises(BankFormatError, match=message) as refused:
        Bank.open(copy)
    if how in ("dtype", "shape", "missing", "strings", "no text group"):  # the fix is named
        assert str(refused.value).endswith("get the bank again from its source, or rebuild it")
    result = run_cli("bank", "info", str(copy))
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_not_a_bank(tmp_path):
    with pytest.raises(FileNotFoundError, match="no bank at"):
        Bank.open(tmp_path / "nothing.zarr")
    (tmp_path / "a.png").write_bytes(b"\x89PNG not a bank")  # a file given as --bank
    with pytest.raises(BankFormatError, match=r"is not a prompt bank .*; give the folder or URL"):
        Bank.open(tmp_path / "a.png")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").create_array(
        "x", shape=(2,), dtype="i4"
    )
    with pytest.raises(BankFormatError, match="is not a dpseg prompt bank"):
        Bank.open(tmp_path / "other.zarr")
    with pytest.raises(BankFormatError, match="is a zarr group that is not a dpseg prompt bank"):
        build_bank(small_config(), tmp_path / "other.zarr")


def test_make_bank_usage_and_tiny_preset(tmp_path):
    usage = subprocess.run(["make", "-s", "bank"], cwd=ROOT, capture_output=True, text=True)
    assert usage.returncode != 0 and "usage: make bank VOCAB=" in usage.stdout
    out = tmp_path / "tiny.zarr"
    built = subprocess.run(
        [
            "make",
            "-s",
            "bank",
            "VOCAB=synthetic",
            "PRESET=tiny",
            "TEMPLATES=single",
            f"OUT={out}",
            "BANK_ARGS=--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    assert "8 items built" in built.stdout
    assert Bank.open(out).done().all()


def test_default_preset_offline_fails_clearly(tmp_path):
    result = run_cli(
        "bank",
        "build",
        "--vocab",
        "voc20",
        "--out",
        str(tmp_path / "b.zarr"),
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in result.stderr
    assert "PRESET=tiny" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "b.zarr").exists()  # nothing written before the models load
