"""What every segmenter does under ``cli.py validate|test|predict``: metrics per dataset, results.

:class:`SegmentationModule` is the Lightning side shared by DPSeg (``model.lightning``) and VIP
(``model.vip.lightning``). A subclass says how one image is segmented (:meth:`segment`, and
:meth:`predict_labels` when labels are more than the argmax) and what its run record holds;
this class runs the test protocol over each dataset of ``data.test`` (one ``SemSegMetric`` each,
summed over ranks), and writes per dataset ``<name>.json``, ``<name>_per_class.csv``,
``<name>_per_class_iou.png``, ``<name>.run.json`` (settings, skipped files, confusion matrix)
and a ``summary.md/.csv`` in the paper's Table 1 column order.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch
from torch import nn

from common.io import command_line, save_image_atomic, write_text_atomic
from data.catalog import get_dataset_spec
from data.evaluator import (
    SemSegMetric,
    format_metrics,
    metrics_to_json,
    seen_unseen_scores,
    write_results,
)
from data.transforms import get_test_protocol
from data.vocabulary import load_vocabulary
from model.data_module import stack_images
from model.labels import class_labels

log = logging.getLogger(__name__)

SUMMARY_ORDER = (
    "ade847",
    "pc459",
    "ade150",
    "pc59",
    "voc20",
    "voc20b",  # DPSeg's Table 1
    "voc21",
    "pc60",
    "coco-object",
    "coco171",
    "cityscapes",  # VIP's tables
)
"""Summary column order: the paper's Table 1 (A-847, PC-459, A-150, PC-59, PAS-20, PAS-20b),
then the training-free benchmarks."""


class SegmentationModule(L.LightningModule):
    """Evaluation, test results and label-map prediction over ``SegmentationData``.

    Args:
        test_protocol: ``sed`` (768 square), ``catseg`` (sliding windows + global view),
            ``vip`` (short side 336, 336 windows, stride 112), ``resize:N``.
        results_dir: where ``test`` writes metrics (default: the logger's folder /results).
    """

    method_name = "segmentation"
    """The method's name: its runs' log folder under ``cli.py fit|test`` (runs/<method_name>)."""
    trainable = True
    """False for a training-free method: ``cli.py fit`` refuses it in one line."""
    unassigned_predictions = False
    """True when ``predict_labels`` may leave pixels unlabelled (IGNORE_INDEX): they are
    scored as misses of their ground-truth class (``data.evaluator``)."""

    def __init__(self, test_protocol: str = "sed", results_dir: str | None = None):
        super().__init__()
        get_test_protocol(test_protocol)  # fail at construction on an unknown name
        self.test_protocol = test_protocol
        self.results_location = results_dir
        self._metrics = nn.ModuleDict()
        self._skipped: dict[str, list] = {}

    def on_device(self, prepared: dict, dataset: str, what: str, prepare: str):
        """A dataset's prepared class embeddings (DPSeg's prompts, VIP's queries: anything with
        ``device`` and ``to(device)``) from ``prepared``, moved to this module's device once."""
        if dataset not in prepared:
            raise KeyError(f"no {what} for dataset {dataset!r}; call {prepare} first")
        item = prepared[dataset]
        if item.device != self.device:
            item = prepared[dataset] = item.to(self.device)
        return item

    # -- what a subclass provides -----------------------------------------------------------

    def segment(self, image: torch.Tensor, dataset: str) -> torch.Tensor:
        """One image (3, H, W) in [0, 1] -> class logits (K, H, W) by the test protocol.

        A subclass whose :meth:`takes_truth` is true also takes ``truth``, the image's true
        label map (H, W), as a third argument."""
        raise NotImplementedError(f"{type(self).__name__} must define segment(image, dataset)")

    def takes_truth(self) -> bool:
        """True when :meth:`segment` is to be given the image's true label map (an oracle
        setting for diagnosis, e.g. DPSeg's ``inference.regions``): the evaluation loops pass
        it then, and only then; predict has none to give."""
        return False

    def predict_labels(
        self, image: torch.Tensor, dataset: str, truth: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One image (3, H, W) -> label ids (H, W); the argmax unless a subclass thresholds.
        ``truth``: the true label map, given only where :meth:`takes_truth`."""
        if truth is None:
            return class_labels(self.segment(image, dataset), dim=0)
        return class_labels(self.segment(image, dataset, truth), dim=0)

    def observe_truth(self, dataset: str, truth: torch.Tensor) -> None:
        """Called after each evaluated image with its true label map (H, W): a subclass may
        keep statistics of its own beside the metrics (DPSeg: class early rejection's recall)."""

    def prepare_dataset(self, dataset: str, bank: str | None) -> None:
        """Called once per (dataset, bank) of a stage before it runs (prompts, queries)."""

    def run_record(self, dataset: str) -> dict:
        """Settings that produced a dataset's results (its ``<name>.run.json``)."""
        return {}

    def summary_label(self) -> str:
        """The row name of the summary table."""
        return type(self).__name__

    # -- loops ------------------------------------------------------------------------------

    def _start(self) -> None:
        """On every rank before a loop: the results folder (trainer.log_dir is a collective
        call: every rank must ask, and only here)."""
        self._results = self.results_dir()

    def on_validation_start(self) -> None:
        self._start()

    def on_test_start(self) -> None:
        self._start()

    def on_predict_start(self) -> None:
        self._start()

    def on_predict_end(self) -> None:
        if self.trainer.is_global_zero:
            print(f"predict: label maps in {self._results / 'predictions'}", flush=True)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is None:
            return
        stages = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        stages["predict"] = ("test",)
        for split in stages[stage]:
            for pair in datamodule.pairs(split):
                self.prepare_dataset(pair.dataset, pair.bank)
                if split != "train":
                    spec = get_dataset_spec(pair.dataset)
                    self._metrics[_key(pair.dataset)] = SemSegMetric(
                        spec.num_classes,
                        background_from=spec.background_from,
                        allow_unassigned=self.unassigned_predictions,
                    )

    def _eval_datasets(self, split: str) -> list[str]:
        return [p.dataset for p in self.trainer.datamodule.pairs(split)]

    def protocol(self):
        return get_test_protocol(self.test_protocol)

    def _eval_step(self, batch: dict, dataloader_idx: int, split: str) -> None:
        dataset = self._eval_datasets(split)[dataloader_idx]
        for name, reason in batch.get("skipped", []):
            self._skipped.setdefault(dataset, []).append(name)
            log.warning("skipped %s of %s: %s", name, dataset, reason)
        if "image" not in batch:
            return
        oracle = self.takes_truth()
        for image, label in zip(stack_images(batch), batch["label"]):
            given = {"truth": label} if oracle else {}
            self._metrics[_key(dataset)].update(self.predict_labels(image, dataset, **given), label)
            self.observe_truth(dataset, label)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, "val")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, "test")

    def _compute(self, split: str) -> dict[str, dict]:
        results = {}
        for dataset in self._eval_datasets(split):
            metric = self._metrics[_key(dataset)]
            results[dataset] = dict(metric.compute())
            with metric.sync_context():  # the matrix summed over ranks, for the run record
                results[dataset]["confusion_matrix"] = metric.confmat.tolist()
                if self.unassigned_predictions:
                    results[dataset]["unassigned_per_class"] = metric.unassigned.tolist()
            metric.reset()
        return results

    def on_validation_epoch_end(self) -> None:
        results = self._compute("val")
        for dataset, m in results.items():
            self.log(f"val/{dataset}/mIoU", float(m["mIoU"]), sync_dist=False)
        mean = sum(float(m["mIoU"]) for m in results.values()) / max(1, len(results))
        self.log("val/mIoU", mean, prog_bar=True, sync_dist=False)

    def on_test_epoch_end(self) -> None:
        results = self._compute("test")
        self._gather_skipped()
        for dataset, m in results.items():
            for key in ("mIoU", "fwIoU", "mACC", "pACC"):
                self.log(f"test/{dataset}/{key}", float(m[key]), sync_dist=False)
        if self.trainer.is_global_zero:
            self.write_test_results(results)

    def _gather_skipped(self) -> None:
        """The skipped files of every rank (each rank saw its own share of the images)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, self._skipped)
            merged: dict[str, list] = {}
            for part in gathered:
                for dataset, names in part.items():
                    merged.setdefault(dataset, []).extend(names)
            self._skipped = merged

    # -- results ----------------------------------------------------------------------------

    def results_dir(self) -> Path:
        if self.results_location:
            return Path(self.results_location)
        base = self.trainer.log_dir if self.trainer and self.trainer.log_dir else "."
        return Path(base) / "results"

    def write_test_results(self, results: dict[str, dict]) -> Path:
        """One metrics JSON/CSV/chart per dataset, and the summary table (paper's Table 1)."""
        out = self._results
        out.mkdir(parents=True, exist_ok=True)
        rows = {}
        for dataset, metrics in results.items():
            metrics = dict(metrics)
            confusion = metrics.pop("confusion_matrix", None)
            unassigned = metrics.pop("unassigned_per_class", None)
            spec = get_dataset_spec(dataset)
            names = load_vocabulary(spec.vocabulary).names
            names = names[: metrics["num_classes"]]
            if spec.unseen_classes:
                metrics.update(seen_unseen_scores(metrics, names, spec.unseen_classes))
            stem = dataset.replace(":", "_")  # coco171:train -> coco171_train.json
            write_results(metrics, out, names, name=stem)
            meta = {
                "dataset": dataset,
                "test_protocol": self.test_protocol,
                "command": command_line(),
                **self.run_record(dataset),
                "skipped": self._skipped.get(dataset, []),
                "metrics": metrics_to_json(metrics),
                "confusion_matrix": confusion,  # rows ground truth, columns prediction
            }
            if unassigned is not None:  # labelled pixels predicted as no class, per gt class
                meta["unassigned_per_class"] = unassigned
            write_text_atomic(out / f"{stem}.run.json", json.dumps(meta, indent=2) + "\n")
            rows[dataset] = 100 * float(metrics["mIoU"])
            log.info("%s: %s", dataset, format_metrics(metrics))
            rejection = meta.get("rejection")
            if rejection:  # DPSeg's class early rejection
                print(
                    f"{dataset}: class early rejection kept {100 * rejection['recall']:.1f}% of "
                    f"the images' true classes, decoding {rejection['kept_per_image']:.1f} of "
                    f"{rejection['classes']} classes per image"
                )
        order = [d for d in SUMMARY_ORDER if d in rows] + [
            d for d in rows if d not in SUMMARY_ORDER
        ]
        label = self.summary_label()
        header = "| model | " + " | ".join(order) + " |"
        line = "|" + "---|" * (len(order) + 1)
        row = f"| {label} | " + " | ".join(f"{rows[d]:.1f}" for d in order) + " |"
        table = "\n".join([header, line, row]) + "\n"
        write_text_atomic(out / "summary.md", table)
        write_text_atomic(
            out / "summary.csv",
            "model,"
            + ",".join(order)
            + "\n"
            + label
            + ","
            + ",".join(f"{rows[d]:.2f}" for d in order)
            + "\n",
        )
        print(f"\nmIoU (%) by dataset, results in {out}:\n{table}")
        return out

    # -- predict ----------------------------------------------------------------------------

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        """Label maps of the test datasets' images, written as PNG under results/predictions."""
        from PIL import Image

        dataset = self._eval_datasets("test")[dataloader_idx]
        out = self._results / "predictions" / dataset.replace(":", "_")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        if "image" not in batch:
            return written
        for image, name in zip(stack_images(batch), batch["name"]):
            labels = self.predict_labels(image, dataset).cpu().numpy()
            # ignore (-1, VIP's low-confidence pixels) is written as 255 / 65535
            mode_dtype = "uint8" if labels.max() < 255 else "uint16"
            path = out / f"{name}.png"
            save_image_atomic(Image.fromarray(labels.astype(mode_dtype)), path, "PNG")
            written.append({"dataset": dataset, "name": name, "path": str(path)})
        return written


def _key(dataset: str) -> str:
    """A ModuleDict key for a dataset name (no dots, colons or dashes)."""
    return dataset.replace(":", "__").replace(".", "_").replace("-", "_")
