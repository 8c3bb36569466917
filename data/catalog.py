"""The benchmarks in the detectron2 layout that CAT-Seg and SED use (DESIGN §5).

Every dataset lives under a root (``$DETECTRON2_DATASETS``, default ``./datasets``). A
:class:`DatasetSpec` says where its images and label maps are, which on-disk label values mean
"ignore", how many classes it has and which vocabulary names them. Readers map every on-disk
ignore value to the one internal :data:`IGNORE_INDEX`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IGNORE_INDEX = -1
"""The internal ignore label (label maps are int64): one value for every dataset, since 255 is
a real class of ADE-847 and PC-459."""

DATASETS_ENV = "DETECTRON2_DATASETS"


class DatasetError(ValueError):
    """A dataset is missing, incomplete or malformed; the message names the files and the fix."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where one split of a benchmark lives and how its labels read."""

    name: str  # e.g. "ade150"; a split other than val is "<name>:<split>" (coco171:train)
    vocabulary: str  # vocabulary name of the class list (data.vocabulary)
    num_classes: int  # K: label values 0..K-1 are classes
    image_dir: str  # relative to the root
    label_dir: str  # relative to the root
    label_suffix: str  # ".png" or ".tif"
    ignore_values: tuple[int, ...]  # on-disk values that mean "not evaluated"
    expected_images: int | None  # the official count (DESIGN §5), for `data stats`
    index_by: str = "images"  # "images": every image needs a label; "labels": the label files
    # define the split (VOC/PASCAL-Context folders hold images of every split)
    image_suffixes: tuple[str, ...] = (".jpg", ".jpeg", ".png")
    prepare: str = ""  # how to make it: `cli.py data prepare ...`
    background_from: int | None = None  # voc20b: predictions >= this id count as background

    def image_root(self, root: str | os.PathLike) -> Path:
        return Path(root) / self.image_dir

    def label_root(self, root: str | os.PathLike) -> Path:
        return Path(root) / self.label_dir


def datasets_root(root: str | os.PathLike | None = None) -> Path:
    """The datasets root: the argument, else ``$DETECTRON2_DATASETS``, else ``./datasets``."""
    return Path(root if root is not None else os.environ.get(DATASETS_ENV, "datasets"))


_VOC10 = "VOCdevkit/VOC2010"
_VOC12 = "VOCdevkit/VOC2012"

DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("coco171", "coco171", 171, "coco-stuff/images/val2017",
                    "coco-stuff/annotations_detectron2/val2017", ".png", (255,), 5000,
                    prepare="cli.py data prepare coco171 --root DIR"),
        DatasetSpec("coco171:train", "coco171", 171, "coco-stuff/images/train2017",
                    "coco-stuff/annotations_detectron2/train2017", ".png", (255,), 118287,
                    prepare="cli.py data prepare coco171 --root DIR"),
        DatasetSpec("ade150", "ade150", 150, "ADEChallengeData2016/images/validation",
                    "ADEChallengeData2016/annotations_detectron2/validation", ".png", (255,),
                    2000, prepare="cli.py data prepare ade150 --root DIR"),
        DatasetSpec("ade847", "ade847", 847, "ADE20K_2021_17_01/images_detectron2/validation",
                    "ADE20K_2021_17_01/annotations_detectron2/validation", ".tif", (65535,),
                    2000, prepare="cli.py data prepare ade847 --root DIR"),
        DatasetSpec("pc59", "pc59", 59, f"{_VOC10}/JPEGImages",
                    f"{_VOC10}/annotations_detectron2/pc59_val", ".png", (255,), 5104,
                    index_by="labels", prepare="cli.py data prepare pc59 --root DIR"),
        # PC-459: 459 never occurs (DESIGN §5); 65535 marks pixels the .mat left unlabelled.
        DatasetSpec("pc459", "pc459", 459, f"{_VOC10}/JPEGImages",
                    f"{_VOC10}/annotations_detectron2/pc459_val", ".tif", (459, 65535), 5104,
                    index_by="labels", prepare="cli.py data prepare pc459 --root DIR"),
        DatasetSpec("voc20", "voc20", 20, f"{_VOC12}/JPEGImages",
                    f"{_VOC12}/annotations_detectron2/val", ".png", (255,), 1449,
                    index_by="labels", prepare="cli.py data prepare voc20 --root DIR"),
        # VOC with background: label 20 is background; the 59 prompts are VOC's 20 and 39
        # PASCAL-Context names, and any prediction >= 20 counts as background.
        DatasetSpec("voc20b", "voc20b", 21, f"{_VOC12}/JPEGImages",
                    f"{_VOC12}/annotations_detectron2_bg/val", ".png", (255,), 1449,
                    index_by="labels", prepare="cli.py data prepare voc20b --root DIR",
                    background_from=20),
        DatasetSpec("synthetic", "synthetic", 8, "synthetic/images/val",
                    "synthetic/annotations_detectron2/val", ".png", (255,), None,
                    prepare="cli.py data synthetic --root DIR"),
        DatasetSpec("synthetic:train", "synthetic", 8, "synthetic/images/train",
                    "synthetic/annotations_detectron2/train", ".png", (255,), None,
                    prepare="cli.py data synthetic --root DIR"),
    ]
}  # fmt: skip


def get_dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DatasetError(
            f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (a split other than val is "
            "NAME:SPLIT, e.g. coco171:train)"
        )
    return DATASETS[name]
