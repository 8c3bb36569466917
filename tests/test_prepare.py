"""data.prepare: tiny fixtures in the official raw formats, converted and checked value by value."""

import json
import os
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from cli import main as cli_main
from data.catalog import DatasetError
from data.prepare import (
    PREPARABLE,
    ade847_size,
    load_ade20k_index,
    prepare_dataset,
    resize_bilinear,
    resize_nearest,
)
from data.vocabulary import load_vocabulary


def snapshot(folder):
    """{relative path: (bytes, mtime_ns)} of every file under folder."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def read(path):
    with Image.open(path) as im:
        return np.asarray(im)


# ---------------------------------------------------------------------------------------------
# PASCAL VOC 2012


def voc_palette():
    """The VOC colour map (bit-interleaved label index), as in the devkit's VOClabelcolormap.m."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


# 0 background, 1..20 classes, 255 void boundary.
VOC_RAW = np.array([[0, 1, 2, 20], [255, 5, 0, 15]], np.uint8)
VOC20_EXPECTED = np.array([[255, 0, 1, 19], [255, 4, 255, 14]], np.uint8)
VOC20B_EXPECTED = np.array([[20, 0, 1, 19], [255, 4, 20, 14]], np.uint8)
VOC_VAL = ["2007_000033", "2007_000042"]


def make_voc(root, folder="SegmentationClass", missing_id=None):
    base = root / "VOCdevkit" / "VOC2012"
    (base / folder).mkdir(parents=True)
    for k, image_id in enumerate([*VOC_VAL, "2007_000032"]):  # the last is a train image
        raw = np.roll(VOC_RAW, k, axis=1)
        if folder == "SegmentationClass":
            im = Image.fromarray(raw, mode="P")
            im.putpalette(voc_palette())
        else:  # SegmentationClassAug: the same indices as 8-bit grayscale
            im = Image.fromarray(raw, mode="L")
        im.save(base / folder / f"{image_id}.png")
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    ids = VOC_VAL + ([missing_id] if missing_id else [])
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return base


def test_voc_palette_fixture_is_a_real_palette_png(tmp_path):
    base = make_voc(tmp_path)
    with Image.open(base / "SegmentationClass" / "2007_000033.png") as im:
        assert im.mode == "P"
        assert im.convert("RGB").getpixel((1, 0)) == (128, 0, 0)  # aeroplane is dark red


@pytest.mark.parametrize(
    ("name", "folder", "expected"),
    [
        ("voc20", "annotations_detectron2", VOC20_EXPECTED),
        ("voc20b", "annotations_detectron2_bg", VOC20B_EXPECTED),
    ],
)
def test_voc_values_names_and_rerun(tmp_path, name, folder, expected):
    base = make_voc(tmp_path, missing_id="2007_009999")
    summary = prepare_dataset(name, tmp_path, progress=False, workers=2)
    out = base / folder / "val"
    assert sorted(p.name for p in out.iterdir()) == [f"{i}.png" for i in VOC_VAL]
    for k, image_id in enumerate(VOC_VAL):
        label = read(out / f"{image_id}.png")
        assert label.dtype == np.uint8
        np.testing.assert_array_equal(label, np.roll(expected, k, axis=1))
    assert (summary["written"], summary["skipped"], summary["missing"]) == (2, 0, 1)
    assert summary["missing_examples"] == ["2007_009999"]
    assert summary["outputs"] == [str(out)]

    before = snapshot(tmp_path)
    again = prepare_dataset(name, tmp_path, progress=False)
    assert (again["written"], again["skipped"]) == (0, 2)
    assert snapshot(tmp_path) == before


def test_voc_segmentation_class_aug_fallback(tmp_path):
    base = make_voc(tmp_path, folder="SegmentationClassAug")
    prepare_dataset("voc20b", tmp_path, progress=False, workers=1)
    label = read(base / "annotations_detectron2_bg" / "val" / "2007_000033.png")
    np.testing.assert_array_equal(label, VOC20B_EXPECTED)


def test_killed_run_resumes(tmp_path):
    base = make_voc(tmp_path)
    prepare_dataset("voc20", tmp_path, progress=False)
    out = base / "annotations_detectron2" / "val"
    (out / "2007_000042.png").unlink()
    (out / "2007_000042.png.tmp").write_bytes(b"half a file")  # what a kill leaves behind
    summary = prepare_dataset("voc20", tmp_path, progress=False)
    assert (summary["written"], summary["skipped"]) == (1, 1)
    np.testing.assert_array_equal(read(out / "2007_000042.png"), np.roll(VOC20_EXPECTED, 1, axis=1))
    assert not (out / "2007_000042.png.tmp").exists()


