"""The user's path: segment any images with any vocabulary, explain, and the demo itself."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, cli_here, run_cli
from PIL import Image


@pytest.fixture(scope="module")
def mixed_images(world, tmp_path_factory):
    """Images of several sizes and modes, one EXIF-rotated, one unreadable."""
    folder = tmp_path_factory.mktemp("mixed")
    val = sorted((world / "datasets" / "synthetic" / "images" / "val").glob("*.jpg"))
    source = Image.open(val[0])
    source.save(folder / "a_rgb.jpg")
    source.convert("RGBA").resize((200, 150)).save(folder / "b_rgba.png")
    source.convert("L").resize((90, 170)).save(folder / "c_gray.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": stored 160 wide x 96 high, seen 96 x 160
    source.resize((96, 160)).transpose(Image.Transpose.ROTATE_90).save(
        folder / "d_exif.jpg", exif=exif
    )
    (folder / "e_broken.jpg").write_bytes(b"not an image")
    return folder


def test_predict_mixed_images_with_a_free_form_vocabulary(
    trained, world, mixed_images, tmp_path, capfd, monkeypatch
):
    def run_cli(*args, cwd):  # in this process: a fresh one would add 7 s of imports each
        return cli_here(capfd, monkeypatch, *args, cwd=cwd)

    out = tmp_path / "pred"
    vocab = "red disc; green square; blue triangle; background; zebra, striped horse"
    result = run_cli(
        "segment",
        "--ckpt",
        str(trained),
        "--images",
        str(mixed_images),
        "--vocab",
        vocab,
        "--out",
        str(out),
        "--quiet",
        cwd=world,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "e_broken.jpg" in result.stderr and "4 images" in result.stdout
    assert "INFO" not in result.stderr  # --quiet: warnings only ("generating prompts" is info)
    sizes = {"a_rgb": (128, 128), "b_rgba": (150, 200), "c_gray": (170, 90), "d_exif": (160, 96)}
    for stem, shape in sizes.items():
        label = np.asarray(Image.open(out / f"{stem}.png"))
        assert label.shape == shape and label.dtype == np.uint8 and label.max() < 5
        record = json.loads((out / f"{stem}.json").read_text())
        assert sum(c["pixels"] for c in record["classes"]) == shape[0] * shape[1]
        assert {c["name"] for c in record["classes"]} == {
            ["red disc", "green square", "blue triangle", "background", "zebra"][i]
            for i in np.unique(label)
        }
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.width >= shape[1] and overlay.height > shape[0]  # image + legend
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 4 and summary["skipped"][0]["image"].endswith("e_broken.jpg")
    # "zebra" is not in the bank: its prompts were generated with the bank's presets and cached
    assert summary["prompts"]["zebra"] == "generated" and summary["prompts"]["red disc"] == "bank"
    caches = list((world / "bank.cache").glob("*.zarr"))
    assert len(caches) == 1
    cached = json.loads((caches[0] / "zarr.json").read_text())["attributes"]
    assert cached["classes"] == ["zebra, striped horse"]

    def segment_a(vocab: str, out: str, *options: str):
        args = ["--ckpt", str(trained), "--images", str(mixed_images / "a_rgb.jpg")]
        args += ["--vocab", vocab, *options, "--out", str(tmp_path / out), "--quiet"]
        return run_cli("segment", *args, cwd=world)

    result = segment_a("red disc; okapi", "t", "--text-only")  # text-only: no generation
    assert result.returncode == 0, result.stderr[-3000:]
    prompts = json.loads((tmp_path / "t" / "summary.json").read_text())["prompts"]
    assert prompts == {"red disc": "bank", "okapi": "text"}
    # class early rejection bounded to one class per image (with a threshold, or the bound
    # alone): one label everywhere
    for out, options in (("r", ["--reject", "0.01"]), ("r1", [])):
        result = segment_a("red disc; green square; background", out, *options, "--reject-max", "1")
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(np.unique(np.asarray(Image.open(tmp_path / out / "a_rgb.png")))) == 1
    result = segment_a("red disc", "bad", "--reject", "1.5")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --reject 1.5: a probability in (0, 1), e.g. 0.05"


def test_ctrl_c_in_segment_keeps_what_is_written_and_ends_in_one_line(trained, world, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    source = sorted((world / "datasets" / "synthetic" / "images" / "val").glob("*.jpg"))[0]
    for i in range(400):
        (images / f"{i:03d}.jpg").write_bytes(source.read_bytes())
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "cli.py"),
            "segment",
            "--ckpt",
            str(trained),
            "--images",
            str(images),
            "--vocab",
            "red disc; green square",
            "--text-only",
            "--out",
            str(out),
            "--quiet",
        ],
        cwd=world,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a run started in the background by a non-interactive shell inherits SIGINT ignored,
        # and Python then installs no KeyboardInterrupt: give the child the default back
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while not (out / "002.json").exists():  # a few images written
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT and "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: segment interrupted by SIGINT"), lines
    summary = json.loads((out / "summary.json").read_text())
    assert 3 <= summary["images"] < 400 and summary["interrupted"].endswith("of 400 images")
    for name in summary["outputs"]:  # every image listed is whole
        assert np.asarray(Image.open(out / name)).shape == (128, 128)
    assert f"the {summary['images']} segmented are in" in lines[0]
    assert lines[0].endswith(
        "run the same command again to segment the rest (the images done are kept)"
    )


def test_segment_again_keeps_what_the_same_predictor_made(
    trained, world, mixed_images, tmp_path, capsys, monkeypatch
):
    """A rerun keeps each image's outputs made by the same model, settings and vocabulary from
    the same bytes; a changed image, another vocabulary or --redo segments again."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a_rgb.jpg", "b_rgba.png", "c_gray.png"):
        (images / name).write_bytes((mixed_images / name).read_bytes())
    out = tmp_path / "pred"

    def segment(*extra, vocab="red disc; green square; background"):
        args = ["segment", "--ckpt", str(trained), "--images", str(images), "--vocab", vocab]
        result = cli_here(capsys, monkeypatch, *args, "--text-only", "--out", str(out), *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout, json.loads((out / "summary.json").read_text())

    stdout, first = segment("--quiet")
    assert (first["images"], first["kept"]) == (3, 0) and len(first["predictor"]) == 64
    times = {f.name: f.stat().st_mtime_ns for f in out.iterdir() if f.name != "summary.json"}
    record = json.loads((out / "a_rgb.json").read_text())
    assert record["predictor"] == first["predictor"] and len(record["image_sha256"]) == 64

    (images / "d_new.jpg").write_bytes((mixed_images / "d_exif.jpg").read_bytes())
    Image.open(mixed_images / "a_rgb.jpg").rotate(90).save(images / "b_rgba.png")  # new bytes
    stdout, second = segment("--quiet")
    assert (second["images"], second["kept"]) == (4, 2), second
    assert "4 images (2 kept from an earlier run" in stdout
    assert second["outputs"] == ["a_rgb.png", "b_rgba.png", "c_gray.png", "d_new.png"]
    for name in ("a_rgb.png", "a_rgb.json", "c_gray_overlay.png"):  # untouched
        assert (out / name).stat().st_mtime_ns == times[name]
    assert (out / "b_rgba.png").stat().st_mtime_ns != times["b_rgba.png"]
    assert np.asarray(Image.open(out / "b_rgba.png")).shape == (128, 128)  # the new image's

    (out / "c_gray_overlay.png").unlink()  # an output missing: that image is made again
    _, third = segment("--quiet")
    assert third["kept"] == 3 and (out / "c_gray_overlay.png").is_file()
    # the probe: a label map cut short was "kept"; the record's sha256 of each output decides
    whole = (out / "a_rgb.png").read_bytes()
    (out / "a_rgb.png").write_bytes(whole[: len(whole) // 2])
    _, cut = segment("--quiet")
    assert cut["kept"] == 3 and (out / "a_rgb.png").read_bytes() == whole
    # the probe: a folder where an output belongs was an IsADirectoryError traceback
    for name in ("summary.json", "a_rgb.json"):
        (out / name).unlink()
        (out / name).mkdir()
        args = ["segment", "--ckpt", str(trained), "--images", str(images), "--text-only"]
        args += ["--vocab", "red disc; green square; background", "--out", str(out), "--redo"]
        result = cli_here(capsys, monkeypatch, *args)
        assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
            f"error: --out {str(out)!r}: {name} is a folder where segment writes a file; remove "
            f"it (rm -r {out / name}) and run the command again"
        ), result.stderr[-2000:]
        (out / name).rmdir()
    _, other = segment("--quiet", vocab="red disc; background")  # another vocabulary
    assert other["kept"] == 0 and other["predictor"] != first["predictor"]
    _, again = segment("--quiet", "--redo", vocab="red disc; background")
    assert (again["images"], again["kept"]) == (4, 0)
    assert again["predictor"] == other["predictor"]  # the identity is reproducible


def test_predict_errors_name_the_argument(trained, world, tmp_path):
    result = run_cli(
        "segment",
        "--ckpt",
        str(tmp_path / "none.ckpt"),
        "--images",
        "x.jpg",
        "--vocab",
        "cat",
        "--out",
        str(tmp_path),
        cwd=world,
    )
    assert (
        result.returncode == 2 and "no image found" in result.stderr
    ) or "--images" in result.stderr
    result = run_cli(
        "segment",
        "--ckpt",
        str(tmp_path / "none.ckpt"),
        "--images",
        str(ROOT / "README.md"),
        "--vocab",
        "cat",
        "--out",
        str(tmp_path),
        cwd=world,
    )
    assert result.returncode == 2 and "--ckpt" in result.stderr and "none.ckpt" in result.stderr


def test_explain_writes_the_three_cost_maps(trained, world, tmp_path):
    image = sorted((world / "datasets" / "synthetic" / "images" / "val").glob("*.jpg"))[0]
    out = tmp_path / "explain.png"
    result = run_cli(
        "explain",
        "--ckpt",
        str(trained),
        "--image",
        str(image),
        "--class",
        "red disc",
        "--out",
        str(out),
        cwd=world,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    picture = Image.open(out)
    assert picture.width > 3 * picture.height  # five panels side by side


@pytest.mark.e2e
def test_quick_demo_runs_and_reports(tmp_path):
    stale = tmp_path / "banks" / "toy.zarr"  # demo_out's bank left by an older dpseg
    stale.mkdir(parents=True)
    (stale / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"format_version": 1}})
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / "demo.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"demo: {stale} is a bank of format 1 (an older dpseg): building it again" in (
        result.stdout
    )
    report = result.stdout[result.stdout.index("dpseg demo:") :]
    assert "round I  (bank prompts):" in report and "round II (prompts from the image):" in report
    assert "visual -> text prompt retrieval" in report
    assert "MISSING" not in report
    for name in (
        "toy_preview.png",
        "bank_gallery.png",
        "explain.png",
        "results/round1/summary.md",
        "results/round2/toy.json",
    ):
        assert (tmp_path / name).stat().st_size > 0
    assert len(list((tmp_path / "predict").glob("*_overlay.png"))) == 4
    assert (tmp_path / "predict_sheet.png").stat().st_size > 0


