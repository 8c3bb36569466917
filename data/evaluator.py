"""Semantic-segmentation scores exactly as detectron2's ``SemSegEvaluator`` computes them (docs/design.md §5).

One K x K confusion matrix (rows ground truth, columns prediction) is accumulated over the whole
dataset and, under DDP, summed across processes; every score is derived from it only at the end,
so the result does not depend on how images were split between ranks or batches.

The rules are detectron2's current ones (``evaluation/sem_seg_evaluation.py``):

- pixels whose label is the ignore value are dropped: they count neither as ground truth nor as a
  prediction (detectron2 maps them to an extra row K and slices that row off);
- a class is counted in mIoU and mACC only when it has ground-truth pixels, even if it was
  predicted (its false positives still lower nobody's IoU but its own, which is then not counted);
- fwIoU weights each counted class's IoU by its share of ground-truth pixels; pACC is the share of
  labelled pixels predicted right.

With ``allow_unassigned`` (VIP's low-confidence pixels left unlabelled), a prediction equal to the
ignore value at a labelled pixel is "no class": it counts against its ground-truth class (a
miss, in the union) and as nobody's prediction (no false positive), as mmsegmentation's
``IoUMetric`` scores the reference code's 255. Such pixels are counted per ground-truth class in
an ``unassigned`` state next to the confusion matrix.

Scores are fractions in [0, 1]; :func:`format_metrics` prints percentages as papers report them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from common.errors import SettingError, check_output_folder
from common.io import save_figure_atomic, write_text_atomic
from common.optional import available
from data.catalog import IGNORE_INDEX

log = logging.getLogger(__name__)

CHART_ALL_NAMES_UP_TO = 40
"""Up to this many classes the IoU chart names every bar; above, the 10 worst and 10 best."""


def as_label_tensor(x: torch.Tensor | np.ndarray, what: str = "labels") -> torch.Tensor:
    """An integer label map, (H, W) or (B, H, W), as an int64 tensor (numpy arrays accepted).

    Floating-point input is refused rather than rounded: a score map given by mistake (for
    instance (B, K, H, W) logits) would otherwise be scored as garbage without a word.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch tensor or numpy array, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(
            f"{what} must hold integer class ids, got dtype {x.dtype} with shape "
            f"{tuple(x.shape)}; for scores of shape (B, K, H, W) take .argmax(1) first"
        )
    if x.dim() not in (2, 3):
        raise ValueError(
            f"{what} must have shape (H, W) or (B, H, W), got {tuple(x.shape)}; for scores of "
            "shape (B, K, H, W) take .argmax(1) first"
        )
    return x.long()


def _describe_values(values: torch.Tensor, limit: int = 10) -> str:
    """'3, 7 and 255' style listing of the distinct values (at most ``limit``)."""
    distinct = torch.unique(values).tolist()
    shown = ", ".join(str(v) for v in distinct[:limit])
    more = f" and {len(distinct) - limit} more" if len(distinct) > limit else ""
    return f"{shown}{more}"