def test_damaged_output_is_converted_again(tmp_path, capsys):
    """An output cut short (or with a flipped byte) since the run that wrote it is not "already
    converted": a rerun writes it again, says so, and leaves the whole ones as they are."""
    base = make_voc(tmp_path)
    (base / "JPEGImages").mkdir()
    for image_id in VOC_VAL:  # `data stats` reads the images' headers too
        Image.new("RGB", VOC_RAW.shape[::-1]).save(base / "JPEGImages" / f"{image_id}.jpg")
    prepare_dataset("voc20", tmp_path, progress=False)
    out = base / "annotations_detectron2" / "val"
    cut, flipped = out / "2007_000042.png", out / "2007_000033.png"
    whole = cut.read_bytes(), flipped.read_bytes()
    cut.write_bytes(whole[0][:30])
    data = bytearray(whole[1])
    data[len(data) // 2] ^= 0xFF  # a byte inside the image data: its chunk's CRC no longer holds
    flipped.write_bytes(bytes(data))
    assert cli_main(["data", "stats", "voc20", "--root", str(tmp_path), "--quiet"]) == 1
    stats = capsys.readouterr().out
    assert "2 unreadable files (first: 2007_000033: " in stats
    assert f"fix        run `python cli.py data prepare voc20 --root {tmp_path}` again" in stats
    assert cli_main(["data", "prepare", "voc20", "--root", str(tmp_path), "--quiet"]) == 0
    assert (
        "0 written, 0 already converted, 2 damaged and converted again" in capsys.readouterr().out
    )
    assert (cut.read_bytes(), flipped.read_bytes()) == whole
    again = prepare_dataset("voc20", tmp_path, progress=False)
    assert (again["written"], again["skipped"], again["replaced"]) == (0, 2, 0)
    assert cli_main(["data", "stats", "voc20", "--root", str(tmp_path), "--quiet"]) == 0
    assert "problems   none" in capsys.readouterr().out


def test_stats_fix_for_maps_a_rerun_keeps(tmp_path, capsys):
    """The probe: a label folder linked to the raw maps, and a whole map with wrong values, were
    told to rerun prepare, which keeps whole maps (and would write into the link's target)."""
    base = make_voc(tmp_path)
    (base / "JPEGImages").mkdir()
    for image_id in VOC_VAL:
        Image.new("RGB", VOC_RAW.shape[::-1]).save(base / "JPEGImages" / f"{image_id}.jpg")
    out = base / "annotations_detectron2" / "val"
    out.parent.mkdir()
    out.symlink_to(base / "SegmentationClass")  # raw maps in the converted maps' place
    stats_args = ["data", "stats", "voc20", "--root", str(tmp_path), "--quiet"]
    assert cli_main(stats_args) == 1
    shown = capsys.readouterr().out
    assert "label files with values outside the vocabulary" in shown
    assert (
        f"fix        {out} is a link to {base / 'SegmentationClass'}, where data prepare would "
        "write its converted maps: remove the link (not what it points to), then run "
        f"`python cli.py data prepare voc20 --root {tmp_path}` again"
    ) in shown
    out.unlink()
    prepare_dataset("voc20", tmp_path, progress=False)
    wrong = out / "2007_000033.png"
    Image.fromarray(np.full(VOC_RAW.shape, 40, np.uint8)).save(wrong)  # whole, out of range
    assert cli_main(stats_args) == 1
    shown = capsys.readouterr().out
    assert f"fix        move the label maps listed with wrong values or sizes out of {out}" in shown
    wrong.rename(tmp_path / "aside.png")
    assert prepare_dataset("voc20", tmp_path, progress=False)["written"] == 1
    assert cli_main(stats_args) == 0
    assert (base / "SegmentationClass" / "2007_000033.png").exists()  # the raw map untouched


def test_voc_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"SegmentationClass.*VOCtrainval_11-May-2012\.tar"):
        prepare_dataset("voc20", tmp_path, progress=False)
    base = make_voc(tmp_path)
    (base / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DatasetError, match=r"ImageSets/Segmentation/val\.txt"):
        prepare_dataset("voc20", tmp_path, progress=False)


