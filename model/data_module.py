"""The Lightning data module: which datasets train, validate and test, each with its bank.

A split is a list of (dataset, bank) pairs (``DatasetBank``), so one ``cli.py test`` evaluates
several benchmarks, each with the prompt bank of its vocabulary (docs/design.md §1). Evaluation runs one
image per batch (images keep their size; the model's test protocol resizes or slides windows)
and, in DDP, every image on exactly one rank (no padding duplicates), so metrics of N processes
equal those of one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from data.catalog import DatasetError, DatasetSpec, get_dataset_spec
from data.datasets import BAD_SAMPLE_POLICIES, SegmentationFolder, collate
from data.transforms import TrainTransform, to_tensors


@dataclass
class DatasetBank:
    """One dataset and the prompt bank that covers its vocabulary."""

    dataset: str  # a dataset name of data.catalog (e.g. ade150, coco171:train, synthetic)
    bank: str | None = None  # bank path or URL; None: text prompts only (--allow-text-only)

    def __post_init__(self) -> None:
        get_dataset_spec(self.dataset)  # an unknown name fails here, listing the known ones

    @property
    def spec(self) -> DatasetSpec:
        return get_dataset_spec(self.dataset)


def _pairs(value, what: str) -> list[DatasetBank]:
    """Accept DatasetBank, dicts, or a single one (LightningCLI / Python callers)."""
    if value is None:
        return []
    if isinstance(value, DatasetBank | dict):
        value = [value]
    out = []
    for v in value:
        if isinstance(v, dict):
            unknown = set(v) - {"dataset", "bank"}
            if unknown:
                raise DatasetError(
                    f"data.{what}: entry {v} has unknown keys {sorted(unknown)}; each entry is "
                    "{dataset: NAME, bank: PATH}"
                )
            v = DatasetBank(**v)
        out.append(v)
    names = [p.dataset for p in out]
    if len(set(names)) != len(names):
        raise DatasetError(f"data.{what}: a dataset is listed twice ({names}); list each once")
    return out


MAX_CROP = 4096
"""The largest training crop side (ours: 5x the paper's 768; a batch of larger crops does not fit
in any GPU's memory with the encoder's features, and its allocation failed as a traceback)."""


class SegmentationData(L.LightningDataModule):
    """Datasets for fit, validate, test and predict.

    Args:
        train: the training dataset and its bank (e.g. ``{dataset: coco171:train, bank: ...}``).
        val: datasets validated during fit (and by ``validate``).
        test: datasets of ``test`` (and ``predict``); one metrics file each plus a summary.
        root: datasets root (default ``$DETECTRON2_DATASETS`` or ``./datasets``).
        crop: training crop side (docs/design.md §2.4: 768 ConvNeXt, 384 ViT); linked to the model.
        scale: training random resize range of the short side, as a fraction of ``crop``.
        batch_size: training images per process.
        num_workers: loader processes per dataloader.
        limit_eval: use only the first N images of each evaluated dataset (quick checks).
        on_bad_sample: ``error`` or ``skip`` (unreadable or mismatched files in evaluation).
    """

    def __init__(
        self,
        train: DatasetBank | None = None,
        val: list[DatasetBank] | None = None,
        test: list[DatasetBank] | None = None,
        root: str | None = None,
        crop: int = 384,
        scale: tuple[float, float] = (0.5, 2.0),
        batch_size: int = 4,
        num_workers: int = 2,
        limit_eval: int | None = None,
        on_bad_sample: str = "error",
    ):
        super().__init__()
        if on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise DatasetError(
                f"data.on_bad_sample={on_bad_sample!r}: use one of {', '.join(BAD_SAMPLE_POLICIES)}"
            )
        if batch_size < 1:
            raise DatasetError(f"data.batch_size={batch_size} must be >= 1")
        if not 8 <= crop <= MAX_CROP:
            raise DatasetError(
                f"data.crop={crop}: the training crop side in pixels, must be 8 to {MAX_CROP}"
            )
        if num_workers < 0:
            raise DatasetError(
                f"data.num_workers={num_workers}: loader processes, must be >= 0 (0: load in "
                "the training process)"
            )
        if limit_eval is not None and limit_eval < 1:
            raise DatasetError(
                f"data.limit_eval={limit_eval}: the first N images of each evaluated dataset, "
                "must be >= 1 (or null: all of them)"
            )
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise DatasetError(
                f"data.scale={list(scale)}: the random resize range [lo, hi], need 0 < lo <= hi"
            )
        self.train = _pairs(train, "train")
        self.val = _pairs(val, "val")
        self.test = _pairs(test, "test")
        self.root = root
        self.crop = crop
        self.scale = tuple(scale)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.limit_eval = limit_eval
        self.on_bad_sample = on_bad_sample

    def pairs(self, stage: str) -> list[DatasetBank]:
        """The (dataset, bank) pairs of a stage: fit/train, validate/val, test, predict."""
        return {
            "fit": self.train,
            "train": self.train,
            "validate": self.val,
            "val": self.val,
            "test": self.test,
            "predict": self.test,
        }[stage]

    @property
    def num_templates(self) -> int | None:
        """P of the banks (they must agree): the model's cost embedding is built for it. None
        when no bank is here (a method without banks; DPSeg then says what is missing)."""
        from prompt_bank.store import Bank, is_url

        counts = {}
        listed = [p.bank for p in [*self.train, *self.val, *self.test] if p.bank is not None]
        for bank in listed:  # banks absent here belong to another stage (fit vs test)
            if bank not in counts and (is_url(bank) or Path(bank).exists()):
                counts[bank] = len(Bank.open(bank).templates)
        if not counts:
            return None
        if len(set(counts.values())) > 1:
            listing = ", ".join(f"{b!r}: {n}" for b, n in counts.items())
            raise DatasetError(
                f"the banks have different numbers of templates ({listing}); a model is built "
                "for one P, so build every bank with the same --templates"
            )
        return next(iter(counts.values()))

    def _folder(self, pair: DatasetBank, transform, limit=None) -> SegmentationFolder:
        return SegmentationFolder(
            pair.dataset, self.root, self.on_bad_sample, transform=transform, limit=limit
        )

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1

    def train_dataloader(self) -> DataLoader:
        if len(self.train) != 1:
            raise DatasetError(
                f"fit needs exactly one training dataset in data.train, got {len(self.train)}"
            )
        dataset = self._folder(self.train[0], TrainTransform(self.crop, self.scale))
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=len(dataset) >= self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )

    def _eval_loaders(self, pairs: list[DatasetBank], what: str) -> list[DataLoader]:
        if not pairs:
            raise DatasetError(f"no dataset in data.{what}: give at least one {{dataset, bank}}")
        rank, world = self._rank_world()
        loaders = []
        for pair in pairs:
            dataset = self._folder(pair, to_tensors, self.limit_eval)
            sampler = None
            if world > 1:  # every image on exactly one rank: no padded duplicates
                sampler = UnrepeatedDistributedSampler(
                    dataset, num_replicas=world, rank=rank, shuffle=False
                )
            loaders.append(
                DataLoader(
                    dataset,
                    batch_size=1,
                    sampler=sampler,
                    num_workers=self.num_workers,
                    collate_fn=collate,
                )
            )
        return loaders

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.val, "val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.test, "test")

    def predict_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.test, "test")


def stack_images(batch: dict) -> torch.Tensor:
    """The image tensor of a batch (collate stacks equal shapes, else keeps a list)."""
    images = batch["image"]
    return images if isinstance(images, torch.Tensor) else torch.stack(images)