class SemSegMetric(Metric):
    """The detectron2 semantic-segmentation evaluator as a torchmetrics ``Metric``.

    State: ``confmat``, an int64 (K, K) tensor, rows ground truth, columns prediction, with
    ``dist_reduce_fx="sum"``: Lightning/DDP sums it across processes before :meth:`compute`.

    Args:
        num_classes: K, label values 0..K-1 are classes.
        ignore_index: the label value that is not evaluated (:data:`IGNORE_INDEX`, -1, as the
            dataset readers produce).
        background_from: for VOC with background (21 classes scored with 59 prompts), every
            prediction >= this id counts as this id (the background class). None: off.
        allow_unassigned: predictions equal to ``ignore_index`` are "no class" (module
            docstring) instead of an error.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False  # update() never reads the state it accumulates

    confmat: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        background_from: int | None = None,
        allow_unassigned: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise SettingError(
                f"--num-classes {num_classes!r}: must be an int >= 1, the number of classes "
                "(label values 0..K-1; e.g. 150 for ADE-150)"
            )
        if 0 <= ignore_index < num_classes:
            raise SettingError(
                f"ignore_index {ignore_index} is a class id (0..{num_classes - 1}); use a value "
                f"outside [0, {num_classes}) such as {IGNORE_INDEX}"
            )
        if background_from is not None and not 0 <= background_from < num_classes:
            raise SettingError(
                f"background_from {background_from} (--background-from): must be a class id in "
                f"[0, {num_classes}) "
                f"(the background class, e.g. 20 for VOC with background's 21 classes), or "
                "left out"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.background_from = background_from
        self.allow_unassigned = allow_unassigned
        self.add_state(
            "confmat",
            default=torch.zeros(num_classes, num_classes, dtype=torch.int64),
            dist_reduce_fx="sum",
        )
        self.add_state(
            "unassigned",
            default=torch.zeros(num_classes, dtype=torch.int64),
            dist_reduce_fx="sum",
        )

    def update(self, preds: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add one batch.

        Args:
            preds: (H, W) or (B, H, W) predicted class ids (e.g. ``logits.argmax(1)``).
            target: the same shape, label ids 0..K-1 or ``ignore_index``.
        """
        preds = as_label_tensor(preds, "preds").to(self.confmat.device)
        target = as_label_tensor(target, "target").to(self.confmat.device)
        if preds.shape != target.shape:
            raise ValueError(
                f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape; "
                "upsample the predictions to the label's size before scoring"
            )
        k = self.num_classes
        keep = target != self.ignore_index
        gt = target[keep]  # (N,) the labelled pixels only: ignore is neither gt nor prediction
        pred = preds[keep]  # (N,)
        if self.background_from is not None:
            pred = pred.clamp(max=self.background_from)
        bad_gt = (gt < 0) | (gt >= k)
        if bool(bad_gt.any()):
            raise ValueError(
                f"target holds values {_describe_values(gt[bad_gt])} outside [0, {k}) that are "
                f"not ignore_index {self.ignore_index}; map the dataset's ignore value to "
                f"{self.ignore_index} or check num_classes"
            )
        if self.allow_unassigned:
            none = pred == self.ignore_index
            if bool(none.any()):
                self.unassigned += torch.bincount(gt[none], minlength=k)
                gt, pred = gt[~none], pred[~none]
        bad_pred = (pred < 0) | (pred >= k)
        if bool(bad_pred.any()):
            fix = "predict one of the K classes at every labelled pixel (argmax over K scores)"
            if self.background_from is None and bool((pred[bad_pred] >= k).all()):
                fix += ", or set background_from when extra prompts mean background"
            raise ValueError(
                f"preds hold values {_describe_values(pred[bad_pred])} outside [0, {k}) at "
                f"labelled pixels; {fix}"
            )
        # One bincount over K*gt+pred: the whole update is a single kernel, on CPU or GPU.
        counts = torch.bincount(gt * k + pred, minlength=k * k)
        self.confmat += counts.reshape(k, k)

    def compute(self) -> dict[str, Any]:
        """The scores of the (already summed) confusion matrix; see :func:`metrics_from_confusion`."""
        return metrics_from_confusion(self.confmat, self.unassigned)


