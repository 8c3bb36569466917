"""The evaluator scores as detectron2's SemSegEvaluator (docs/design.md §5): hand-computed matrices, an
independent numpy reference, a real 2-process DDP all-reduce, and eval-masks on made-up folders."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image

from cli import main as cli_main
from data.catalog import IGNORE_INDEX, DatasetError
from data.datasets import read_label
from data.eval_masks import evaluate_mask_folders
from data.evaluator import (
    SemSegMetric,
    _named_positions,
    format_metrics,
    metrics_from_confusion,
    write_results,
)

# A 3-class 4x4 case worked by hand. Rows of the confusion matrix are ground truth:
#   gt 0 (6 px) -> pred [5, 1, 0];  gt 1 (6 px) -> [0, 5, 1];  gt 2 (2 px) -> [1, 0, 1];
#   the two ignore pixels (-1) count nowhere.
GT = np.array([[0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1], [2, 2, -1, -1]])
PRED = np.array([[0, 0, 0, 1], [0, 0, 1, 1], [1, 1, 2, 1], [2, 0, 0, 2]])
CONFMAT = [[5, 1, 0], [0, 5, 1], [1, 0, 1]]
# tp = [5, 5, 1], pos_gt = pos_pred = [6, 6, 2], union = [7, 7, 3]
EXPECTED = {
    "mIoU": (5 / 7 + 5 / 7 + 1 / 3) / 3,  # 37/63
    "fwIoU": (6 * 5 / 7 + 6 * 5 / 7 + 2 * 1 / 3) / 14,  # 97/147
    "mACC": (5 / 6 + 5 / 6 + 1 / 2) / 3,  # 13/18
    "pACC": 11 / 14,
}
EXPECTED_LINE = "mIoU 58.73  fwIoU 65.99  mACC 72.22  pACC 78.57 (3 of 3 classes with ground truth)"


def _scores(preds, target, num_classes: int, **kwargs) -> dict:
    metric = SemSegMetric(num_classes, **kwargs)
    metric.update(preds, target)
    return metric.compute()


def _assert_expected(metrics: dict) -> None:
    for key, value in EXPECTED.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
    assert metrics["per_class_iou"] == pytest.approx([5 / 7, 5 / 7, 1 / 3])
    assert metrics["per_class_acc"] == pytest.approx([5 / 6, 5 / 6, 1 / 2])
    assert metrics["per_class_gt_pixels"] == [6, 6, 2]
    assert metrics["classes_counted"] == 3 and metrics["pixels"] == 14


# ---------------------------------------------------------------------------------------------
# the metric


def test_hand_computed_scores():
    metric = SemSegMetric(3)
    metric.update(torch.from_numpy(PRED), torch.from_numpy(GT))
    assert metric.confmat.dtype == torch.int64
    assert metric.confmat.tolist() == CONFMAT
    metrics = metric.compute()
    _assert_expected(metrics)
    assert metrics["mIoU"] == pytest.approx(37 / 63) and metrics["fwIoU"] == pytest.approx(97 / 147)
    assert format_metrics(metrics) == EXPECTED_LINE
    _assert_expected(metrics_from_confusion(np.array(CONFMAT)))  # numpy works too


def test_class_absent_from_ground_truth_is_not_counted():
    # Class 3 is predicted once (at a gt-0 pixel) but never labelled; class 4 appears nowhere.
    pred = PRED.copy()
    pred[0, 3] = 3
    metrics = _scores(pred, GT, 5)
    iou = metrics["per_class_iou"]
    # gt 0: tp 5, pos_gt 6, pos_pred 6 -> 5/7; gt 1 lost a false positive: 5 / (6 + 5 - 5)
    assert iou[:3] == pytest.approx([5 / 7, 5 / 6, 1 / 3])
    assert math.isnan(iou[3]) and math.isnan(iou[4])
    assert math.isnan(metrics["per_class_acc"][3]) and math.isnan(metrics["per_class_acc"][4])
    assert metrics["mIoU"] == pytest.approx((5 / 7 + 5 / 6 + 1 / 3) / 3)  # averaged over 3, not 5
    assert metrics["mACC"] == pytest.approx((5 / 6 + 5 / 6 + 1 / 2) / 3)
    assert metrics["pACC"] == pytest.approx(11 / 14)
    assert metrics["classes_counted"] == 3 and metrics["num_classes"] == 5
    assert metrics["per_class_gt_pixels"] == [6, 6, 2, 0, 0]
    assert "(3 of 5 classes with ground truth)" in format_metrics(metrics)


def test_class_with_ground_truth_but_never_right_counts_as_zero():
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 0, 0, 0]])
    metrics = _scores(pred, gt, 2)
    assert metrics["per_class_iou"] == [0.5, 0.0]
    assert metrics["mIoU"] == 0.25 and metrics["mACC"] == 0.5 and metrics["pACC"] == 0.5
    assert metrics["fwIoU"] == pytest.approx(0.25)


def test_ignore_pixels_count_neither_as_ground_truth_nor_prediction():
    other = PRED.copy()
    other[3, 2:] = [2, 2]  # different predictions under the two ignore pixels
    assert _scores(other, GT, 3) == _scores(PRED, GT, 3)
    # an out-of-range prediction under an ignore pixel is not an error: it is not scored
    other[3, 2:] = [-1, 99]
    _assert_expected(_scores(other, GT, 3))
    # a custom ignore_index works the same way
    _assert_expected(_scores(PRED, np.where(GT == -1, 7, GT), 3, ignore_index=7))
    nothing = _scores(PRED, np.full_like(GT, IGNORE_INDEX), 3)
    assert nothing["pixels"] == 0 and nothing["classes_counted"] == 0
    assert all(math.isnan(nothing[k]) for k in ("mIoU", "fwIoU", "mACC", "pACC"))


def test_background_from_maps_extra_prompts_to_background():
    # VOC with background in miniature: 3 classes, class 2 is background, 59 prompts.
    gt = np.array([[0, 1], [2, 2]])
    pred = np.array([[0, 5], [2, 58]])
    metric = SemSegMetric(3, background_from=2)
    metric.update(pred, gt)
    assert metric.confmat.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 2]]
    with pytest.raises(ValueError, match=r"5, 58 .*background_from"):
        SemSegMetric(3).update(pred, gt)


def test_out_of_range_and_malformed_inputs_raise():
    metric = SemSegMetric(3)
    with pytest.raises(ValueError, match=r"preds hold values 3 outside \[0, 3\)"):
        metric.update(np.where(PRED == 2, 3, PRED), GT)
    with pytest.raises(ValueError, match=r"preds hold values -2 outside"):
        metric.update(np.where(PRED == 2, -2, PRED), GT)
    with pytest.raises(ValueError, match=r"target holds values 4, 255 outside \[0, 3\)"):
        metric.update(PRED, np.where(GT == -1, 255, np.where(GT == 2, 4, GT)))
    with pytest.raises(ValueError, match="argmax"):
        metric.update(PRED.astype(np.float32), GT)
    with pytest.raises(ValueError, match=r"shape \(H, W\) or \(B, H, W\)"):
        metric.update(np.zeros((1, 3, 4, 4), dtype=np.int64), np.zeros((1, 4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="differ in shape"):
        metric.update(PRED[:2], GT)
    assert metric.confmat.sum() == 0  # a refused batch adds nothing
    with pytest.raises(ValueError, match="ignore_index 2 is a class id"):
        SemSegMetric(3, ignore_index=2)
    with pytest.raises(ValueError, match="background_from 3"):
        SemSegMetric(3, background_from=3)


def test_batches_numpy_and_uint8_inputs_agree():
    rng = np.random.default_rng(0)
    gts = rng.integers(-1, 4, size=(3, 6, 5))
    preds = rng.integers(0, 4, size=(3, 6, 5))
    batched = SemSegMetric(4)
    batched.update(torch.from_numpy(preds), torch.from_numpy(gts))
    single = SemSegMetric(4)
    for p, g in zip(preds, gts):
        single.update(p.astype(np.uint8), g)  # numpy, any integer dtype
    assert torch.equal(batched.confmat, single.confmat)
    assert batched.confmat.sum() == (gts != -1).sum()


def _reference_scores(preds: list[np.ndarray], gts: list[np.ndarray], k: int) -> dict:
    """The formulas written out per class with boolean masks, no confusion matrix."""
    pred = np.concatenate([p.ravel() for p in preds])
    gt = np.concatenate([g.ravel() for g in gts])
    valid = gt != IGNORE_INDEX
    pred, gt = pred[valid], gt[valid]
    iou, acc, weights = [], [], []
    for c in range(k):
        is_gt, is_pred = gt == c, pred == c
        if not is_gt.any():
            iou.append(math.nan)
            acc.append(math.nan)
            weights.append(0.0)
            continue
        inter = np.sum(is_gt & is_pred)
        iou.append(inter / np.sum(is_gt | is_pred))
        acc.append(inter / np.sum(is_gt))
        weights.append(np.sum(is_gt) / len(gt))
    counted = [i for i in range(k) if not math.isnan(iou[i])]
    return {
        "mIoU": sum(iou[i] for i in counted) / len(counted),
        "mACC": sum(acc[i] for i in counted) / len(counted),
        "fwIoU": sum(iou[i] * weights[i] for i in counted),
        "pACC": np.mean(gt == pred),
        "per_class_iou": iou,
        "per_class_acc": acc,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_an_independent_numpy_implementation(seed):
    rng = np.random.default_rng(seed)
    k = 9
    gts, preds = [], []
    for _ in range(5):
        h, w = rng.integers(8, 40, size=2)
        gt = rng.integers(0, k, size=(h, w))
        gt[gt == 4] = 5  # class 4 never labelled ...
        gt[rng.random((h, w)) < 0.15] = IGNORE_INDEX
        pred = np.where(rng.random((h, w)) < 0.5, gt, rng.integers(0, k, size=(h, w)))
        pred[pred == IGNORE_INDEX] = 4  # ... but predicted (at the ignore pixels and at random)
        gts.append(gt)
        preds.append(pred)
    metric = SemSegMetric(k)
    for p, g in zip(preds, gts):
        metric.update(p, g)
    ours, ref = metric.compute(), _reference_scores(preds, gts, k)
    for key in ("mIoU", "mACC", "fwIoU", "pACC"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-12, abs=0), key
    np.testing.assert_allclose(ours["per_class_iou"], ref["per_class_iou"], rtol=1e-12)
    np.testing.assert_allclose(ours["per_class_acc"], ref["per_class_acc"], rtol=1e-12)
    assert math.isnan(ours["per_class_iou"][4]) and ours["classes_counted"] == k - 1


# ---------------------------------------------------------------------------------------------
# DDP: the confusion matrix is summed across processes


DDP_SCRIPT = """
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from data.evaluator import SemSegMetric, metrics_to_json

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
maps = np.load(sys.argv[1])
out = Path(sys.argv[2])
metric = SemSegMetric(int(maps["k"]))
for pred, gt in zip(maps["preds"][rank::world], maps["gts"][rank::world]):
    metric.update(torch.from_numpy(pred), torch.from_numpy(gt))
