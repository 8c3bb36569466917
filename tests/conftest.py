"""Shared fixtures. Tests run offline on CPU with the tiny presets; ``-m slow`` needs weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def pytest_collection_modifyitems(config, items):
    if config.getoption("markexpr"):
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
