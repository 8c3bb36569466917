"""Score saved prediction maps of any method against label maps: ``cli.py eval-masks``.

Predictions and labels are single-channel images matched by file stem (``000123.png`` is scored
against ``000123.png`` or ``000123.tif``): PNG or TIFF, 8- or 16-bit, a palette PNG read as its
indices. The scores are those of :class:`data.evaluator.SemSegMetric` (detectron2's rules), so
a number printed here is comparable with the ones our own evaluation and papers report.

Bad input stops the run with a :class:`~data.catalog.DatasetError` that names the file(s) and the
fix, because a silently skipped or mis-read image changes the score without anyone noticing.
With ``on_bad_sample="skip"`` such samples are left out instead and counted by reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.io import special_file_kind
from data.catalog import IGNORE_INDEX, DatasetError
from data.datasets import read_label

MASK_SUFFIXES = (".png", ".tif", ".tiff")
ON_BAD_SAMPLE = ("error", "skip")
LIST_AT_MOST = 5  # file names listed in a message or a report, per reason
MAX_CLASSES = 65536  # ours: label maps are 8- or 16-bit, so ids stop at 65535

# Why a sample can be left out (on_bad_sample="skip"), and how the report words it.
SKIP_REASONS = {
    "missing_prediction": "no prediction with the label's stem",
    "ambiguous_stem": "several files share the stem (e.g. a.png and a.tif)",
    "unreadable": "file unreadable or not a single-channel label map",
    "size_mismatch": "prediction and label sizes differ",
    "label_out_of_range": "label values outside [0, K) that are not the ignore value",
    "prediction_out_of_range": "prediction values outside [0, K) at labelled pixels",
}


# Single-channel PIL modes: 1/8-bit, palette (its indices are the ids), 16- and 32-bit integer.
class _BadSample(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _index_folder(folder: Path) -> dict[str, list[Path]]:
    """Stem -> the mask files with that stem (more than one is ambiguous)."""
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):  # a pipe or device too: read_label names it
        if p.suffix.lower() in MASK_SUFFIXES and (p.is_file() or special_file_kind(p)):
            found.setdefault(p.stem, []).append(p)
    return found


def listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:LIST_AT_MOST])
    return shown + (f" and {len(names) - LIST_AT_MOST} more" if len(names) > LIST_AT_MOST else "")


def _values(values: np.ndarray, limit: int = 10) -> str:
    distinct = np.unique(values).tolist()
    shown = ", ".join(str(v) for v in distinct[:limit])
    return shown + (f" and {len(distinct) - limit} more" if len(distinct) > limit else "")


def _load_pair(
    pred_path: Path,
    gt_path: Path,
    num_classes: int,
    ignore_values: tuple[int, ...],
    background_from: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(pred, label) as (H, W) int64 arrays, the label's ignore values mapped to IGNORE_INDEX.

    Raises _BadSample with the reason and a message naming the file.
    """
    try:
        label = read_label(gt_path)
    except DatasetError as e:
        raise _BadSample("unreadable", str(e)) from e
    try:
        pred = read_label(pred_path, "prediction")
    except DatasetError as e:
        raise _BadSample("unreadable", str(e)) from e
    if pred.shape != label.shape:
        raise _BadSample(
            "size_mismatch",
            f"{pred_path}: prediction is {pred.shape[0]}x{pred.shape[1]} (H x W) but its label "
            f"{gt_path} is {label.shape[0]}x{label.shape[1]}; save predictions at the label's "
            "resolution",
        )
    ignored = np.isin(label, ignore_values)
    bad = ~ignored & ((label < 0) | (label >= num_classes))
    if bad.any():
        raise _BadSample(
            "label_out_of_range",
            f"{gt_path}: label values {_values(label[bad])} are outside [0, {num_classes}) and "
            f"not the ignore value ({', '.join(map(str, ignore_values))}); check --num-classes "
            "and --ignore-index",
        )
    label = np.where(ignored, IGNORE_INDEX, label)
    scored = pred[~ignored]  # pixels under an ignore label are dropped, whatever their prediction
    if background_from is not None:
        scored = np.minimum(scored, background_from)
    bad = (scored < 0) | (scored >= num_classes)
    if bad.any():
        values = scored[bad]
        hint = "; check --num-classes"
        if np.isin(values, ignore_values).all():
            # A prediction cannot abstain: a K x K confusion matrix has no column for "none".
            hint = (
                "; the ignore value is accepted in predictions only where the label is ignore: "
                "predict a class at every labelled pixel"
            )
        elif background_from is None and (values >= num_classes).all():
            hint += ", or pass --background-from when extra prompts mean background"
        raise _BadSample(
            "prediction_out_of_range",
            f"{pred_path}: prediction values {_values(values)} are outside [0, {num_classes}) at "
            f"{int(bad.sum())} labelled pixels{hint}",
        )
    return pred, label