def test_readme_quotes_the_demo_figures_consistently():
    """The demo report in the README and the training page (docs/dpseg.md) quote the same round
    I mIoU, and the unseen classes score well above chance (1/31)."""
    import re

    readme = (ROOT / "README.md").read_text()
    report = re.search(
        r"round I  \(bank prompts\): +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+)", readme
    )
    training = (ROOT / "docs" / "dpseg.md").read_text()
    table = re.search(r"\| DPSeg \(toy-convnext, round 1\) \| ([\d.]+) \|", training)
    assert report and table and report.group(1) == table.group(1)
    assert float(report.group(3)) >= 10  # unseen classes: well above chance (3.2)


def test_a_checkpoint_from_before_the_coarse_head_loads_and_refuses_to_reject(trained, tmp_path):
    import torch

    from common.errors import SettingError
    from model.predictor import Predictor

    checkpoint = torch.load(trained, map_location="cpu", weights_only=True)
    head = [k for k in checkpoint["state_dict"] if ".coarse_head." in k]
    assert len(head) == 2  # weight and bias: saved by today's fit
    for key in head:
        del checkpoint["state_dict"][key]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    predictor = Predictor.from_checkpoint(old)  # loads: the head is the only thing missing
    predictor.set_vocabulary("red disc; green square; background", text_only=True, bank=None)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    assert predictor.predict(image).shape == (64, 64)  # without rejection it segments
    predictor.set_rejection(0.05)
    with pytest.raises(SettingError, match="saved before class early rejection's coarse head"):
        predictor.predict(image)
    with pytest.raises(SettingError, match=r"rejection_threshold=2.0: a probability in \(0, 1\)"):
        predictor.set_rejection(2.0)


