"""Converters from the official benchmark downloads to the detectron2 layout of docs/design.md §5 (and to
the mmsegmentation layout of the training-free methods).

``python cli.py data prepare NAME --root DIR`` turns what the dataset authors publish into the
label maps that :mod:`data.catalog` describes, the same files CAT-Seg and SED evaluate on (their
``datasets/prepare_*.py`` scripts, after MaskFormer's). Facts about the raw formats used here:

- **coco171**: COCO-Stuff's ``stuffthingmaps`` are 8-bit grayscale PNGs whose value is the COCO
  category id - 1 (0..181) and 255 = unlabeled. 11 of the 182 ids were never used (thing ids
  dropped from COCO 2014's list), so the 171 used values are renumbered 0..170 in order.
- **ade150**: ADEChallengeData2016 PNGs hold 0 = "other" and 1..150 the classes: label - 1, and
  0 becomes the ignore value 255.
- **ade847**: the full ADE20K release (``ADE20K_2021_17_01``) encodes the class of a pixel in its
  ``*_seg.png`` as ``R // 10 * 256 + G``; value c is ``objectnames[c - 1]`` of
  ``index_ade20k.pkl`` (0 = unlabeled; the index is off by one from the mask, see
  CSAILVision/ADE20K issue #15). Classes are matched by name to CAT-Seg's 847-entry vocabulary,
  everything else becomes 65535. As MaskFormer's converter, images whose shorter side exceeds
  512 are resized so that it is 512 (image bilinear, label nearest) and labels are uint16 TIFFs.
- **pc459 / pc59**: PASCAL-Context ``trainval/<id>.mat`` files hold ``LabelMap`` (uint16, 1..459
  index the names of ``labels.txt``). PC-459 stores label - 1 as uint16 TIFF (0 -> 65535); PC-59
  keeps the 59 classes of the usual subset, which are ordered by their 459-id, -> 0..58, else 255.
  The 5104 validation ids come from ``pascalcontext_val.txt`` (shipped by CAT-Seg).
- **voc20 / voc20b**: VOC 2012 ``SegmentationClass`` PNGs are palette images whose indices are
  0 = background, 1..20 classes, 255 = void boundary. voc20 drops the background (-> 255),
  voc20b keeps it as class 20. (``voc21`` reads these PNGs as they are: nothing to prepare.)

Two more write the mmsegmentation layout of the training-free methods (SCLIP, ClearCLIP, VIP):

- **coco-object**: COCO-Stuff 164k as 80 things + background, GroupViT's
  ``convert_coco_object.py`` (which SCLIP and NACLIP ship as ``cvt_coco_object.py``): thing t
  (0..79 of coco171) -> t + 1, the 91 stuff classes -> 0 = background, and unlabeled -> 0 too
  (that script maps raw 255 to background, so the published numbers count unlabeled pixels as
  background). Read from mmseg's ``coco_stuff164k/annotations/val2017/<id>_labelTrainIds.png``
  (0..170 in coco171's order, 255 unlabeled), else from the coco171 labels of this project
  (``coco-stuff/annotations_detectron2/val2017``, same values); written as
  ``<id>_instanceTrainIds.png`` beside mmseg's files.
- **cityscapes**: ``gtFine/val/<city>/*_gtFine_labelIds.png`` -> ``*_gtFine_labelTrainIds.png``
  with the id -> trainId table of cityscapesScripts' ``labels.py`` (19 classes, else 255).

And the remote-sensing benchmarks of VIP, as mmsegmentation's converters write them (their code
read at open-mmlab/mmsegmentation ``tools/dataset_converters/{potsdam,vaihingen,isaid}.py``):

- **potsdam / vaihingen**: the official zips are read in place (``<root>/potsdam/2_Ortho_RGB.zip``
  + ``5_Labels_all_noBoundary.zip``; ``<root>/vaihingen/ISPRS_semantic_labeling_Vaihingen.zip`` +
  ``..._ground_truth_eroded_COMPLETE.zip``; where the zips go is ours, mmseg takes a folder of
  zips). The val tiles of mmseg's split lists (14 Potsdam tiles, 17 Vaihingen areas) are cut
  into 512 x 512 crops (:func:`isprs_boxes`: mmseg's window grid, so stride 256 does not give
  overlapping crops) named ``<tile>_<x0>_<y0>_<x1>_<y1>.png``; the RGB colour code becomes the
  on-disk index 0 (black, eroded boundary) .. 6 (:func:`isprs_colour_to_index`). Only val is
  written (ours: evaluation needs nothing else); Vaihingen images stay IRRG false colour, as
  mmseg (and so VIP) feeds them.
- **isaid**: DOTA-v1.0 val images (``<root>/iSAID/val/images/*.zip``) and iSAID semantic masks
  (``<root>/iSAID/val/Semantic_masks/*.zip``), mmseg's raw layout, -> 896 x 896 patches every 512
  pixels (:func:`isaid_windows`; smaller images padded, image 0, label 255), mask colours ->
  0..15 (:func:`isaid_colour_to_index`). mmseg saves the image patches as BMP data under a .png
  name; we write real PNGs (ours, same pixels), and pad any side shorter than 896 (mmseg leaves
  a side of exactly 896 next to a shorter one unpadded and slices at a negative offset).
- **vdd**: nothing to convert (VDD's ``test/gt`` PNGs hold 0..6); ``prepare vdd`` checks that
  ``VDD/test/src`` and ``VDD/test/gt`` pair up.

When the zips are absent but the mmseg layout is already on disk (made by mmseg's own
converters), ``prepare`` says so instead of failing.

Every output is written whole (temp file + ``os.replace``) and skipped when it already exists, so a
rerun is a no-op and a killed run resumes. A missing or malformed download raises
:class:`~data.catalog.DatasetError` naming the file, what to download and where to put it.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import pickle
import sys
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from data.catalog import DatasetError, datasets_root
from data.io import save_image_atomic
from data.optional import require
from data.vocabulary import Vocabulary, VocabularyError, load_vocabulary, read_vocabulary_file

PREPARABLE = (
    "coco171", "ade150", "ade847", "pc59", "pc459", "voc20", "voc20b", "coco-object", "cityscapes",
    "potsdam", "vaihingen", "isaid", "vdd",
)  # fmt: skip
"""Datasets `prepare_dataset` converts (``synthetic`` is generated by ``data synthetic``)."""

RAW_SOURCES: dict[str, str] = {
    "coco171": (
        "stuffthingmaps_trainval2017.zip of COCO-Stuff (https://github.com/nightrome/cocostuff): "
        "unzip it and move its train2017 and val2017 folders into <root>/coco-stuff/annotations; "
        "the images (train2017.zip, val2017.zip from https://cocodataset.org) go unzipped into "
        "<root>/coco-stuff/images"
    ),
    "ade150": (
        "ADEChallengeData2016.zip (http://data.csail.mit.edu/places/ADEchallenge/"
        "ADEChallengeData2016.zip): unzip it into <root>"
    ),
    "ade847": (
        "ADE20K_2021_17_01.zip, the full ADE20K release (https://ade20k.csail.mit.edu, free "
        "registration): unzip it into <root>; plus CAT-Seg's datasets/ade847.json in the "
        "vocabulary directory ($DPSEG_VOCAB_DIR, default ./vocab)"
    ),
    "pc59": (
        "trainval.tar.gz of PASCAL-Context (https://cs.stanford.edu/~roozbeh/pascal-context/): "
        "unpack it into <root>/VOCdevkit/VOC2010 (trainval/*.mat and labels.txt); CAT-Seg's "
        "pascalcontext_val.txt into <root>/VOCdevkit/VOC2010; the images come from "
        "VOCtrainval_03-May-2010.tar of PASCAL VOC 2010, unpacked into <root>"
    ),
    "voc20": (
        "VOCtrainval_11-May-2012.tar of PASCAL VOC 2012 (http://host.robots.ox.ac.uk/pascal/VOC/"
        "voc2012/): unpack it into <root> (it creates VOCdevkit/VOC2012)"
    ),
    "coco-object": (
        "COCO-Stuff 164k in mmsegmentation's layout: the COCO val2017 images unzipped into "
        "<root>/coco_stuff164k/images (val2017.zip from https://cocodataset.org) and "
        "<root>/coco_stuff164k/annotations/val2017/*_labelTrainIds.png (mmsegmentation's "
        "tools/dataset_converters/coco_stuff164k.py run on stuffthingmaps_trainval2017.zip); "
        "instead of those labels, the coco171 labels of `cli.py data prepare coco171` will do"
    ),
    "cityscapes": (
        "gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip of Cityscapes "
        "(https://www.cityscapes-dataset.com, free registration): unzip both into "
        "<root>/cityscapes (they create gtFine/ and leftImg8bit/)"
    ),
    "potsdam": (
        "2_Ortho_RGB.zip and 5_Labels_all_noBoundary.zip of ISPRS Potsdam (on request at "
        "https://www.isprs.org/education/benchmarks/UrbanSemLab/2d-sem-label-potsdam.aspx; "
        "mmsegmentation's dataset docs list mirrors): put both zips, not unpacked, into "
        "<root>/potsdam"
    ),
    "vaihingen": (
        "ISPRS_semantic_labeling_Vaihingen.zip and "
        "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip of ISPRS Vaihingen "
        "(on request at https://www.isprs.org/education/benchmarks/UrbanSemLab/"
        "2d-sem-label-vaihingen.aspx): put both zips, not unpacked, into <root>/vaihingen"
    ),
    "isaid": (
        "the DOTA-v1.0 val images (part1.zip, https://captain-whu.github.io/DOTA/dataset.html) "
        "into <root>/iSAID/val/images and the iSAID val semantic masks (images.zip of "
        "Semantic_masks, https://captain-whu.github.io/iSAID/dataset.html) into "
        "<root>/iSAID/val/Semantic_masks, zips not unpacked (mmsegmentation's layout)"
    ),
    "vdd": (
        "VDD (https://github.com/RussRobin/VDD): unzip it into <root>/VDD so that "
        "<root>/VDD/test/src/*.JPG and <root>/VDD/test/gt/*.png exist"
    ),
}
RAW_SOURCES["pc459"] = RAW_SOURCES["pc59"]
RAW_SOURCES["voc20b"] = RAW_SOURCES["voc20"]

# COCO-Stuff: 0-based ids (category id - 1) that no annotation uses; the other 171 are the classes
# of coco171 in increasing order (the 80 things, then the 91 stuff classes from 91 = banner).
COCO_UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
ADE847_MAX_SIDE = 512  # MaskFormer's prepare_ade20k_full_sem_seg.py: shorter side <= 512
ADE_JPEG_QUALITY = 75  # that script saves with PIL's default quality, so do we
IGNORE_U8 = 255  # on-disk ignore of the 8-bit PNG label maps
COCO_THINGS = 80  # coco171's first 80 classes are COCO's things (person .. toothbrush)
# GroupViT's converter (convert_coco_object.py, which SCLIP and NACLIP copy) sends raw value 255
# (unlabeled) to 0 with the stuff ids, so COCO-Object counts unlabeled pixels as background.
COCO_OBJECT_UNLABELED = 0
# Cityscapes label ids of the 19 evaluated classes, in trainId order 0..18 (cityscapesScripts'
# helpers/labels.py: road 7, sidewalk 8, building 11, ..., motorcycle 32, bicycle 33); every
# other id (void, and classes such as caravan or guard rail) has trainId 255.
CITYSCAPES_TRAIN_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
IGNORE_U16 = 65535  # on-disk ignore of the 16-bit TIFF label maps (ade847, pc459)

_VOC10 = Path("VOCdevkit/VOC2010")
_VOC12 = Path("VOCdevkit/VOC2012")
_ADE_FULL = Path("ADE20K_2021_17_01")
# An ADE20K mask value is R // 10 * 256 + G with R, G in 0..255, so it is below 26 * 256.
_ADE_MASK_VALUES = (255 // 10 + 1) * 256


def _default_workers() -> int:
    return min(8, os.cpu_count() or 1)


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


def pc459_lut() -> np.ndarray:
    """(460,) uint16: LabelMap value -> label - 1 for 1..459, 0 (unlabeled) -> 65535."""
    lut = np.full(460, IGNORE_U16, dtype=np.uint16)
    lut[1:] = np.arange(459, dtype=np.uint16)
    return lut


# ---------------------------------------------------------------------------------------------
# small I/O helpers


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _require_dir(path: Path, root: Path, expected: str, name: str) -> None:
    if not path.is_dir():
        raise DatasetError(
            f"{name}: folder {str(path)!r} does not exist; expected {expected}. "
            f"Download {RAW_SOURCES[name].replace('<root>', str(root))}"
        )


def _require_file(path: Path, root: Path, expected: str, name: str) -> None:
    if not path.is_file():
        raise DatasetError(
            f"{name}: file {str(path)!r} does not exist; expected {expected}. "
            f"Download {RAW_SOURCES[name].replace('<root>', str(root))}"
        )


def _read_index_png(path: Path, what: str) -> np.ndarray:
    """An 8-bit label PNG as (H, W) uint8; palette ('P') images give indices, not colours."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise DatasetError(
                    f"{str(path)!r} is a {im.mode!r} image; expected {what} (one 8-bit index per "
                    "pixel, mode 'L' or 'P'). A colour rendering cannot be converted: use the "
                    "original file from the official download"
                )
            return np.asarray(im)
    except (OSError, SyntaxError) as e:
        raise DatasetError(
            f"cannot read {str(path)!r} ({e}); the file is damaged or truncated: extract it "
            "again from the official download"
        ) from e