def test_colour_label_is_refused(tmp_path):
    base = make_voc(tmp_path)
    path = base / "SegmentationClass" / "2007_000033.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(DatasetError, match=r"2007_000033\.png.*'RGB'.*original file"):
        prepare_dataset("voc20", tmp_path, progress=False)


# ---------------------------------------------------------------------------------------------
# COCO-Stuff


COCO_UNUSED = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}


def coco_expected(value):
    if value == 255 or value in COCO_UNUSED:
        return 255
    return value - sum(u < value for u in COCO_UNUSED)


def test_coco171_every_value(tmp_path):
    raw = np.array([*range(182), 255], np.uint8).reshape(1, 183)
    for split in ("train2017", "val2017"):
        (tmp_path / "coco-stuff" / "annotations" / split).mkdir(parents=True)
        Image.fromarray(raw, mode="L").save(
            tmp_path / "coco-stuff" / "annotations" / split / "000000000139.png"
        )
    summary = prepare_dataset("coco171", tmp_path, progress=False)
    assert (summary["written"], summary["skipped"]) == (2, 0)
    assert any("images" in w and "val2017.zip" in w for w in summary["warnings"])
    for split in ("train2017", "val2017"):
        out = tmp_path / "coco-stuff" / "annotations_detectron2" / split
        assert [p.name for p in out.iterdir()] == ["000000000139.png"]
        label = read(out / "000000000139.png")[0]
        got = dict(zip(raw[0].tolist(), label.tolist()))
        # Hand-picked: person, the first id after the unused 11, banner (first stuff), the last.
        assert (got[0], got[12], got[91], got[181], got[11], got[90], got[255]) == (
            0,
            11,
            80,
            170,
            255,
            255,
            255,
        )
        assert got == {v: coco_expected(v) for v in got}
        assert sorted(set(label.tolist()) - {255}) == list(range(171))
    names = load_vocabulary("coco171").names
    assert (names[0], names[11], names[80], names[170]) == ("person", "stop sign", "banner", "wood")

    again = prepare_dataset("coco171", tmp_path, progress=False)
    assert (again["written"], again["skipped"]) == (0, 2)


def test_coco171_val_only_and_missing(tmp_path):
    with pytest.raises(DatasetError, match=r"coco-stuff/annotations/val2017.*stuffthingmaps"):
        prepare_dataset("coco171", tmp_path, progress=False)
    val = tmp_path / "coco-stuff" / "annotations" / "val2017"
    val.mkdir(parents=True)
    (tmp_path / "coco-stuff" / "images" / "val2017").mkdir(parents=True)
    Image.fromarray(np.zeros((2, 2), np.uint8), mode="L").save(val / "1.png")
    summary = prepare_dataset("coco171", tmp_path, progress=False)
    assert summary["written"] == 1
    assert summary["warnings"] == [
        "coco-stuff/annotations/train2017 is absent: only the other split was converted"
    ]


# ---------------------------------------------------------------------------------------------
# ADE20K-150


def test_ade150_values(tmp_path):
    raw_dir = tmp_path / "ADEChallengeData2016" / "annotations" / "validation"
    raw_dir.mkdir(parents=True)
    raw = np.array([[0, 1, 2], [149, 150, 0]], np.uint8)
    Image.fromarray(raw, mode="L").save(raw_dir / "ADE_val_00000001.png")
    summary = prepare_dataset("ade150", tmp_path, progress=False)
    out = tmp_path / "ADEChallengeData2016" / "annotations_detectron2" / "validation"
    label = read(out / "ADE_val_00000001.png")
    np.testing.assert_array_equal(label, [[255, 0, 1], [148, 149, 255]])
    assert summary["written"] == 1
    assert prepare_dataset("ade150", tmp_path, progress=False)["skipped"] == 1


def test_ade150_missing(tmp_path):
    with pytest.raises(DatasetError, match=r"annotations/validation.*ADEChallengeData2016\.zip"):
        prepare_dataset("ade150", tmp_path, progress=False)


# ---------------------------------------------------------------------------------------------
# ADE20K full (847)


ADE_EXTRA = ["zz not in the benchmark a", "zz not in the benchmark b"]
ADE_FOLDER = "ADE20K_2021_17_01/images/ADE/validation/urban/street"


