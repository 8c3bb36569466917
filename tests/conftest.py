"""Shared fixtures. Tests run offline on CPU with the tiny presets; ``-m slow`` needs weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch
import numpy as np
import pytest
import torch
import yaml

assert lightning.pytorch  # imported here, outside any test's capture: its log handlers bind
# sys.stderr when imported, and in-process runs (cli_here) must find it a live stream

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


SLOW_FILES_FIRST = (
    "test_toy_learning.py",
    "test_bank_integrity.py",
    "test_predict.py",
    "test_rehearsal.py",
    "test_open_names.py",
    "test_bank_sharing.py",
    "test_lightning.py",
    "test_app.py",
)
"""Files that take longest, collected first: ``make test`` runs files in 2 processes
(pytest-xdist ``--dist loadfile``) in collection order, and a long file started last would run
alone at the end (``make test`` prints the slowest tests: ``--durations``)."""


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within
    if "slow" in config.getoption("markexpr"):  # -m slow: the tests that need real weights
        return
    skip = pytest.mark.skip(reason="needs real weights: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_vocab() -> Path:
    """``../shared/vocab`` (reference class lists); tests using it skip when it is absent."""
    path = SHARED / "vocab"
    if not path.is_dir():
        pytest.skip(f"{path} is absent (it sits beside the checkout in CI)")
    return path


def read_image_file(path: Path) -> np.ndarray:
    """An image file's pixels as numpy (PIL)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def snapshot(folder: Path) -> dict:
    """Every file under ``folder``: its bytes and mtime (a rerun must leave them alone)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_cli(*args: str, env: dict | None = None, cwd: Path = ROOT, timeout: float = 300):
    """Run ``python cli.py ARGS`` as a user would, in a fresh process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


# ---------------------------------------------------------------------------------------------
# A small trained world for the model and user-path tests: synthetic data, a tiny bank, a
# 4-step checkpoint (session fixtures, built once).

TINY = ROOT / "configs" / "tiny_synthetic.yaml"
TEMPLATES = 4


def race(push, first: Path, second: Path, refused: tuple[type[BaseException], ...]):
    """``push(first)`` and ``push(second)`` at once (two threads behind a barrier): exactly one
    may return. -> (the winner's folder, what it returned, the loser's error)."""
    import threading

    start, outcomes = threading.Barrier(2), {}

    def one(folder: Path) -> None:
        start.wait()
        try:
            outcomes[folder] = push(folder)
        except refused as e:
            outcomes[folder] = e

    racers = [threading.Thread(target=one, args=(f,)) for f in (first, second)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=120)
    won = [f for f, out in outcomes.items() if not isinstance(out, BaseException)]
    assert len(outcomes) == 2 and len(won) == 1, outcomes
    (lost,) = [out for out in outcomes.values() if isinstance(out, BaseException)]
    return won[0], outcomes[won[0]], lost


def make_bank(location: Path, templates: str, encoder: str = "tiny-convnext") -> Path:
    from data.templates import load_templates
    from data.vocabulary import load_vocabulary
    from prompt_bank.build import BuildConfig, build_bank

    if not location.exists():
        config = BuildConfig(
            vocabulary=load_vocabulary("synthetic"),
            templates=load_templates(templates),
            images_per_prompt=2 if templates == f"imagenet80:{TEMPLATES}" else 1,
            encoder=encoder,
            classes_per_shard=8,
            batch_size=16,
            cpu_threads=1,
            progress=False,
        )
        threads = torch.get_num_threads()
        build_bank(config, location)
        torch.set_num_threads(threads)  # build_bank pins the thread count it records
    return location


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """A small synthetic set, a bank (4 templates, 2 images each) and a config overlay."""
    from data.synthetic import SyntheticConfig, write_synthetic_dataset

    root = tmp_path_factory.mktemp("world")
    write_synthetic_dataset(
        root / "datasets", SyntheticConfig(train_images=24, val_images=6), progress=False
    )
    bank = make_bank(root / "bank.zarr", f"imagenet80:{TEMPLATES}")
    overlay = {
        "trainer": {"max_steps": 4, "val_check_interval": 4, "log_every_n_steps": 1},
        "data": {
            "root": str(root / "datasets"),
            "train": {"dataset": "synthetic:train", "bank": str(bank)},
            "val": [{"dataset": "synthetic", "bank": str(bank)}],
            "test": [{"dataset": "synthetic", "bank": str(bank)}],
            "num_workers": 0,
            "batch_size": 4,
            "limit_eval": 6,
        },
    }
    (root / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    return root


def run_tiny_cli(world: Path, *args: str, env: dict | None = None):
    """``cli.py COMMAND --config tiny_synthetic.yaml --config <world overlay> ARGS`` in world."""
    overlay = str(world / "overlay.yaml")
    return run_cli(
        *args[:1],
        "--config",
        str(TINY),
        "--config",
        overlay,
        *args[1:],
        env={"OMP_NUM_THREADS": "1", **(env or {})},
        cwd=world,
        timeout=600,
    )


@pytest.fixture(scope="session")
def fit_run(world):
    """fit 4 steps through the real command line; returns the finished process."""
    result = run_tiny_cli(world, "fit")
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="session")
def trained(world, fit_run) -> Path:
    """The last.ckpt of :func:`fit_run`."""
    ckpts = sorted(world.glob("runs/dpseg/version_*/checkpoints/last.ckpt"))
    assert ckpts, list(world.rglob("*.ckpt"))
    return ckpts[-1]


def forget_cached_filesystems() -> None:
    """What a fresh process starts with: no cached fsspec filesystem. fsspec caches them per
    class, keyed by their arguments and not by the environment (``$AWS_ENDPOINT_URL``), so an
    earlier in-process command's S3 client would answer for a server stopped since."""
    import fsspec

    classes = [fsspec.AbstractFileSystem]
    while classes:
        cls = classes.pop()
        cls.clear_instance_cache()
        classes += cls.__subclasses__()


def cli_here(capture, monkeypatch, *args: str, cwd: Path | None = None):
    """``cli.py ARGS`` in this process (``cli.main``), as ``run_cli`` gives it: where a fresh
    process would only add its start (about 7 s of imports for a Lightning command).
    ``capture`` is pytest's capfd (also what log handlers made earlier write) or capsys."""
    import torch

    import cli

    forget_cached_filesystems()
    if cwd is not None:
        monkeypatch.chdir(cwd)
    threads = torch.get_num_threads()  # a bank build sets its recorded thread count
    try:
        code = cli.main(list(args))
    except SystemExit as e:
        code = e.code
    finally:
        torch.set_num_threads(threads)
    out, err = capture.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


@pytest.fixture
def cli_in_process(capfd, monkeypatch):
    """``run_cli`` in this process (:func:`cli_here`): the same command, without the 2-7 s a
    fresh process spends importing; ``env`` is set for the call (and undone after the test)."""

    def run(*args: str, env: dict | None = None, cwd: Path | None = None):
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        return cli_here(capfd, monkeypatch, *args, cwd=cwd)

    return run


def tiny_cli_here(world, capsys, monkeypatch, *args: str) -> subprocess.CompletedProcess:
    """``run_tiny_cli`` in this process (``cli_here``): for errors raised before any training."""
    configs = ["--config", str(TINY), "--config", str(world / "overlay.yaml")]
    return cli_here(capsys, monkeypatch, args[0], *configs, *args[1:], cwd=world)