def test_predict_takes_grey_rgba_and_unit_floats_and_refuses_the_rest(trained):
    from common.errors import SettingError
    from model.predictor import Predictor

    predictor = Predictor.from_checkpoint(trained)
    predictor.set_vocabulary("red disc; green square; background", text_only=True, bank=None)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    labels = predictor.predict(rgb)
    assert labels.shape == (40, 56)
    rgba = np.concatenate([rgb, np.full((40, 56, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(predictor.predict(rgba), labels)  # alpha dropped
    np.testing.assert_array_equal(predictor.predict(rgb / 255.0), labels)  # scaled, not misread
    grey = rgb[..., 0]
    np.testing.assert_array_equal(
        predictor.predict(grey), predictor.predict(grey[..., None].repeat(3, -1))
    )
    batch = predictor.predict_batch([rgb, rgba[:20]])
    assert [b.shape for b in batch] == [(40, 56), (20, 56)]
    np.testing.assert_array_equal(batch[0], labels)
    for bad, message in (
        (rgb.astype(np.float32), r"^image: a float32 image with values in \[0, 255\]; floats must"),
        (rgb[..., :2], r"^image: shape \(40, 56, 2\) is not an image"),
        (rgb.astype(np.int64), r"^image: dtype int64 is not taken"),
    ):
        with pytest.raises(SettingError, match=message):
            predictor.predict(bad)
    with pytest.raises(SettingError, match=r"^images\[1\]: shape \(3,\)"):
        predictor.predict_batch([rgb, np.zeros(3, np.uint8)])


def test_explain_maps_keep_a_portrait_image_s_shape(trained, world):
    from model.explain import class_maps
    from model.predictor import Predictor

    predictor = Predictor.from_checkpoint(trained)
    predictor.set_vocabulary("red disc; green square; background", bank=str(world / "bank.zarr"))
    image = np.random.default_rng(0).integers(0, 256, size=(96, 40, 3), dtype=np.uint8)
    maps = class_maps(predictor, image, 0)
    assert set(maps) == {"text", "visual", "avg", "probability"}
    assert all(m.shape == (96, 40) for m in maps.values())  # the image's own aspect, not square


def test_an_image_name_that_is_not_utf8_is_segmented_and_recorded(
    world, trained, mixed_images, tmp_path, capsys, monkeypatch
):
    """The probe: an image named b"im\\xff.jpg" ended in UnicodeEncodeError writing its JSON
    (and left it empty). Its JSON now escapes the name, which reads back to the same bytes."""
    import os
    import shutil

    folder = tmp_path / "names"
    folder.mkdir()
    name = os.fsdecode(b"im\xff.jpg")
    shutil.copy(mixed_images / "a_rgb.jpg", folder / name)
    out = tmp_path / "pred"
    args = ["segment", "--ckpt", str(trained), "--images", str(folder), "--vocab", "red disc"]
    result = cli_here(
        capsys, monkeypatch, *args, "--text-only", "--out", str(out), "--quiet", cwd=world
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stem = os.fsdecode(b"im\xff")
    record = json.loads((out / f"{stem}.json").read_text(encoding="ascii"))
    assert os.fsencode(record["image"]) == os.fsencode(str(folder / name))
    assert json.loads((out / "summary.json").read_text())["images"] == 1


def test_a_bank_of_another_encoder_is_refused_before_any_class_is_generated(
    trained, world, mixed_images, tmp_path, capsys, monkeypatch
):
    """Found by the probe: segment generated (and cached) the classes the bank lacked, and only
    then refused the bank for its encoder."""
    from conftest import TEMPLATES, make_bank

    other = make_bank(tmp_path / "vit.zarr", f"imagenet80:{TEMPLATES}", encoder="tiny-vit")
    args = ["segment", "--ckpt", str(trained), "--bank", str(other), "--images"]
    args += [str(mixed_images / "a_rgb.jpg"), "--vocab", "red disc; zebra", "--quiet"]
    result = cli_here(capsys, monkeypatch, *args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Build a bank with the model's encoder" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "vit.cache").exists() and not (tmp_path / "banks").exists()
