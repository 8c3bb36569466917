"""The remote-sensing benchmarks of VIP (potsdam, vaihingen, isaid, vdd): mmsegmentation's
converters, reading the official zips in place."""

from __future__ import annotations

import io
import math
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from common.io import save_image_atomic
from data.catalog import DatasetError
from data.prepare.common import (
    IGNORE_U8,
    Job,
    _download,
    _Plan,
    _rel,
    _require_dir,
    converter,
    earlier_outputs,
    whole_image,
)

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
    "2_13",
    "2_14",
    "3_13",
    "3_14",
    "4_13",
    "4_14",
    "4_15",
    "5_13",
    "5_14",
    "5_15",
    "6_13",
    "6_14",
    "6_15",
    "7_13",
)
VAIHINGEN_VAL_AREAS = (
    "area2",
    "area4",
    "area6",
    "area8",
    "area10",
    "area12",
    "area14",
    "area16",
    "area20",
    "area22",
    "area24",
    "area27",
    "area29",
    "area31",
    "area33",
    "area35",
    "area38",
)

ISAID_PATCH = 896  # mmseg's isaid.py: --patch_width = --patch_height = 896
ISAID_OVERLAP = 384  # its --overlap_area: a window every 896 - 384 = 512 pixels
# iSAID's semantic-mask colours (RGB), index = on-disk label (mmseg's isaid.py iSAID_palette and
# iSAIDDataset's order: background, ship, store_tank, ..., plane, Harbor).
ISAID_COLOURS = (
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
)
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
            box = (
                min(x0, width - clip),
                min(y0, height - clip),
                min(x0 + clip, width),
                min(y0 + clip, height),
            )
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
    image on disk always has its label); crops already on disk and whole are kept, and a tile whose
    crops all are is not decoded at all ("skipped"); a damaged crop is written again.
    """

    def job() -> str:
        height, width = _zip_image_size(image, fix)
        if pad is not None:
            height, width = max(height, pad[0]), max(width, pad[1])
        planned = crops(height, width)
        paths = [p for _, label_path, image_path in planned for p in (label_path, image_path)]
        if (earlier := earlier_outputs(*paths)) == "skipped":
            return earlier
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
            if not (label_path.is_file() and whole_image(label_path)):
                crop = np.ascontiguousarray(index[y0:y1, x0:x1])
                save_image_atomic(Image.fromarray(crop), label_path, "PNG")
            if not (image_path.is_file() and whole_image(image_path)):
                crop = np.ascontiguousarray(pixels[y0:y1, x0:x1])
                save_image_atomic(Image.fromarray(crop), image_path, "PNG")
        return earlier or "written"

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


@converter(
    "potsdam",
    "vaihingen",
    source={
        "potsdam": "2_Ortho_RGB.zip and 5_Labels_all_noBoundary.zip of ISPRS Potsdam (on request at "
        "https://www.isprs.org/education/benchmarks/UrbanSemLab/2d-sem-label-potsdam.aspx; "
        "mmsegmentation's dataset docs list mirrors): put both zips, not unpacked, into "
        "<root>/potsdam",
        "vaihingen": "ISPRS_semantic_labeling_Vaihingen.zip and "
        "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip of ISPRS Vaihingen "
        "(on request at https://www.isprs.org/education/benchmarks/UrbanSemLab/"
        "2d-sem-label-vaihingen.aspx): put both zips, not unpacked, into <root>/vaihingen",
    },
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
            return _Plan(
                f"{name} tiles",
                [base / "img_dir" / "val", base / "ann_dir" / "val"],
                [],
                notes=[note],
            )
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


@converter(
    "isaid",
    source="the DOTA-v1.0 val images (part1.zip, https://captain-whu.github.io/DOTA/dataset.html) "
    "into <root>/iSAID/val/images and the iSAID val semantic masks (images.zip of "
    "Semantic_masks, https://captain-whu.github.io/iSAID/dataset.html) into "
    "<root>/iSAID/val/Semantic_masks, zips not unpacked (mmsegmentation's layout)",
)
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
            return _Plan(
                "isaid images",
                [base / "img_dir" / "val", base / "ann_dir" / "val"],
                [],
                notes=[note],
            )
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
                out.append(
                    (
                        (x0, y0, x1, y1),
                        out_labels / f"{label_stem}_{where}{ISAID_MASK_SUFFIX}.png",
                        out_images / f"{stem}_{where}.png",
                    )
                )
        return out

    return crops


@converter(
    "vdd",
    source="VDD (https://github.com/RussRobin/VDD): unzip it into <root>/VDD so that "
    "<root>/VDD/test/src/*.JPG and <root>/VDD/test/gt/*.png exist",
)
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