def metrics_from_confusion(
    confmat: torch.Tensor | np.ndarray, unassigned: torch.Tensor | np.ndarray | None = None
) -> dict[str, Any]:
    """detectron2's scores from a (K, K) confusion matrix, rows ground truth, columns prediction.

    Returns a dict: ``mIoU``, ``fwIoU``, ``mACC``, ``pACC`` (floats in [0, 1], NaN when no pixel
    was labelled); ``per_class_iou`` and ``per_class_acc`` (K floats, NaN for classes without
    ground-truth pixels); ``per_class_gt_pixels`` (K ints); ``classes_counted`` (classes with
    ground truth, the ones mIoU averages); ``num_classes`` (K); ``pixels`` (labelled pixels);
    ``unassigned_pixels`` (labelled pixels predicted as no class, counted as misses).
    """
    if isinstance(confmat, torch.Tensor):
        confmat = confmat.detach().cpu().numpy()
    cm = np.asarray(confmat)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be (K, K), got {cm.shape}")
    counts = cm.astype(np.int64)
    cm = cm.astype(np.float64)
    k = cm.shape[0]
    missed = (
        np.zeros(k)
        if unassigned is None
        else np.asarray(
            unassigned.detach().cpu().numpy()
            if isinstance(unassigned, torch.Tensor)
            else unassigned,
            dtype=np.float64,
        )
    )
    tp = np.diag(cm)
    pos_gt = cm.sum(axis=1) + missed
    pos_pred = cm.sum(axis=0)
    acc = np.full(k, np.nan)
    iou = np.full(k, np.nan)
    acc_valid = pos_gt > 0
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    union = pos_gt + pos_pred - tp
    iou_valid = acc_valid & (union > 0)
    iou[iou_valid] = tp[iou_valid] / union[iou_valid]
    total = pos_gt.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        class_weights = pos_gt / total
        miou = float(iou[iou_valid].sum() / iou_valid.sum()) if iou_valid.any() else math.nan
        macc = float(acc[acc_valid].sum() / acc_valid.sum()) if acc_valid.any() else math.nan
        fwiou = float((iou[iou_valid] * class_weights[iou_valid]).sum()) if total else math.nan
        pacc = float(tp.sum() / total) if total else math.nan
    return {
        "mIoU": miou,
        "fwIoU": fwiou,
        "mACC": macc,
        "pACC": pacc,
        "per_class_iou": iou.tolist(),
        "per_class_acc": acc.tolist(),
        "per_class_gt_pixels": (counts.sum(axis=1) + missed.astype(np.int64)).tolist(),
        "classes_counted": int(iou_valid.sum()),
        "num_classes": k,
        "pixels": int(counts.sum() + missed.sum()),
        "unassigned_pixels": int(missed.sum()),
    }


def seen_unseen_scores(
    metrics: dict[str, Any], class_names: Sequence[str], unseen: Sequence[str]
) -> dict[str, float]:
    """mIoU over the seen classes (every class not in ``unseen``, background included), over
    the unseen ones, and their harmonic mean ``hIoU`` (zero-shot segmentation's summary: it is
    high only when both are). Classes without ground truth are left out, as in mIoU."""
    iou = np.asarray(metrics["per_class_iou"], dtype=np.float64)
    missing = sorted(set(unseen) - set(class_names))
    if missing:
        raise ValueError(f"unseen classes {missing} are not in the vocabulary")
    is_unseen = np.array([name in set(unseen) for name in class_names])
    valid = ~np.isnan(iou)

    def mean(selected: np.ndarray) -> float:
        chosen = iou[selected & valid]
        return float(chosen.mean()) if len(chosen) else math.nan

    seen, new = mean(~is_unseen), mean(is_unseen)
    harmonic = 2 * seen * new / (seen + new) if seen + new > 0 else math.nan
    return {"mIoU_seen": seen, "mIoU_unseen": new, "hIoU": harmonic}


def format_metrics(metrics: dict[str, Any]) -> str:
    """One line, in percent with 2 decimals as papers report: ``mIoU 45.21  fwIoU ...``."""
    scores = "  ".join(
        f"{key} {100 * metrics[key]:.2f}" for key in ("mIoU", "fwIoU", "mACC", "pACC")
    )
    split = "  ".join(
        f"{key} {100 * metrics[key]:.2f}"
        for key in ("mIoU_seen", "mIoU_unseen", "hIoU")
        if key in metrics
    )
    return (
        f"{scores}{'  ' + split if split else ''} ({metrics['classes_counted']} of "
        f"{metrics['num_classes']} classes with ground truth)"
    )


