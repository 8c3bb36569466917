"""Readers of every benchmark layout, bad input, Hugging Face datasets, transforms, data stats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from data.catalog import DATASETS, IGNORE_INDEX, DatasetError, get_dataset_spec
from data.datasets import HFSegmentationDataset, SegmentationFolder, collate
from data.transforms import ResizeSquare, SlidingWindow, TrainTransform, window_starts


def write_pair(root: Path, name: str, stem: str, label: np.ndarray, size=None) -> None:
    """An image and its label in the dataset's detectron2 layout (TIFF as uint16)."""
    spec = get_dataset_spec(name)
    h, w = label.shape
    if size is not None:
        w, h = size
    image_dir, label_dir = spec.image_root(root), spec.label_root(root)
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(stem))
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(image_dir / f"{stem}.jpg")
    dtype = np.uint16 if spec.label_suffix == ".tif" else np.uint8
    Image.fromarray(label.astype(dtype)).save(label_dir / f"{stem}{spec.label_suffix}")


# (dataset, an on-disk label map, the decoded label the reader must return)
CASES = {
    "coco171": ([[0, 170], [255, 12]], [[0, 170], [-1, 12]]),
    "ade150": ([[0, 149], [255, 7]], [[0, 149], [-1, 7]]),
    "ade847": ([[0, 846], [65535, 300]], [[0, 846], [-1, 300]]),
    "pc59": ([[0, 58], [255, 20]], [[0, 58], [-1, 20]]),
    "pc459": ([[0, 458], [459, 65535]], [[0, 458], [-1, -1]]),
    "voc20": ([[0, 19], [255, 5]], [[0, 19], [-1, 5]]),
    "voc20b": ([[20, 19], [255, 0]], [[20, 19], [-1, 0]]),
    "synthetic": ([[0, 7], [255, 3]], [[0, 7], [-1, 3]]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_reader_decodes_labels_value_by_value(tmp_path, name):
    raw, expected = (np.array(x) for x in CASES[name])
    raw = np.kron(raw, np.ones((3, 4), dtype=int))  # a 6x8 map
    write_pair(tmp_path, name, "img_b", raw)
    write_pair(tmp_path, name, "img_a", np.zeros_like(raw))
    dataset = SegmentationFolder(name, root=tmp_path)
    assert [f.name for f in dataset.files] == ["img_a", "img_b"]  # sorted by stem
    sample = dataset[1]
    assert sample["name"] == "img_b"
    assert sample["vocabulary"] == get_dataset_spec(name).vocabulary
    assert sample["image"].shape == (6, 8, 3) and sample["image"].dtype == np.uint8
    assert sample["label"].dtype == np.int64
    np.testing.assert_array_equal(sample["label"], np.kron(expected, np.ones((3, 4), dtype=int)))


def test_catalog_matches_design():
    assert {n: (s.num_classes, s.expected_images) for n, s in DATASETS.items() if ":" not in n} == {
        "coco171": (171, 5000),
        "ade150": (150, 2000),
        "ade847": (847, 2000),
        "pc59": (59, 5104),
        "pc459": (459, 5104),
        "voc20": (20, 1449),
        "voc20b": (21, 1449),
        "synthetic": (8, None),
        # mmsegmentation layout (tests/test_vip_datasets.py)
        "voc21": (21, 1449),
        "pc60": (60, 5104),
        "coco-object": (81, 5000),
        "cityscapes": (19, 500),
        # remote sensing, VIP's benchmarks (tests/test_remote_sensing.py)
        "potsdam": (6, 2016),
        "vaihingen": (6, 398),
        "isaid": (16, 11644),
        "vdd": (7, None),
        # the toy world (tests/test_toy_world.py); its training split is "toy:train"
        "toy": (31, None),
    }
    assert get_dataset_spec("ade847").ignore_values == (65535,)
    with pytest.raises(DatasetError, match="unknown dataset 'ade20k'; known: coco171"):
        get_dataset_spec("ade20k")


def test_split_defined_by_labels_for_voc_and_context(tmp_path):
    """VOC/PASCAL-Context image folders hold every split: the label files pick the val images."""
    write_pair(tmp_path, "voc20", "2007_000033", np.zeros((4, 4)))
    extra = get_dataset_spec("voc20").image_root(tmp_path) / "2007_999999.jpg"
    Image.new("RGB", (4, 4)).save(extra)  # a train image: no label, not an error
    assert [f.name for f in SegmentationFolder("voc20", root=tmp_path).files] == ["2007_000033"]


def test_missing_labels_reported_then_skippable(tmp_path):
    for i in range(3):
        write_pair(tmp_path, "ade150", f"ADE_val_{i}", np.zeros((4, 4)))
    spec = get_dataset_spec("ade150")
    (spec.label_root(tmp_path) / "ADE_val_1.png").unlink()
    (spec.image_root(tmp_path) / "ADE_val_2.jpg").unlink()
    with pytest.raises(DatasetError) as err:
        SegmentationFolder("ade150", root=tmp_path)
    message = str(err.value)
    assert "1 images have no label file (ADE_val_1)" in message
    assert "1 labels have no image (ADE_val_2)" in message and "--on-bad-sample skip" in message
    dataset = SegmentationFolder("ade150", root=tmp_path, on_bad_sample="skip")
    assert [f.name for f in dataset.files] == ["ADE_val_0"]
    assert dataset.unpaired == {"missing_images": ["ADE_val_2"], "missing_labels": ["ADE_val_1"]}


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("size", r"is 8x4 but its label .* is 4x4 \(W x H\)"),
        ("values", r"label values 150, 200 are outside the 150 classes"),
        (  # the path named once, with a fix (probe 12: twice, and no fix)
            "unreadable",
            r"^cannot read label '[^']*bad.png' as an image \(cannot identify image file; empty, "
            r"cut short or not a picture\): replace it with the map, a single-channel PNG",
        ),
        ("rgb", "has mode RGB"),
    ],
)
def test_bad_samples_error_or_skip(tmp_path, damage, match):
    spec = get_dataset_spec("ade150")
    write_pair(tmp_path, "ade150", "good", np.full((4, 4), 3))
    label = np.zeros((4, 4))
    if damage == "values":
        label[0, :2] = [150, 200]
    write_pair(tmp_path, "ade150", "bad", label, size=(8, 4) if damage == "size" else None)
    label_path = spec.label_root(tmp_path) / "bad.png"
    if damage == "unreadable":
        label_path.write_bytes(b"not a png")
    if damage == "rgb":
        Image.new("RGB", (4, 4)).save(label_path)
    dataset = SegmentationFolder("ade150", root=tmp_path)
    with pytest.raises(DatasetError, match=match) as err:
        dataset[0]  # "bad" sorts first
    assert "bad" in str(err.value)
    skipping = SegmentationFolder("ade150", root=tmp_path, on_bad_sample="skip")
    batch = collate([skipping[0], skipping[1]])
    assert [name for name, _ in batch["skipped"]] == ["bad"]
    assert batch["name"] == ["good"]


