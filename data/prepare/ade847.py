"""The full ADE20K release (ade847): the index unpickler, the match with CAT-Seg's 847-class
vocabulary, MaskFormer's resizing."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from common.io import save_image_atomic
from data.catalog import DatasetError
from data.datasets import refuse_special_file
from data.prepare.common import (
    IGNORE_U16,
    Job,
    _Plan,
    _rel,
    _require_file,
    converter,
    earlier_outputs,
)
from data.vocabulary import Vocabulary, VocabularyError, load_vocabulary, read_vocabulary_file

ADE847_MAX_SIDE = 512  # MaskFormer's prepare_ade20k_full_sem_seg.py: shorter side <= 512
ADE_JPEG_QUALITY = 75  # that script saves with PIL's default quality, so do we
_ADE_FULL = Path("ADE20K_2021_17_01")
# An ADE20K mask value is R // 10 * 256 + G with R, G in 0..255, so it is below 26 * 256.
_ADE_MASK_VALUES = (255 // 10 + 1) * 256


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
    refuse_special_file(path, "unzip ADE20K_2021_17_01.zip again")
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
        if (earlier := earlier_outputs(out_label, out_image)) == "skipped":
            return earlier
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
        return earlier or "written"

    return job


@converter(
    "ade847",
    source="ADE20K_2021_17_01.zip, the full ADE20K release (https://ade20k.csail.mit.edu, free "
    "registration): unzip it into <root>; plus CAT-Seg's datasets/ade847.json in the "
    "vocabulary directory ($DPSEG_VOCAB_DIR, default ./vocab)",
)
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
