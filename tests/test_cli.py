"""The command line as users meet it: help, version, package imports."""

import subprocess
import sys
from pathlib import Path

from conftest import run_cli


def test_packages_import():
    code = "import prompt_bank, model, data, cli; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr  # installed, not just on the path


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("presets", "vocab", "data", "bank", "eval-masks", "fit", "validate", "test",
                    "predict", "explain", "vip"):  # fmt: skip
        assert command in result.stdout
    assert "select-aliases" in run_cli("vip", "--help").stdout
    data_help = run_cli("data", "--help")
    for command in ("synthetic", "stats", "prepare"):
        assert command in data_help.stdout
    bank_help = run_cli("bank", "--help")
    for command in ("build", "info", "verify", "merge", "gallery"):
        assert command in bank_help.stdout


def test_version_and_missing_command():
    assert run_cli("--version").stdout.startswith("dpseg 0.")
    result = run_cli()
    assert result.returncode == 2 and "required: COMMAND" in result.stderr


def test_entry_point_installed():
    dpseg = Path(sys.executable).parent / "dpseg"  # the console script pip installs beside python
    result = subprocess.run([str(dpseg), "vocab", "voc20"], capture_output=True, text=True)
    assert result.returncode == 0 and "voc20: 20 classes" in result.stdout
