"""Inputs found by probing the commands: each ends in one ``error:`` line and exit status 2, or
is read as the user meant, and a failed ``data toy`` leaves nothing that blocks the retry."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image
from test_user_errors import bomb_png, run_main, user_error

from data.templates import load_templates

SMALL = ("--train", "1", "--val", "1", "--test", "1", "--quiet")


# --- data toy: seed and size ---------------------------------------------------------------


def test_data_toy_negative_seed_is_one_line_and_writes_nothing(capsys, tmp_path):
    root = tmp_path / "datasets"
    line = user_error(capsys, "data", "toy", "--root", str(root), "--seed", "-1", *SMALL)
    assert line == "error: --seed -1: give 0 or more (numpy seeds cannot be negative)"
    assert not root.exists()


@pytest.mark.parametrize(
    "size, bound", [("100000", "at most 2048"), ("2049", "at most 2048"), ("31", "at least 32")]
)
def test_data_toy_size_is_bounded_before_anything_is_written(capsys, tmp_path, size, bound):
    root = tmp_path / "datasets"
    line = user_error(capsys, "data", "toy", "--root", str(root), "--size", size, *SMALL)
    assert line == (
        f"error: --size {size}: images must be {bound} px; give a side of 32 to 2048 px "
        "(default 128)"
    )
    assert not root.exists()


def test_data_toy_failing_before_its_first_image_leaves_no_folder(capsys, tmp_path, monkeypatch):
    import data.toy_world

    root = tmp_path / "datasets"

    def out_of_memory(*args):
        raise MemoryError("Unable to allocate 89.4 GiB")

    monkeypatch.setattr(data.toy_world, "render_scene", out_of_memory)
    with pytest.raises(MemoryError):
        run_main(capsys, "data", "toy", "--root", str(root), "--size", "64", *SMALL)
    assert not root.exists()  # no meta.json to refuse the retry with another config
    monkeypatch.undo()
    code, out, err = run_main(capsys, "data", "toy", "--root", str(root), *SMALL)
    assert code == 0, err
    assert "1 train + 1 val + 1 test images" in out and "(3 written" in out
    meta = json.loads((root / "toy" / "meta.json").read_text())
    assert meta["complete"] is True and meta["config"]["size"] == 128
    assert len(list((root / "toy" / "images" / "val").glob("*.jpg"))) == 1


def test_data_toy_failure_keeps_an_existing_root_and_its_files(capsys, tmp_path, monkeypatch):
    import data.toy_world

    root = tmp_path / "datasets"
    (root / "other").mkdir(parents=True)
    monkeypatch.setattr(data.toy_world, "render_scene", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run_main(capsys, "data", "toy", "--root", str(root), *SMALL)
    assert sorted(p.name for p in root.iterdir()) == ["other"]


def test_synthetic_config_refuses_negative_seed_and_huge_size():
    from common.errors import SettingError
    from data.synthetic import SyntheticConfig

    with pytest.raises(SettingError, match=r"seed=-1: must be >= 0"):
        SyntheticConfig(seed=-1)
    with pytest.raises(SettingError, match=r"size=100000: images must be at most 2048 px"):
        SyntheticConfig(size=100000)


# --- eval-masks ----------------------------------------------------------------------------


@pytest.fixture
def mask_folders(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(gt / "a.png")
    return pred, gt


def test_eval_masks_num_classes_is_bounded(capsys, mask_folders):
    pred, gt = mask_folders
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(pred / "a.png")
    line = user_error(
        capsys, "eval-masks", "--pred", str(pred), "--gt", str(gt),
        "--num-classes", "1000000000", "--ignore-index", "255", "--quiet",
    )  # fmt: skip
    assert line == (
        "error: --num-classes 1000000000: must be at most 65536; label maps are 8- or 16-bit, "
        "so their class ids stop at 65535: give the number of classes K (e.g. 150 for ADE-150)"
    )


def test_eval_masks_confusion_matrix_out_of_memory_is_one_line(capsys, mask_folders, monkeypatch):
    import data.evaluator

    pred, gt = mask_folders
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(pred / "a.png")

    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")

    monkeypatch.setattr(data.evaluator, "SemSegMetric", no_memory)
    line = user_error(
        capsys, "eval-masks", "--pred", str(pred), "--gt", str(gt),
        "--num-classes", "65536", "--ignore-index", "255", "--quiet",
    )  # fmt: skip
    assert line.startswith(
        "error: --num-classes 65536: its 65536 x 65536 confusion matrix needs 32.0 GiB"
    )


def test_eval_masks_skip_does_not_suggest_skip(capsys, mask_folders):
    pred, gt = mask_folders  # no prediction at all
    argv = ["eval-masks", "--pred", str(pred), "--gt", str(gt), "--num-classes", "2"]
    argv += ["--ignore-index", "255", "--quiet"]
    skipped = user_error(capsys, *argv, "--on-bad-sample", "skip")
    assert "could be scored" in skipped and "prediction missing for 1 of 1" in skipped
    assert skipped.endswith("; predict every image")
    assert "--on-bad-sample" not in skipped
    stopped = user_error(capsys, *argv)  # without the flag, it is still suggested
    assert stopped.endswith("predict every image, or pass --on-bad-sample skip")


# --- templates -----------------------------------------------------------------------------


def test_templates_file_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbfa photo of {}\na sketch of {}\n")
    assert load_templates(str(path)) == ["a photo of {}", "a sketch of {}"]


# --- vocabulary wording --------------------------------------------------------------------


def test_vocab_only_separators_is_an_empty_list(capsys):
    assert user_error(capsys, "vocab", ";;;") == (
        "error: vocabulary ';;;' is an empty list: it holds only ';' separators and no class "
        "name; give classes like 'cat, kitty; dog'"
    )


def test_vocab_empty_string(capsys):
    assert user_error(capsys, "vocab", "") == (
        "error: vocabulary '' is empty; give a name (cli.py vocab lists them), a .json/.txt "
        "file or classes like 'cat, kitty; dog'"
    )


def test_vocab_empty_entry_between_separators(capsys):
    line = user_error(capsys, "vocab", "a;;b")
    assert line == (
        "error: inline list 'a;;b': entry 2 is empty (nothing between two ';' separators); "
        "remove the extra ';' or put a class name there"
    )
    assert "comma" not in line


def test_vocab_leading_comma_still_named(capsys):
    line = user_error(capsys, "vocab", ",cat; dog")
    assert "has a blank class name before the first ','; remove the leading ','" in line


def test_vocab_control_character_is_named_as_such(capsys):
    line = user_error(capsys, "vocab", "cat\x07")
    assert line == (
        "error: inline class: entry 1 ('cat\\x07') holds a control character ('\\x07'); "
        "give class names as plain text, one class per entry"
    )
    assert "NUL" not in line and "line break" not in line


def test_vocab_txt_file_line_with_semicolons_is_refused(capsys, tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# my classes; seen\nsky\ncat; dog; bird\n")
    line = user_error(capsys, "vocab", str(path))
    assert line == (
        f"error: vocabulary file {str(path)!r}: line 3 ('cat; dog; bird') holds ';'; a .txt "
        "file takes one class per line (',' between synonyms) and ';' separates classes only in "
        "an inline list: put each class on a line of its own"
    )


def test_vocab_txt_file_one_class_per_line_still_reads(capsys, tmp_path):
    from data.vocabulary import load_vocabulary

    path = tmp_path / "classes.txt"
    path.write_text("# comment; with a semicolon\ncat, kitty\ndog\n")
    assert load_vocabulary(str(path)).names == ["cat", "dog"]


# --- VIP config ----------------------------------------------------------------------------


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "i.png"
    Image.new("RGB", (32, 32), (10, 120, 30)).save(path)
    return path


def _segment_vip(capsys, config, image, out):
    argv = ["segment", "--method", "vip", "--config", str(config), "--images", str(image)]
    return user_error(capsys, *argv, "--vocab", "cat; dog", "--out", str(out))


def test_vip_config_unknown_key_is_refused(capsys, tmp_path, image):
    config = tmp_path / "unknown.yaml"
    config.write_text("modle:\n  encoder: tiny-vit\n")
    line = _segment_vip(capsys, config, image, tmp_path / "out")
    assert line.startswith(f"error: --config {str(config)!r}: does not accept option 'modle'; ")
    assert "a VIP config takes the sections model, data, trainer" in line
    assert "encoder_weights" not in line and "dino.txt" not in line
    assert not (tmp_path / "out").exists()
    config.write_text("foo: 1\nbar: 2\nmodel:\n  encoder: tiny-vit\n")  # every one named
    line = _segment_vip(capsys, config, image, tmp_path / "out")
    assert line.startswith(
        f"error: --config {str(config)!r}: does not accept options 'bar', 'foo'; "
    )


@pytest.mark.parametrize("text", ["", "# nothing here\n", "{}\n"])
def test_vip_config_empty_file_is_refused(capsys, tmp_path, image, text):
    config = tmp_path / "empty.yaml"
    config.write_text(text)
    line = _segment_vip(capsys, config, image, tmp_path / "out")
    assert line.startswith(f"error: --config {str(config)!r} is empty, not a mapping of settings; ")
    assert "encoder_weights" not in line
    assert not (tmp_path / "out").exists()


def test_vip_config_non_mapping_is_refused(capsys, tmp_path, image):
    config = tmp_path / "list.yaml"
    config.write_text("- model\n- data\n")
    line = _segment_vip(capsys, config, image, tmp_path / "out")
    assert line.startswith(f"error: --config {str(config)!r} holds a YAML list, not a mapping; ")


def test_vip_config_lightning_sections_are_accepted():
    from model.vip.predictor import _vip_settings

    settings = _vip_settings(ROOT / "configs" / "vip_tiny.yaml")  # model, data, trainer, seed
    assert settings["encoder"] == "tiny-vit"


@pytest.mark.parametrize("which", ["gt", "pred"])
@pytest.mark.parametrize("side", [10000, 100000])
def test_eval_masks_a_label_map_with_too_many_pixels_is_one_line(capsys, mask_folders, which, side):
    """Probe 11: a 100 M-pixel (over the 80 M limit) or a 10 G-pixel PNG (PIL's bomb guard) of
    a few kB as a label or prediction map ended in a traceback."""
    pred, gt = mask_folders
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(pred / "a.png")
    huge = bomb_png((gt if which == "gt" else pred) / "a.png", side=side)
    line = user_error(
        capsys, "eval-masks", "--pred", str(pred), "--gt", str(gt),
        "--num-classes", "2", "--ignore-index", "255", "--quiet",
    )  # fmt: skip
    assert f"{'label' if which == 'gt' else 'prediction'} {str(huge)!r}: " in line, line
    assert "more than the limit of 80 M ($DPSEG_MAX_PIXELS; segment: --max-pixels)" in line, line
    assert "raise the limit ($DPSEG_MAX_PIXELS=N; for segment, --max-pixels N)" in line, line
