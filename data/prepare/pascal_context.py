"""PASCAL-Context (pc59, pc459): the ``trainval/<id>.mat`` LabelMaps of the 5104 validation ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from common.io import save_image_atomic
from common.optional import require
from data.catalog import DatasetError
from data.datasets import refuse_special_file
from data.prepare.common import (
    IGNORE_U8,
    IGNORE_U16,
    Job,
    _Plan,
    _read_ids,
    _rel,
    _require_dir,
    _require_file,
    converter,
    earlier_outputs,
)
from data.vocabulary import load_vocabulary

_VOC10 = Path("VOCdevkit/VOC2010")


def pc459_lut() -> np.ndarray:
    """(460,) uint16: LabelMap value -> label - 1 for 1..459, 0 (unlabeled) -> 65535."""
    lut = np.full(460, IGNORE_U16, dtype=np.uint16)
    lut[1:] = np.arange(459, dtype=np.uint16)
    return lut


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
    refuse_special_file(path, "unpack trainval.tar.gz of PASCAL-Context again")

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
        if (earlier := earlier_outputs(dst)) == "skipped":
            return earlier
        save_image_atomic(Image.fromarray(lut[_read_label_map(src)]), dst, fmt)
        return earlier or "written"

    return job


@converter(
    "pc59",
    "pc459",
    source="trainval.tar.gz of PASCAL-Context (https://cs.stanford.edu/~roozbeh/pascal-context/): "
    "unpack it into <root>/VOCdevkit/VOC2010 (trainval/*.mat and labels.txt); CAT-Seg's "
    "pascalcontext_val.txt into <root>/VOCdevkit/VOC2010; the images come from "
    "VOCtrainval_03-May-2010.tar of PASCAL VOC 2010, unpacked into <root>",
)
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
        if src.exists():  # a pipe or folder too: its job names it
            plan.jobs.append(_mat_job(src, out / f"{image_id}{suffix}", lut, fmt))
        else:
            plan.missing.append(image_id)
    if not (base / "JPEGImages").is_dir():
        plan.warnings.append(
            f"images {_rel(base / 'JPEGImages', root)} are absent: unpack "
            f"VOCtrainval_03-May-2010.tar of PASCAL VOC 2010 into {root}"
        )
    return plan