def _read_ids(path: Path) -> list[str]:
    """One image id per line (blank lines ignored)."""
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise DatasetError(f"{str(path)!r} lists no image ids; expected one id per line")
    return ids


# ---------------------------------------------------------------------------------------------
# plans: what to write, checked before anything is written


Job = Callable[[], str]  # converts one output; returns "written" or "skipped" (or "missing")


@dataclass
class _Plan:
    description: str  # progress bar label
    outputs: list[Path]  # output folders
    jobs: list[Job]
    missing: list[str] = field(default_factory=list)  # listed inputs absent from the download
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the user should know: nothing wrong


def _lut_png_job(src: Path, dst: Path, lut: np.ndarray, what: str) -> Job:
    def job() -> str:
        if dst.is_file():
            return "skipped"
        label = _read_index_png(src, what)
        save_image_atomic(Image.fromarray(lut[label]), dst, "PNG")
        return "written"

    return job


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
        if src.is_file():
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


# ---------------------------------------------------------------------------------------------
# Remote sensing (VIP's Potsdam, Vaihingen, iSAID, VDD): mmsegmentation's converters

ISPRS_CLIP = 512  # mmseg's potsdam.py / vaihingen.py: --clip_size 512
ISPRS_STRIDE = 256  # their --stride_size 256: it sets only how many windows are computed
# ISPRS colour code (RGB) in order of the on-disk index those converters write: 0 = black, the
# eroded boundary of the *noBoundary* labels; 1..6 = the six classes of mmseg's PotsdamDataset.
ISPRS_COLOURS = (
    (0, 0, 0),  # boundary -> 0 (ignore: reduce_zero_label)
    (255, 255, 255),  # impervious surfaces
    (0, 0, 255),  # building
    (0, 255, 255),  # low vegetation
    (0, 255, 0),  # tree
    (255, 255, 0),  # car
    (255, 0, 0),  # clutter / background
)
# mmseg identifies a colour by the weighted sum 2*B + 3*G + 4*R of a pixel (cv2's BGR order times
# (2, 3, 4)), not by the colour itself; the weights per R, G, B:
_ISPRS_WEIGHTS = (4, 3, 2)
# mmseg's split lists: the tiles of its 'val' list (every other official tile is in 'train').
POTSDAM_VAL_TILES = (
    "2_13", "2_14", "3_13", "3_14", "4_13", "4_14", "4_15", "5_13", "5_14", "5_15", "6_13",
    "6_14", "6_15", "7_13",
)  # fmt: skip
VAIHINGEN_VAL_AREAS = (
    "area2", "area4", "area6", "area8", "area10", "area12", "area14", "area16", "area20",
    "area22", "area24", "area27", "area29", "area31", "area33", "area35", "area38",
)  # fmt: skip