np.save(out / f"local{rank}.npy", metric.confmat.numpy())
scores = metric.compute()  # all-reduces the state first
with metric.sync_context():  # the summed state that compute() scored
    total = metric.confmat.clone()
if rank == 0:
    np.save(out / "confmat.npy", total.numpy())
    (out / "scores.json").write_text(json.dumps(metrics_to_json(scores)))
dist.destroy_process_group()
"""


def test_ddp_two_processes_sum_the_confusion_matrix(tmp_path):
    rng = np.random.default_rng(7)
    k = 6
    gts = rng.integers(-1, k, size=(8, 24, 24))
    preds = np.where(rng.random(gts.shape) < 0.6, gts.clip(0), rng.integers(0, k, gts.shape))
    np.savez(tmp_path / "maps.npz", gts=gts, preds=preds, k=k)
    script = tmp_path / "ddp_eval.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    port = 20000 + os.getpid() % 20000
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        str(script),
        str(tmp_path / "maps.npz"),
        str(tmp_path),
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

    single = SemSegMetric(k)
    single.update(preds, gts)
    expected = single.confmat.numpy()
    total = np.load(tmp_path / "confmat.npy")
    assert total.dtype == np.int64
    np.testing.assert_array_equal(total, expected)
    local0, local1 = np.load(tmp_path / "local0.npy"), np.load(tmp_path / "local1.npy")
    assert not np.array_equal(local0, expected)  # each rank really saw only its half
    np.testing.assert_array_equal(local0 + local1, expected)
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["mIoU"] == pytest.approx(single.compute()["mIoU"], rel=1e-12)


# ---------------------------------------------------------------------------------------------
# results files


def test_write_results(tmp_path):
    pred = PRED.copy()
    pred[0, 3] = 3  # class 3: predicted, never labelled -> NaN
    metrics = _scores(pred, GT, 4)
    names = ["sky", "tree", "road", "car"]
    paths = write_results(metrics, tmp_path / "out", names, name="val")
    assert {p.name for p in paths.values()} == {
        "val.json",
        "val_per_class.csv",
        "val_per_class_iou.png",
    }
    saved = json.loads(paths["json"].read_text())  # strict JSON: NaN written as null
    assert saved["mIoU"] == pytest.approx(metrics["mIoU"]) and saved["class_names"] == names
    assert saved["per_class_iou"][3] is None
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert rows[1] == {
        "class_id": "1",
        "name": "tree",
        "iou": f"{5 / 6:.6f}",
        "acc": f"{5 / 6:.6f}",
        "gt_pixels": "6",
    }
    assert rows[3]["iou"] == "" and rows[3]["gt_pixels"] == "0"
    with Image.open(paths["png"]) as chart:
        assert chart.format == "PNG" and chart.width > 100
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        write_results(metrics, tmp_path / "bad", names[:3])


def test_results_are_written_all_three_or_none(tmp_path):
    """Probe 6: a full disk while the chart was written left the JSON and the CSV, after a
    message that said nothing partial was left. A failed write now takes the others back."""
    metrics = _scores(PRED.copy(), GT, 4)
    out = tmp_path / "out"
    (out / "metrics_per_class_iou.png").mkdir(parents=True)  # the chart cannot go there
    with pytest.raises(OSError):
        write_results(metrics, out, ["sky", "tree", "road", "car"])
    assert sorted(p.name for p in out.iterdir()) == ["metrics_per_class_iou.png"]


def test_large_vocabulary_chart_names_the_ends(tmp_path):
    assert _named_positions(40) == list(range(40))
    assert _named_positions(150) == [*range(10), *range(140, 150)]
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 150, size=(64, 64))
    pred = np.where(rng.random(gt.shape) < 0.5, gt, rng.integers(0, 150, gt.shape))
    metrics = _scores(pred, gt, 150)
    paths = write_results(metrics, tmp_path, None)
    with Image.open(paths["png"]) as chart:
        assert chart.width >= 1000
    with paths["csv"].open() as f:
        assert sum(1 for _ in f) == 151 and "class 149" in paths["csv"].read_text()


# ---------------------------------------------------------------------------------------------
# eval-masks: prediction folders of any method


def _save_png(path, array, palette: bool = False) -> None:
    image = Image.fromarray(np.asarray(array, dtype=np.uint8))
    if palette:
        image.putpalette([(i * 37) % 256 for i in range(768)])  # a 'P' image: ids are indices
    image.save(path)


def _save_tif16(path, array) -> None:
    Image.fromarray(np.asarray(array, dtype=np.uint16)).save(path)  # mode I;16


@pytest.fixture
def folders(tmp_path):
    """The hand case split into two images: a (rows 0-1) and b (rows 2-3); 255 is ignore."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    disk_gt = np.where(GT == -1, 255, GT)
    _save_png(gt_dir / "a.png", disk_gt[:2])
    _save_png(gt_dir / "b.png", disk_gt[2:])
    _save_png(pred_dir / "a.png", PRED[:2], palette=True)
    pred_b = PRED[2:].copy()
    pred_b[1, 2:] = 255  # the ignore value where the label is ignore: allowed, not scored
    _save_tif16(pred_dir / "b.tif", pred_b)
    _save_png(pred_dir / "unrelated.png", PRED)  # no label: unused
    return pred_dir, gt_dir