def test_a_label_over_the_pixel_limit_is_said_once(tmp_path, monkeypatch):
    """Probe 12: "cannot read label X: cannot read it as an image (label X: 16 pixels, more
    than the limit ...)" wrapped our own error, naming the file twice."""
    from data.datasets import read_label

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    monkeypatch.setenv("DPSEG_MAX_PIXELS", "10")
    with pytest.raises(DatasetError) as err:
        read_label(path)
    assert str(err.value).startswith(
        f"label {str(path)!r}: 4 x 4 = 16 pixels, more than the limit of 10 ($DPSEG_MAX_PIXELS"
    ), err.value
    assert str(err.value).count(str(path)) == 1


def test_empty_and_missing_dataset(tmp_path):
    with pytest.raises(DatasetError, match=r"does not exist. Prepare it with `cli.py data prepare"):
        SegmentationFolder("coco171", root=tmp_path)
    spec = get_dataset_spec("coco171")
    spec.image_root(tmp_path).mkdir(parents=True)
    spec.label_root(tmp_path).mkdir(parents=True)
    with pytest.raises(DatasetError, match="has no image with a label"):
        SegmentationFolder("coco171", root=tmp_path)


def test_root_from_environment(tmp_path, monkeypatch):
    write_pair(tmp_path, "synthetic", "000000", np.zeros((4, 4)))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert len(SegmentationFolder("synthetic")) == 1