ISAID_PATCH = 896  # mmseg's isaid.py: --patch_width = --patch_height = 896
ISAID_OVERLAP = 384  # its --overlap_area: a window every 896 - 384 = 512 pixels
# iSAID's semantic-mask colours (RGB), index = on-disk label (mmseg's isaid.py iSAID_palette and
# iSAIDDataset's order: background, ship, store_tank, ..., plane, Harbor).
ISAID_COLOURS = (
    (0, 0, 0), (0, 0, 63), (0, 63, 63), (0, 63, 0), (0, 63, 127), (0, 63, 191), (0, 63, 255),
    (0, 127, 63), (0, 127, 127), (0, 0, 127), (0, 0, 191), (0, 0, 255), (0, 191, 127),
    (0, 127, 191), (0, 127, 255), (0, 100, 155),
)  # fmt: skip
ISAID_MASK_SUFFIX = "_instance_color_RGB"  # iSAID's mask names; mmseg's seg_map_suffix too

_PIXEL_LIMIT_LOCK = threading.Lock()


def isprs_boxes(
    height: int, width: int, clip: int = ISPRS_CLIP, stride: int = ISPRS_STRIDE
) -> list[tuple[int, int, int, int]]:
    """The (x0, y0, x1, y1) crops of mmseg's ``clip_big_image`` (potsdam.py, vaihingen.py).

    ``stride`` only sets the number of windows (n = ceil((size - clip) / stride), + 1 when that
    falls short); the windows themselves start at multiples of ``clip`` and those that would
    cross the edge are moved back to end at it, so many coincide (mmseg writes them to the same
    file). Duplicates are dropped here. For a 6000-pixel Potsdam side: 0, 512, ..., 5120, 5488,
    12 windows, 144 crops per tile, the 2016 val crops of 14 tiles that mmseg's docs count.
    Tiles smaller than ``clip`` are refused by the caller (ours: mmseg would slice at negative
    offsets).
    """

    def windows(size: int) -> int:
        n = math.ceil((size - clip) / stride)
        return n if n * stride + clip >= size else n + 1

    boxes: dict[tuple[int, int, int, int], None] = {}
    for y in range(windows(height) + 1):  # np.meshgrid(x, y).ravel(): row by row
        for x in range(windows(width) + 1):
            x0, y0 = x * clip, y * clip
            box = (min(x0, width - clip), min(y0, height - clip),
                   min(x0 + clip, width), min(y0 + clip, height))  # fmt: skip
            boxes[box] = None
    return list(boxes)