@pytest.fixture
def ade847_entries(shared_vocab, tmp_path, monkeypatch):
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    shutil.copy(shared_vocab / "catseg" / "ade847.json", vocab / "ade847.json")
    monkeypatch.setenv("DPSEG_VOCAB_DIR", str(vocab))
    return json.loads((vocab / "ade847.json").read_text())


def ade_objectnames(entries):
    """Two non-benchmark names, the 847 entries in a shuffled order, one more extra name."""
    perm = np.random.default_rng(0).permutation(len(entries))
    return [*ADE_EXTRA, *(entries[p] for p in perm), "zz not in the benchmark c"], perm


def encode_seg(classes):
    """An ADE20K *_seg.png: R // 10 * 256 + G is the class (R's units digit and B are noise)."""
    rng = np.random.default_rng(1)
    r = (classes // 256) * 10 + rng.integers(0, 10, classes.shape)
    return np.stack([r, classes % 256, rng.integers(0, 256, classes.shape)], -1).astype(np.uint8)


def make_ade847(root, entries, extra_index=None):
    names, perm = ade_objectnames(entries)
    folder = root / ADE_FOLDER
    folder.mkdir(parents=True)
    # mask value c is objectnames[c - 1]: 1, 2 and 850 are the extra names, 0 unlabeled
    small = np.array([[0, 1, 2, 3, 4, 300], [600, 849, 850, 3, 0, 257]])
    small_image = np.zeros((*small.shape, 3), np.uint8) + np.array([200, 120, 40], np.uint8)
    Image.fromarray(small_image).save(folder / "ADE_val_00000001.jpg", quality=100)
    Image.fromarray(encode_seg(small)).save(folder / "ADE_val_00000001_seg.png")
    # 513 x 515: the shorter side exceeds 512, so it is resized to 512 x 514.
    big = np.random.default_rng(2).choice([0, 1, 3, 4, 300, 849, 850], size=(513, 515))
    big_image = np.random.default_rng(3).integers(0, 256, (513, 515, 3), dtype=np.uint8)
    Image.fromarray(big_image).save(folder / "ADE_val_00000002.jpg")
    Image.fromarray(encode_seg(big)).save(folder / "ADE_val_00000002_seg.png")
    index = {
        "filename": ["ADE_train_00000001.jpg", "ADE_val_00000001.jpg", "ADE_val_00000002.jpg"],
        # the training image has no files here: it must not be read at all
        "folder": [ADE_FOLDER.replace("validation", "training"), ADE_FOLDER, ADE_FOLDER],
        "objectnames": names,
        "scene": ["street", "street", "street"],
        "objectPresence": np.zeros((len(names), 3), np.uint16),  # numpy must be accepted
        **(extra_index or {}),
    }
    with open(root / "ADE20K_2021_17_01" / "index_ade20k.pkl", "wb") as f:
        pickle.dump(index, f)
    return small, big, perm


def ade_expected(classes, perm):
    """Hand rule: c -> perm[c - 3] for c in 3..849 (the 847 entries), everything else 65535."""
    out = np.full(classes.shape, 65535, np.uint16)
    inside = (classes >= 3) & (classes <= 849)
    out[inside] = perm[classes[inside] - 3]
    return out


def test_ade847_values_resize_and_rerun(tmp_path, ade847_entries):
    small, big, perm = make_ade847(tmp_path, ade847_entries)
    summary = prepare_dataset("ade847", tmp_path, progress=False, workers=2)
    assert (summary["written"], summary["skipped"], summary["missing"]) == (2, 0, 0)
    base = tmp_path / "ADE20K_2021_17_01"
    images = base / "images_detectron2" / "validation"
    labels = base / "annotations_detectron2" / "validation"
    assert sorted(p.name for p in images.iterdir()) == [
        "ADE_val_00000001.jpg",
        "ADE_val_00000002.jpg",
    ]
    assert sorted(p.name for p in labels.iterdir()) == [
        "ADE_val_00000001.tif",
        "ADE_val_00000002.tif",
    ]

    label = read(labels / "ADE_val_00000001.tif")
    assert label.dtype == np.uint16
    vocab = load_vocabulary("ade847").entries
    # c = 3 is the first shuffled entry, perm[0]; c = 257 needs R = 10 (256 + 1).
    assert label[0, 3] == perm[0] and vocab[label[0, 3]] == ade847_entries[perm[0]]
    assert label[1, 5] == perm[254]
    np.testing.assert_array_equal(label, ade_expected(small, perm))
    image = read(images / "ADE_val_00000001.jpg")
    assert image.shape == (2, 6, 3)
    assert np.abs(image.astype(int) - [200, 120, 40]).max() <= 3

    # Resize: 513 x 515 -> 512 x 514; label nearest with source index floor(i * in / out).
    label = read(labels / "ADE_val_00000002.tif")
    assert label.shape == (512, 514)
    rows = np.arange(512) * 513 // 512
    cols = np.arange(514) * 515 // 514
    np.testing.assert_array_equal(label, ade_expected(big, perm)[rows][:, cols])
    assert read(images / "ADE_val_00000002.jpg").shape == (512, 514, 3)

    before = snapshot(tmp_path)
    again = prepare_dataset("ade847", tmp_path, progress=False)
    assert (again["written"], again["skipped"]) == (0, 2)
    assert snapshot(tmp_path) == before

    # a TIFF label or a JPEG image cut short is decoded to find out, and converted again
    for damaged in (labels / "ADE_val_00000002.tif", images / "ADE_val_00000001.jpg"):
        damaged.write_bytes(damaged.read_bytes()[:-100])
    again = prepare_dataset("ade847", tmp_path, progress=False)
    assert (again["written"], again["skipped"], again["replaced"]) == (0, 0, 2)
    assert {k: v[0] for k, v in snapshot(tmp_path).items()} == {k: v[0] for k, v in before.items()}


def test_ade847_size_rule():
    assert ade847_size(513, 515) == (512, 514)
    assert ade847_size(515, 513) == (514, 512)
    assert ade847_size(1536, 2048) == (512, 683)  # round(682.67)
    assert ade847_size(1000, 1000) == (512, 512)
    assert ade847_size(512, 2000) == (512, 2000)  # shorter side not above 512: unchanged
    assert ade847_size(400, 600) == (400, 600)


def test_resize_kernels_by_hand():
    row = np.array([[0, 40, 80, 120]], np.uint8)
    # downscale by 2: sample centres fall at 0.5 and 2.5
    np.testing.assert_array_equal(resize_bilinear(row, 1, 2), [[20, 100]])
    # upscale: positions -0.25 (clamped), 0.25, 0.75, 1.25 (clamped), as cv2.INTER_LINEAR
    np.testing.assert_array_equal(
        resize_bilinear(np.array([[0, 100]], np.uint8), 1, 4), [[0, 25, 75, 100]]
    )
    assert resize_bilinear(np.zeros((6, 6, 3), np.uint8), 4, 5).shape == (4, 5, 3)
    labels = np.arange(5)[None, :]
    np.testing.assert_array_equal(resize_nearest(labels, 1, 3), [[0, 1, 3]])  # floor(i * 5/3)
    np.testing.assert_array_equal(resize_nearest(labels, 1, 7), [[0, 0, 1, 2, 2, 3, 4]])


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_accepts_numpy(tmp_path, protocol):
    index = {
        "filename": ["a.jpg"],
        "folder": ["f"],
        "objectnames": ["wall"],
        "objectPresence": np.arange(6, dtype=np.int32).reshape(2, 3),
        "names": np.array(["x", None], dtype=object),
        "count": np.int64(7),
        "scenes": {"street"},
    }
    path = tmp_path / "index.pkl"
    path.write_bytes(pickle.dumps(index, protocol=protocol))
    loaded = load_ade20k_index(path)
    np.testing.assert_array_equal(loaded["objectPresence"], index["objectPresence"])
    assert loaded["names"].tolist() == ["x", None] and loaded["count"] == 7


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "ADE20K_2021_17_01").mkdir()
    path = tmp_path / "ADE20K_2021_17_01" / "index_ade20k.pkl"
    path.write_bytes(
        pickle.dumps({"filename": [], "folder": [], "objectnames": [], "x": _Evil(marker)})
    )
    with pytest.raises(DatasetError, match=r"refers to (posix|nt|os)\.system.*not loaded"):
        prepare_dataset("ade847", tmp_path, progress=False, vocab_dir=tmp_path)
    assert not marker.exists()


