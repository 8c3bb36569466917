"""A review's sweep of user mistakes: each ends in ONE stderr line that names the option, exit
status 2, no traceback, and no work lost (nothing half-written).

Each case runs the command as a user would (``python cli.py ...``, ``python
benchmarks/inference_cost.py ...``, ``python demo.py ...``) and fails in its argument checks, before
any model is built or trained: no checkpoint, weights or dataset is needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli
from PIL import Image

import cli


def one_line(result: subprocess.CompletedProcess, option: str) -> str:
    """The one stderr line of a user error: exit 2, no traceback, ``option`` named in it."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert option in lines[0], lines[0]
    return lines[0]


def cli_main(capsys, monkeypatch, *argv: str) -> subprocess.CompletedProcess:
    """``cli.main(argv)`` in this process (a fresh process per case took 3 s each; the one
    subprocess case below checks the real process), as a CompletedProcess."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    try:
        code = cli.main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def run_script(*args: str) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root, no GPU visible, one thread."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )


@pytest.fixture
def paths(tmp_path) -> dict[str, str]:
    """A text file, an empty folder, an image, a duplicated vocabulary, two mask folders."""
    text = tmp_path / "text.txt"
    text.write_text("just text\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 24), (200, 30, 30)).save(image)
    dup = tmp_path / "dup.txt"
    dup.write_text("red disc\nred disc\ngreen square\n")
    for name in ("pred", "gt"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.array([[0, 1], [2, 3]], dtype=np.uint8)).save(tmp_path / name / "0.png")
    return {
        "TEXT": str(text),
        "DIR": str(folder),
        "IMG": str(image),
        "DUP": str(dup),
        "PRED": str(tmp_path / "pred"),
        "GT": str(tmp_path / "gt"),
        "OUT": str(tmp_path / "out"),
        "TMP": str(tmp_path),
    }


def fill(args: tuple[str, ...], paths: dict[str, str]) -> list[str]:
    """The arguments with the fixture's paths for their names (``TEXT``, ``TMP/x.xyz``)."""
    out = []
    for arg in args:
        head, sep, tail = arg.partition("/")
        out.append(paths[head] + sep + tail if head in paths else arg)
    return out


SEGMENT = ("segment", "--images", "IMG", "--vocab", "toy", "--quiet")
VIP = (*SEGMENT, "--method", "vip")
DPSEG = (*SEGMENT, "--ckpt", "no.ckpt")
PRETRAIN = ("presets", "pretrain", "toy-vit", "--quiet", "--steps", "1")
SELECT = (
    "vip",
    "select-aliases",
    "--quiet",
    "--encoder",
    "tiny-dinotxt",
    "--data",
    "DIR",
    "--vocab",
    "toy_aliases",
)
EVAL = (
    "eval-masks",
    "--quiet",
    "--pred",
    "PRED",
    "--gt",
    "GT",
    "--num-classes",
    "4",
    "--ignore-index",
    "255",
)


# fmt: off
CLI_CASES = [
    # segment: the device, --out, each method's options, VIP's --config
    ((*DPSEG, "--out", "OUT", "--device", "tpu"), "--device", "cpu, cuda, cuda:N"),
    ((*DPSEG, "--out", "TEXT"), "--out", "is a file, not a folder"),
    ((*DPSEG, "--out", "TEXT/sub"), "--out", "is a file"),
    ((*VIP, "--ckpt", "no.ckpt", "--config", "configs/vip_toy.yaml", "--out", "OUT"),
     "--ckpt", "VIP takes --config"),
    ((*VIP, "--rounds", "2", "--out", "OUT"), "--rounds", "DPSeg only"),
    ((*DPSEG, "--config", "configs/vip_toy.yaml", "--out", "OUT"), "--config", "VIP only"),
    ((*VIP, "--config", "TEXT", "--out", "OUT"), "--config", "configs/vip_*.yaml"),
    ((*VIP, "--config", "configs/toy_world.yaml", "--out", "OUT"), "--config", "not VIP's"),
    ((*VIP, "--config", "configs/nope.yaml", "--out", "OUT"), "--config", "no such file"),
    # explain: the picture's format, before the checkpoint is read
    (("explain", "--ckpt", "no.ckpt", "--image", "IMG", "--class", "a", "--out", "TMP/x.xyz"),
     "--out", "not a picture format"),
    # a generator that takes no weights
    (("bank", "build", "--vocab", "cat; dog", "--preset", "toy", "--templates", "single",
      "--generator-weights", "TEXT", "--out", "OUT", "--quiet"), "--generator-weights",
     "takes no weights"),
    # eval-masks
    ((*EVAL, "--background-from", "40"), "--background-from", "[0, 4)"),
    ((*EVAL, "--out", "TEXT"), "--out", "is a file, not a folder"),
    # presets pretrain: ranges, and --out checked before the training
    ((*PRETRAIN, "--distractors", "-1", "--out", "OUT"), "--distractors", ">= 0"),
    ((*PRETRAIN, "--groups", "2.5", "--out", "OUT"), "--groups", "[0, 1]"),
    ((*PRETRAIN, "--out", "DIR"), "--out", "is a folder"),
    # data toy --root a file
    (("data", "toy", "--root", "TEXT", "--train", "2", "--val", "2", "--quiet"), "--root",
     "is a file"),
    # vip select-aliases: only the bad option is named
    ((*SELECT, "--out", "OUT", "--size", "0"), "--size", ">= 1"),
    ((*SELECT, "--out", "OUT", "--batch-size", "0"), "--batch-size", ">= 1"),
    ((*SELECT, "--out", "OUT", "--limit", "-1"), "--limit", ">= 0"),
    ((*SELECT, "--out", "OUT", "--threshold", "2"), "--threshold", "(0, 1)"),
    ((*SELECT, "--out", "OUT", "--steps", "-1"), "--steps", ">= 1"),
    ((*SELECT, "--out", "OUT", "--device", "tpu"), "--device", "cpu, cuda"),
    ((*SELECT, "--out", "DIR"), "--out", "is a folder"),
    # a vocabulary path that is a folder
    (("vocab", "DIR"), "DIR", "is a folder"),
]
# fmt: on


