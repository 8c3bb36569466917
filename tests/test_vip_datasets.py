"""The mmsegmentation-layout benchmarks of the training-free methods (SCLIP, ClearCLIP, VIP):
voc21, pc60, coco-object, cityscapes. Tiny fixtures in the exact on-disk formats; readers,
converters, vocabularies and `data stats`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import read_image_file as read
from conftest import run_cli, snapshot
from PIL import Image

from cli import main as cli_main
from data.catalog import IGNORE_INDEX, DatasetError, get_dataset_spec
from data.datasets import SegmentationFolder
from data.prepare import prepare_dataset
from data.stats import dataset_stats
from data.vocabulary import load_vocabulary

NEW = {"voc21": 21, "pc60": 60, "coco-object": 81, "cityscapes": 19}


def save_image(path: Path, shape: tuple[int, int], fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(path, format=fmt)


def save_label(path: Path, label, palette: bool = False) -> None:
    """An 8-bit grayscale PNG, or a palette PNG (VOC's SegmentationClass) when palette=True."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(label, dtype=np.uint8))
    if palette:
        im.putpalette(voc_palette())  # turns the 'L' image into a 'P' one with these indices
    im.save(path)


def voc_palette() -> list[int]:
    """The VOC colour map (bit-interleaved index), as the devkit's VOClabelcolormap.m."""
    palette = []
    for i in range(256):
        r = g = b = 0
        for j in range(8):
            r |= ((i >> (3 * j)) & 1) << (7 - j)
            g |= ((i >> (3 * j + 1)) & 1) << (7 - j)
            b |= ((i >> (3 * j + 2)) & 1) << (7 - j)
        palette += [r, g, b]
    return palette


def write_split(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(ids) + "\n\n")


# ---------------------------------------------------------------------------------------------
# fixtures in the on-disk formats

VOC = Path("VOCdevkit/VOC2012")
# 0 background, 1 aeroplane, 20 tvmonitor, 255 the void boundary drawn around objects
VOC_LABEL = np.array([[0, 0, 1, 1], [0, 255, 255, 1], [20, 20, 255, 0]])


def make_voc21(root: Path) -> None:
    for k, image_id in enumerate(["2007_000033", "2007_000042", "2007_000032"]):
        save_image(root / VOC / "JPEGImages" / f"{image_id}.jpg", VOC_LABEL.shape)
        save_label(
            root / VOC / "SegmentationClass" / f"{image_id}.png",
            np.roll(VOC_LABEL, k, 1),
            palette=True,
        )
    # 2007_000032 is a train image: on disk with its label, but not in the split
    write_split(root / VOC / "ImageSets/Segmentation/val.txt", ["2007_000042", "2007_000033"])


PC = Path("VOCdevkit/VOC2010")
PC_LABEL = np.array([[0, 59, 255], [1, 30, 0]])


def make_pc60(root: Path) -> None:
    for image_id in ["2008_000002", "2008_000003", "2008_000004"]:
        save_image(root / PC / "JPEGImages" / f"{image_id}.jpg", PC_LABEL.shape)
        save_label(root / PC / "SegmentationClassContext" / f"{image_id}.png", PC_LABEL)
    write_split(root / PC / "ImageSets/SegmentationContext/val.txt", ["2008_000002", "2008_000004"])


COCO = Path("coco_stuff164k")
COCO_LABEL = np.array([[0, 1, 80], [255, 40, 0]])


def make_coco_object(root: Path) -> None:
    for image_id in ["000000000139", "000000000285"]:
        save_image(root / COCO / "images/val2017" / f"{image_id}.jpg", COCO_LABEL.shape)
        ann = root / COCO / "annotations/val2017"
        save_label(ann / f"{image_id}_instanceTrainIds.png", COCO_LABEL)
        # mmseg's other files in the same folder; 170 would be outside the 81 classes
        save_label(ann / f"{image_id}_labelTrainIds.png", np.full(COCO_LABEL.shape, 170))
        save_label(ann / f"{image_id}.png", np.full(COCO_LABEL.shape, 181))


CITY = Path("cityscapes")
CITY_STEMS = {
    "frankfurt": ["frankfurt_000000_000294", "frankfurt_000001_000538"],
    "lindau": ["lindau_000001_000019"],
}
CITY_LABEL = np.array([[0, 18, 255, 10], [13, 13, 255, 0]])


def make_cityscapes(root: Path) -> None:
    for city, stems in CITY_STEMS.items():
        for stem in stems:
            save_image(
                root / CITY / "leftImg8bit/val" / city / f"{stem}_leftImg8bit.png", CITY_LABEL.shape
            )
            gt = root / CITY / "gtFine/val" / city
            save_label(gt / f"{stem}_gtFine_labelTrainIds.png", CITY_LABEL)
            # the other gtFine files of the download: ids up to 33, colours, 16-bit instances
            save_label(gt / f"{stem}_gtFine_labelIds.png", np.full(CITY_LABEL.shape, 33))
            Image.new("RGB", CITY_LABEL.shape[::-1]).save(gt / f"{stem}_gtFine_color.png")
            Image.fromarray(np.full(CITY_LABEL.shape, 26001, np.uint16)).save(
                gt / f"{stem}_gtFine_instanceIds.png"
            )
            (gt / f"{stem}_gtFine_polygons.json").write_text("{}")


MAKERS = {
    "voc21": make_voc21,
    "pc60": make_pc60,
    "coco-object": make_coco_object,
    "cityscapes": make_cityscapes,
}


# ---------------------------------------------------------------------------------------------
# readers


def test_voc_fixture_is_a_real_palette_png(tmp_path):
    make_voc21(tmp_path)
    with Image.open(tmp_path / VOC / "SegmentationClass" / "2007_000033.png") as im:
        assert im.mode == "P"
        rgb = im.convert("RGB")
        assert rgb.getpixel((2, 0)) == (128, 0, 0)  # aeroplane is dark red
        assert rgb.getpixel((1, 1)) == (224, 224, 192)  # the void boundary is cream


def test_voc21_split_file_palette_and_background(tmp_path):
    make_voc21(tmp_path)
    dataset = SegmentationFolder("voc21", root=tmp_path)
    # the split file's ids, sorted; the train image 2007_000032 is left out
    assert [f.name for f in dataset.files] == ["2007_000033", "2007_000042"]
    sample = dataset[1]
    assert sample["name"] == "2007_000042" and sample["vocabulary"] == "voc21"
    expected = np.where(VOC_LABEL == 255, IGNORE_INDEX, VOC_LABEL)  # background stays 0
    np.testing.assert_array_equal(sample["label"], np.roll(expected, 1, 1))
    assert sample["image"].shape == (3, 4, 3)
    names = load_vocabulary("voc21").names
    assert (names[0], names[1], names[20]) == ("background", "aeroplane", "tvmonitor")


def test_pc60_values_and_split(tmp_path):
    make_pc60(tmp_path)
    dataset = SegmentationFolder("pc60", root=tmp_path)
    assert [f.name for f in dataset.files] == ["2008_000002", "2008_000004"]
    np.testing.assert_array_equal(dataset[0]["label"], [[0, 59, -1], [1, 30, 0]])
    assert load_vocabulary("pc60").names == ["background", *load_vocabulary("pc59").names]


def test_coco_object_pairs_only_instance_train_ids(tmp_path):
    make_coco_object(tmp_path)
    dataset = SegmentationFolder("coco-object", root=tmp_path)
    assert [f.name for f in dataset.files] == ["000000000139", "000000000285"]
    assert dataset.files[0].label.name == "000000000139_instanceTrainIds.png"
    np.testing.assert_array_equal(dataset[0]["label"], [[0, 1, 80], [-1, 40, 0]])
    names = load_vocabulary("coco_object").names
    assert (names[0], names[1], names[80]) == ("background", "person", "toothbrush")
    assert names[1:] == load_vocabulary("coco171").names[:80]


def test_cityscapes_nested_cities_and_suffixes(tmp_path):
    make_cityscapes(tmp_path)
    dataset = SegmentationFolder("cityscapes", root=tmp_path)
    assert [f.name for f in dataset.files] == [
        "frankfurt_000000_000294",
        "frankfurt_000001_000538",
        "lindau_000001_000019",
    ]
    files = dataset.files[2]
    assert files.image.parent.name == files.label.parent.name == "lindau"
    assert files.label.name == "lindau_000001_000019_gtFine_labelTrainIds.png"
    sample = dataset[2]
    assert sample["name"] == "lindau_000001_000019"
    np.testing.assert_array_equal(sample["label"], [[0, 18, -1, 10], [13, 13, -1, 0]])


def test_cityscapes_missing_label_and_duplicate_id(tmp_path):
    make_cityscapes(tmp_path)
    gt = tmp_path / CITY / "gtFine/val/lindau"
    (gt / "lindau_000001_000019_gtFine_labelTrainIds.png").unlink()
    with pytest.raises(DatasetError) as err:
        SegmentationFolder("cityscapes", root=tmp_path)
    assert "1 images have no label file (lindau_000001_000019)" in str(err.value)
    assert "--on-bad-sample skip" in str(err.value)
    assert len(SegmentationFolder("cityscapes", root=tmp_path, on_bad_sample="skip")) == 2
    # a copy of a frankfurt image in another city folder would give two samples one name
    save_image(
        tmp_path / CITY / "leftImg8bit/val/zz/frankfurt_000000_000294_leftImg8bit.png", (2, 4)
    )
    with pytest.raises(DatasetError, match=r"same sample id 'frankfurt_000000_000294'"):
        SegmentationFolder("cityscapes", root=tmp_path, on_bad_sample="skip")


@pytest.mark.parametrize("name", sorted(NEW))
def test_vocabulary_size_equals_num_classes(name):
    spec = get_dataset_spec(name)
    assert spec.num_classes == NEW[name]
    assert len(load_vocabulary(spec.vocabulary)) == spec.num_classes
    assert get_dataset_spec(name).ignore_values == (255,)


def test_cityscapes_vocabulary_is_the_official_order():
    assert load_vocabulary("cityscapes").names == [
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    ]


# ---------------------------------------------------------------------------------------------
# bad input


def test_missing_split_file(tmp_path):
    make_voc21(tmp_path)
    (tmp_path / VOC / "ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(
        DatasetError,
        match=r"'voc21': the split file .*ImageSets/Segmentation/val\.txt.* does not exist\. "
        r"To get it, unpack VOCtrainval_11-May-2012\.tar",
    ):
        SegmentationFolder("voc21", root=tmp_path)
    make_pc60(tmp_path)
    (tmp_path / PC / "ImageSets/SegmentationContext/val.txt").unlink()
    with pytest.raises(DatasetError, match=r"SegmentationContext/val\.txt.*pascal_context\.py"):
        SegmentationFolder("pc60", root=tmp_path)


def test_listed_ids_without_label_or_image(tmp_path):
    make_voc21(tmp_path)
    split = tmp_path / VOC / "ImageSets/Segmentation/val.txt"
    write_split(split, ["2007_000033", "2007_000042", "2007_000099"])
    (tmp_path / VOC / "JPEGImages" / "2007_000042.jpg").unlink()
    with pytest.raises(DatasetError) as err:
        SegmentationFolder("voc21", root=tmp_path)
    message = str(err.value)
    assert f"1 ids listed in {str(split)!r} have no label file (2007_000099)" in message
    assert f"2 ids listed in {str(split)!r} have no image (2007_000042, 2007_000099)" in message
    assert "VOCtrainval_11-May-2012.tar" in message and "--on-bad-sample skip" in message
    dataset = SegmentationFolder("voc21", root=tmp_path, on_bad_sample="skip")
    assert [f.name for f in dataset.files] == ["2007_000033"]
    stats = dataset_stats("voc21", tmp_path, progress=False)
    assert stats["images_without_label"] == ["2007_000099"]
    assert stats["labels_without_image"] == ["2007_000042", "2007_000099"]


def test_missing_folders_name_the_fix(tmp_path):
    with pytest.raises(
        DatasetError, match=r"coco_stuff164k/images/val2017.*`cli.py data prepare coco-object"
    ):
        SegmentationFolder("coco-object", root=tmp_path)
    with pytest.raises(DatasetError, match=r"cityscapes/leftImg8bit/val.*prepare cityscapes"):
        SegmentationFolder("cityscapes", root=tmp_path)


# ---------------------------------------------------------------------------------------------
# data stats through the command line


def test_data_stats_cli_cityscapes(tmp_path):
    make_cityscapes(tmp_path)
    result = run_cli("data", "stats", "cityscapes", "--root", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert (stats["images"], stats["expected_images"], stats["num_classes"]) == (3, 500, 19)
    assert stats["vocabulary"] == "cityscapes"
    assert stats["label_values"] == [0, 10, 13, 18, 255]
    assert stats["images_without_label"] == [] and stats["labels_without_image"] == []
    assert stats["labels_outside_vocabulary"] == []
    per_class = stats["pixels_per_class"]
    assert (per_class["road"], per_class["car"], per_class["bicycle"], per_class["sky"]) == (
        6,
        6,
        3,
        3,
    )
    assert stats["ignore_fraction"] == pytest.approx(2 / 8)


# ---------------------------------------------------------------------------------------------
# converters

# cityscapesScripts helpers/labels.py: name -> label id of the 19 evaluated classes
CITYSCAPES_IDS = {
    "road": 7,
    "sidewalk": 8,
    "building": 11,
    "wall": 12,
    "fence": 13,
    "pole": 17,
    "traffic light": 19,
    "traffic sign": 20,
    "vegetation": 21,
    "terrain": 22,
    "sky": 23,
    "person": 24,
    "rider": 25,
    "car": 26,
    "truck": 27,
    "bus": 28,
    "train": 31,
    "motorcycle": 32,
    "bicycle": 33,
}


def test_prepare_cityscapes_every_id_and_rerun(tmp_path):
    raw = np.array([[*range(34), 255]], np.uint8)  # ids 0..33 (void ones included) and 255
    gt = tmp_path / CITY / "gtFine/val"
    for city, stems in CITY_STEMS.items():
        for stem in stems:
            save_label(gt / city / f"{stem}_gtFine_labelIds.png", raw)
    summary = prepare_dataset("cityscapes", tmp_path, progress=False, workers=2)
    assert (summary["written"], summary["skipped"]) == (3, 0)
    assert any("leftImg8bit_trainvaltest.zip" in w for w in summary["warnings"])
    out = gt / "lindau" / "lindau_000001_000019_gtFine_labelTrainIds.png"
    label = read(out)[0]
    assert label.dtype == np.uint8
    got = dict(zip(raw[0].tolist(), label.tolist()))
    # hand-picked: road, sidewalk, the unlabeled/ego-vehicle/rectification ids, rail track (10),
    # guard rail (14), caravan (29), trailer (30), bicycle, license plate as stored (255)
    assert (got[7], got[8], got[0], got[1], got[10], got[14], got[29], got[30]) == (
        0,
        1,
        255,
        255,
        255,
        255,
        255,
        255,
    )
    assert (got[33], got[255]) == (18, 255)
    names = load_vocabulary("cityscapes").names
    expected = {v: 255 for v in got}
    expected.update({CITYSCAPES_IDS[n]: k for k, n in enumerate(names)})
    assert got == expected

    before = snapshot(tmp_path)
    again = prepare_dataset("cityscapes", tmp_path, progress=False)
    assert (again["written"], again["skipped"]) == (0, 3)
    assert snapshot(tmp_path) == before

    # with the images in place the converted labels read as the dataset
    for city, stems in CITY_STEMS.items():
        for stem in stems:
            save_image(
                tmp_path / CITY / "leftImg8bit/val" / city / f"{stem}_leftImg8bit.png", raw.shape
            )
    sample = SegmentationFolder("cityscapes", root=tmp_path)[0]
    assert sample["label"][0, 7] == 0 and sample["label"][0, 0] == IGNORE_INDEX


def test_prepare_cityscapes_missing(tmp_path):
    with pytest.raises(DatasetError, match=r"cityscapes/gtFine/val.*gtFine_trainvaltest\.zip"):
        prepare_dataset("cityscapes", tmp_path, progress=False)
    (tmp_path / CITY / "gtFine/val/frankfurt").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"holds no <city>/\*_gtFine_labelIds\.png"):
        prepare_dataset("cityscapes", tmp_path, progress=False)


# coco171 / mmseg labelTrainIds value -> COCO-Object value (GroupViT's convert_coco_object.py):
# person 0 -> 1, toothbrush 79 -> 80, banner 80 (first stuff) and wood 170 -> 0 = background,
# unlabeled 255 -> 0 as well (that script maps raw 255 to background).
COCO_SOURCE = np.array([[0, 1, 79, 80, 170, 255]], np.uint8)
COCO_OBJECT = np.array([[1, 2, 80, 0, 0, 0]], np.uint8)


@pytest.mark.parametrize("source", ["mmseg", "detectron2"])
def test_prepare_coco_object_values_and_rerun(tmp_path, source):
    if source == "mmseg":
        save_label(
            tmp_path / COCO / "annotations/val2017/000000000139_labelTrainIds.png", COCO_SOURCE
        )
        save_label(tmp_path / COCO / "annotations/val2017/000000000139.png", COCO_SOURCE + 1)
    else:
        save_label(
            tmp_path / "coco-stuff/annotations_detectron2/val2017/000000000139.png", COCO_SOURCE
        )
    summary = prepare_dataset("coco-object", tmp_path, progress=False)
    assert (summary["written"], summary["skipped"]) == (1, 0)
    assert any("val2017.zip" in w for w in summary["warnings"])  # no images yet
    out = tmp_path / COCO / "annotations/val2017"
    assert sorted(p.name for p in out.glob("*_instanceTrainIds.png")) == [
        "000000000139_instanceTrainIds.png"
    ]
    np.testing.assert_array_equal(read(out / "000000000139_instanceTrainIds.png"), COCO_OBJECT)

    before = snapshot(tmp_path)
    again = prepare_dataset("coco-object", tmp_path, progress=False)
    assert (again["written"], again["skipped"]) == (0, 1)
    assert snapshot(tmp_path) == before

    save_image(tmp_path / COCO / "images/val2017/000000000139.jpg", COCO_SOURCE.shape)
    label = SegmentationFolder("coco-object", root=tmp_path)[0]["label"]
    np.testing.assert_array_equal(label, COCO_OBJECT)


def test_prepare_coco_object_prefers_mmseg_labels(tmp_path):
    save_label(tmp_path / COCO / "annotations/val2017/1_labelTrainIds.png", COCO_SOURCE)
    save_label(tmp_path / "coco-stuff/annotations_detectron2/val2017/1.png", np.zeros((1, 6)))
    prepare_dataset("coco-object", tmp_path, progress=False)
    np.testing.assert_array_equal(
        read(tmp_path / COCO / "annotations/val2017/1_instanceTrainIds.png"), COCO_OBJECT
    )


def test_prepare_coco_object_errors(tmp_path):
    with pytest.raises(DatasetError) as err:
        prepare_dataset("coco-object", tmp_path, progress=False)
    message = str(err.value)
    assert "_labelTrainIds.png" in message and "annotations_detectron2/val2017" in message
    assert "cli.py data prepare coco171" in message
    # images in coco171's place only: the error says where they are and how to link them
    save_image(tmp_path / "coco-stuff/images/val2017/000000000139.jpg", (1, 6))
    save_label(tmp_path / "coco-stuff/annotations_detectron2/val2017/000000000139.png", COCO_SOURCE)
    with pytest.raises(DatasetError, match=r"coco-stuff/images/val2017.* ln -s ") as err:
        prepare_dataset("coco-object", tmp_path, progress=False)
    assert not (tmp_path / COCO / "annotations").exists()  # nothing written before the fix


def test_cmd_prepare_accepts_the_new_names(tmp_path, capsys):
    save_label(
        tmp_path / CITY / "gtFine/val/bonn/bonn_000000_000019_gtFine_labelIds.png", [[7, 33]]
    )
    assert cli_main(["data", "prepare", "cityscapes", "--root", str(tmp_path), "--quiet"]) == 0
    assert "cityscapes: 1 written, 0 already converted" in capsys.readouterr().out
    assert cli_main(["data", "prepare", "coco-object", "--root", str(tmp_path), "--quiet"]) == 2
    assert "error: coco-object: no COCO-Stuff labels" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the VIP alias files (../shared/vocab/vip): same classes in the same order

VIP_FILES = {
    "voc21": "cls_voc21.txt",
    "pc60": "cls_context60.txt",
    "coco_object": "cls_coco_object.txt",
    "cityscapes": "cls_city_scapes.txt",
}
# Where VIP's aliases do not contain our canonical name: (ours, VIP's first alias), by index.
VIP_RENAMES = {
    "voc21": {1: ("aeroplane", "plane"), 11: ("diningtable", "table")},
    "pc60": {
        1: ("aeroplane", "plane"),
        4: ("bedclothes", "bedding"),
        18: ("cloth", "fabric"),
        36: ("mouse", "computer mouse"),
        50: ("diningtable", "table"),
        55: ("tvmonitor", "television monitor"),
    },
    "coco_object": {1: ("person", "people"), 2: ("bicycle", "bike"), 58: ("couch", "sofa")},
    "cityscapes": {12: ("rider", "biker")},
}


def _key(name: str) -> str:
    return "".join(name.split()).casefold()  # "potted plant" == "pottedplant"


@pytest.mark.parametrize("name", sorted(VIP_FILES))
def test_builtin_matches_vip_alias_file(name, shared_vocab):
    vip = load_vocabulary(shared_vocab / "vip" / VIP_FILES[name])
    ours = load_vocabulary(name)
    assert len(vip) == len(ours)
    renamed = {}
    for k in range(1 if name != "cityscapes" else 0, len(ours)):  # VIP's line 0: stuff words
        if _key(ours.names[k]) not in {_key(s) for s in vip[k].synonyms}:
            renamed[k] = (ours.names[k], vip[k].name)
    assert renamed == VIP_RENAMES[name]
    if name == "cityscapes":  # canonical names equal but for rider, which VIP calls biker
        differ = [(a, b) for a, b in zip(ours.names, vip.names) if a != b]
        assert differ == [("rider", "biker")]
    else:
        assert ours.names[0] == "background"