def _json_safe(value: Any) -> Any:
    """NaN -> None, so the JSON file is strict JSON (NaN is not) and reads in any language."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def metrics_to_json(metrics: dict[str, Any], class_names: Sequence[str] | None = None) -> dict:
    """The metrics dict as strict JSON values (NaN -> null), with the class names if given."""
    out = _json_safe(dict(metrics))
    if class_names is not None:
        out["class_names"] = list(class_names)
    return out


def _named_positions(n: int, all_up_to: int = CHART_ALL_NAMES_UP_TO, each_end: int = 10):
    """Which of ``n`` sorted bars get a name: all when few, else the ``each_end`` at both ends."""
    if n <= all_up_to:
        return list(range(n))
    return [*range(each_end), *range(n - each_end, n)]


def write_results(
    metrics: dict[str, Any],
    out_dir: str | os.PathLike,
    class_names: Sequence[str] | None,
    name: str = "metrics",
) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>_per_class.csv`` and ``<name>_per_class_iou.png``.

    The JSON holds every metric (NaN as null) and the class names; the CSV one row per class
    (id, name, IoU, acc, gt pixels; IoU and acc empty for classes without ground truth); the chart
    the per-class IoU sorted, classes without ground truth left out. Returns the three paths by
    kind (``json``, ``csv``, ``png``).
    """
    k = metrics["num_classes"]
    if class_names is None:
        class_names = [f"class {i}" for i in range(k)]
    if len(class_names) != k:
        raise ValueError(
            f"{len(class_names)} class names for {k} classes; give one name per class id"
        )
    check_output_folder(out_dir, "--out")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / f"{name}.json",
        "csv": out / f"{name}_per_class.csv",
        "png": out / f"{name}_per_class_iou.png",
    }
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["class_id", "name", "iou", "acc", "gt_pixels"])
    rows = zip(
        class_names,
        metrics["per_class_iou"],
        metrics["per_class_acc"],
        metrics["per_class_gt_pixels"],
    )
    for i, (cls, iou, acc, pixels) in enumerate(rows):
        writer.writerow([i, cls, _csv_score(iou), _csv_score(acc), pixels])
    written: list[Path] = []
    try:  # all three or none (found by a probe: a full disk left two of three)
        write_text_atomic(
            paths["json"],
            json.dumps(metrics_to_json(metrics, class_names), indent=2, allow_nan=False) + "\n",
        )
        written.append(paths["json"])
        write_text_atomic(paths["csv"], table.getvalue())
        written.append(paths["csv"])
        if available("matplotlib"):
            _write_iou_chart(metrics, class_names, paths["png"])
        else:  # the metrics do not need it
            del paths["png"]
            log.warning("no per-class IoU chart: it needs matplotlib (pip install 'dpseg[charts]')")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return paths


def _csv_score(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6f}"


def _write_iou_chart(metrics: dict[str, Any], class_names: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    iou = np.asarray(metrics["per_class_iou"], dtype=np.float64)
    counted = np.flatnonzero(~np.isnan(iou))
    order = counted[np.argsort(iou[counted], kind="stable")]  # worst first
    n = len(order)
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.25 * n + 2), 24.0), 5.0))
    try:
        ax.bar(np.arange(n), 100 * iou[order], width=0.8, color="tab:blue")
        named = _named_positions(n)
        ax.set_xticks(named)
        ax.set_xticklabels([class_names[order[i]] for i in named], rotation=90, fontsize=7)
        if n > CHART_ALL_NAMES_UP_TO:
            ax.set_xlabel(f"{n} classes sorted by IoU (the 10 worst and 10 best named)")
        miou = metrics["mIoU"]
        if not math.isnan(miou):
            ax.axhline(100 * miou, color="tab:red", linewidth=1, linestyle="--")
        left_out = metrics["num_classes"] - n
        plural = "class" if left_out == 1 else "classes"
        note = f"; {left_out} {plural} without ground truth left out" if left_out else ""
        ax.set_title(f"per-class IoU, mIoU {100 * miou:.2f}{note}")
        ax.set_ylabel("IoU (%)")
        ax.set_ylim(0, 100)
        ax.set_xlim(-0.6, max(n, 1) - 0.4)
        fig.tight_layout()
        save_figure_atomic(fig, path, dpi=100)
    finally:
        plt.close(fig)
