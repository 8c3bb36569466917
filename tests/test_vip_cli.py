"""VIP through the real command line: test (with and without dual prompts), predict, alias
selection, and the dataset configs. The first run is a real process; the others call
``cli.main`` in this process (``cli_here``), which a fresh process would only slow down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, SHARED, cli_here, make_bank, run_cli

VIP_TINY = ROOT / "configs" / "vip_tiny.yaml"
ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def vip_world(world, tmp_path_factory) -> Path:
    """The synthetic world's data, an overlay for VIP, and a bank of the VIP encoder."""
    root = tmp_path_factory.mktemp("vip")
    overlay = {
        "model": {"templates": "imagenet80:4"},
        "data": {"root": str(world / "datasets"), "limit_eval": 3},
    }
    (root / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    make_bank(root / "vit_bank.zarr", "imagenet80:4", encoder="tiny-vit")
    return root


def run_vip(vip_world: Path, capsys, monkeypatch, *args: str):
    configs = ["--config", str(VIP_TINY), "--config", str(vip_world / "overlay.yaml")]
    return cli_here(capsys, monkeypatch, args[0], *configs, *args[1:], cwd=vip_world)


def test_vip_test_writes_metrics_and_dual_prompts_change_them(
    vip_world, world, capsys, monkeypatch
):
    plain = run_cli(  # a real process, as a user runs it
        "test",
        "--config",
        str(VIP_TINY),
        "--config",
        str(vip_world / "overlay.yaml"),
        "--model.results_dir",
        str(vip_world / "plain"),
        env=ENV,
        cwd=vip_world,
        timeout=600,
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    record = json.loads((vip_world / "plain" / "synthetic.run.json").read_text())
    assert record["method"] == "VIP" and record["attention"] == "clear"
    assert record["aliases"] == 8 and record["dual_prompts"] is None
    assert record["low_confidence"].startswith("none")
    scored = sum(map(sum, record["confusion_matrix"]))  # all but the 255 object boundaries
    assert 0.9 * 3 * 128 * 128 < scored < 3 * 128 * 128
    metrics = json.loads((vip_world / "plain" / "synthetic.json").read_text())
    assert 0 <= metrics["mIoU"] <= 1
    assert "| VIP (tiny-vit, clear) |" in (vip_world / "plain" / "summary.md").read_text()

    bank = vip_world / "vit_bank.zarr"
    dual = run_vip(
        vip_world,
        capsys,
        monkeypatch,
        "test",
        "--model.dual_prompts",
        str(bank),
        "--model.results_dir",
        str(vip_world / "dual"),
    )
    assert dual.returncode == 0, dual.stderr[-3000:]
    dual_record = json.loads((vip_world / "dual" / "synthetic.run.json").read_text())
    assert dual_record["dual_prompts"]["encoder"] == "tiny-vit"
    assert dual_record["dual_prompts"]["location"].endswith("vit_bank.zarr")
    assert dual_record["confusion_matrix"] != record["confusion_matrix"]
    assert "dual prompts" in (vip_world / "dual" / "summary.md").read_text()

    # a bank of another encoder: refused with the reason, no traceback
    other = run_vip(
        vip_world,
        capsys,
        monkeypatch,
        "test",
        "--model.dual_prompts",
        str(world / "bank.zarr"),
        "--model.results_dir",
        str(vip_world / "other"),
    )
    assert other.returncode == 2
    assert "tiny-convnext" in other.stderr and "Traceback" not in other.stderr


def test_vip_thresholds_low_confidence_pixels_to_ignore(vip_world, capsys, monkeypatch):
    out = vip_world / "ignored"
    result = run_vip(
        vip_world,
        capsys,
        monkeypatch,
        "test",
        "--model.vip.prob_thd",
        "0.99",
        "--model.vip.background",
        "ignore",
        "--model.results_dir",
        str(out),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Testing" not in result.stdout + result.stderr, "the progress bar is off"
    assert "inflates mIoU" in result.stderr
    assert not (vip_world / "config.yaml").exists(), "no logs: no config.yaml in the working dir"
    record = json.loads((out / "synthetic.run.json").read_text())
    assert "no class" in record["low_confidence"]
    # random tiny weights are never 99% sure: (nearly) every pixel is unassigned, a miss
    unassigned = sum(record["unassigned_per_class"])
    assert sum(map(sum, record["confusion_matrix"])) < 0.05 * unassigned, scored_note()
    assert record["metrics"]["unassigned_pixels"] == unassigned
    assert record["metrics"]["mIoU"] < 0.02


def scored_note() -> str:
    return "random tiny weights are expected to be unsure everywhere"


def test_vip_predict_writes_label_maps_and_refuses_fit(vip_world, capsys, monkeypatch):
    out = vip_world / "predicted"
    result = run_vip(vip_world, capsys, monkeypatch, "predict", "--model.results_dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    maps = sorted((out / "predictions" / "synthetic").glob("*.png"))
    assert len(maps) == 3
    fit = run_vip(vip_world, capsys, monkeypatch, "fit")
    assert fit.returncode != 0 and "training-free" in fit.stderr


def test_select_aliases_command_writes_a_readable_alias_file(vip_world, world, capsys, monkeypatch):
    from data.vocabulary import read_vocabulary_file

    vocab = vip_world / "aliases.txt"
    vocab.write_text(
        "background, backdrop\nred disc, red circle, tomato\ngreen square\n"
        "blue triangle\nyellow stripes\nmagenta ring\ncyan checkerboard\n"
        "orange cross, plus sign\n"
    )
    out = vip_world / "selected.txt"
    result = cli_here(
        capsys,
        monkeypatch,
        "vip",
        "select-aliases",
        "--data",
        "synthetic",
        "--vocab",
        str(vocab),
        "--out",
        str(out),
        "--encoder",
        "tiny-vit",
        "--templates",
        "imagenet80:2",
        "--limit",
        "3",
        "--size",
        "128",
        "--root",
        str(world / "datasets"),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "8 classes, 12 aliases scored" in result.stdout
    text = out.read_text()
    assert "3 images of synthetic" in text and "# class 1 'tomato': agreement" in text
    selected = read_vocabulary_file(out)
    assert len(selected) == 8
    assert [c.name for c in selected] == [c.split(",")[0] for c in vocab.read_text().splitlines()]
    bad = cli_here(
        capsys,
        monkeypatch,
        "vip",
        "select-aliases",
        "--data",
        "nowhere",
        "--vocab",
        str(vocab),
        "--out",
        str(out),
        "--encoder",
        "tiny-vit",
    )
    assert bad.returncode == 2 and "--data 'nowhere'" in bad.stderr


# Configs for published benchmarks: vip_tiny* (plumbing) and vip_toy* (the toy world) are ours.
VIP_CONFIGS = sorted(
    p
    for p in [*(ROOT / "configs").glob("vip_*.yaml"), *(ROOT / "configs" / "vip_clip").glob("*")]
    if p.name
    not in ("vip_tiny.yaml", "vip_toy.yaml", "vip_tiny_dinotxt.yaml", "vip_toy_dinotxt.yaml")
)


@pytest.mark.parametrize("path", VIP_CONFIGS, ids=lambda p: p.stem)
def test_vip_config_alias_files_fit_their_datasets(path, shared_vocab):
    """Each config's alias file (VIP's own, from ../shared; skipped without it) has the
    dataset's K classes."""
    from data.catalog import get_dataset_spec
    from data.vocabulary import read_vocabulary_file

    config = yaml.safe_load(path.read_text())
    for dataset, name in config["model"]["init_args"]["vocabularies"].items():
        file = SHARED / "vocab" / "vip" / f"{name}.txt"
        vocab = read_vocabulary_file(
            file,
            allow_duplicates=config["model"]["init_args"].get("allow_duplicate_classes", False),
        )
        assert len(vocab) == get_dataset_spec(dataset).num_classes, (dataset, name)


def test_vip_config_parses_through_lightning_cli(capsys, monkeypatch):
    config = str(ROOT / "configs" / "vip_voc21.yaml")
    result = cli_here(capsys, monkeypatch, "test", "--config", config, "--print_config")
    assert result.returncode == 0, result.stderr[-3000:]
    printed = yaml.safe_load(result.stdout)
    assert printed["model"]["class_path"] == "model.vip.lightning.VIPModule"
    assert printed["model"]["init_args"]["vip"]["prob_thd"] == 0.28
    assert printed["model"]["init_args"]["vocabularies"] == {"voc21": "cls_voc21"}


def test_vip_image_predict_with_a_free_vocabulary_and_dual_prompts(
    vip_world, world, capsys, monkeypatch
):
    images = sorted((world / "datasets" / "synthetic" / "images" / "val").glob("*.jpg"))[:2]
    out = vip_world / "free"
    result = cli_here(
        capsys,
        monkeypatch,
        "segment",
        "--method",
        "vip",
        "--config",
        str(VIP_TINY),
        "--images",
        *map(str, images),
        "--vocab",
        "red disc, red circle; background",
        "--out",
        str(out),
        "--dual-prompts",
        str(vip_world / "vit_bank.zarr"),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 classes (dual prompts)" in result.stdout
    record = json.loads((out / f"{images[0].stem}.json").read_text())
    assert record["num_classes"] == 2 and record["height"] == 128
    assert {c["name"] for c in record["classes"]} <= {"red disc", "background"}
    assert all(c["prompt"].startswith("text+visual") for c in record["classes"])
    assert (out / f"{images[0].stem}_overlay.png").is_file()
    no_ckpt = cli_here(
        capsys,
        monkeypatch,
        "segment",
        "--images",
        str(images[0]),
        "--vocab",
        "a; b",
        "--out",
        str(out),
    )
    assert no_ckpt.returncode == 2 and "--method vip" in no_ckpt.stderr


def test_vip_toy_config_uses_the_toy_worlds_builtin_aliases():
    """The toy world's VIP config reads its alias list from the project (no ../shared file)."""
    from data.catalog import get_dataset_spec
    from data.vocabulary import load_vocabulary

    config = yaml.safe_load((ROOT / "configs" / "vip_toy.yaml").read_text())
    assert config["model"]["class_path"] == "model.vip.lightning.VIPModule"
    for dataset, name in config["model"]["init_args"]["vocabularies"].items():
        vocab = load_vocabulary(name)
        assert vocab.source == f"builtin:{name}"
        assert len(vocab) == get_dataset_spec(dataset).num_classes
        assert all(len(entry.synonyms) >= 2 for entry in vocab.classes[1:]), (
            "every class has aliases"
        )


# VIP on dino.txt (tiny-dinotxt: the real code at width 64, random portable weights)

VIP_TINY_DINOTXT = ROOT / "configs" / "vip_tiny_dinotxt.yaml"


def run_vip_dinotxt(vip_world: Path, capsys, monkeypatch, *args: str):
    configs = [
        "--config",
        str(VIP_TINY_DINOTXT),
        "--config",
        str(vip_world / "overlay_dinotxt.yaml"),
    ]
    return cli_here(capsys, monkeypatch, args[0], *configs, *args[1:], cwd=vip_world)


def test_vip_on_tiny_dinotxt_tests_with_and_without_dual_prompts(
    vip_world, world, capsys, monkeypatch
):
    overlay = {"data": {"root": str(world / "datasets"), "limit_eval": 1}}
    (vip_world / "overlay_dinotxt.yaml").write_text(yaml.safe_dump(overlay))
    plain = run_vip_dinotxt(
        vip_world, capsys, monkeypatch, "test", "--model.results_dir", str(vip_world / "dt")
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    record = json.loads((vip_world / "dt" / "synthetic.run.json").read_text())
    assert (record["encoder"], record["attention"]) == ("tiny-dinotxt", "proxy")
    assert record["templates"] == "seg (6)" and record["dual_prompts"] is None

    bank = make_bank(vip_world / "dinotxt_bank.zarr", "seg", encoder="tiny-dinotxt")
    dual = run_vip_dinotxt(
        vip_world,
        capsys,
        monkeypatch,
        "test",
        "--model.dual_prompts",
        str(bank),
        "--model.results_dir",
        str(vip_world / "dt_dual"),
    )
    assert dual.returncode == 0, dual.stderr[-3000:]
    dual_record = json.loads((vip_world / "dt_dual" / "synthetic.run.json").read_text())
    assert dual_record["dual_prompts"]["encoder"] == "tiny-dinotxt"
    assert dual_record["dual_prompts"]["fusion"] == "normalize(0.5 t + 0.5 v) per template"
    assert dual_record["confusion_matrix"] != record["confusion_matrix"]

    # ClearCLIP's block is a CLIP ViT's, not a dense path of dino.txt (proxy or none)
    clear = run_vip_dinotxt(vip_world, capsys, monkeypatch, "test", "--model.attention", "clear")
    assert clear.returncode == 2 and "attention='clear' is not available" in clear.stderr


def test_vip_on_tiny_dinotxt_predicts_and_selects_aliases(vip_world, world, capsys, monkeypatch):
    images = sorted((world / "datasets" / "synthetic" / "images" / "val").glob("*.jpg"))[:1]
    out = vip_world / "dt_pred"
    result = cli_here(
        capsys,
        monkeypatch,
        "segment",
        "--method",
        "vip",
        "--config",
        str(VIP_TINY_DINOTXT),
        "--images",
        str(images[0]),
        "--vocab",
        "red disc, red circle; background",
        "--out",
        str(out),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / f"{images[0].stem}.json").read_text())["num_classes"] == 2
    selected = vip_world / "dt_selected.txt"
    result = cli_here(
        capsys,
        monkeypatch,
        "vip",
        "select-aliases",
        "--data",
        "synthetic",
        "--vocab",
        "background; red disc, red circle, tomato",
        "--out",
        str(selected),
        "--encoder",
        "tiny-dinotxt",
        "--rule",
        "reported",
        "--limit",
        "2",
        "--root",
        str(world / "datasets"),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = selected.read_text()
    assert "encoder tiny-dinotxt (attention proxy), templates seg" in text
    assert "text pre-filter 0.7, affinity attention" in text
    assert "# class 1 'tomato': agreement" in text


def test_published_vip_config_resolves_to_dinotxt_and_stops_offline_naming_both_files(
    tmp_path, capsys, monkeypatch
):
    """No dino.txt files anywhere: one line naming both files and the option, exit 2."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    config = str(ROOT / "configs" / "vip_voc21.yaml")
    result = cli_here(capsys, monkeypatch, "test", "--config", config, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth" in errors[0]
    assert "dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth" in errors[0]
    assert "--model.encoder_weights DIR" in errors[0]


def test_the_method_is_the_model_class_path(capsys, monkeypatch):
    """LightningCLI's subclass mode chooses the method: DPSeg by default, VIP by class_path in a
    config or --model VIPModule; VIP refuses fit in one line."""
    printed = cli_here(
        capsys,
        monkeypatch,
        "test",
        "--model",
        "VIPModule",
        "--model.encoder",
        "tiny-vit",
        "--model.vip.tau",
        "2.5",
        "--print_config",
    )
    assert printed.returncode == 0, printed.stderr[-3000:]
    model = yaml.safe_load(printed.stdout)["model"]
    assert model["class_path"] == "model.vip.lightning.VIPModule"
    assert (model["init_args"]["encoder"], model["init_args"]["vip"]["tau"]) == ("tiny-vit", 2.5)
    fit = cli_here(capsys, monkeypatch, "fit", "--config", str(VIP_TINY))
    assert fit.returncode == 2
    assert fit.stderr.strip().splitlines()[-1] == (
        "error: VIPModule is training-free: use cli.py test (or validate, predict) with this config"
    )
