import hashlib
import json
import signal
from dataclasses import replace

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from common.signals import Interrupted
from data.synthetic import (
    IGNORE_INDEX,
    SyntheticConfig,
    render_sample,
    synthetic_class_names,
    write_synthetic_dataset,
)
from data.vocabulary import load_vocabulary

SMALL = SyntheticConfig(train_images=6, val_images=3, size=64)


def digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_layout_and_label_values(tmp_path):
    summary = write_synthetic_dataset(tmp_path, SMALL, progress=False)
    base = tmp_path / "synthetic"
    assert summary["written"] == 9
    for split, count in (("train", 6), ("val", 3)):
        images = sorted((base / "images" / split).glob("*.jpg"))
        labels = sorted((base / "annotations_detectron2" / split).glob("*.png"))
        assert (
            [p.stem for p in images]
            == [p.stem for p in labels]
            == [f"{i:06d}" for i in range(count)]
        )
        for image_path, label_path in zip(images, labels):
            image, label = Image.open(image_path), Image.open(label_path)
            assert image.mode == "RGB" and image.size == (64, 64)
            assert label.mode == "L" and label.size == (64, 64)
            values = set(np.unique(np.asarray(label)).tolist())
            assert values <= set(range(8)) | {IGNORE_INDEX}
    assert (
        json.loads((base / "vocabulary.json").read_text()) == load_vocabulary("synthetic").entries
    )
    assert not list(base.rglob("*.tmp"))


def test_deterministic_and_independent_of_count(tmp_path):
    write_synthetic_dataset(tmp_path / "a", SMALL, progress=False)
    write_synthetic_dataset(tmp_path / "b", SMALL, progress=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    fewer = replace(SMALL, train_images=2)
    image, label = render_sample(fewer, "train", 1)
    image2, label2 = render_sample(SMALL, "train", 1)
    assert np.array_equal(image, image2) and np.array_equal(label, label2)
    other_seed, _ = render_sample(replace(SMALL, seed=1), "train", 1)
    assert not np.array_equal(other_seed, image)


def test_rerun_is_noop_and_completes_missing_files(tmp_path):
    write_synthetic_dataset(tmp_path, SMALL, progress=False)
    before = digest(tmp_path)
    missing = tmp_path / "synthetic" / "images" / "train" / "000004.jpg"
    missing.unlink()
    assert write_synthetic_dataset(tmp_path, SMALL, progress=False)["written"] == 1
    assert digest(tmp_path) == before


def test_other_config_refused(tmp_path):
    write_synthetic_dataset(tmp_path, SMALL, progress=False)
    with pytest.raises(FileExistsError, match="made with another config"):
        write_synthetic_dataset(tmp_path, replace(SMALL, seed=5), progress=False)


def test_content_statistics():
    """Every class appears, objects range from small to large, boundaries are ignored."""
    config = SyntheticConfig(size=128)
    areas, seen, ignored = [], set(), 0
    for i in range(60):
        _, label = render_sample(config, "train", i)
        ids, counts = np.unique(label, return_counts=True)
        seen |= set(ids.tolist())
        ignored += int(counts[ids == IGNORE_INDEX].sum())
        areas += [c / label.size for k, c in zip(ids, counts) if 0 < k < IGNORE_INDEX]
    assert seen == set(range(len(synthetic_class_names()))) | {IGNORE_INDEX}
    assert min(areas) < 0.005 and max(areas) > 0.2  # small (< 0.5%) and large (> 20%) objects
    assert 0 < ignored / (60 * 128 * 128) < 0.1


def test_classes_have_distinct_colours():
    """The image content is learnable: each class's mean colour differs from the others'."""
    config = SyntheticConfig(size=128)
    sums = np.zeros((8, 3))
    counts = np.zeros(8)
    for i in range(40):
        image, label = render_sample(config, "val", i)
        for k in range(8):
            sums[k] += image[label == k].sum(axis=0)
            counts[k] += (label == k).sum()
    means = sums / counts[:, None]
    gaps = np.linalg.norm(means[:, None] - means[None], axis=-1) + np.eye(8) * 1e9
    assert gaps.min() > 20


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 16}, "at least 32"),
        ({"train_images": -1}, "must be >= 0"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects <= max_objects"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticConfig(**kwargs)


def test_cli_writes_dataset_and_preview(tmp_path):
    result = run_cli(
        "data",
        "synthetic",
        "--root",
        str(tmp_path),
        "--train",
        "4",
        "--val",
        "8",
        "--size",
        "64",
        "--preview",
        str(tmp_path / "preview.png"),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert "4 train + 8 val images" in result.stdout
    preview = Image.open(tmp_path / "preview.png")
    assert preview.width == 8 * 64 and preview.height > 2 * 64  # 8 tiles, image over label, legend
    bad = run_cli("data", "synthetic", "--root", str(tmp_path), "--size", "8", "--quiet")
    assert bad.returncode == 2 and "at least 32" in bad.stderr


def test_an_interrupted_generation_is_refused_when_read_and_finished_by_a_rerun(tmp_path):
    from data.catalog import DatasetError, get_dataset_spec
    from data.datasets import index_files
    from data.synthetic import dataset_dir, write_rendered_dataset

    calls = []

    def render_then_stop(config, split, index):  # Ctrl-C while the 4th image is drawn
        calls.append(index)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return render_sample(config, split, index)

    files = {"vocabulary.json": load_vocabulary("synthetic").to_json()}
    out = dataset_dir(tmp_path)
    with pytest.raises(Interrupted, match="SIGINT") as stop:
        write_rendered_dataset(out, "dpseg.synthetic", SMALL, render_then_stop, files, False)
    assert stop.value.signum == signal.SIGINT
    assert "interrupted by SIGINT after 3 of 9 images" in stop.value.report
    assert json.loads((out / "meta.json").read_text())["complete"] is False
    spec = get_dataset_spec("synthetic:train")
    with pytest.raises(DatasetError, match=r"was interrupted .*`cli\.py data synthetic --root"):
        index_files(spec, tmp_path)
    assert write_synthetic_dataset(tmp_path, SMALL, progress=False)["written"] == 6  # the rest
    assert json.loads((out / "meta.json").read_text())["complete"] is True
    assert len(index_files(spec, tmp_path)[0]) == SMALL.train_images
    fresh = tmp_path / "fresh"
    write_synthetic_dataset(fresh, SMALL, progress=False)
    assert digest(dataset_dir(fresh)) == digest(out)  # the same bytes as one whole run