def _hf_dataset(n: int = 6):
    import datasets

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)) for _ in range(n)]
    masks = [Image.fromarray(np.full((5, 7), i % 3, dtype=np.uint8)) for i in range(n)]
    masks[0].putpixel((0, 0), 255)
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    return datasets.Dataset.from_dict({"image": images, "mask": masks}, features=features)


@pytest.mark.parametrize("form", ["save_to_disk", "parquet"])
def test_hugging_face_dataset(tmp_path, form):
    dataset = _hf_dataset()
    if form == "save_to_disk":
        dataset.save_to_disk(str(tmp_path / "hf"))
        source = str(tmp_path / "hf")
    else:
        (tmp_path / "pq").mkdir()
        dataset.to_parquet(str(tmp_path / "pq" / "val-00000.parquet"))
        source = str(tmp_path / "pq")
    whole = HFSegmentationDataset(source, vocabulary="a; b; c")
    assert len(whole) == 6
    first = whole[0]
    assert first["image"].shape == (5, 7, 3)
    assert first["label"][0, 0] == IGNORE_INDEX and first["label"][0, 1] == 0
    assert whole[4]["label"].max() == 1
    shards = [HFSegmentationDataset(source, "a; b; c", rank=r, world_size=2) for r in (0, 1)]
    assert [len(s) for s in shards] == [3, 3]
    seen = sorted(int(s[i]["label"][2, 2]) for s in shards for i in range(len(s)))
    assert seen == sorted(int(whole[i]["label"][2, 2]) for i in range(6))  # a partition
    with pytest.raises(DatasetError, match="has no column 'annotation'"):
        HFSegmentationDataset(source, "a; b; c", mask_column="annotation")
    with pytest.raises(DatasetError, match=r"outside the 2 classes"):
        HFSegmentationDataset(source, "a; b")[2]


def test_hugging_face_hub_offline_is_clear(monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Both libraries read the variable when first imported: set their copies too, or the test
    # waits for network timeouts (23 s here) instead of failing offline at once.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetError, match="cannot load the Hugging Face dataset 'nobody/none'"):
        HFSegmentationDataset("nobody/none", vocabulary="a; b")


def test_train_transform_crops_pads_and_flips_together():
    h, w = 20, 30
    label = np.tile(np.arange(w) % 5, (h, 1))
    image = np.stack([label * 50] * 3, axis=-1).astype(np.uint8)  # colour encodes the label
    out = TrainTransform(crop=64, scale=(0.5, 0.5), seed=0)({"image": image, "label": label})
    assert out["image"].shape == (3, 64, 64) and out["label"].shape == (64, 64)
    valid = out["label"] != IGNORE_INDEX
    assert 0 < valid.float().mean() < 1  # a 32x48 image padded to 64x64 with ignore
    # Wherever the label is valid, the pixel's colour still encodes it: flipped together.
    colour = (out["image"][0][valid] * 255 / 50).round()
    assert (colour - out["label"][valid]).abs().max() <= 1
    again = TrainTransform(crop=64, scale=(0.5, 0.5), seed=0)({"image": image, "label": label})
    assert torch.equal(again["label"], out["label"])


def test_window_starts_cover_everything():
    assert window_starts(640, 384, 256) == [0, 256]
    assert window_starts(1000, 384, 256) == [0, 256, 512, 616]
    assert window_starts(300, 384, 256) == [0]
    for length in range(384, 1300, 37):
        starts = window_starts(length, 384, 256)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s : s + 384] = True
        assert covered.all() and starts[-1] + 384 == length


@pytest.mark.parametrize(
    "protocol",
    [
        ResizeSquare(96),
        SlidingWindow(96, 64, 32, global_view=True),
        SlidingWindow(80, 80, 40, global_view=False),
    ],
    ids=["sed", "catseg", "vip"],
)
def test_test_protocols_return_logits_at_label_size(protocol):
    """With the image itself as 'logits', each protocol gives the image back at its own size."""
    y, x = torch.meshgrid(torch.linspace(0, 1, 150), torch.linspace(0, 1, 200), indexing="ij")
    image = torch.stack([x, y, (x + y) / 2])  # smooth, so resizing loses little
    calls = []

    def logits_fn(batch):
        calls.append(batch.shape)
        return batch.clone()

    logits = protocol(logits_fn, image)
    assert logits.shape == (3, 150, 200)
    assert (logits - image).abs().max() < 0.05
    assert all(s[-2:] == calls[0][-2:] for s in calls[:1])


