"""Optional packages (common/optional.py): without one, the command that needs it stops in one
line naming the extra, and what can go without it is skipped. A package is made missing by
putting None in sys.modules, which is what Python's import does for an absent package."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import tomllib
from conftest import ROOT

from common.errors import UserError
from common.optional import EXTRAS, MissingExtraError, available, require


def test_every_optional_package_is_an_extra_and_not_a_core_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    for package, extra in EXTRAS.items():
        assert package not in core, f"{package} is still a core dependency"
        assert any(spec.startswith(package) for spec in extras[extra]), (package, extra)
    assert "dpseg[all]" in extras["dev"]  # make install gets every extra
    assert project["license"] == "Apache-2.0" and (ROOT / "LICENSE").is_file()


def test_require_names_the_extra_when_the_package_is_missing(monkeypatch):
    assert require("scipy.io", "x").loadmat is not None and available("scipy")
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    assert not available("scipy")
    with pytest.raises(MissingExtraError) as caught:
        require("scipy.io", "PASCAL-Context's .mat annotations")
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    assert "pip install 'dpseg[prepare]'" in message and message.startswith("PASCAL-Context")


def test_metrics_are_written_without_matplotlib_and_the_chart_is_skipped(
    monkeypatch, tmp_path, caplog
):
    from data.evaluator import SemSegMetric, write_results

    metric = SemSegMetric(2)
    metric.update(np.array([[0, 1]]), np.array([[0, 1]]))
    metrics = metric.compute()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with caplog.at_level("WARNING", logger="data.evaluator"):
        paths = write_results(metrics, tmp_path, ["a", "b"], "val")
    assert sorted(paths) == ["csv", "json"] and paths["json"].is_file()
    assert not (tmp_path / "val_per_class_iou.png").exists()
    assert "dpseg[charts]" in caplog.text


def test_training_logs_go_to_csv_alone_without_tensorboard(monkeypatch):
    from model.lightning_cli import trainer_defaults

    kinds = [logger["class_path"].rsplit(".", 1)[1] for logger in trainer_defaults()["logger"]]
    assert kinds == ["TensorBoardLogger", "CSVLogger"]
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    kinds = [logger["class_path"].rsplit(".", 1)[1] for logger in trainer_defaults()["logger"]]
    assert kinds == ["CSVLogger"]
