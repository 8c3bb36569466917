"""The remote-sensing benchmarks of VIP: potsdam, vaihingen, isaid, vdd.

Tiny fixtures in the real formats: RGB colour-coded ISPRS label tiles and RGB (or IRRG) image
tiles as TIFFs inside zips named and laid out as the ISPRS downloads; DOTA images and iSAID
colour masks as PNGs inside zips in mmseg's raw iSAID layout; index PNGs for the readers; VDD
images as JPEGs with the download's ``.JPG`` suffix. Crop sizes are the real ones (512, 896),
so the tiles are just over one crop wide.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import read_image_file as read
from conftest import run_cli, snapshot
from PIL import Image

from cli import main as cli_main
from data.catalog import IGNORE_INDEX, DatasetError, DatasetSpec, get_dataset_spec
from data.datasets import SegmentationFolder
from data.prepare import (
    isaid_windows,
    isprs_boxes,
    isprs_colour_to_index,
    prepare_dataset,
)
from data.stats import dataset_stats, format_stats
from data.vocabulary import load_vocabulary

NUM_CLASSES = {"potsdam": 6, "vaihingen": 6, "isaid": 16, "vdd": 7}

# The ISPRS colour code (RGB), written out here from the benchmark's description rather than
# imported: index = the value mmseg's converters write (0 = black boundary, then the classes).
ISPRS_RGB = np.array(
    [
        (0, 0, 0),
        (255, 255, 255),
        (0, 0, 255),
        (0, 255, 255),
        (0, 255, 0),
        (255, 255, 0),
        (255, 0, 0),
    ],
    np.uint8,
)
# iSAID's mask colours (mmseg's iSAIDDataset palette), index = label 0..15.
ISAID_RGB = np.array(
    [
        (0, 0, 0),
        (0, 0, 63),
        (0, 63, 63),
        (0, 63, 0),
        (0, 63, 127),
        (0, 63, 191),
        (0, 63, 255),
        (0, 127, 63),
        (0, 127, 127),
        (0, 0, 127),
        (0, 0, 191),
        (0, 0, 255),
        (0, 191, 127),
        (0, 127, 191),
        (0, 127, 255),
        (0, 100, 155),
    ],
    np.uint8,
)


def encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)


def save(path: Path, array, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path, format=fmt)


def tile_image(height: int, width: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8, smooth (fast to encode) and different at every pixel of a crop."""
    y, x = np.mgrid[:height, :width]
    return np.stack([x % 256, y % 256, (x // 256 + 2 * (y // 256) + seed) % 256], -1).astype(
        np.uint8
    )


def block_labels(height: int, width: int, values: int) -> np.ndarray:
    """(H, W) blocks cycling through 0..values-1, so every crop holds several values."""
    y, x = np.mgrid[:height, :width]
    return ((y // 50 + x // 60) % values).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# catalog and vocabularies


@pytest.mark.parametrize("name", sorted(NUM_CLASSES))
def test_vocabulary_size_equals_num_classes(name):
    spec = get_dataset_spec(name)
    assert spec.num_classes == NUM_CLASSES[name]
    assert len(load_vocabulary(spec.vocabulary)) == spec.num_classes


def test_specs_layout_ignore_and_reduce_zero_label():
    potsdam, vaihingen = get_dataset_spec("potsdam"), get_dataset_spec("vaihingen")
    assert (potsdam.image_dir, potsdam.label_dir) == ("potsdam/img_dir/val", "potsdam/ann_dir/val")
    assert (vaihingen.image_dir, vaihingen.label_dir) == (
        "vaihingen/img_dir/val",
        "vaihingen/ann_dir/val",
    )
    for spec in (potsdam, vaihingen):
        assert spec.reduce_zero_label and spec.label_offset == 1
        assert spec.ignore_values == (0, 255)
    isaid, vdd = get_dataset_spec("isaid"), get_dataset_spec("vdd")
    assert (isaid.image_dir, isaid.label_dir, isaid.label_id_suffix) == (
        "iSAID/img_dir/val",
        "iSAID/ann_dir/val",
        "_instance_color_RGB",
    )
    assert (vdd.image_dir, vdd.label_dir) == ("VDD/test/src", "VDD/test/gt")
    for spec in (isaid, vdd):
        assert not spec.reduce_zero_label and spec.ignore_values == (255,)
    with pytest.raises(ValueError, match="reduce_zero_label makes on-disk 0 an ignore value"):
        DatasetSpec(
            name="x",
            vocabulary="vdd",
            num_classes=7,
            image_dir="a",
            label_dir="b",
            label_suffix=".png",
            ignore_values=(255,),
            expected_images=None,
            reduce_zero_label=True,
        )


def test_vocabularies_are_mmseg_label_order():
    potsdam = ["impervious surface", "building", "low vegetation", "tree", "car", "clutter"]
    assert load_vocabulary("potsdam").names == potsdam
    assert load_vocabulary("vaihingen").names == potsdam
    assert load_vocabulary("isaid").names == [
        "background",
        "ship",
        "storage tank",
        "baseball diamond",
        "tennis court",
        "basketball court",
        "ground track field",
        "bridge",
        "large vehicle",
        "small vehicle",
        "helicopter",
        "swimming pool",
        "roundabout",
        "soccer ball field",
        "plane",
        "harbor",
    ]
    assert load_vocabulary("vdd").names == [
        "other",
        "wall",
        "road",
        "vegetation",
        "vehicle",
        "roof",
        "water",
    ]


VIP_FILES = {
    "potsdam": "cls_potsdam.txt",
    "vaihingen": "cls_vaihingen.txt",
    "isaid": "cls_iSAID.txt",
    "vdd": "cls_vdd.txt",
}


def _words(synonyms) -> set[str]:
    """Lower-case words, a plural 's' dropped ("buildings" -> "building")."""
    words = {w.casefold() for s in synonyms for w in s.split()}
    return {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in words}


@pytest.mark.parametrize("name", sorted(VIP_FILES))
def test_vocabulary_agrees_with_vip_alias_file(name, shared_vocab):
    """Same class count as VIP's alias file, and class k shares a word with VIP's line k (so the
    order agrees too). Skips where ../shared/vocab is absent (conftest's shared_vocab)."""
    path = shared_vocab / "vip" / VIP_FILES[name]
    if not path.is_file():
        pytest.skip(f"{path} is absent: VIP's alias files are not in this checkout's shared/")
    vip = load_vocabulary(path)
    ours = load_vocabulary(name)
    assert len(vip) == len(ours) == get_dataset_spec(name).num_classes
    unmatched = [
        k for k in range(len(ours)) if not _words(ours[k].synonyms) & _words(vip[k].synonyms)
    ]
    assert unmatched == []
    assert ours.entries != vip.entries  # our own lists, not copies of VIP's lines


# ---------------------------------------------------------------------------------------------
# readers (the mmseg layout written by hand)


def test_potsdam_and_vaihingen_reduce_zero_label(tmp_path):
    raw = np.array([[0, 1, 2, 3], [4, 5, 6, 255]])
    for name in ("potsdam", "vaihingen"):
        spec = get_dataset_spec(name)
        for stem in ("2_13_0_0_512_512", "2_13_512_0_1024_512"):
            save(spec.image_root(tmp_path) / f"{stem}.png", tile_image(2, 4, 1))
            save(spec.label_root(tmp_path) / f"{stem}.png", raw)
        dataset = SegmentationFolder(name, root=tmp_path)
        assert [f.name for f in dataset.files] == ["2_13_0_0_512_512", "2_13_512_0_1024_512"]
        sample = dataset[0]
        assert sample["vocabulary"] == name and sample["image"].shape == (2, 4, 3)
        # on-disk 0 (boundary) and 255 -> ignore; 1..6 -> 0..5
        np.testing.assert_array_equal(sample["label"], [[-1, 0, 1, 2], [3, 4, 5, IGNORE_INDEX]])


def test_potsdam_value_outside_classes(tmp_path):
    spec = get_dataset_spec("potsdam")
    save(spec.image_root(tmp_path) / "a.png", tile_image(1, 2, 0))
    save(spec.label_root(tmp_path) / "a.png", [[6, 7]])
    with pytest.raises(DatasetError, match=r"label values 7 are outside the 6 classes.*1\.\.6"):
        SegmentationFolder("potsdam", root=tmp_path)[0]


def test_isaid_reader_pairs_by_mmseg_suffix(tmp_path):
    spec = get_dataset_spec("isaid")
    for stem in ("P0003_0_896_0_896", "P0003_0_896_512_1408"):
        save(spec.image_root(tmp_path) / f"{stem}.png", tile_image(2, 3, 2))
        save(
            spec.label_root(tmp_path) / f"{stem}_instance_color_RGB.png", [[0, 1, 15], [8, 255, 0]]
        )
    save(spec.label_root(tmp_path) / "P0003_0_896_0_896_instance_id_RGB.png", [[99, 99, 99]] * 2)
    dataset = SegmentationFolder("isaid", root=tmp_path)
    assert [f.name for f in dataset.files] == ["P0003_0_896_0_896", "P0003_0_896_512_1408"]
    assert dataset.files[0].label.name == "P0003_0_896_0_896_instance_color_RGB.png"
    np.testing.assert_array_equal(dataset[0]["label"], [[0, 1, 15], [8, IGNORE_INDEX, 0]])


def test_vdd_reader_jpg_upper_case(tmp_path):
    spec = get_dataset_spec("vdd")
    save(spec.image_root(tmp_path) / "DJI_0001.JPG", tile_image(2, 4, 3), "JPEG")
    save(spec.label_root(tmp_path) / "DJI_0001.png", [[0, 1, 2, 3], [4, 5, 6, 255]])
    dataset = SegmentationFolder("vdd", root=tmp_path)
    assert [f.name for f in dataset.files] == ["DJI_0001"]
    assert dataset.files[0].image.name == "DJI_0001.JPG"
    np.testing.assert_array_equal(dataset[0]["label"], [[0, 1, 2, 3], [4, 5, 6, IGNORE_INDEX]])


def test_missing_folders_name_the_fix(tmp_path):
    with pytest.raises(DatasetError, match=r"potsdam/img_dir/val.*cli.py data prepare potsdam"):
        SegmentationFolder("potsdam", root=tmp_path)
    with pytest.raises(DatasetError, match=r"VDD/test/src.*github.com/RussRobin/VDD"):
        SegmentationFolder("vdd", root=tmp_path)


def test_stats_count_classes_through_reduce_zero_label(tmp_path):
    spec = get_dataset_spec("potsdam")
    save(spec.image_root(tmp_path) / "a.png", tile_image(2, 4, 0))
    save(spec.label_root(tmp_path) / "a.png", [[0, 1, 1, 6], [5, 6, 7, 0]])
    stats = dataset_stats("potsdam", tmp_path, progress=False)
    assert stats["reduce_zero_label"] is True
    assert stats["label_values"] == [0, 1, 5, 6, 7]
    per_class = stats["pixels_per_class"]
    assert (per_class["impervious surface"], per_class["car"], per_class["clutter"]) == (2, 1, 2)
    assert per_class["building"] == 0 and "building" in stats["classes_without_pixels"]
    assert stats["ignore_fraction"] == pytest.approx(2 / 8)
    assert stats["labels_outside_vocabulary"] == [
        {"file": str(spec.label_root(tmp_path) / "a.png"), "values": [7]}
    ]
    assert "class k is stored as k + 1 (reduce_zero_label)" in format_stats(stats)


def test_data_stats_cli_isaid(tmp_path):
    spec = get_dataset_spec("isaid")
    save(spec.image_root(tmp_path) / "P0001_0_896_0_896.png", tile_image(1, 3, 0))
    save(spec.label_root(tmp_path) / "P0001_0_896_0_896_instance_color_RGB.png", [[0, 15, 255]])
    result = run_cli("data", "stats", "isaid", "--root", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert (stats["images"], stats["expected_images"], stats["num_classes"]) == (1, 11644, 16)
    assert stats["pixels_per_class"]["harbor"] == 1 and stats["labels_outside_vocabulary"] == []


# ---------------------------------------------------------------------------------------------
# the conversion arithmetic (mmseg's converters)


def test_isprs_boxes_follow_mmseg_grid():
    # A 6000 x 6000 Potsdam tile: windows at multiples of 512 (stride 256 only sets how many
    # are computed), the last flush with the edge: 12 x 12 = 144 crops, 14 val tiles = 2016,
    # the count of mmseg's docs and of the spec.
    boxes = isprs_boxes(6000, 6000)
    assert len(boxes) == 144
    assert sorted({b[0] for b in boxes}) == [*range(0, 5121, 512), 5488]
    assert all(b[2] - b[0] == 512 and b[3] - b[1] == 512 for b in boxes)
    assert 14 * len(boxes) == get_dataset_spec("potsdam").expected_images
    assert isprs_boxes(530, 600) == [
        (0, 0, 512, 512),
        (88, 0, 600, 512),
        (0, 18, 512, 530),
        (88, 18, 600, 530),
    ]


def test_isprs_colours_as_mmseg():
    colours = np.concatenate([ISPRS_RGB, [(0, 170, 0), (10, 20, 30), (255, 0, 255)]])[None]
    # the 7 colours -> 0..6; mmseg matches 4R + 3G + 2B, so (0, 170, 0) collides with building
    # (510); other colours -> 0
    assert isprs_colour_to_index(colours.astype(np.uint8)).tolist() == [
        [0, 1, 2, 3, 4, 5, 6, 2, 0, 0]
    ]


def test_isaid_windows_as_mmseg():
    assert isaid_windows(1000) == [(0, 896), (104, 1000)]
    assert isaid_windows(896) == [(0, 896)]
    assert isaid_windows(1500) == [(0, 896), (512, 1408), (604, 1500)]


# ---------------------------------------------------------------------------------------------
# prepare potsdam / vaihingen from the zips

POTSDAM_SHAPE = (530, 600)  # (H, W): 4 crops of 512 x 512
POTSDAM_CROPS = ["2_13_0_0_512_512", "2_13_88_0_600_512", "2_13_0_18_512_530", "2_13_88_18_600_530"]


def make_potsdam_zips(root: Path, labels_zip: str = "5_Labels_all_noBoundary.zip") -> np.ndarray:
    """2_Ortho_RGB.zip (a folder inside, .tfw files beside the tiles) and the labels zip: val
    tile 2_13 and train tile 2_10. Returns the 0..6 index map of 2_13."""
    h, w = POTSDAM_SHAPE
    index = block_labels(h, w, 7)
    write_zip(
        root / "potsdam" / "2_Ortho_RGB.zip",
        {
            "2_Ortho_RGB/top_potsdam_2_13_RGB.tif": encode(tile_image(h, w, 5), "TIFF"),
            "2_Ortho_RGB/top_potsdam_2_13_RGB.tfw": b"0.05\n0\n0\n-0.05\n0\n0\n",
            "2_Ortho_RGB/top_potsdam_2_10_RGB.tif": encode(tile_image(512, 512, 6), "TIFF"),
        },
    )
    suffix = "_noBoundary" if "noBoundary" in labels_zip else ""
    write_zip(
        root / "potsdam" / labels_zip,
        {
            f"top_potsdam_2_13_label{suffix}.tif": encode(ISPRS_RGB[index], "TIFF"),
            f"top_potsdam_2_10_label{suffix}.tif": encode(np.zeros((512, 512, 3)), "TIFF"),
        },
    )
    return index


def test_prepare_potsdam_crops_values_and_rerun(tmp_path):
    index = make_potsdam_zips(tmp_path)
    summary = prepare_dataset("potsdam", tmp_path, progress=False, workers=2)
    assert (summary["written"], summary["skipped"]) == (1, 0)
    assert summary["missing"] == 13  # the other 13 val tiles of mmseg's list
    assert any("13 listed inputs are absent" in w for w in summary["warnings"])
    img_dir, ann_dir = tmp_path / "potsdam/img_dir/val", tmp_path / "potsdam/ann_dir/val"
    assert sorted(p.stem for p in ann_dir.iterdir()) == sorted(POTSDAM_CROPS)
    assert sorted(p.stem for p in img_dir.iterdir()) == sorted(POTSDAM_CROPS)  # no train tile
    pixels = tile_image(*POTSDAM_SHAPE, 5)
    for stem in POTSDAM_CROPS:
        x0, y0, x1, y1 = map(int, stem.split("_")[2:])
        label = read(ann_dir / f"{stem}.png")
        assert label.dtype == np.uint8 and label.shape == (512, 512)
        np.testing.assert_array_equal(label, index[y0:y1, x0:x1])
        np.testing.assert_array_equal(read(img_dir / f"{stem}.png"), pixels[y0:y1, x0:x1])

    dataset = SegmentationFolder("potsdam", root=tmp_path)
    assert len(dataset) == 4
    sample = dataset[[f.name for f in dataset.files].index("2_13_88_18_600_530")]
    expected = index[18:530, 88:600].astype(np.int64) - 1  # boundary 0 -> -1 = ignore
    np.testing.assert_array_equal(sample["label"], expected)

    before = snapshot(tmp_path / "potsdam")
    again = prepare_dataset("potsdam", tmp_path, progress=False)
    assert (again["written"], again["skipped"]) == (0, 1)
    assert snapshot(tmp_path / "potsdam") == before

    # a crop cut short since is written again; the tile's other crops stay as they are
    cut = img_dir / f"{POTSDAM_CROPS[2]}.png"
    cut.write_bytes(cut.read_bytes()[:50])
    repaired = prepare_dataset("potsdam", tmp_path, progress=False)
    assert (repaired["written"], repaired["skipped"], repaired["replaced"]) == (0, 0, 1)
    now = snapshot(tmp_path / "potsdam")
    assert [k for k in before if now[k] != before[k]] == [f"img_dir/val/{cut.name}"]
    assert now[f"img_dir/val/{cut.name}"][0] == before[f"img_dir/val/{cut.name}"][0]
    before = now

    # a killed run: one crop missing is written again, the others stay as they are
    (img_dir / f"{POTSDAM_CROPS[1]}.png").unlink()
    resumed = prepare_dataset("potsdam", tmp_path, progress=False)
    assert (resumed["written"], resumed["skipped"]) == (1, 0)
    assert snapshot(tmp_path / "potsdam").keys() == before.keys()
    after = snapshot(tmp_path / "potsdam")
    changed = [k for k in before if after[k] != before[k]]
    assert changed == [f"img_dir/val/{POTSDAM_CROPS[1]}.png"]
    assert after[changed[0]][0] == before[changed[0]][0]  # same bytes, written again


def test_prepare_potsdam_labels_with_boundary_warn(tmp_path):
    make_potsdam_zips(tmp_path, labels_zip="5_Labels_all.zip")
    summary = prepare_dataset("potsdam", tmp_path, progress=False, workers=1)
    assert summary["written"] == 1
    assert any("5_Labels_all_noBoundary.zip is absent" in w for w in summary["warnings"])


def test_prepare_potsdam_missing_and_damaged(tmp_path):
    with pytest.raises(DatasetError) as err:
        prepare_dataset("potsdam", tmp_path, progress=False)
    message = str(err.value)
    assert "potsdam/2_Ortho_RGB.zip" in message and "potsdam/5_Labels_all_noBoundary.zip" in message
    assert "do not exist" in message and "isprs.org" in message and "\n" not in message
    make_potsdam_zips(tmp_path)
    (tmp_path / "potsdam/5_Labels_all_noBoundary.zip").unlink()
    with pytest.raises(DatasetError, match=r"'[^']*5_Labels_all_noBoundary\.zip' does not exist"):
        prepare_dataset("potsdam", tmp_path, progress=False)
    (tmp_path / "potsdam/5_Labels_all_noBoundary.zip").write_bytes(b"not a zip")
    with pytest.raises(
        DatasetError, match=r"cannot read .*5_Labels_all_noBoundary\.zip.* as a zip"
    ):
        prepare_dataset("potsdam", tmp_path, progress=False)
    assert not (tmp_path / "potsdam/img_dir").exists()  # nothing written before the fix


VAIHINGEN_SHAPE = (515, 520)  # (H, W)


def test_prepare_vaihingen_reads_top_folder_only(tmp_path):
    h, w = VAIHINGEN_SHAPE
    index = block_labels(h, w, 7)
    irrg = tile_image(h, w, 9)  # the tiles are IRRG false colour; kept as they are
    write_zip(
        tmp_path / "vaihingen/ISPRS_semantic_labeling_Vaihingen.zip",
        {
            "top/top_mosaic_09cm_area2.tif": encode(irrg, "TIFF"),
            "top/top_mosaic_09cm_area1.tif": encode(tile_image(512, 512, 1), "TIFF"),  # train
            # the zip's training labels carry the same file names: not images
            "gts_for_participants/top_mosaic_09cm_area2.tif": encode(ISPRS_RGB[index], "TIFF"),
            "dsm/dsm_09cm_matching_area2.tif": encode(np.zeros((h, w)), "TIFF"),
        },
    )
    gt_zip = "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip"
    write_zip(
        tmp_path / "vaihingen" / gt_zip,
        {
            "top_mosaic_09cm_area2_noBoundary.tif": encode(ISPRS_RGB[index], "TIFF"),
            "top_mosaic_09cm_area1_noBoundary.tif": encode(np.zeros((512, 512, 3)), "TIFF"),
            "top_mosaic_09cm_area9_noBoundary.tif": encode(np.zeros((512, 512, 3)), "TIFF"),
        },
    )
    summary = prepare_dataset("vaihingen", tmp_path, progress=False, workers=1)
    assert (summary["written"], summary["missing"]) == (1, 16)  # area2 of the 17 val areas
    crops = ["area2_0_0_512_512", "area2_8_0_520_512", "area2_0_3_512_515", "area2_8_3_520_515"]
    ann_dir = tmp_path / "vaihingen/ann_dir/val"
    assert sorted(p.stem for p in ann_dir.iterdir()) == sorted(crops)
    np.testing.assert_array_equal(read(ann_dir / "area2_8_3_520_515.png"), index[3:515, 8:520])
    np.testing.assert_array_equal(
        read(tmp_path / "vaihingen/img_dir/val/area2_8_3_520_515.png"), irrg[3:515, 8:520]
    )
    label = SegmentationFolder("vaihingen", root=tmp_path)[0]["label"]
    np.testing.assert_array_equal(label, index[:512, :512].astype(np.int64) - 1)
    again = prepare_dataset("vaihingen", tmp_path, progress=False)
    assert (again["written"], again["skipped"]) == (0, 1)


def test_prepare_isprs_already_in_mmseg_layout(tmp_path):
    spec = get_dataset_spec("vaihingen")
    save(spec.image_root(tmp_path) / "area2_0_0_512_512.png", tile_image(1, 2, 0))
    save(spec.label_root(tmp_path) / "area2_0_0_512_512.png", [[1, 6]])
    summary = prepare_dataset("vaihingen", tmp_path, progress=False)
    assert summary["written"] == 0
    assert summary["notes"] == [
        "vaihingen is already in mmsegmentation's layout: 1 images with labels in "
        "vaihingen/img_dir/val and vaihingen/ann_dir/val; nothing to convert (check it with "
        f"`cli.py data stats vaihingen --root {tmp_path}`)"
    ]


# ---------------------------------------------------------------------------------------------
# prepare isaid from mmseg's raw layout


def make_isaid_zips(root: Path) -> np.ndarray:
    """P0001 (900 x 1000: 4 patches), P0002 (500 x 700: padded to one 896 patch), P0003 (image
    without a mask). Returns P0001's label map (0..15)."""
    big = block_labels(900, 1000, 16)
    big_rgb = ISAID_RGB[big]
    big_rgb[0, 0] = (1, 2, 3)  # a colour of no class -> background, as mmseg
    small = block_labels(500, 700, 16)
    write_zip(
        root / "iSAID/val/images/part1.zip",
        {
            "images/P0001.png": encode(tile_image(900, 1000, 1), "PNG"),
            "images/P0002.png": encode(tile_image(500, 700, 2), "PNG"),
            "images/P0003.png": encode(tile_image(10, 10, 3), "PNG"),
        },
    )
    write_zip(
        root / "iSAID/val/Semantic_masks/images.zip",
        {
            "images/P0001_instance_color_RGB.png": encode(big_rgb, "PNG"),
            "images/P0002_instance_color_RGB.png": encode(ISAID_RGB[small], "PNG"),
        },
    )
    big[0, 0] = 0
    return big


def test_prepare_isaid_patches_padding_and_rerun(tmp_path):
    big = make_isaid_zips(tmp_path)
    summary = prepare_dataset("isaid", tmp_path, progress=False, workers=2)
    assert (summary["written"], summary["skipped"], summary["missing"]) == (2, 0, 1)
    assert summary["missing_examples"] == ["P0003 (mask absent)"]
    img_dir, ann_dir = tmp_path / "iSAID/img_dir/val", tmp_path / "iSAID/ann_dir/val"
    patches = [
        "P0001_0_896_0_896",
        "P0001_4_900_0_896",
        "P0001_0_896_104_1000",
        "P0001_4_900_104_1000",
        "P0002_0_896_0_896",
    ]
    assert sorted(p.stem for p in img_dir.iterdir()) == sorted(patches)
    assert sorted(p.stem for p in ann_dir.iterdir()) == sorted(
        f"{p}_instance_color_RGB" for p in patches
    )
    np.testing.assert_array_equal(
        read(ann_dir / "P0001_4_900_104_1000_instance_color_RGB.png"), big[4:900, 104:1000]
    )
    np.testing.assert_array_equal(
        read(img_dir / "P0001_4_900_104_1000.png"), tile_image(900, 1000, 1)[4:900, 104:1000]
    )
    # P0002 is padded at the bottom/right: image 0, label 255 (ignore)
    label = read(ann_dir / "P0002_0_896_0_896_instance_color_RGB.png")
    assert label.shape == (896, 896)
    np.testing.assert_array_equal(label[:500, :700], block_labels(500, 700, 16))
    assert (label[500:] == 255).all() and (label[:, 700:] == 255).all()
    image = read(img_dir / "P0002_0_896_0_896.png")
    assert image.shape == (896, 896, 3) and not image[500:].any() and not image[:, 700:].any()

    dataset = SegmentationFolder("isaid", root=tmp_path)
    assert [f.name for f in dataset.files] == sorted(patches)
    sample = dataset[[f.name for f in dataset.files].index("P0002_0_896_0_896")]
    assert (sample["label"][500:] == IGNORE_INDEX).all() and sample["label"].max() == 15

    before = snapshot(tmp_path / "iSAID")
    again = prepare_dataset("isaid", tmp_path, progress=False)
    assert (again["written"], again["skipped"]) == (0, 2)
    assert snapshot(tmp_path / "iSAID") == before


def test_prepare_isaid_missing(tmp_path):
    with pytest.raises(DatasetError) as err:
        prepare_dataset("isaid", tmp_path, progress=False)
    message = str(err.value)
    assert "iSAID/val/images/part1.zip" in message
    assert "iSAID/val/Semantic_masks/images.zip" in message and "DOTA" in message
    write_zip(tmp_path / "iSAID/val/images/part1.zip", {"images/P0001.png": b""})
    with pytest.raises(DatasetError, match=r"'[^']*Semantic_masks/images\.zip' does not exist"):
        prepare_dataset("isaid", tmp_path, progress=False)


# ---------------------------------------------------------------------------------------------
# prepare vdd (a check) and the command line


def test_prepare_vdd_checks_the_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"VDD/test/src.* does not exist.*RussRobin/VDD"):
        prepare_dataset("vdd", tmp_path, progress=False)
    spec = get_dataset_spec("vdd")
    for stem in ("DJI_0001", "DJI_0002"):
        save(spec.image_root(tmp_path) / f"{stem}.JPG", tile_image(2, 2, 0), "JPEG")
    save(spec.label_root(tmp_path) / "DJI_0001.png", [[0, 6], [3, 255]])
    summary = prepare_dataset("vdd", tmp_path, progress=False)
    assert (summary["written"], summary["skipped"], summary["missing"]) == (0, 0, 1)
    assert summary["missing_examples"] == ["DJI_0002 (label)"]
    assert summary["notes"][0].startswith("vdd is ready: 1 images with labels")
    assert not list(tmp_path.rglob("*.tmp"))


def test_cmd_prepare_accepts_the_remote_sensing_names(tmp_path, capsys):
    spec = get_dataset_spec("vdd")
    save(spec.image_root(tmp_path) / "DJI_0001.JPG", tile_image(2, 2, 0), "JPEG")
    save(spec.label_root(tmp_path) / "DJI_0001.png", [[0, 6], [3, 4]])
    assert cli_main(["data", "prepare", "vdd", "--root", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "vdd: 0 written, 0 already converted" in out and "vdd is ready: 1 images" in out
    for name in ("potsdam", "vaihingen", "isaid"):
        assert cli_main(["data", "prepare", name, "--root", str(tmp_path), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {name}: ") and err.count("\n") == 1