def test_data_stats_cli(tmp_path):
    write_pair(tmp_path, "ade150", "a", np.array([[0, 1], [255, 1]]))
    write_pair(tmp_path, "ade150", "b", np.array([[0, 160], [2, 2]]))
    spec = get_dataset_spec("ade150")
    Image.new("RGB", (2, 2)).save(spec.image_root(tmp_path) / "c.jpg")  # no label
    result = run_cli("data", "stats", "ade150", "--root", str(tmp_path), "--json")
    assert result.returncode == 1, result.stderr  # it has problems, as `bank verify`
    stats = json.loads(result.stdout)
    assert stats["images"] == 2 and stats["expected_images"] == 2000
    assert stats["label_values"] == [0, 1, 2, 160, 255]
    assert stats["images_without_label"] == ["c"]
    assert stats["labels_outside_vocabulary"][0]["values"] == [160]
    assert stats["pixels_per_class"]["wall"] == 2 and stats["pixels_per_class"]["sky"] == 2
    assert stats["ignore_fraction"] == pytest.approx(1 / 8)
    text = run_cli("data", "stats", "ade150", "--root", str(tmp_path), "--quiet")
    assert "images     2 with labels (expected 2000: MISMATCH)" in text.stdout
    assert "values     0..2, 160, 255 (255 = ignore)" in text.stdout
    assert "1 images without a label (first: c)" in text.stdout
    assert text.returncode == 1
    assert text.stdout.splitlines()[-1] == (  # no download here: prepare has nothing to redo
        "fix        these files come from ade150's download: unpack them again"
    )


def test_data_stats_of_a_set_without_a_pair_is_a_problem(tmp_path):
    """Probe 12: a set with no image at all gave "problems   none" and exit 0, while `test`
    refuses it ("has no image with a label")."""
    spec = get_dataset_spec("ade150")
    spec.image_root(tmp_path).mkdir(parents=True)
    spec.label_root(tmp_path).mkdir(parents=True)
    text = run_cli("data", "stats", "ade150", "--root", str(tmp_path), "--quiet")
    assert text.returncode == 1, text.stderr
    assert (
        f"problems   no image with a label (images in {spec.image_root(tmp_path)}, labels *.png "
        f"in {spec.label_root(tmp_path)})" in text.stdout
    ), text.stdout
    assert text.stdout.splitlines()[-1].startswith("fix        "), text.stdout


def test_stats_fix_names_what_mends_each_problem(tmp_path):
    """The probe: strays were told to rerun prepare, a damaged synthetic set to "make them
    again" (a rerun keeps the files it finds), and a set whose download is gone (or that prepare
    only checks) to rerun a prepare that has nothing to convert from."""
    from test_prepare import make_voc

    from data.stats import PROBLEMS, problems_fix

    def stats(dataset: str, root="R", **problems) -> dict:
        return {"dataset": dataset, "root": str(root), **{k: [] for k, _ in PROBLEMS}, **problems}

    assert problems_fix(stats("ade150", labels_without_image=["a"])) == (
        "remove the label maps without an image (or put their images back)"
    )
    assert problems_fix(stats("synthetic", unreadable=["a: cut"])) == (
        "write the set again into a new folder (`python cli.py data synthetic --root NEW`): a "
        "rerun keeps the files it finds"
    )
    assert problems_fix(stats("toy:val", size_mismatches=["a"])).startswith(
        "write the set again into a new folder (`python cli.py data toy --root NEW`)"
    )
    no_download = problems_fix(stats("voc20", unreadable=["b"]))
    assert no_download == "these files come from voc20's download: unpack them again"
    assert problems_fix(stats("vdd", unreadable=["b"])) == (
        "these files come from vdd's download: unpack them again"
    )
    make_voc(tmp_path)
    both = problems_fix(stats("voc20", tmp_path, labels_without_image=["a"], unreadable=["b"]))
    assert both.startswith("remove the label maps without an image") and (
        f"; run `python cli.py data prepare voc20 --root {tmp_path}` again" in both
    )