def isprs_colour_to_index(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB ISPRS label -> (H, W) uint8 on-disk index 0..6, as mmseg's converters.

    Like them, a pixel gets the index of the :data:`ISPRS_COLOURS` entry whose weighted sum
    4R + 3G + 2B equals its own, and 0 when none does; for the pure colours of the official
    labels this is the colour itself (a stray colour with a colliding sum, e.g. (0, 170, 0),
    would be mapped as mmseg maps it).
    """
    r, g, b = (rgb[..., c].astype(np.int32) for c in range(3))
    wr, wg, wb = _ISPRS_WEIGHTS
    code = wr * r + wg * g + wb * b
    out = np.zeros(code.shape, dtype=np.uint8)
    for index, (cr, cg, cb) in enumerate(ISPRS_COLOURS):
        out[code == wr * cr + wg * cg + wb * cb] = index
    return out


def isaid_windows(
    size: int, patch: int = ISAID_PATCH, overlap: int = ISAID_OVERLAP
) -> list[tuple[int, int]]:
    """(start, end) windows along one axis of mmseg's isaid.py ``slide_crop_*``: one every
    ``patch - overlap`` pixels, those crossing the edge moved back to end at it (duplicates
    dropped). ``size`` >= ``patch``: smaller images are padded first."""
    out: dict[tuple[int, int], None] = {}
    for start in range(0, size, patch - overlap):
        end = start + patch
        if end > size:
            start, end = size - patch, size
        out[(start, end)] = None
    return list(out)


def isaid_colour_to_index(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB iSAID semantic mask -> (H, W) uint8 label 0..15 (mmseg's
    ``iSAID_convert_from_color``: exact colour match, any other colour -> 0 = background)."""
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    out = np.zeros(code.shape, dtype=np.uint8)
    for index, (r, g, b) in enumerate(ISAID_COLOURS):
        out[code == (r << 16 | g << 8 | b)] = index
    return out


def _pad_to(array: np.ndarray, height: int, width: int, value: int) -> np.ndarray:
    """Pad at the bottom and right to (height, width) with ``value`` (mmcv.impad's default)."""
    h, w = array.shape[:2]
    if (h, w) == (height, width):
        return array
    pad = [(0, height - h), (0, width - w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, constant_values=value)


@dataclass(frozen=True)
class _ZipMember:
    """One file inside a downloaded zip, read in place (nothing is unpacked to disk)."""

    archive: Path
    member: str

    def __str__(self) -> str:
        return f"{self.archive}:{self.member}"


def _open_trusted(fp) -> Image.Image:
    """``Image.open`` without PIL's decompression-bomb limit (89 Mpixels), which some DOTA images
    of iSAID exceed; the files come from the official downloads (ours). A lock keeps other
    threads' opens from seeing the lifted limit restored halfway."""
    with _PIXEL_LIMIT_LOCK:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(fp)
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _zip_image_size(item: _ZipMember, fix: str) -> tuple[int, int]:
    """(height, width) from the header of a zipped image (read lazily: nothing decoded)."""
    try:
        with zipfile.ZipFile(item.archive) as z, z.open(item.member) as f, _open_trusted(f) as im:
            return im.height, im.width
    except (OSError, SyntaxError, ValueError, zipfile.BadZipFile) as e:
        raise DatasetError(f"cannot read {item} ({e}); {fix}") from e


def _zip_image(item: _ZipMember, fix: str) -> np.ndarray:
    """The whole zipped image as (H, W, 3) uint8 RGB."""
    try:
        with zipfile.ZipFile(item.archive) as z:
            data = z.read(item.member)
        with _open_trusted(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, zipfile.BadZipFile) as e:
        raise DatasetError(f"cannot read {item} ({e}); {fix}") from e


def _download(name: str, root: Path) -> str:
    """What to download for ``name`` and where to put it, with the real root."""
    return RAW_SOURCES[name].replace("<root>", str(root))


def _zip_names(path: Path, name: str, root: Path) -> list[str]:
    """The member names of a downloaded zip; a damaged one ends in a DatasetError."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise DatasetError(
            f"{name}: cannot read {str(path)!r} as a zip file ({e}); download it again: "
            f"{_download(name, root)}"
        ) from e


def _crop_job(
    image: _ZipMember,
    label: _ZipMember,
    crops: Callable[[int, int], list[tuple[tuple[int, int, int, int], Path, Path]]],
    to_index: Callable[[np.ndarray], np.ndarray],
    pad: tuple[int, int] | None,
    fix: str,
) -> Job:
    """Crop one zipped image and its colour label into (label, image) PNG pairs.

    ``crops(height, width)`` lists ((x0, y0, x1, y1), label path, image path) for the (padded)
    size; ``pad`` = (min height, min width): smaller inputs are padded at the bottom/right with
    0 (image) and 255 (label), as mmseg's isaid.py. Every crop is written whole, label first (an
    image on disk always has its label); crops already on disk are kept, and a tile whose crops
    all exist is not decoded at all ("skipped").
    """

    def job() -> str:
        height, width = _zip_image_size(image, fix)
        if pad is not None:
            height, width = max(height, pad[0]), max(width, pad[1])
        planned = crops(height, width)
        if all(lp.is_file() and ip.is_file() for _, lp, ip in planned):
            return "skipped"
        pixels = _zip_image(image, fix)
        colours = _zip_image(label, fix)
        if pixels.shape != colours.shape:
            raise DatasetError(
                f"{image} is {pixels.shape[1]}x{pixels.shape[0]} but its label {label} is "
                f"{colours.shape[1]}x{colours.shape[0]} (W x H); {fix}"
            )
        index = to_index(colours)
        del colours
        if pad is not None:
            pixels = _pad_to(pixels, height, width, 0)
            index = _pad_to(index, height, width, IGNORE_U8)
        for (x0, y0, x1, y1), label_path, image_path in planned:
            if not label_path.is_file():
                crop = np.ascontiguousarray(index[y0:y1, x0:x1])
                save_image_atomic(Image.fromarray(crop), label_path, "PNG")
            if not image_path.is_file():
                crop = np.ascontiguousarray(pixels[y0:y1, x0:x1])
                save_image_atomic(Image.fromarray(crop), image_path, "PNG")
        return "written"

    return job


def _isprs_crops(
    out_images: Path, out_labels: Path, prefix: str, where: str
) -> Callable[[int, int], list[tuple[tuple[int, int, int, int], Path, Path]]]:
    """mmseg's crop names ``<prefix>_<x0>_<y0>_<x1>_<y1>.png`` (the same in img_dir and ann_dir)."""

    def crops(height: int, width: int):
        if height < ISPRS_CLIP or width < ISPRS_CLIP:
            raise DatasetError(
                f"{where} is {width}x{height}, smaller than the {ISPRS_CLIP}-pixel crops; it is "
                "not an official ISPRS tile: download the zip again"
            )
        out = []
        for box in isprs_boxes(height, width):
            name = f"{prefix}_{'_'.join(map(str, box))}.png"
            out.append((box, out_labels / name, out_images / name))
        return out

    return crops


def _already_prepared(name: str, root: Path) -> str | None:
    """A note when the converted layout is already on disk (e.g. written by mmseg's own
    converter), so that a missing download is no error; None when it is not."""
    from data.catalog import get_dataset_spec
    from data.datasets import index_files

    spec = get_dataset_spec(name)
    if not (spec.image_root(root).is_dir() and spec.label_root(root).is_dir()):
        return None
    pairs, _ = index_files(spec, root)
    if not pairs:
        return None
    return (
        f"{name} is already in mmsegmentation's layout: {len(pairs)} images with labels in "
        f"{_rel(spec.image_root(root), root)} and {_rel(spec.label_root(root), root)}; nothing "
        f"to convert (check it with `cli.py data stats {name} --root {root}`)"
    )


def _missing_zips(name: str, root: Path, zips: list[Path]) -> DatasetError:
    listed = " and ".join(repr(str(z)) for z in zips)
    return DatasetError(
        f"{name}: {listed} {'does' if len(zips) == 1 else 'do'} not exist. Download "
        f"{_download(name, root)}"
    )


def _plan_isprs(root: Path, name: str) -> _Plan:
    """Potsdam / Vaihingen val tiles from the official zips -> mmseg's 512 x 512 crops."""
    base = root / name
    if name == "potsdam":
        images_zip = base / "2_Ortho_RGB.zip"
        label_zips = [base / "5_Labels_all_noBoundary.zip", base / "5_Labels_all.zip"]
    else:
        images_zip = base / "ISPRS_semantic_labeling_Vaihingen.zip"
        label_zips = [base / "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip"]
    labels_zip = next((z for z in label_zips if z.is_file()), None)
    if not images_zip.is_file() or labels_zip is None:
        note = _already_prepared(name, root)
        if note is not None:
            return _Plan(f"{name} tiles", [base / "img_dir" / "val", base / "ann_dir" / "val"],
                         [], notes=[note])  # fmt: skip
        absent = [images_zip] if not images_zip.is_file() else []
        raise _missing_zips(name, root, absent + ([label_zips[0]] if labels_zip is None else []))
    plan = _Plan(f"{name} tiles", [base / "img_dir" / "val", base / "ann_dir" / "val"], [])
    if labels_zip.name == "5_Labels_all.zip":
        plan.warnings.append(
            "5_Labels_all_noBoundary.zip is absent, so the labels come from 5_Labels_all.zip, "
            "which has no eroded boundary: the scores will not match mmseg's setting (it "
            "requires the noBoundary labels)"
        )
    images: dict[str, _ZipMember] = {}
    labels: dict[str, _ZipMember] = {}
    for member in _zip_names(images_zip, name, root):
        key = _isprs_key(name, member, label=False)
        if key is not None:
            images[key] = _ZipMember(images_zip, member)
    for member in _zip_names(labels_zip, name, root):
        key = _isprs_key(name, member, label=True)
        if key is not None:
            labels[key] = _ZipMember(labels_zip, member)
    if not images or not labels:
        empty = images_zip if not images else labels_zip
        raise DatasetError(
            f"{name}: {str(empty)!r} holds none of the expected .tif tiles; it is not the "
            f"official zip. Download {_download(name, root)}"
        )
    fix = f"the zip is damaged: download it again ({_download(name, root)})"
    out_images, out_labels = plan.outputs
    for key in POTSDAM_VAL_TILES if name == "potsdam" else VAIHINGEN_VAL_AREAS:
        if key not in images or key not in labels:
            absent = images_zip if key not in images else labels_zip
            plan.missing.append(f"{key} ({absent.name})")
            continue
        crops = _isprs_crops(out_images, out_labels, key, str(images[key]))
        plan.jobs.append(
            _crop_job(images[key], labels[key], crops, isprs_colour_to_index, None, fix)
        )
    return plan


def _isprs_key(name: str, member: str, label: bool) -> str | None:
    """The tile id of a zip member, or None for other files (as mmseg's converters name them).

    Potsdam: ``top_potsdam_2_13_RGB.tif`` / ``top_potsdam_2_13_label[_noBoundary].tif`` -> "2_13"
    (mmseg: ``basename.split('_')[2:4]``, a label when "label" is in the name; the exact label
    file names of the zips are our reading of the ISPRS release, not checked against it). Vaihingen: ``top/top_mosaic_09cm_area2.tif`` (only the
    ``top`` folder: the zip's gts_for_participants holds same-named training labels) and
    ``top_mosaic_09cm_area2_noBoundary.tif`` -> "area2".
    """
    path = PurePosixPath(member)
    base = path.name
    if not base.endswith(".tif"):
        return None
    parts = base[: -len(".tif")].split("_")
    if name == "potsdam":
        if len(parts) < 5 or parts[:2] != ["top", "potsdam"]:
            return None
        rest = "_".join(parts[4:])  # "RGB", "label" or "label_noBoundary"
        if label != ("label" in rest) or (not label and rest != "RGB"):
            return None
        return f"{parts[2]}_{parts[3]}"
    if len(parts) < 4 or parts[:3] != ["top", "mosaic", "09cm"]:
        return None
    if label:
        return parts[3] if parts[4:] == ["noBoundary"] else None
    return parts[3] if len(parts) == 4 and path.parent.name == "top" else None


def _plan_isaid(root: Path) -> _Plan:
    """iSAID val: DOTA-v1.0 val images + iSAID semantic masks, as zipped in mmseg's layout, ->
    896 x 896 patches (stride 512) in ``iSAID/img_dir/val`` and ``iSAID/ann_dir/val``."""
    name = "isaid"
    base = root / "iSAID"
    image_zips = sorted((base / "val" / "images").glob("*.zip"))
    mask_zips = sorted((base / "val" / "Semantic_masks").glob("*.zip"))
    if not image_zips or not mask_zips:
        note = _already_prepared(name, root)
        if note is not None:
            return _Plan("isaid images", [base / "img_dir" / "val", base / "ann_dir" / "val"],
                         [], notes=[note])  # fmt: skip
        absent = []
        if not image_zips:
            absent.append(base / "val" / "images" / "part1.zip")
        if not mask_zips:
            absent.append(base / "val" / "Semantic_masks" / "images.zip")
        raise _missing_zips(name, root, absent)
    images: dict[str, _ZipMember] = {}
    masks: dict[str, _ZipMember] = {}
    for archive in image_zips:
        for member in _zip_names(archive, name, root):
            stem = PurePosixPath(member).stem
            if member.endswith(".png") and not stem.endswith(ISAID_MASK_SUFFIX):
                images[stem] = _ZipMember(archive, member)
    for archive in mask_zips:
        for member in _zip_names(archive, name, root):
            stem = PurePosixPath(member).stem
            if member.endswith(".png") and stem.endswith(ISAID_MASK_SUFFIX):
                masks[stem[: -len(ISAID_MASK_SUFFIX)]] = _ZipMember(archive, member)
    if not images or not masks:
        where = image_zips if not images else mask_zips
        what = "images/<id>.png" if not images else f"images/<id>{ISAID_MASK_SUFFIX}.png"
        raise DatasetError(
            f"isaid: {', '.join(repr(str(z)) for z in where)} hold no {what}; they are not the "
            f"official zips. Download {_download(name, root)}"
        )
    out_images, out_labels = base / "img_dir" / "val", base / "ann_dir" / "val"
    plan = _Plan("isaid images", [out_images, out_labels], [])
    fix = f"the zip is damaged: download it again ({_download(name, root)})"
    for stem in sorted(set(images) | set(masks)):
        if stem not in images or stem not in masks:
            plan.missing.append(f"{stem} ({'mask' if stem not in masks else 'image'} absent)")
            continue
        crops = _isaid_crops(out_images, out_labels, stem)
        pad = (ISAID_PATCH, ISAID_PATCH)
        plan.jobs.append(
            _crop_job(images[stem], masks[stem], crops, isaid_colour_to_index, pad, fix)
        )
    return plan


def _isaid_crops(
    out_images: Path, out_labels: Path, stem: str
) -> Callable[[int, int], list[tuple[tuple[int, int, int, int], Path, Path]]]:
    """mmseg's patch names: ``<id>_<y0>_<y1>_<x0>_<x1>.png`` and, for the label,
    ``<id before any '_'>_<y0>_<y1>_<x0>_<x1>_instance_color_RGB.png``."""
    label_stem = stem.split("_")[0]

    def crops(height: int, width: int):
        out = []
        for x0, x1 in isaid_windows(width):
            for y0, y1 in isaid_windows(height):
                where = f"{y0}_{y1}_{x0}_{x1}"
                out.append(((x0, y0, x1, y1),
                            out_labels / f"{label_stem}_{where}{ISAID_MASK_SUFFIX}.png",
                            out_images / f"{stem}_{where}.png"))  # fmt: skip
        return out

    return crops


def _plan_vdd(root: Path) -> _Plan:
    """VDD is read as downloaded: check that its test split pairs up, convert nothing."""
    from data.catalog import get_dataset_spec
    from data.datasets import index_files

    name = "vdd"
    spec = get_dataset_spec(name)
    for folder, what in (
        (spec.image_root(root), "*.JPG images"),
        (spec.label_root(root), "*.png labels"),
    ):
        _require_dir(folder, root, f"VDD/test/{folder.name}/{what} of VDD's test split", name)
    pairs, unpaired = index_files(spec, root)
    if not pairs:
        raise DatasetError(
            f"vdd: no image in {str(spec.image_root(root))!r} has a label in "
            f"{str(spec.label_root(root))!r}. Download {_download(name, root)}"
        )
    plan = _Plan("vdd", [spec.image_root(root), spec.label_root(root)], [])
    plan.missing += [f"{k} (label)" for k in unpaired["missing_labels"]]
    plan.missing += [f"{k} (image)" for k in unpaired["missing_images"]]
    plan.notes.append(
        f"vdd is ready: {len(pairs)} images with labels, read as they are (nothing to convert); "
        f"check the label values with `cli.py data stats vdd --root {root}`"
    )
    return plan


# ---------------------------------------------------------------------------------------------
# PASCAL-Context


def read_pascal_context_labels(path: Path) -> dict[int, str]:
    """``labels.txt`` of PASCAL-Context (``"1: accordion"`` per line) as {459-id: name}."""
    labels: dict[int, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, name = line.partition(":")
        if not sep or not key.strip().isdigit() or not name.strip():
            raise DatasetError(
                f"{str(path)!r} line {lineno} is {line!r}; expected 'ID: NAME' like "
                "'1: accordion' (the labels.txt of PASCAL-Context's trainval.tar.gz)"
            )
        labels[int(key)] = name.strip()
    return labels


def _name_key(name: str) -> str:
    # Spacing and case are not meaningful in PASCAL-Context names ("pottedplant", "tvmonitor").
    return "".join(name.split()).casefold()


def pc59_lut(labels: dict[int, str], source: str = "labels.txt") -> np.ndarray:
    """(460,) uint8: LabelMap value -> pc59 label 0..58 for the 59 classes, else 255.

    The 59 names are the built-in ``pc59`` vocabulary; its ``diningtable`` is ``table`` in
    ``labels.txt``. PASCAL-Context 59 is ordered by 459-id, so the matched ids must increase:
    a ``labels.txt`` of another release or order is refused instead of silently mislabelling.
    """
    aliases = {"diningtable": "table"}
    # Built from the highest id down, so a name listed twice keeps its first (lowest) id.
    by_name = {_name_key(n): i for i, n in sorted(labels.items(), reverse=True)}
    names = load_vocabulary("pc59").names
    ids: list[int] = []
    absent: list[str] = []
    for n in names:
        i = by_name.get(_name_key(aliases.get(n, n)))
        if i is None:
            absent.append(n)
        else:
            ids.append(i)
    if absent:
        raise DatasetError(
            f"{source} lacks {len(absent)} of the 59 PASCAL-Context classes: "
            f"{', '.join(absent[:10])}; use the labels.txt of PASCAL-Context's trainval.tar.gz "
            "(459 lines '1: accordion' ... )"
        )
    for k in range(1, len(ids)):
        if ids[k] <= ids[k - 1]:
            raise DatasetError(
                f"{source}: pc59 class {names[k]!r} has 459-id {ids[k]}, not above the "
                f"{ids[k - 1]} of {names[k - 1]!r}; PASCAL-Context 59 is ordered by 459-id, so "
                "this labels.txt is not the official one: use the labels.txt of "
                "PASCAL-Context's trainval.tar.gz"
            )
    if max(ids) > 459:
        raise DatasetError(f"{source}: 459-id {max(ids)} is out of range 1..459")
    lut = np.full(460, IGNORE_U8, dtype=np.uint8)
    lut[ids] = np.arange(59, dtype=np.uint8)
    return lut


def _read_label_map(path: Path) -> np.ndarray:
    loadmat = require("scipy.io", "PASCAL-Context's .mat annotations").loadmat

    try:
        mat = loadmat(path, variable_names=["LabelMap"])
    except Exception as e:  # scipy raises ValueError, OSError, or its own MatReadError
        raise DatasetError(
            f"cannot read {str(path)!r} ({e}); the file is damaged or truncated: unpack "
            "trainval.tar.gz of PASCAL-Context again"
        ) from e
    if "LabelMap" not in mat:
        raise DatasetError(
            f"{str(path)!r} has no 'LabelMap' variable; expected a PASCAL-Context trainval .mat"
        )
    label = np.asarray(mat["LabelMap"])
    if label.ndim != 2 or label.size == 0 or label.min() < 0 or label.max() > 459:
        raise DatasetError(
            f"{str(path)!r}: LabelMap has shape {label.shape} and values "
            f"{label.min() if label.size else '-'}..{label.max() if label.size else '-'}; "
            "expected a 2-D map of 459-ids (0..459)"
        )
    return label.astype(np.int64)


def _mat_job(src: Path, dst: Path, lut: np.ndarray, fmt: str) -> Job:
    def job() -> str:
        if dst.is_file():
            return "skipped"
        save_image_atomic(Image.fromarray(lut[_read_label_map(src)]), dst, fmt)
        return "written"

    return job


def _plan_pascal_context(root: Path, name: str) -> _Plan:
    base = root / _VOC10
    mats = base / "trainval"
    _require_dir(
        mats, root, "VOCdevkit/VOC2010/trainval/*.mat from trainval.tar.gz of PASCAL-Context", name
    )
    val_list = base / "pascalcontext_val.txt"
    _require_file(
        val_list,
        root,
        "VOCdevkit/VOC2010/pascalcontext_val.txt (the 5104 PASCAL-Context validation ids that "
        "CAT-Seg ships)",
        name,
    )
    if name == "pc59":
        labels_txt = base / "labels.txt"
        _require_file(
            labels_txt,
            root,
            "VOCdevkit/VOC2010/labels.txt from trainval.tar.gz of PASCAL-Context",
            name,
        )
        lut, suffix, fmt = (
            pc59_lut(read_pascal_context_labels(labels_txt), str(labels_txt)),
            ".png",
            "PNG",
        )
    else:
        lut, suffix, fmt = pc459_lut(), ".tif", "TIFF"
    out = base / "annotations_detectron2" / f"{name}_val"
    plan = _Plan(f"{name} labels", [out], [])
    for image_id in _read_ids(val_list):
        src = mats / f"{image_id}.mat"
        if src.is_file():
            plan.jobs.append(_mat_job(src, out / f"{image_id}{suffix}", lut, fmt))
        else:
            plan.missing.append(image_id)
    if not (base / "JPEGImages").is_dir():
        plan.warnings.append(
            f"images {_rel(base / 'JPEGImages', root)} are absent: unpack "
            f"VOCtrainval_03-May-2010.tar of PASCAL VOC 2010 into {root}"
        )
    return plan


# ---------------------------------------------------------------------------------------------
# ADE20K full (847 classes)


def _safe_globals() -> dict[tuple[str, str], object]:
    """What an ADE20K index may reference: numpy array/scalar rebuilding and plain containers.

    numpy 1.x pickles name ``numpy.core``, numpy 2.x ``numpy._core``; both resolve to the running
    numpy. ``_codecs.encode`` is how protocol <= 2 pickles store bytes and ``_frombuffer`` how
    protocol 5 stores arrays: both only build data.
    """
    import codecs

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]

    table: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for package in ("numpy.core", "numpy._core"):
        table[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    for container in (list, dict, tuple, set, frozenset, bytearray):
        # Protocols 0-2 write Python 2's module name "__builtin__".
        for module in ("builtins", "__builtin__"):
            table[(module, container.__name__)] = container
    return table


class _IndexUnpickler(pickle.Unpickler):
    """Unpickles data only: a downloaded pickle must not be able to run code (pickle can call
    any importable function, e.g. ``os.system``), so every other global is refused."""

    def __init__(self, file, source: str) -> None:
        super().__init__(file)
        self._source = source
        self._allowed = _safe_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DatasetError(
                f"{self._source} refers to {module}.{name}, which an ADE20K index never needs "
                "(only numpy arrays and lists/dicts are allowed), so it was not loaded: the file "
                "is not the official index_ade20k.pkl. Download ADE20K_2021_17_01.zip again from "
                "https://ade20k.csail.mit.edu"
            ) from None


def load_ade20k_index(path: str | os.PathLike) -> dict:
    """Read ``index_ade20k.pkl`` with :class:`_IndexUnpickler` (numpy arrays and containers only).

    Returns the dict, checked to hold ``filename``, ``folder`` (same length) and ``objectnames``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            index = _IndexUnpickler(f, repr(str(path))).load()
    except DatasetError:
        raise
    except Exception as e:  # truncated or not a pickle: UnpicklingError, EOFError, ValueError...
        raise DatasetError(
            f"cannot read {str(path)!r} ({type(e).__name__}: {e}); it is damaged or not the "
            "ADE20K index: unzip ADE20K_2021_17_01.zip again"
        ) from e
    keys = ("filename", "folder", "objectnames")
    if not isinstance(index, dict) or any(k not in index for k in keys):
        found = sorted(index) if isinstance(index, dict) else type(index).__name__
        raise DatasetError(
            f"{str(path)!r} holds {found}; expected a dict with {', '.join(keys)} "
            "(the index_ade20k.pkl of ADE20K_2021_17_01)"
        )
    if len(index["filename"]) != len(index["folder"]):
        raise DatasetError(
            f"{str(path)!r}: {len(index['filename'])} filenames but {len(index['folder'])} "
            "folders; the index is damaged: unzip ADE20K_2021_17_01.zip again"
        )
    return index


def _load_ade847_vocabulary(vocab_dir: str | os.PathLike | None) -> Vocabulary:
    hint = (
        "put CAT-Seg's datasets/ade847.json (a JSON list of the 847 class strings) into {where} "
        "(set $DPSEG_VOCAB_DIR or pass --vocab-dir to use another directory)"
    )
    if vocab_dir is not None:
        for suffix in (".json", ".txt"):
            candidate = Path(vocab_dir) / f"ade847{suffix}"
            if candidate.is_file():
                vocab = read_vocabulary_file(candidate)
                break
        else:
            where = repr(str(vocab_dir))
            raise DatasetError(f"ade847: no ade847.json in {where}; {hint.format(where=where)}")
    else:
        try:
            vocab = load_vocabulary("ade847")
        except VocabularyError as e:
            where = repr(os.environ.get("DPSEG_VOCAB_DIR", "vocab"))
            raise DatasetError(
                f"ade847: the 847-class vocabulary is missing ({e}); {hint.format(where=where)}"
            ) from e
    if len(vocab) != 847:
        raise DatasetError(
            f"ade847: vocabulary {vocab.source!r} has {len(vocab)} classes, expected 847; "
            "use CAT-Seg's datasets/ade847.json"
        )
    return vocab


def _entry_key(entry: str) -> str:
    # "building, edifice" and "building,edifice" are the same class string.
    return ", ".join(s.strip() for s in entry.split(",") if s.strip())


def ade847_lut(objectnames: Iterable[str], vocabulary: Vocabulary) -> np.ndarray:
    """(6656,) uint16: ADE20K class-mask value -> ade847 label, 65535 for every other class.

    Mask value c is ``objectnames[c - 1]`` (0 = unlabeled); a class is one of the 847 when its
    name string equals a vocabulary entry (``"building, edifice"``).
    """
    objectnames = [str(n) for n in objectnames]
    wanted = {_entry_key(e): k for k, e in enumerate(vocabulary.entries)}
    lut = np.full(_ADE_MASK_VALUES, IGNORE_U16, dtype=np.uint16)
    found: set[int] = set()
    for i, name in enumerate(objectnames):
        k = wanted.get(_entry_key(name))
        if k is not None and i + 1 < _ADE_MASK_VALUES:
            lut[i + 1] = k
            found.add(k)
    absent = [vocabulary.entries[k] for k in range(len(vocabulary)) if k not in found]
    if absent:
        raise DatasetError(
            f"ade847: {len(absent)} of the {len(vocabulary)} classes of {vocabulary.source!r} are "
            f"not among the {len(objectnames)} objectnames of index_ade20k.pkl: "
            f"{'; '.join(absent[:10])}{' ...' if len(absent) > 10 else ''}. Use the "
            "ADE20K_2021_17_01 release with CAT-Seg's ade847.json"
        )
    return lut


def ade847_size(height: int, width: int, max_side: int = ADE847_MAX_SIDE) -> tuple[int, int]:
    """Output (height, width): the shorter side brought down to ``max_side`` (MaskFormer's rule,
    Python ``round`` on the other side); images already small enough keep their size."""
    if width >= height > max_side:
        return max_side, round(width / float(height) * max_side)
    if height >= width > max_side:
        return round(height / float(width) * max_side), max_side
    return height, width


def resize_nearest(label: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2.INTER_NEAREST, as MaskFormer resizes ADE20K labels: source index floor(i * in / out)."""
    # cv2 multiplies by the inverse of the double scale out / in; the same double arithmetic is
    # used so that the chosen pixels are identical.
    ys = np.minimum(
        np.floor(np.arange(height) * (1.0 / (height / label.shape[0]))), label.shape[0] - 1
    )
    xs = np.minimum(
        np.floor(np.arange(width) * (1.0 / (width / label.shape[1]))), label.shape[1] - 1
    )
    return label[ys.astype(np.int64)[:, None], xs.astype(np.int64)[None, :]]


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbours and weights of cv2.INTER_LINEAR along one axis (pixel centres aligned)."""
    pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(pos).astype(np.int64)
    w = pos - i0
    w[i0 < 0] = 0.0  # before the first centre: the first pixel (cv2 clamps likewise)
    i0 = np.maximum(i0, 0)
    w[i0 >= n_in - 1] = 0.0  # after the last centre: the last pixel
    i0 = np.minimum(i0, n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), w.astype(np.float32)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2.INTER_LINEAR (no antialiasing, as MaskFormer resizes ADE20K images) for uint8
    (H, W) or (H, W, C); cv2 rounds in fixed point, so values may differ from it by 1."""
    y0, y1, wy = _linear_taps(image.shape[0], height)
    x0, x1, wx = _linear_taps(image.shape[1], width)
    img = image.astype(np.float32)
    wy = wy.reshape((-1,) + (1,) * (img.ndim - 1))
    rows = img[y0] * (1 - wy) + img[y1] * wy
    wx = wx.reshape((1, -1) + (1,) * (img.ndim - 2))
    out = rows[:, x0] * (1 - wx) + rows[:, x1] * wx
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _read_ade_class_mask(path: Path) -> np.ndarray:
    """(H, W) int32 class mask of an ADE20K ``*_seg.png``: R // 10 * 256 + G."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("RGB", "RGBA"):
                raise DatasetError(
                    f"{str(path)!r} is a {im.mode!r} image; an ADE20K *_seg.png is RGB (class = "
                    "R // 10 * 256 + G): use the file from ADE20K_2021_17_01.zip"
                )
            seg = np.asarray(im)
    except (OSError, SyntaxError) as e:
        raise DatasetError(
            f"cannot read {str(path)!r} ({e}); unzip ADE20K_2021_17_01.zip again"
        ) from e
    return (seg[..., 0].astype(np.int32) // 10) * 256 + seg[..., 1].astype(np.int32)


def _ade847_job(image: Path, seg: Path, out_image: Path, out_label: Path, lut: np.ndarray) -> Job:
    def job() -> str:
        if out_image.is_file() and out_label.is_file():
            return "skipped"
        mask = _read_ade_class_mask(seg)
        try:
            with Image.open(image) as im:
                pixels = np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError) as e:
            raise DatasetError(
                f"cannot read {str(image)!r} ({e}); unzip ADE20K_2021_17_01.zip again"
            ) from e
        if pixels.shape[:2] != mask.shape:
            raise DatasetError(
                f"{str(image)!r} is {pixels.shape[1]}x{pixels.shape[0]} but its {seg.name} is "
                f"{mask.shape[1]}x{mask.shape[0]}; unzip ADE20K_2021_17_01.zip again"
            )
        h, w = ade847_size(*mask.shape)
        if (h, w) != mask.shape:
            pixels = resize_bilinear(pixels, h, w)
            mask = resize_nearest(mask, h, w)
        # Label first, image last: an image on disk always has its label.
        save_image_atomic(Image.fromarray(lut[mask]), out_label, "TIFF")
        save_image_atomic(Image.fromarray(pixels), out_image, "JPEG", quality=ADE_JPEG_QUALITY)
        return "written"

    return job


def _plan_ade847(root: Path, vocab_dir: str | os.PathLike | None) -> _Plan:
    base = root / _ADE_FULL
    index_path = base / "index_ade20k.pkl"
    _require_file(index_path, root, "ADE20K_2021_17_01/index_ade20k.pkl", "ade847")
    index = load_ade20k_index(index_path)
    lut = ade847_lut(index["objectnames"], _load_ade847_vocabulary(vocab_dir))
    out_images = base / "images_detectron2" / "validation"
    out_labels = base / "annotations_detectron2" / "validation"
    plan = _Plan("ade847 images", [out_images, out_labels], [])
    for folder, filename in zip(index["folder"], index["filename"]):
        filename = str(filename)
        if "_val_" not in filename:  # the benchmark is the 2000 validation images
            continue
        # Folders are relative to the directory that holds ADE20K_2021_17_01, i.e. the root.
        image = root / str(folder) / filename
        stem = Path(filename).stem
        seg = image.with_name(f"{stem}_seg.png")
        if image.is_file() and seg.is_file():
            plan.jobs.append(
                _ade847_job(image, seg, out_images / f"{stem}.jpg", out_labels / f"{stem}.tif", lut)
            )
        else:
            plan.missing.append(_rel(image if not image.is_file() else seg, root))
    if not plan.jobs and not plan.missing:
        raise DatasetError(
            f"ade847: {str(index_path)!r} lists no validation image (no filename contains "
            "'_val_'); use the index_ade20k.pkl of ADE20K_2021_17_01.zip"
        )
    return plan


# ---------------------------------------------------------------------------------------------
# running


def _run_jobs(jobs: list[Job], description: str, progress: bool, workers: int) -> Counter:
    """Run jobs with a progress bar; threads overlap the PNG/TIFF codecs, which release the GIL."""
    from data.progress import ProgressBar

    counts: Counter = Counter()
    with ProgressBar(description, len(jobs), unit="files", enabled=progress) as bar:
        if workers <= 1:
            for job in jobs:
                counts[job()] += 1
                bar.advance()
            return counts
        pending: set[Future] = set()
        it = iter(jobs)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # A bounded window of futures: 118k COCO files do not all wait in memory.
            for job in it:
                pending.add(pool.submit(job))
                if len(pending) >= 4 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        counts[f.result()] += 1  # re-raises a job's DatasetError
                        bar.advance()
            for f in pending:
                counts[f.result()] += 1
                bar.advance()
    return counts


def prepare_dataset(
    name: str,
    root: str | os.PathLike,
    progress: bool = True,
    vocab_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> dict:
    """Convert the official download of ``name`` under ``root`` into the detectron2 layout.

    Args:
        name: one of :data:`PREPARABLE`.
        root: the datasets root (``$DETECTRON2_DATASETS``) that holds the unpacked download.
        progress: show a progress bar.
        vocab_dir: where ``ade847.json`` is (default ``$DPSEG_VOCAB_DIR`` or ``./vocab``).
        workers: threads (default min(8, CPUs)).

    Returns:
        a summary: ``written`` and ``skipped`` (already converted) file counts, ``missing``
        (listed inputs absent from the download) with up to 10 ``missing_examples``, the
        ``outputs`` folders, ``warnings`` and ``seconds``.

    Raises:
        DatasetError: the download is missing or malformed; the message says what to fetch.
    """
    if name not in PREPARABLE:
        extra = (
            "; `synthetic` is generated by `cli.py data synthetic`" if "synthetic" in name else ""
        )
        raise DatasetError(f"cannot prepare {name!r}: known are {', '.join(PREPARABLE)}{extra}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"datasets root {str(root)!r} does not exist; create it and put the download there "
            f"({RAW_SOURCES[name].replace('<root>', str(root))}), or pass --root / set "
            "$DETECTRON2_DATASETS"
        )
    workers = _default_workers() if workers is None else workers
    if workers < 1:
        raise DatasetError(f"workers={workers}: must be at least 1")
    start = time.perf_counter()
    if name == "coco171":
        plan = _plan_coco171(root)
    elif name == "ade150":
        plan = _plan_ade150(root)
    elif name == "ade847":
        plan = _plan_ade847(root, vocab_dir)
    elif name in ("pc59", "pc459"):
        plan = _plan_pascal_context(root, name)
    elif name == "coco-object":
        plan = _plan_coco_object(root)
    elif name == "cityscapes":
        plan = _plan_cityscapes(root)
    elif name in ("potsdam", "vaihingen"):
        plan = _plan_isprs(root, name)
    elif name == "isaid":
        plan = _plan_isaid(root)
    elif name == "vdd":
        plan = _plan_vdd(root)
    else:
        plan = _plan_voc(root, name)
    if plan.missing:
        plan.warnings.append(
            f"{len(plan.missing)} listed inputs are absent from the download and were skipped "
            f"(e.g. {', '.join(plan.missing[:3])})"
        )
    for out in plan.outputs:
        out.mkdir(parents=True, exist_ok=True)
    counts = _run_jobs(plan.jobs, plan.description, progress, workers)
    return {
        "dataset": name,
        "root": str(root),
        "outputs": [str(p) for p in plan.outputs],
        "written": counts["written"],
        "skipped": counts["skipped"],
        "missing": len(plan.missing),
        "missing_examples": plan.missing[:10],
        "warnings": plan.warnings,
        "notes": plan.notes,
        "seconds": round(time.perf_counter() - start, 2),
    }


# ---------------------------------------------------------------------------------------------
# command line (wired into cli.py as `data prepare`)


PREPARE_HELP = "convert an official benchmark download into the detectron2 layout"


def prepare_options(p) -> None:
    """``data prepare``'s description and options (cli.py's jsonargparse tree adds them)."""
    p.description = (
        "Convert the official download of a benchmark into the detectron2 layout "
        "(docs/design.md §5). Existing outputs are kept: a rerun is a no-op, a killed run resumes."
    )
    p.epilog = "what each dataset needs under --root:\n" + "\n".join(
        f"  {n}: {RAW_SOURCES[n]}" for n in PREPARABLE
    )
    p.formatter_class = type(  # the epilog's lines as written
        "RawDescription", (argparse.RawDescriptionHelpFormatter, p.formatter_class), {}
    )
    p.add_argument("name", metavar="NAME", choices=PREPARABLE, help=", ".join(PREPARABLE))
    p.add_argument(
        "--root", default=None, help="datasets root (default $DETECTRON2_DATASETS or ./datasets)"
    )
    p.add_argument(
        "--vocab-dir",
        default=None,
        help="folder with ade847.json (default $DPSEG_VOCAB_DIR or ./vocab)",
    )
    p.add_argument("--workers", type=int, default=None, help="threads (default min(8, CPUs))")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_prepare(args: argparse.Namespace) -> int:
    """Run :func:`prepare_dataset`; print the summary, or the error and return 2."""
    root = datasets_root(getattr(args, "root", None))
    try:
        s = prepare_dataset(
            args.name,
            root,
            progress=not getattr(args, "quiet", False),
            vocab_dir=getattr(args, "vocab_dir", None),
            workers=getattr(args, "workers", None),
        )
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for warning in s["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{s['dataset']}: {s['written']} written, {s['skipped']} already converted, "
        f"{s['missing']} missing from the download ({s['seconds']} s) -> " + ", ".join(s["outputs"])
    )
    for note in s["notes"]:
        print(note)
    return 0