def test_read_mask_keeps_palette_indices_and_16_bit_values(tmp_path):
    _save_png(tmp_path / "p.png", [[0, 7, 200]], palette=True)
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert read_label(tmp_path / "p.png").tolist() == [[0, 7, 200]]
    _save_tif16(tmp_path / "t.tif", [[0, 846, 65535]])
    mask = read_label(tmp_path / "t.tif")
    assert mask.dtype == np.int64 and mask.tolist() == [[0, 846, 65535]]


def test_eval_masks_png_and_tiff_matched_by_stem(folders):
    pred_dir, gt_dir = folders
    metrics, report = evaluate_mask_folders(pred_dir, gt_dir, 3, 255, progress=False)
    _assert_expected(metrics)
    assert report["evaluated"] == 2 and report["ground_truth_files"] == 2
    assert report["unmatched_predictions"] == 1 and report["skipped"] == {}


def test_eval_masks_16_bit_tiff_labels(folders, tmp_path):
    pred_dir, _ = folders
    gt_dir = tmp_path / "gt16"
    gt_dir.mkdir()
    disk_gt = np.where(GT == -1, 65535, GT)  # ADE-847's convention
    _save_tif16(gt_dir / "a.tif", disk_gt[:2])
    _save_tif16(gt_dir / "b.tif", disk_gt[2:])
    metrics, _ = evaluate_mask_folders(pred_dir, gt_dir, 3, [459, 65535], progress=False)
    _assert_expected(metrics)