def evaluate_mask_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    num_classes: int,
    ignore_index: int | Iterable[int],
    class_names: Sequence[str] | None = None,
    on_bad_sample: str = "error",
    progress: bool = True,
    background_from: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score every label map in ``gt_dir`` against the prediction with the same stem.

    Args:
        pred_dir: folder of prediction maps (class ids 0..K-1); files without a label are unused.
        gt_dir: folder of label maps (class ids 0..K-1 or an ignore value).
        num_classes: K.
        ignore_index: the on-disk ignore value(s) of the labels (255 for most benchmarks, 65535
            for ADE-847; PC-459: 459 and 65535), mapped to the evaluator's IGNORE_INDEX.
        class_names: K names, only checked here (the metrics are by class id).
        on_bad_sample: "error" (default) stops at bad input with a DatasetError naming the file;
            "skip" leaves such samples out and counts them by reason in the report.
        progress: show a progress bar.
        background_from: predictions >= this id count as this class (VOC with background).

    Returns:
        (metrics, report): the :func:`data.evaluator.metrics_from_confusion` dict, and a report
        with the folders, file counts, ``skipped`` (reason -> count) and ``skipped_files``
        (reason -> up to 5 file names).
    """
    from data.evaluator import SemSegMetric

    if on_bad_sample not in ON_BAD_SAMPLE:
        raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE}, got {on_bad_sample!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise DatasetError(
            f"--num-classes {num_classes!r}: must be an int >= 1, the number of classes K "
            "(label values 0..K-1, plus the --ignore-index values)"
        )
    if num_classes > MAX_CLASSES:
        raise DatasetError(
            f"--num-classes {num_classes}: must be at most {MAX_CLASSES}; label maps are 8- or "
            "16-bit, so their class ids stop at 65535: give the number of classes K (e.g. 150 "
            "for ADE-150)"
        )
    ignore_values = (ignore_index,) if isinstance(ignore_index, int) else tuple(ignore_index)
    if class_names is not None and len(class_names) != num_classes:
        raise DatasetError(
            f"{len(class_names)} class names for {num_classes} classes; give a vocabulary with "
            f"{num_classes} classes"
        )
    pred_root, gt_root = Path(pred_dir), Path(gt_dir)
    for what, folder in (("prediction", pred_root), ("ground-truth", gt_root)):
        if not folder.is_dir():
            state = "is a file, not a folder" if folder.exists() else "does not exist"
            raise DatasetError(f"{what} folder {str(folder)!r} {state}")
    start = time.perf_counter()
    gts, preds = _index_folder(gt_root), _index_folder(pred_root)
    if not gts:
        raise DatasetError(
            f"no ground-truth files in {str(gt_root)!r}; expected label maps named like "
            f"000123{' or 000123'.join(MASK_SUFFIXES)}"
        )
    skip = on_bad_sample == "skip"
    skipped: dict[str, list[str]] = {}
    first_message: dict[str, str] = {}  # per reason, for the error when nothing could be scored

    def bad(reason: str, names: list[str], message: str) -> None:
        if not skip:
            raise DatasetError(message)
        skipped.setdefault(reason, []).extend(names)
        first_message.setdefault(reason, message)

    # One entry per ground-truth sample, naming the files that share its stem.
    ambiguous_stems = {s for s in gts if len(gts[s]) > 1 or len(preds.get(s, ())) > 1}
    ambiguous = [
        f"{s} (labels: {', '.join(p.name for p in gts[s])}; predictions: "
        f"{', '.join(p.name for p in preds.get(s, [])) or 'none'})"
        for s in sorted(ambiguous_stems)
    ]
    if ambiguous:
        bad(
            "ambiguous_stem",
            ambiguous,
            f"{len(ambiguous)} ground-truth stems match more than one mask file: "
            f"{listing(ambiguous)}; files are matched by stem, so keep one file per stem in "
            "each folder",
        )
    missing = sorted(gts[s][0].name for s in gts if s not in preds and s not in ambiguous_stems)
    if missing:
        bad(
            "missing_prediction",
            missing,
            f"prediction missing for {len(missing)} of {len(gts)} ground-truth files: "
            f"{listing(missing)} (looked in {str(pred_root)!r} for the same stem with "
            f"{', '.join(MASK_SUFFIXES)}); predict every image"
            + ("" if skip else ", or pass --on-bad-sample skip"),
        )
    stems = [s for s in sorted(gts) if s in preds and s not in ambiguous_stems]

    try:
        metric = SemSegMetric(num_classes, IGNORE_INDEX, background_from)
    except (RuntimeError, MemoryError) as e:  # the K x K int64 confusion matrix
        if not isinstance(e, MemoryError) and "alloc" not in str(e):
            raise
        gib = num_classes**2 * 8 / 2**30
        raise DatasetError(
            f"--num-classes {num_classes}: its {num_classes} x {num_classes} confusion matrix "
            f"needs {gib:.1f} GiB, more memory than this machine gives; check --num-classes "
            "(the number of classes K, e.g. 150 for ADE-150)"
        ) from None
    evaluated = 0
    from common.progress import ProgressBar

    # The bar goes to stderr: stdout holds only the scores (or the JSON document).
    with ProgressBar("scoring masks", len(stems), unit="masks", enabled=progress) as bar:
        for stem in stems:
            gt_path, pred_path = gts[stem][0], preds[stem][0]
            try:
                pred, label = _load_pair(
                    pred_path, gt_path, num_classes, ignore_values, background_from
                )
            except _BadSample as e:
                bad(e.reason, [gt_path.name], str(e))
            else:
                metric.update(pred, label)  # (H, W) each
                evaluated += 1
            bar.advance()
    if evaluated == 0:
        counts = "; ".join(
            f"{len(v)} skipped, {SKIP_REASONS[r]}, e.g. {first_message[r]}"
            for r, v in skipped.items()
        )
        raise DatasetError(f"no sample of {str(gt_root)!r} could be scored: {counts}")
    report = {
        "pred_dir": str(pred_root),
        "gt_dir": str(gt_root),
        "ground_truth_files": len(gts),
        "evaluated": evaluated,
        "unmatched_predictions": sum(1 for s in preds if s not in gts),
        "ignore_values": list(ignore_values),
        "skipped": {reason: len(names) for reason, names in skipped.items()},
        "skipped_files": {reason: names[:LIST_AT_MOST] for reason, names in skipped.items()},
        "seconds": round(time.perf_counter() - start, 2),
    }
    return metric.compute(), report
