"""COCO-Stuff (coco171), ADE20K-150, PASCAL VOC (voc20, voc20b), and the mmsegmentation layout of
COCO-Object and Cityscapes: lookup tables applied to 8-bit label PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.catalog import DatasetError
from data.prepare.common import (
    IGNORE_U8,
    RAW_SOURCES,
    _lut_png_job,
    _Plan,
    _read_ids,
    _rel,
    _require_dir,
    _require_file,
    converter,
)

# COCO-Stuff: 0-based ids (category id - 1) that no annotation uses; the other 171 are the classes
# of coco171 in increasing order (the 80 things, then the 91 stuff classes from 91 = banner).
COCO_UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_THINGS = 80  # coco171's first 80 classes are COCO's things (person .. toothbrush)
# GroupViT's converter (convert_coco_object.py, which SCLIP and NACLIP copy) sends raw value 255
# (unlabeled) to 0 with the stuff ids, so COCO-Object counts unlabeled pixels as background.
COCO_OBJECT_UNLABELED = 0
# Cityscapes label ids of the 19 evaluated classes, in trainId order 0..18 (cityscapesScripts'
# helpers/labels.py: road 7, sidewalk 8, building 11, ..., motorcycle 32, bicycle 33); every
# other id (void, and classes such as caravan or guard rail) has trainId 255.
CITYSCAPES_TRAIN_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

_VOC12 = Path("VOCdevkit/VOC2012")


# ---------------------------------------------------------------------------------------------
# label lookup tables: lut[raw value] = output value


def coco171_lut() -> np.ndarray:
    """(256,) uint8: stuffthingmap value -> coco171 label (255 for unused ids and unlabeled)."""
    lut = np.full(256, IGNORE_U8, dtype=np.uint8)
    used = [v for v in range(182) if v not in COCO_UNUSED_IDS]
    assert len(used) == 171
    lut[used] = np.arange(171, dtype=np.uint8)
    return lut


def ade150_lut() -> np.ndarray:
    """(256,) uint8: ADEChallenge value -> label - 1, with 0 ("other") and > 150 -> 255."""
    lut = np.full(256, IGNORE_U8, dtype=np.uint8)
    lut[1:151] = np.arange(150, dtype=np.uint8)
    return lut


def voc_lut(keep_background: bool) -> np.ndarray:
    """(256,) uint8: VOC index -> c - 1 for 1..20; background -> 20 (voc20b) or 255 (voc20)."""
    lut = np.full(256, IGNORE_U8, dtype=np.uint8)
    lut[1:21] = np.arange(20, dtype=np.uint8)
    if keep_background:
        lut[0] = 20
    return lut


def coco_object_lut() -> np.ndarray:
    """(256,) uint8: coco171 label -> COCO-Object label: thing t -> t + 1, stuff -> 0, unlabeled
    (255) -> :data:`COCO_OBJECT_UNLABELED`, as GroupViT; values no coco171 map holds -> 255."""
    lut = np.full(256, IGNORE_U8, dtype=np.uint8)
    lut[:COCO_THINGS] = np.arange(1, COCO_THINGS + 1, dtype=np.uint8)
    lut[COCO_THINGS:171] = 0
    lut[IGNORE_U8] = COCO_OBJECT_UNLABELED
    return lut


def cityscapes_lut() -> np.ndarray:
    """(256,) uint8: Cityscapes label id -> trainId (0..18), 255 for every other id."""
    lut = np.full(256, IGNORE_U8, dtype=np.uint8)
    lut[list(CITYSCAPES_TRAIN_IDS)] = np.arange(len(CITYSCAPES_TRAIN_IDS), dtype=np.uint8)
    return lut


@converter(
    "coco171",
    source="stuffthingmaps_trainval2017.zip of COCO-Stuff (https://github.com/nightrome/cocostuff): "
    "unzip it and move its train2017 and val2017 folders into <root>/coco-stuff/annotations; "
    "the images (train2017.zip, val2017.zip from https://cocodataset.org) go unzipped into "
    "<root>/coco-stuff/images",
)
def _plan_coco171(root: Path) -> _Plan:
    raw = root / "coco-stuff" / "annotations"
    what = "a COCO-Stuff stuffthingmap (8-bit grayscale PNG)"
    expected = "coco-stuff/annotations/val2017/*.png (stuffthingmaps of COCO-Stuff)"
    _require_dir(raw / "val2017", root, expected, "coco171")
    lut = coco171_lut()
    plan = _Plan("coco171 labels", [], [])
    for split in ("train2017", "val2017"):
        src_dir = raw / split
        if not src_dir.is_dir():
            # Evaluation needs only val2017; training users will notice the missing split here.
            plan.warnings.append(
                f"{_rel(src_dir, root)} is absent: only the other split was converted"
            )
            continue
        sources = sorted(src_dir.glob("*.png"))
        if not sources:
            raise DatasetError(
                f"coco171: {str(src_dir)!r} holds no .png files; expected the stuffthingmaps. "
                f"Download {RAW_SOURCES['coco171'].replace('<root>', str(root))}"
            )
        out = root / "coco-stuff" / "annotations_detectron2" / split
        plan.outputs.append(out)
        plan.jobs += [_lut_png_job(s, out / s.name, lut, what) for s in sources]
        _warn_missing_coco_images(plan, root / "coco-stuff" / "images" / split, root)
    return plan


def _warn_missing_coco_images(plan: _Plan, images: Path, root: Path) -> None:
    if not images.is_dir():
        plan.warnings.append(
            f"images {_rel(images, root)} are absent: unzip {images.name}.zip from "
            f"https://cocodataset.org into {images.parent}"
        )


@converter(
    "ade150",
    source="ADEChallengeData2016.zip (http://data.csail.mit.edu/places/ADEchallenge/"
    "ADEChallengeData2016.zip): unzip it into <root>",
)
def _plan_ade150(root: Path) -> _Plan:
    base = root / "ADEChallengeData2016"
    src_dir = base / "annotations" / "validation"
    _require_dir(
        src_dir, root, "ADEChallengeData2016/annotations/validation/*.png of ADE20K-150", "ade150"
    )
    sources = sorted(src_dir.glob("*.png"))
    if not sources:
        raise DatasetError(
            f"ade150: {str(src_dir)!r} holds no .png files. "
            f"Download {RAW_SOURCES['ade150'].replace('<root>', str(root))}"
        )
    out = base / "annotations_detectron2" / "validation"
    lut = ade150_lut()
    what = "an ADEChallengeData2016 annotation (8-bit grayscale PNG)"
    plan = _Plan(
        "ade150 labels", [out], [_lut_png_job(s, out / s.name, lut, what) for s in sources]
    )
    if not (base / "images" / "validation").is_dir():
        plan.warnings.append(f"images {_rel(base / 'images' / 'validation', root)} are absent")
    return plan


@converter(
    "voc20",
    "voc20b",
    source="VOCtrainval_11-May-2012.tar of PASCAL VOC 2012 (http://host.robots.ox.ac.uk/pascal/VOC/"
    "voc2012/): unpack it into <root> (it creates VOCdevkit/VOC2012)",
)
def _plan_voc(root: Path, name: str) -> _Plan:
    base = root / _VOC12
    src_dir = base / "SegmentationClass"
    if not src_dir.is_dir() and (base / "SegmentationClassAug").is_dir():
        src_dir = base / "SegmentationClassAug"  # same values, stored as 8-bit grayscale
    _require_dir(
        src_dir, root, "VOCdevkit/VOC2012/SegmentationClass/*.png of PASCAL VOC 2012", name
    )
    val_list = base / "ImageSets" / "Segmentation" / "val.txt"
    _require_file(
        val_list, root, "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt (1449 ids)", name
    )
    keep_background = name == "voc20b"
    out = base / ("annotations_detectron2_bg" if keep_background else "annotations_detectron2")
    out = out / "val"
    lut = voc_lut(keep_background)
    what = "a PASCAL VOC SegmentationClass label (palette PNG)"
    plan = _Plan(f"{name} labels", [out], [])
    for image_id in _read_ids(val_list):
        src = src_dir / f"{image_id}.png"
        if src.exists():  # a pipe or folder too: its job names it
            plan.jobs.append(_lut_png_job(src, out / src.name, lut, what))
        else:
            plan.missing.append(image_id)
    if not (base / "JPEGImages").is_dir():
        plan.warnings.append(f"images {_rel(base / 'JPEGImages', root)} are absent")
    return plan


# ---------------------------------------------------------------------------------------------
# mmsegmentation layout: COCO-Object and Cityscapes

_COCO164K = Path("coco_stuff164k")
_COCO_OBJECT_SUFFIX = "_instanceTrainIds.png"  # GroupViT / SCLIP's seg_map_suffix


@converter(
    "coco-object",
    source="COCO-Stuff 164k in mmsegmentation's layout: the COCO val2017 images unzipped into "
    "<root>/coco_stuff164k/images (val2017.zip from https://cocodataset.org) and "
    "<root>/coco_stuff164k/annotations/val2017/*_labelTrainIds.png (mmsegmentation's "
    "tools/dataset_converters/coco_stuff164k.py run on stuffthingmaps_trainval2017.zip); "
    "instead of those labels, the coco171 labels of `cli.py data prepare coco171` will do",
)
def _plan_coco_object(root: Path) -> _Plan:
    name = "coco-object"
    images = root / _COCO164K / "images" / "val2017"
    ours = root / "coco-stuff" / "images" / "val2017"
    if not images.is_dir() and ours.is_dir():
        # The reader follows mmseg's layout; a link keeps one copy of the 5000 images.
        raise DatasetError(
            f"{name}: the val2017 images are in {str(ours)!r} (coco171's layout), but "
            f"coco-object reads them from {str(images)!r}. Link them, then run this again: "
            f"`mkdir -p {images.parent} && ln -s {ours.resolve()} {images}`"
        )
    out = root / _COCO164K / "annotations" / "val2017"
    mmseg_sources = sorted(out.glob("*_labelTrainIds.png")) if out.is_dir() else []
    d2_dir = root / "coco-stuff" / "annotations_detectron2" / "val2017"
    d2_sources = sorted(d2_dir.glob("*.png")) if d2_dir.is_dir() else []
    if mmseg_sources:
        sources = [(s, s.name[: -len("_labelTrainIds.png")]) for s in mmseg_sources]
    elif d2_sources:
        sources = [(s, s.stem) for s in d2_sources]
    else:
        raise DatasetError(
            f"{name}: no COCO-Stuff labels to convert: neither "
            f"{str(out / '*_labelTrainIds.png')!r} (mmsegmentation's coco_stuff164k.py) nor "
            f"{str(d2_dir / '*.png')!r} (`cli.py data prepare coco171 --root {root}`) exists. "
            f"Download {RAW_SOURCES[name].replace('<root>', str(root))}"
        )
    what = "a COCO-Stuff 171-class label map (8-bit PNG, 0..170, 255 unlabeled)"
    lut = coco_object_lut()
    plan = _Plan(f"{name} labels", [out], [])
    plan.jobs = [_lut_png_job(s, out / f"{i}{_COCO_OBJECT_SUFFIX}", lut, what) for s, i in sources]
    _warn_missing_coco_images(plan, images, root)
    return plan


@converter(
    "cityscapes",
    source="gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip of Cityscapes "
    "(https://www.cityscapes-dataset.com, free registration): unzip both into "
    "<root>/cityscapes (they create gtFine/ and leftImg8bit/)",
)
def _plan_cityscapes(root: Path) -> _Plan:
    name = "cityscapes"
    base = root / "cityscapes"
    src_dir = base / "gtFine" / "val"
    expected = "cityscapes/gtFine/val/<city>/*_gtFine_labelIds.png from gtFine_trainvaltest.zip"
    _require_dir(src_dir, root, expected, name)
    sources = sorted(src_dir.rglob("*_gtFine_labelIds.png"))
    if not sources:
        raise DatasetError(
            f"{name}: {str(src_dir)!r} holds no <city>/*_gtFine_labelIds.png. "
            f"Download {RAW_SOURCES[name].replace('<root>', str(root))}"
        )
    what = "a Cityscapes *_gtFine_labelIds.png (8-bit grayscale label ids)"
    lut = cityscapes_lut()
    suffix = "_gtFine_labelIds.png"
    plan = _Plan(f"{name} labels", [src_dir], [])
    for src in sources:
        dst = src.with_name(src.name[: -len(suffix)] + "_gtFine_labelTrainIds.png")
        plan.jobs.append(_lut_png_job(src, dst, lut, what))
    if not (base / "leftImg8bit" / "val").is_dir():
        plan.warnings.append(
            f"images {_rel(base / 'leftImg8bit' / 'val', root)} are absent: unzip "
            f"leftImg8bit_trainvaltest.zip into {base}"
        )
    return plan