def test_ade847_errors(tmp_path, ade847_entries, monkeypatch):
    with pytest.raises(DatasetError, match=r"index_ade20k\.pkl.*ADE20K_2021_17_01\.zip"):
        prepare_dataset("ade847", tmp_path, progress=False)
    make_ade847(tmp_path, ade847_entries[:-3] + ["zz renamed"] * 3)
    with pytest.raises(DatasetError, match=r"3 of the 847 classes.*not among"):
        prepare_dataset("ade847", tmp_path, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("DPSEG_VOCAB_DIR", str(empty))
    with pytest.raises(DatasetError, match=r"put CAT-Seg's datasets/ade847\.json"):
        prepare_dataset("ade847", tmp_path, progress=False)
    with pytest.raises(DatasetError, match=r"no ade847\.json in"):
        prepare_dataset("ade847", tmp_path, progress=False, vocab_dir=empty)


def test_ade847_missing_names_are_listed(tmp_path, ade847_entries):
    entries = list(ade847_entries)
    make_ade847(tmp_path, [e for e in entries if e not in ("wall", "sky")])
    with pytest.raises(DatasetError, match=r"2 of the 847 classes.*: wall; sky\. Use"):
        prepare_dataset("ade847", tmp_path, progress=False)


# ---------------------------------------------------------------------------------------------
# PASCAL-Context


@pytest.fixture
def pc459_names(shared_vocab):
    return json.loads((shared_vocab / "catseg" / "pc459.json").read_text())


def make_pascal_context(root, names):
    from scipy.io import savemat

    base = root / "VOCdevkit" / "VOC2010"
    (base / "trainval").mkdir(parents=True)
    (base / "labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in enumerate(names, 1)))
    table, wall, person = (names.index(n) + 1 for n in ("table", "wall", "person"))
    maps = {
        "2008_000002": np.array([[0, 1, 2, 459], [table, wall, person, 100]]),
        "2008_000003": np.array([[2, 2, 0], [459, 3, 1]]),
        "2008_000004": np.array([[5]]),  # a train image, not in the list
    }
    for image_id, label_map in maps.items():
        savemat(base / "trainval" / f"{image_id}.mat", {"LabelMap": label_map.astype(np.uint16)})
    (base / "pascalcontext_val.txt").write_text("2008_000002\n2008_000003\n2008_999999\n")
    return base


def test_pc459_values(tmp_path, pc459_names):
    base = make_pascal_context(tmp_path, pc459_names)
    summary = prepare_dataset("pc459", tmp_path, progress=False)
    assert (summary["written"], summary["missing"]) == (2, 1)
    assert summary["missing_examples"] == ["2008_999999"]
    out = base / "annotations_detectron2" / "pc459_val"
    assert sorted(p.name for p in out.iterdir()) == ["2008_000002.tif", "2008_000003.tif"]
    label = read(out / "2008_000002.tif")
    assert label.dtype == np.uint16
    np.testing.assert_array_equal(label, [[65535, 0, 1, 458], [396, 439, 283, 99]])
    np.testing.assert_array_equal(read(out / "2008_000003.tif"), [[1, 1, 65535], [458, 2, 0]])
    assert prepare_dataset("pc459", tmp_path, progress=False)["skipped"] == 2


def test_pc59_values(tmp_path, pc459_names):
    base = make_pascal_context(tmp_path, pc459_names)
    summary = prepare_dataset("pc59", tmp_path, progress=False)
    assert (summary["written"], summary["missing"]) == (2, 1)
    out = base / "annotations_detectron2" / "pc59_val"
    label = read(out / "2008_000002.png")
    assert label.dtype == np.uint8
    pc59 = load_vocabulary("pc59").names
    assert (pc59[49], pc59[55], pc59[36]) == ("diningtable", "wall", "person")
    # unlabeled, accordion (not in 59), aeroplane, wool (not in 59); table, wall, person, crane
    np.testing.assert_array_equal(label, [[255, 255, 0, 255], [49, 55, 36, 255]])
    np.testing.assert_array_equal(read(out / "2008_000003.png"), [[0, 0, 255], [255, 255, 255]])

    before = snapshot(tmp_path)
    assert prepare_dataset("pc59", tmp_path, progress=False)["skipped"] == 2
    assert snapshot(tmp_path) == before


def test_pc59_refuses_a_wrong_labels_txt(tmp_path, pc459_names):
    names = list(pc459_names)
    i, j = names.index("aeroplane"), names.index("wall")
    names[i], names[j] = names[j], names[i]
    make_pascal_context(tmp_path, names)
    with pytest.raises(DatasetError, match=r"labels\.txt.*ordered by 459-id"):
        prepare_dataset("pc59", tmp_path, progress=False)
    labels = tmp_path / "VOCdevkit" / "VOC2010" / "labels.txt"
    labels.write_text(labels.read_text().replace(": sky\n", ": heaven\n"))
    with pytest.raises(DatasetError, match=r"lacks 1 of the 59 .*: sky;"):
        prepare_dataset("pc59", tmp_path, progress=False)
    labels.write_text("accordion\n")
    with pytest.raises(DatasetError, match=r"line 1 .*'ID: NAME'"):
        prepare_dataset("pc59", tmp_path, progress=False)


def test_pascal_context_missing_download(tmp_path):
    with pytest.raises(
        DatasetError,
        match=r"VOCdevkit/VOC2010/trainval/\*\.mat from trainval\.tar\.gz of PASCAL-Context",
    ):
        prepare_dataset("pc459", tmp_path, progress=False)
    (tmp_path / "VOCdevkit" / "VOC2010" / "trainval").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"pascalcontext_val\.txt.*CAT-Seg"):
        prepare_dataset("pc59", tmp_path, progress=False)


# ---------------------------------------------------------------------------------------------
# entry points


def test_unknown_name_and_root(tmp_path):
    with pytest.raises(DatasetError, match=r"cannot prepare 'ade'.*known are coco171"):
        prepare_dataset("ade", tmp_path)
    with pytest.raises(DatasetError, match=r"datasets root .*nowhere.* does not exist"):
        prepare_dataset("voc20", tmp_path / "nowhere")


def test_cmd_prepare(tmp_path, capsys, monkeypatch):
    make_voc(tmp_path)
    assert cli_main(["data", "prepare", "voc20", "--root", str(tmp_path), "--quiet"]) == 0
    assert "voc20: 2 written, 0 already converted" in capsys.readouterr().out

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert cli_main(["data", "prepare", "voc20", "--quiet"]) == 0
    assert "0 written, 2 already converted" in capsys.readouterr().out

    assert cli_main(["data", "prepare", "ade150", "--quiet"]) == 2
    assert "error: ade150:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # not a choice: the parser's usage error
        cli_main(["data", "prepare", "synthetic"])
    assert usage.value.code == 2
    assert set(PREPARABLE) == {
        "coco171",
        "ade150",
        "ade847",
        "pc59",
        "pc459",
        "voc20",
        "voc20b",
        "coco-object",
        "cityscapes",
        "potsdam",
        "vaihingen",
        "isaid",
        "vdd",
    }


def test_every_preparable_dataset_has_one_registered_converter():
    """Converters are registered where they are defined (``@converter``); the dispatcher has no
    branch per dataset and no table to extend: a converter brings its download's description,
    and one for a name that is not a DatasetSpec is refused."""
    from data.prepare.common import CONVERTERS, RAW_SOURCES, converter
    from data.prepare.run import PREPARABLE

    assert set(CONVERTERS) == set(PREPARABLE) == set(RAW_SOURCES)
    assert CONVERTERS["pc59"] is CONVERTERS["pc459"] and CONVERTERS["voc20"] is CONVERTERS["voc20b"]
    assert RAW_SOURCES["pc459"] == RAW_SOURCES["pc59"] and "Potsdam" in RAW_SOURCES["potsdam"]
    assert "Vaihingen" in RAW_SOURCES["vaihingen"] and "<root>" in RAW_SOURCES["vdd"]
    with pytest.raises(ValueError, match=r"converter for 'mydata': no DatasetSpec"):
        converter("mydata", source="x")(lambda root: None)
    assert "mydata" not in CONVERTERS


def test_a_file_where_prepare_makes_its_output_folder_is_named(tmp_path):
    """The probe: "choose a path under a folder", where the layout fixes the path."""
    base = make_voc(tmp_path)
    (base / "annotations_detectron2").write_text("in the way")
    with pytest.raises(DatasetError) as error:
        prepare_dataset("voc20", tmp_path, progress=False)
    assert str(error.value) == (
        f"{str(base / 'annotations_detectron2')!r} is a file where data prepare makes the folder "
        f"{str(base / 'annotations_detectron2' / 'val')!r} (the layout the readers expect); "
        "remove it, then run the command again"
    )