@pytest.mark.parametrize(
    ("args", "option", "says"), CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES]
)
def test_cli_user_errors_are_one_line(capsys, monkeypatch, paths, args, option, says):
    result = cli_main(capsys, monkeypatch, *fill(args, paths))
    line = one_line(result, paths.get(option, option))
    assert says in line, line
    if option == "--threshold":
        assert "--steps" not in line and "logit" not in line  # only the bad one
    assert not Path(paths["OUT"]).exists()  # nothing written
    assert not list(Path(paths["TMP"]).rglob("*.tmp"))  # nothing half-written


def test_duplicate_classes_hint_names_the_flag_only_where_it_exists(paths):
    # a real process: what the user sees, stderr and exit status included
    result = run_cli(*fill((*SELECT, "--vocab", "DUP", "--out", "OUT"), paths))
    line = one_line(result, paths["DUP"])
    assert "Rename or remove one" in line
    assert "cli.py vocab and bank build take --allow-duplicate-classes" in line
    accepted = run_cli("vocab", paths["DUP"], "--allow-duplicate-classes")
    assert accepted.returncode == 0, accepted.stderr[-3000:]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("--device", "tpu"), "--device"),
        (("--flops", "--preset", "nosuchpreset"), "--preset"),
        (("--iters", "0"), "--iters"),
        (("--classes", "2", "0"), "--classes"),
        (("--templates", "0"), "--templates"),
        (("--image-size", "-8"), "--image-size"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_inference_cost_user_errors_are_one_line(args, option):
    one_line(run_script("benchmarks/inference_cost.py", "--no-memory", *args), option)


def test_demo_out_a_file_is_one_line(paths):
    line = one_line(run_script("demo.py", "--out", paths["TEXT"], "--quick"), "--out")
    assert paths["TEXT"] in line


def test_library_checks_name_the_option(tmp_path):
    """The same checks where the libraries are called directly (no half-written file left)."""
    import torch

    from common.errors import SettingError, UserError, check_device
    from data.evaluator import SemSegMetric
    from model.vip.selection import write_alias_file
    from pretrained.bundled_weights import save_weights
    from pretrained.presets import PretrainConfig
    from prompt_bank.generator import create_generator

    with pytest.raises(SettingError, match="--generator-weights"):
        create_generator("toy-render", weights=tmp_path)
    with pytest.raises(ValueError, match="--background-from"):
        SemSegMetric(3, background_from=5)
    with pytest.raises(ValueError, match="--num-classes 0: must be an int >= 1"):
        SemSegMetric(0)
    with pytest.raises(SettingError, match=r"--groups 2\.5"):
        PretrainConfig(groups=2.5)
    for device in ("tpu", "cuda:x", "meta"):
        with pytest.raises(UserError, match="--device"):
            check_device(device)
    assert check_device("cpu") == "cpu"
    with pytest.raises(SettingError, match="--out"):
        save_weights(torch.nn.Linear(2, 2), tmp_path, {})
    with pytest.raises(SettingError, match="--out"):
        write_alias_file([], tmp_path, ["header"])
    assert not (tmp_path.parent / f"{tmp_path.name}.tmp").exists()  # nothing half-written
