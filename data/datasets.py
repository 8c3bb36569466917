"""Reading the benchmarks (detectron2 and mmsegmentation layouts) and Hugging Face datasets into
one sample format.

A sample is a dict: ``image`` (H, W, 3) uint8 RGB, ``label`` (H, W) int64 with every on-disk
ignore value mapped to :data:`data.catalog.IGNORE_INDEX` (and, for a spec with mmseg's
``reduce_zero_label``, on-disk class ids 1..K shifted to 0..K-1), ``name`` (the sample id: the
file stem, less a layout suffix such as Cityscapes' ``_leftImg8bit``) and
``vocabulary`` (the name of the class list). Transforms (``data.transforms``) turn it into
tensors.

Bad input (a missing image or label, an image/label size mismatch, label values outside the
vocabulary, an unreadable file, an empty dataset) raises :class:`DatasetError` naming the file
and the fix. With ``on_bad_sample="skip"`` a bad sample comes back as ``{"name", "skip": reason}``
instead, so a loop can count it and go on; :func:`collate` drops such samples into a list.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from common.errors import UnreadableFileError, one_line
from common.optional import require
from data.catalog import (
    IGNORE_INDEX,
    DatasetError,
    DatasetSpec,
    datasets_root,
    get_dataset_spec,
)

BAD_SAMPLE_POLICIES = ("error", "skip")


class UnreadableImageError(UnreadableFileError):
    """An image file that is missing, does not decode, or is a decompression bomb (more pixels
    than PIL's ``Image.MAX_IMAGE_PIXELS`` guard allows). ``reason`` is why, without the path."""

    def __init__(self, path: str | os.PathLike, reason: str, fix: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"image {self.path!r}: {reason}; {fix}")


MAX_PIXELS = 80_000_000
"""The most pixels an input image may have (ours: the largest benchmark images, iSAID's, have up
to about 52 M; an 80 M-pixel RGB image decodes to 240 MB). ``$DPSEG_MAX_PIXELS`` or
``segment --max-pixels`` change it. PIL's own bomb guard (``Image.MAX_IMAGE_PIXELS``, 89 M:
a warning; twice that: an error) stays in force too."""


def max_pixels() -> int:
    raw = os.environ.get("DPSEG_MAX_PIXELS")
    if raw is None:
        return MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        from common.errors import SettingError

        raise SettingError(f"$DPSEG_MAX_PIXELS={raw!r}: give a whole number of pixels >= 1")
    return value


def _rgb(image: Image.Image, path) -> np.ndarray:
    """A decoded image as (H, W, 3) uint8: integer greys of 8 or 16 bits (32-bit ones whose
    values fit 16 bits) scaled from their range, float greys from [0, 1] (or [0, 255]); other
    value ranges refused; anything else through PIL's RGB."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        grey = np.asarray(image, dtype=np.float64)
        top = float(grey.max()) if grey.size else 0.0
        low = float(grey.min()) if grey.size else 0.0
        if mode == "F" and low >= 0 and top <= 1:
            scale = 255.0
        elif low >= 0 and top <= 255 and mode in ("I", "F"):
            scale = 1.0
        elif low >= 0 and top <= 65535 and mode != "F":
            scale = 255.0 / 65535.0
        else:
            raise UnreadableImageError(
                path,
                f"a {mode} grey image with values in [{low:g}, {top:g}], which has no known scale",
                "save it as 8-bit, 16-bit, or floats in [0, 1]",
            )
        grey = np.clip(np.round(grey * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"))


BYTES_PER_PIXEL = 16
"""What segmenting an image holds per pixel at once, about (ours: the decoded RGB, its float32
tensor and the label map and overlay), checked against the free memory so that an image under a
raised --max-pixels that this machine cannot hold is skipped in one line, not killed by the OOM
killer without a word."""


def _free_memory() -> int | None:
    """Bytes of memory available now (Linux's MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _pixels(n: int) -> str:
    """A pixel count as people read it: 80 M, 1.5 M, or 1024 under a million."""
    return f"{n / 1e6:.3g} M" if n >= 1_000_000 else str(n)


def _over_the_limit(size: str, limit: int) -> tuple[str, str]:
    """(reason, fix) for an image of ``size`` pixels over ``limit``."""
    return (
        # every command that reads images has $DPSEG_MAX_PIXELS; only segment has --max-pixels
        # (a probe: `test` advised "segment --max-pixels N", another command's option)
        f"{size} pixels, more than the limit of {_pixels(limit)} ($DPSEG_MAX_PIXELS; segment: "
        "--max-pixels)",
        "resize it, or raise the limit ($DPSEG_MAX_PIXELS=N; for segment, --max-pixels N)",
    )


def pil_guard_follows(limit: int) -> int:
    """``limit``, with PIL's own guard (179 M pixels refused on open) raised to it where the
    user raised it past that guard: their choice."""
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit
    return limit


def _bomb_size(error: BaseException) -> str:
    """The pixel count PIL's DecompressionBombError names, as people read it."""
    import re

    found = re.search(r"\((\d+) pixels\)", str(error))
    return _pixels(int(found.group(1))) if found else one_line(error).rstrip(".")


def _oversized(image: Image.Image, limit: int) -> str | None:
    """``W x H = N`` when an opened image's header gives more pixels than ``limit`` (checked
    before anything is decoded), else None."""
    width, height = image.size
    return f"{width} x {height} = {_pixels(width * height)}" if width * height > limit else None


def _read_within(path, limit: int) -> np.ndarray:
    """read_image's decoding: the pixel count checked from the header first."""
    with Image.open(path) as image:
        size = _oversized(image, limit)
        if size is not None:
            raise UnreadableImageError(path, *_over_the_limit(size, limit))
        width, height = image.size
        need, free = width * height * BYTES_PER_PIXEL, _free_memory()
        if free is not None and need > free:  # a limit raised past what this machine holds
            raise UnreadableImageError(
                path,
                f"{width} x {height} pixels would need about {need / 2**30:.1f} GiB to decode and "
                f"segment, more than the {free / 2**30:.1f} GiB free here",
                "resize it, or segment it on a machine with more memory",
            )
        return _rgb(ImageOps.exif_transpose(image), path)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB, EXIF orientation applied (as detectron2's ``read_image``); 16-bit and
    float grey images are scaled from their range (:func:`_rgb`).

    Raises:
        UnreadableImageError: (a user error, also a ValueError) the file is missing, is not an
            image PIL can decode, has more pixels than :data:`MAX_PIXELS` (checked from its
            header, before decoding) or PIL's decompression-bomb limit; the message names the
            file, the reason and the fix, on one line.
    """
    limit = pil_guard_follows(max_pixels())
    if os.path.exists(path) and not os.path.isfile(path):  # a pipe would block the open forever
        raise UnreadableImageError(
            path, "not a regular file (a folder, pipe or device)", "give an image file"
        )
    try:
        with warnings.catch_warnings():
            # our limit is checked from the header (_read_within): PIL's warning between its
            # two limits (89 M and 179 M pixels) would only be noise on stderr
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _read_within(path, limit)
    except Image.DecompressionBombError as e:  # PIL's guard, on open: before our header check
        raise UnreadableImageError(path, *_over_the_limit(_bomb_size(e), limit)) from None
    except UnidentifiedImageError:
        raise UnreadableImageError(
            path, "not an image PIL can decode", "give a PNG, JPEG, TIFF or other picture"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        if isinstance(e, UnreadableImageError):
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e)
        if "MAX_TEXT_" in reason:  # MAX_TEXT_CHUNK, MAX_TEXT_MEMORY
            raise UnreadableImageError(  # PIL's own guard against huge PNG metadata
                path,
                "its PNG metadata (text chunks) is larger than PIL reads",
                "save the picture again without its metadata (e.g. `convert IN -strip OUT`)",
            ) from None
        raise UnreadableImageError(
            path, f"cannot read it ({reason})", "give a readable PNG, JPEG, TIFF or other picture"
        ) from None


LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")
"""PIL modes that hold one class id per pixel (palette PNGs read as their indices)."""


def refuse_special_file(path: str | os.PathLike, fix: str, what: str = "") -> None:
    """A pipe, device, folder or link to nowhere where a dataset file belongs: one
    :class:`DatasetError` naming it (``what``: how to call the file) and ``fix``; a pipe would
    block the read forever."""
    from common.io import special_file_kind

    kind = special_file_kind(path)
    if kind is not None:
        raise DatasetError(
            f"{what + ' ' if what else ''}{str(path)!r} is {kind}, not a file; {fix}"
        )


def read_label(path: str | os.PathLike, what: str = "label") -> np.ndarray:
    """(H, W) int64 label ids as stored: palette PNGs give indices, 16-bit TIFFs their values.

    The one reader of label and prediction maps (datasets, ``data stats``, ``eval-masks``);
    ``what``: what messages call the file (eval-masks' ``prediction``).

    Raises:
        DatasetError: the file cannot be read, or holds colours rather than class ids.
    """
    refuse_special_file(path, "replace it with the map", what)
    limit = pil_guard_follows(max_pixels())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # ours is below
            with Image.open(path) as image:
                mode, bands = image.mode, len(image.getbands())
                size = _oversized(image, limit)  # from the header, before decoding (a probe)
                if size is not None:
                    raise DatasetError(
                        f"{what} {str(path)!r}: {'; '.join(_over_the_limit(size, limit))}"
                    )
                array = np.asarray(image) if mode in LABEL_MODES else None
    except DatasetError:  # ours, above: not wrapped in "cannot read it" (a probe: nested)
        raise
    except Image.DecompressionBombError as e:  # PIL's guard, on open (twice its 89 M pixels)
        reason = "; ".join(_over_the_limit(_bomb_size(e), limit))
        raise DatasetError(f"{what} {str(path)!r}: {reason}") from None
    except (OSError, UnidentifiedImageError, ValueError) as e:
        said = str(e).replace(f" {str(path)!r}", "").replace(f" {path}", "")  # named once
        raise DatasetError(
            f"cannot read {what} {str(path)!r} as an image ({said}; empty, cut short or not a "
            "picture): replace it with the map, a single-channel PNG or 16-bit TIFF of class ids"
        ) from e
    if array is None or array.ndim != 2:
        raise DatasetError(
            f"{what} {str(path)!r} has mode {mode} ({bands} channels), and mode {mode!r} is not a "
            "label map: save class ids as a single-channel PNG (8-bit, 16-bit or palette) or a "
            "16-bit TIFF, not colours"
        )
    return array.astype(np.int64)


def map_label(
    raw: np.ndarray,
    num_classes: int,
    ignore_values: tuple[int, ...],
    where: str,
    offset: int = 0,
) -> np.ndarray:
    """On-disk ids -> internal ids: ignore values to IGNORE_INDEX; others must be in
    [offset, offset + K) and become value - offset (offset 1: mmseg's reduce_zero_label, see
    :attr:`data.catalog.DatasetSpec.label_offset`)."""
    label = raw.astype(np.int64, copy=True)
    ignored = np.isin(label, ignore_values)
    bad = (~ignored) & ((label < offset) | (label >= num_classes + offset))
    if bad.any():
        values = np.unique(label[bad])
        shown = ", ".join(map(str, values[:10])) + (" ..." if len(values) > 10 else "")
        stored = f", stored as {offset}..{num_classes - 1 + offset}" if offset else ""
        raise DatasetError(
            f"{where}: label values {shown} are outside the {num_classes} classes of the "
            f"vocabulary (ignore values: {list(ignore_values)}{stored}); check that the labels "
            "were prepared for this dataset (cli.py data prepare) or pass --on-bad-sample skip"
        )
    if offset:
        label -= offset
    label[ignored] = IGNORE_INDEX
    return label


@dataclass(frozen=True)
class SampleFiles:
    name: str  # sample id: the file stem less the spec's image/label id suffix
    image: Path
    label: Path


def how_to_get(spec: DatasetSpec, root: Path) -> str:
    """The fix for a missing dataset: its `cli.py data prepare` command, or what to unpack. A
    generated set that is partly there is made again with the options its ``meta.json``
    records (a rerun with other options is refused; found by a probe)."""
    how = spec.prepare.replace("DIR", str(root)) + _recorded_options(spec, root)
    return f"Prepare it with `{how}`" if how.startswith("cli.py") else f"To get it, {how}"


def _recorded_options(spec: DatasetSpec, root: Path) -> str:
    """`` --train 24 --val 6 ...``: the options a generated set's meta.json records, if any."""
    meta = spec.image_root(root).parent.parent / "meta.json"
    if not spec.prepare.startswith(("cli.py data toy", "cli.py data synthetic")):
        return ""
    try:
        config = json.loads(meta.read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if not isinstance(config, dict):
        return ""
    flags = {"train_images": "--train", "val_images": "--val", "test_images": "--test"}
    flags.update(size="--size", seed="--seed")
    return "".join(f" {flag} {config[key]}" for key, flag in flags.items() if key in config)


def _scan(
    folder: Path, suffixes: tuple[str, ...], id_suffix: str, spec: DatasetSpec
) -> dict[str, Path]:
    """{sample id: path} of the files in folder with one of the suffixes (and the id suffix)."""
    found: dict[str, Path] = {}
    paths = sorted(folder.rglob("*")) if spec.recursive else folder.iterdir()
    for p in paths:
        if p.name.startswith(".") or p.suffix.lower() not in suffixes:
            continue
        key = p.stem
        if id_suffix:
            if not key.endswith(id_suffix):
                continue
            key = key[: -len(id_suffix)]
        if spec.recursive and key in found:
            # The id is the sample's name, and predictions are written as <name>.png: it must
            # be unique across the nested folders.
            raise DatasetError(
                f"dataset {spec.name!r}: {str(found[key])!r} and {str(p)!r} have the same "
                f"sample id {key!r}; remove the stray copy under {str(folder)!r}"
            )
        found[key] = p
    return found


def read_split_ids(path: Path) -> list[str]:
    """The ids of a split file (one per line, blank lines ignored), sorted and unique."""
    ids = {line.strip() for line in path.read_text(encoding="utf-8").splitlines()} - {""}
    if not ids:
        raise DatasetError(f"split file {str(path)!r} lists no image ids; expected one per line")
    return sorted(ids)


def index_files(spec: DatasetSpec, root: Path) -> tuple[list[SampleFiles], dict]:
    """Pair images and labels by sample id; returns the pairs and what did not pair.

    The id is the file stem without the spec's ``image_id_suffix`` / ``label_id_suffix``
    (``frankfurt_000000_000294`` pairs ``..._leftImg8bit.png`` with
    ``..._gtFine_labelTrainIds.png``). The split is, in order: the ids of ``split_file``; else
    every label file (``index_by="labels"``); else every image.
    """
    image_root, label_root = spec.image_root(root), spec.label_root(root)
    if Path(root).is_file():  # found by a probe: "prepare it under the file" could not be done
        raise DatasetError(
            f"dataset {spec.name!r}: the datasets root {str(root)!r} is a file, not a folder; "
            "give the folder that holds the datasets (--root or $DETECTRON2_DATASETS)"
        )
    for what, folder in (("images", image_root), ("labels", label_root)):
        if not folder.is_dir():
            raise DatasetError(
                f"dataset {spec.name!r}: the {what} folder {str(folder)!r} does not exist. "
                f"{how_to_get(spec, root)} (the datasets root: --root, or --data.root for "
                f"fit and test, or ${'DETECTRON2_DATASETS'}; now {str(root)!r})"
            )
    _check_generation_finished(spec, image_root, root)
    split = spec.split_path(root)
    if split is not None and not split.is_file():
        raise DatasetError(
            f"dataset {spec.name!r}: the split file {str(split)!r} (the ids of the split, one "
            f"per line) does not exist. {how_to_get(spec, root)}"
        )
    images = _scan(image_root, spec.image_suffixes, spec.image_id_suffix, spec)
    labels = _scan(label_root, (spec.label_suffix,), spec.label_id_suffix, spec)
    if split is not None:
        keys = read_split_ids(split)
        missing_images = [k for k in keys if k not in images]
        missing_labels = [k for k in keys if k not in labels]
    elif spec.index_by == "labels":
        keys = sorted(labels)
        missing_images = [k for k in keys if k not in images]
        missing_labels = []
    else:
        keys = sorted(images)
        missing_labels = [k for k in keys if k not in labels]
        missing_images = [k for k in labels if k not in images]
    pairs = [SampleFiles(k, images[k], labels[k]) for k in keys if k in images and k in labels]
    return pairs, {"missing_images": sorted(missing_images), "missing_labels": missing_labels}


def _check_generation_finished(spec: DatasetSpec, image_root: Path, root: Path) -> None:
    """A generated dataset (``cli.py data toy|synthetic``: ``meta.json`` beside ``images/``)
    whose generation was cut short is refused, not read in part."""
    meta = image_root.parent.parent / "meta.json"
    if meta.is_file():
        try:
            complete = json.loads(meta.read_text()).get("complete", True)
        except (ValueError, AttributeError):
            complete = True  # not ours to judge: the files are checked as they are read
        if complete is False:
            prepare = (spec.prepare or "").replace("DIR", str(root))
            raise DatasetError(
                f"dataset {spec.name!r}: its generation into {str(meta.parent)!r} was "
                f"interrupted ({str(meta)!r} says complete: false); run the command that made it "
                f"again (`{prepare}`, with the same options) to finish it: it keeps the images "
                "already written"
            )


def _listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


class SegmentationFolder:
    """One benchmark split in its on-disk layout (``data.catalog.DATASETS``).

    Args:
        spec: a dataset name (``ade150``, ``coco171:train``, ...) or a DatasetSpec.
        root: the datasets root (default ``$DETECTRON2_DATASETS`` or ``./datasets``).
        on_bad_sample: ``error`` (default) or ``skip``.
        transform: called on each good sample dict (e.g. ``data.transforms``).
        limit: use only the first N samples (quick checks).
    """

    def __init__(
        self,
        spec: str | DatasetSpec,
        root: str | os.PathLike | None = None,
        on_bad_sample: str = "error",
        transform: Callable[[dict], dict] | None = None,
        limit: int | None = None,
    ):
        if on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"on_bad_sample={on_bad_sample!r}: use one of {BAD_SAMPLE_POLICIES}")
        self.spec = get_dataset_spec(spec) if isinstance(spec, str) else spec
        self.root = datasets_root(root)
        self.on_bad_sample = on_bad_sample
        self.transform = transform
        self.files, self.unpaired = index_files(self.spec, self.root)
        if limit is not None:
            self.files = self.files[:limit]
        problems = []
        split = self.spec.split_path(self.root)
        listed = f"ids listed in {str(split)!r}" if split is not None else None
        if self.unpaired["missing_labels"]:
            problems.append(
                f"{len(self.unpaired['missing_labels'])} {listed or 'images'} have no label file "
                f"({_listing(self.unpaired['missing_labels'])}) in {str(self.spec.label_root(self.root))!r}"
            )
        if self.unpaired["missing_images"]:
            problems.append(
                f"{len(self.unpaired['missing_images'])} {listed or 'labels'} have no image "
                f"({_listing(self.unpaired['missing_images'])}) in {str(self.spec.image_root(self.root))!r}"
            )
        if problems and on_bad_sample == "error":
            how = self.spec.prepare.replace("DIR", str(self.root))
            fix = f"Make the missing files again ({how})" if split else "Re-run the preparation"
            raise DatasetError(
                f"dataset {self.spec.name!r}: "
                + "; ".join(problems)
                + f". {fix}, or pass --on-bad-sample skip to evaluate the rest"
            )
        if not self.files:
            raise DatasetError(
                f"dataset {self.spec.name!r} under {str(self.root)!r} has no image with a label "
                f"(images in {str(self.spec.image_root(self.root))!r}, labels "
                f"*{self.spec.label_suffix} in {str(self.spec.label_root(self.root))!r})"
            )

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> dict:
        """The raw sample (no transform); raises DatasetError for a bad one."""
        files = self.files[index]
        try:
            image = read_image(files.image)
        except UnreadableImageError as e:  # names the file and the reason
            raise DatasetError(f"{e}") from e
        raw = read_label(files.label)
        if raw.shape != image.shape[:2]:
            raise DatasetError(
                f"{files.name}: image {str(files.image)!r} is {image.shape[1]}x{image.shape[0]} "
                f"but its label {str(files.label)!r} is {raw.shape[1]}x{raw.shape[0]} (W x H); "
                "re-run the preparation for this file"
            )
        label = map_label(
            raw,
            self.spec.num_classes,
            self.spec.ignore_values,
            str(files.label),
            offset=self.spec.label_offset,
        )
        return {
            "image": image,
            "label": label,
            "name": files.name,
            "vocabulary": self.spec.vocabulary,
        }

    def __getitem__(self, index: int) -> dict:
        try:
            sample = self.load(index)
        except DatasetError as e:
            if self.on_bad_sample == "error":
                raise
            return {"name": self.files[index].name, "skip": str(e)}
        return self.transform(sample) if self.transform else sample


def collate(samples: list[dict]) -> dict:
    """Batch good samples (stacking tensors of equal shape, else lists); bad ones go to "skipped"."""
    import torch

    good = [s for s in samples if "skip" not in s]
    batch: dict = {"skipped": [(s["name"], s["skip"]) for s in samples if "skip" in s]}
    if not good:
        return batch
    for key in good[0]:
        values = [s[key] for s in good]
        same_shape = all(isinstance(v, torch.Tensor) and v.shape == values[0].shape for v in values)
        batch[key] = torch.stack(values) if same_shape else values
    return batch


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets


class HFSegmentationDataset:
    """A Hugging Face dataset with an image column and a mask column, as dpseg samples.

    Args:
        source: a folder saved with ``save_to_disk``, a folder or file of parquet files, or a
            hub dataset name.
        vocabulary: the class list the mask ids refer to (a vocabulary name, file or inline list).
        split: the split to read (hub and parquet sources).
        image_column, mask_column: column names.
        ignore_values: mask values that mean "not evaluated".
        rank, world_size: this process's shard under DDP (``datasets``' split_dataset_by_node);
            default: from torch.distributed when it is initialised.
    """

    def __init__(
        self,
        source: str,
        vocabulary: str,
        split: str = "validation",
        image_column: str = "image",
        mask_column: str = "mask",
        ignore_values: tuple[int, ...] = (255,),
        rank: int | None = None,
        world_size: int | None = None,
        transform: Callable[[dict], dict] | None = None,
    ):
        split_dataset_by_node = require(
            "datasets.distributed", "a Hugging Face dataset source"
        ).split_dataset_by_node

        from data.vocabulary import load_vocabulary

        self.vocab = load_vocabulary(vocabulary)
        self.vocabulary = vocabulary
        self.ignore_values = tuple(ignore_values)
        self.transform = transform
        dataset = _load_hf(source, split)
        for column in (image_column, mask_column):
            if column not in dataset.column_names:
                raise DatasetError(
                    f"Hugging Face dataset {source!r} has no column {column!r} (columns: "
                    f"{', '.join(dataset.column_names)}); pass --image-column/--mask-column"
                )
        self.image_column, self.mask_column = image_column, mask_column
        if rank is None or world_size is None:
            rank, world_size = _dist_rank_world()
        if world_size > 1:
            dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
        self.dataset = dataset
        self.source = source

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        row = self.dataset[index]
        image = np.asarray(ImageOps.exif_transpose(row[self.image_column]).convert("RGB"))
        raw = np.asarray(row[self.mask_column]).astype(np.int64)
        where = f"{self.source}[{index}]"
        if raw.ndim != 2:
            raise DatasetError(f"{where}: mask has shape {raw.shape}; expected (H, W) class ids")
        if raw.shape != image.shape[:2]:
            raise DatasetError(f"{where}: image {image.shape[:2]} and mask {raw.shape} differ")
        label = map_label(raw, len(self.vocab), self.ignore_values, where)
        sample = {"image": image, "label": label, "name": str(index), "vocabulary": self.vocabulary}
        return self.transform(sample) if self.transform else sample


def _load_hf(source: str, split: str):
    datasets = require("datasets", "a Hugging Face dataset source")

    path = Path(source)
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        if split not in loaded:
            raise DatasetError(f"{source!r} has splits {list(loaded)}, not {split!r}; pass --split")
        return loaded[split]
    if path.is_dir() and (path / "state.json").is_file():  # a Dataset saved with save_to_disk
        return datasets.load_from_disk(str(path))
    if path.exists():
        files = [str(p) for p in sorted(path.rglob("*.parquet"))] if path.is_dir() else [str(path)]
        if not files:
            raise DatasetError(f"{source!r} holds neither a saved dataset nor parquet files")
        return datasets.load_dataset("parquet", data_files=files, split="train")
    try:
        return datasets.load_dataset(source, split=split)
    except Exception as e:  # the hub client raises many types; one clear message instead
        raise DatasetError(
            f"cannot load the Hugging Face dataset {source!r} (split {split!r}): {e}. Offline, "
            "download it elsewhere and pass the folder (save_to_disk or parquet files)"
        ) from e


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