def _missing(pred_dir, gt_dir):
    _save_png(gt_dir / "c.png", GT[:2].clip(0))
    return "c.png", ["prediction missing for 1 of 3 ground-truth files"]


def _size(pred_dir, gt_dir):
    _save_png(pred_dir / "a.png", PRED[:3])
    return "a.png", ["3x4 (H x W)", "2x4"]


def _label_range(pred_dir, gt_dir):
    _save_png(gt_dir / "a.png", np.where(GT[:2] == 1, 7, GT[:2]))
    return "a.png", ["label values 7 are outside [0, 3)"]


def _pred_range(pred_dir, gt_dir):
    pred = PRED[:2].copy()
    pred[0, 0] = 9
    _save_png(pred_dir / "a.png", pred)
    return "a.png", ["prediction values 9 are outside [0, 3)"]


def _pred_ignore(pred_dir, gt_dir):
    pred = PRED[:2].copy()
    pred[0, 0] = 255  # the ignore value at a labelled pixel: a prediction cannot abstain
    _save_png(pred_dir / "a.png", pred)
    return "a.png", ["255", "at 1 labelled pixels", "only where the label is ignore"]


def _unreadable(pred_dir, gt_dir):
    (pred_dir / "a.png").write_bytes(b"not a png at all")
    return "a.png", ["as an image (cannot identify image file", "replace it with the map"]


def _rgb(pred_dir, gt_dir):
    Image.fromarray(np.zeros((2, 4, 3), dtype=np.uint8)).save(pred_dir / "a.png")
    return "a.png", ["mode 'RGB' is not a label map"]


def _ambiguous(pred_dir, gt_dir):
    _save_tif16(pred_dir / "a.tif", PRED[:2])
    return "a.png", ["predictions: a.png, a.tif"]


BAD_CASES = [
    _missing,
    _size,
    _label_range,
    _pred_range,
    _pred_ignore,
    _unreadable,
    _rgb,
    _ambiguous,
]


@pytest.mark.parametrize("make_bad", BAD_CASES, ids=lambda f: f.__name__.strip("_"))
def test_eval_masks_bad_input_is_an_error_naming_the_file(folders, make_bad):
    pred_dir, gt_dir = folders
    name, phrases = make_bad(pred_dir, gt_dir)
    with pytest.raises(DatasetError) as caught:
        evaluate_mask_folders(pred_dir, gt_dir, 3, 255, progress=False)
    message = str(caught.value)
    assert name in message
    for phrase in phrases:
        assert phrase in message


def test_eval_masks_no_ground_truth_or_no_folder(tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    with pytest.raises(DatasetError, match="no ground-truth files"):
        evaluate_mask_folders(tmp_path / "pred", tmp_path / "gt", 3, 255, progress=False)
    with pytest.raises(DatasetError, match=r"folder .*nowhere.* does not exist"):
        evaluate_mask_folders(tmp_path / "nowhere", tmp_path / "gt", 3, 255, progress=False)


def test_eval_masks_skip_mode_counts_by_reason(folders):
    pred_dir, gt_dir = folders
    # the two good samples stay; one bad sample of each kind is added under its own stem
    _save_png(gt_dir / "c.png", GT[:2].clip(0))  # no prediction
    for stem in "defgh":
        _save_png(gt_dir / f"{stem}.png", np.where(GT[:2] == -1, 255, GT[:2]))
    _save_png(pred_dir / "d.png", PRED[:3])  # size
    _save_png(gt_dir / "e.png", [[0, 1, 2, 5], [0, 0, 0, 0]])  # label value 5
    _save_png(pred_dir / "e.png", PRED[:2])
    _save_png(pred_dir / "f.png", [[0, 1, 2, 4], [0, 0, 0, 0]])  # prediction value 4
    (pred_dir / "g.png").write_bytes(b"garbage")
    _save_png(pred_dir / "h.png", PRED[:2])
    _save_tif16(pred_dir / "h.tif", PRED[:2])  # two predictions for h
    metrics, report = evaluate_mask_folders(
        pred_dir, gt_dir, 3, 255, on_bad_sample="skip", progress=False
    )
    _assert_expected(metrics)  # only a and b scored
    assert report["evaluated"] == 2 and report["ground_truth_files"] == 8
    assert report["skipped"] == {
        "ambiguous_stem": 1,
        "missing_prediction": 1,
        "size_mismatch": 1,
        "label_out_of_range": 1,
        "prediction_out_of_range": 1,
        "unreadable": 1,
    }
    assert report["skipped_files"]["missing_prediction"] == ["c.png"]
    assert report["skipped_files"]["unreadable"] == ["g.png"]
    for stem in "cdefg":  # no good sample is left out, so nothing else can be skipped
        (gt_dir / f"{stem}.png").unlink()
    _save_png(gt_dir / "a.png", np.full((2, 4), 9))
    _save_png(gt_dir / "b.png", np.full((5, 5), 0))
    with pytest.raises(DatasetError, match=r"no sample .* could be scored"):
        evaluate_mask_folders(pred_dir, gt_dir, 3, 255, on_bad_sample="skip", progress=False)


# ---------------------------------------------------------------------------------------------
# the eval-masks command (cli.py eval-masks, in process)


def _run_eval_masks(*argv: str) -> int:
    return cli_main(["eval-masks", *argv])


def test_cmd_eval_masks_prints_the_scores_and_writes_nothing(
    folders, tmp_path, capsys, monkeypatch
):
    pred_dir, gt_dir = folders
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    common = ["--pred", str(pred_dir), "--gt", str(gt_dir), "--num-classes", "3"]
    assert _run_eval_masks(*common, "--ignore-index", "255", "--quiet") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == EXPECTED_LINE
    assert out[1] == "scored 2 of 2 ground-truth files"
    assert list(work.iterdir()) == []  # no --out: no files

    assert _run_eval_masks(*common, "--ignore-index", "255", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["metrics"]["mIoU"] == pytest.approx(37 / 63)
    assert doc["report"]["evaluated"] == 2


def test_cmd_eval_masks_vocab_out_and_skip(folders, tmp_path, capsys):
    pred_dir, gt_dir = folders
    _save_png(gt_dir / "c.png", GT[:2].clip(0))  # no prediction for c
    out_dir = tmp_path / "results"
    common = ["--pred", str(pred_dir), "--gt", str(gt_dir), "--num-classes", "3"]
    rc = _run_eval_masks(
        *common,
        "--ignore-index",
        "255",
        "--quiet",
        "--on-bad-sample",
        "skip",
        "--vocab",
        "sky; tree; road",
        "--out",
        str(out_dir),
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert EXPECTED_LINE in out and "scored 2 of 3 ground-truth files" in out
    assert "skipped 1: no prediction with the label's stem (c.png)" in out
    with (out_dir / "metrics_per_class.csv").open() as f:
        assert [row["name"] for row in csv.DictReader(f)] == ["sky", "tree", "road"]
    assert json.loads((out_dir / "metrics.json").read_text())["class_names"][2] == "road"
    assert (out_dir / "metrics_per_class_iou.png").is_file()

    # user errors: one line on stderr, status 2
    assert _run_eval_masks(*common, "--ignore-index", "255", "--quiet") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: prediction missing for 1 of 3") and "c.png" in err
    assert _run_eval_masks(*common, "--ignore-index", "255", "--vocab", "voc20") == 2
    assert "has 20 classes but --num-classes is 3" in capsys.readouterr().err


def test_eval_masks_command_as_a_user_runs_it(folders, tmp_path, capfd, monkeypatch):
    """The real command line, in a fresh process: scores, JSON, result files, bad input (after
    the first, in this process: a fresh one adds its imports each time)."""
    from conftest import cli_here, run_cli

    pred_dir, gt_dir = folders
    common = ["eval-masks", "--pred", str(pred_dir), "--gt", str(gt_dir), "--num-classes", "3"]
    result = run_cli(
        *common, "--ignore-index", "255", "--vocab", "a; b; c", "--out", str(tmp_path / "o")
    )
    assert result.returncode == 0, result.stderr
    assert EXPECTED_LINE in result.stdout
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "metrics.json",
        "metrics_per_class.csv",
        "metrics_per_class_iou.png",
    ]
    as_json = cli_here(capfd, monkeypatch, *common, "--ignore-index", "255", "--json", "--quiet")
    assert json.loads(as_json.stdout)["metrics"]["mIoU"] == pytest.approx(EXPECTED["mIoU"])
    wrong = cli_here(capfd, monkeypatch, *common, "--ignore-index", "255", "--vocab", "a; b")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr


def test_unassigned_predictions_are_misses_not_false_positives():
    """mmseg's IoUMetric on a prediction of 255 (VIP's low-confidence pixels): the pixel is in
    its ground-truth class's union and in nobody's predictions."""
    target = torch.tensor([[0, 0, 1, 1]])
    preds = torch.tensor([[0, IGNORE_INDEX, 1, 0]])
    with pytest.raises(ValueError, match="outside"):
        SemSegMetric(2).update(preds, target)
    metric = SemSegMetric(2, allow_unassigned=True)
    metric.update(preds, target)
    m = metric.compute()
    # class 0: tp 1, gt 2 (one unassigned), pred 2 -> IoU 1/3; class 1: tp 1, gt 2, pred 1 -> 1/2
    assert m["per_class_iou"] == pytest.approx([1 / 3, 1 / 2])
    assert m["unassigned_pixels"] == 1 and m["pixels"] == 4 and m["pACC"] == pytest.approx(0.5)
    assert metric.unassigned.tolist() == [1, 0]


def test_seen_unseen_scores_by_hand():
    """mIoU over seen (background included) and unseen classes, hIoU their harmonic mean;
    classes without ground truth (NaN) left out; an unseen name not in the vocabulary refused."""
    from data.evaluator import seen_unseen_scores

    metrics = {"per_class_iou": [0.9, 0.5, float("nan"), 0.2, 0.4]}
    names = ["background", "cat", "dog", "okapi", "zebra"]
    scores = seen_unseen_scores(metrics, names, ["okapi", "zebra", "dog"])
    assert scores["mIoU_seen"] == pytest.approx(0.7)  # (0.9 + 0.5) / 2
    assert scores["mIoU_unseen"] == pytest.approx(0.3)  # (0.2 + 0.4) / 2, dog has no pixels
    assert scores["hIoU"] == pytest.approx(2 * 0.7 * 0.3 / 1.0)
    with pytest.raises(ValueError, match=r"unseen classes \['lion'\] are not in the vocabulary"):
        seen_unseen_scores(metrics, names, ["lion"])
