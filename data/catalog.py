"""The benchmarks: the detectron2 layout that CAT-Seg and SED use (docs/design.md §5), and the
mmsegmentation layout of the training-free methods (SCLIP, ClearCLIP, VIP).

Every dataset lives under a root (``$DETECTRON2_DATASETS``, default ``./datasets``). A
:class:`DatasetSpec` says where its images and label maps are, which images form the split,
which on-disk label values mean "ignore", how many classes it has and which vocabulary names
them. Readers map every on-disk ignore value to the one internal :data:`IGNORE_INDEX`.

The mmsegmentation-layout benchmarks keep background as class 0 (it is scored):

- ``voc21``: VOC 2012 ``SegmentationClass`` palette PNGs (0 background, 1..20, 255 void), the
  1449 ids of ``ImageSets/Segmentation/val.txt``.
- ``pc60``: PASCAL-Context ``SegmentationClassContext`` (0 background, 1..59 = pc59), the ids of
  ``ImageSets/SegmentationContext/val.txt`` (both written by mmseg's ``pascal_context.py``).
- ``coco-object``: COCO-Stuff 164k as 80 things + background, ``<id>_instanceTrainIds.png``
  (GroupViT's conversion, made by ``cli.py data prepare coco-object``).
- ``cityscapes``: ``cityscapes/leftImg8bit/val/<city>/<stem>_leftImg8bit.png`` with
  ``cityscapes/gtFine/val/<city>/<stem>_gtFine_labelTrainIds.png`` (19 trainIds, 255 ignore;
  made by ``cli.py data prepare cityscapes``), as detectron2's ``cityscapes`` folder.

The remote-sensing benchmarks of VIP (its ``cfg_potsdam.py``, ``cfg_vaihingen.py``,
``cfg_iSAID.py``, ``cfg_vdd.py``, read with mmsegmentation's dataset classes):

- ``potsdam`` / ``vaihingen``: ``<name>/img_dir/val/*.png`` with ``<name>/ann_dir/val/*.png``,
  512 x 512 crops of the ISPRS tiles written by mmseg's ``potsdam.py`` / ``vaihingen.py`` (or
  ``cli.py data prepare potsdam|vaihingen``). Six classes: impervious surface, building, low
  vegetation, tree, car, clutter. mmseg's ``PotsdamDataset`` / ``ISPRSDataset`` set
  ``reduce_zero_label=True``: on disk 0 is the eroded boundary (ignore) and 1..6 are the classes
  0..5 (``DatasetSpec.reduce_zero_label``).
- ``isaid``: ``iSAID/img_dir/val/<id>.png`` with ``iSAID/ann_dir/val/<id>_instance_color_RGB.png``
  (mmseg's ``iSAIDDataset`` suffix; 896 x 896 patches by mmseg's ``isaid.py`` or ``cli.py data
  prepare isaid``): 0 background + 15 classes, 255 ignore (padding), reduce_zero_label False.
- ``vdd``: ``VDD/test/src/*.JPG`` with ``VDD/test/gt/*.png`` as the VDD download has them
  (SegEarth-OV's ``VDDDataset``, which VIP uses): 0..6 = other, wall, road, vegetation,
  vehicle, roof, water; 255 ignore.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from data.toy_world import unseen_names

IGNORE_INDEX = -1
"""The internal ignore label (label maps are int64): one value for every dataset, since 255 is
a real class of ADE-847 and PC-459."""

DATASETS_ENV = "DETECTRON2_DATASETS"


class DatasetError(UserError, ValueError):
    """A dataset is missing, incomplete or malformed; the message names the files and the fix."""


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """Where one split of a benchmark lives and how its labels read (keyword arguments only)."""

    name: str  # e.g. "ade150"; a split other than val is "<name>:<split>" (coco171:train)
    vocabulary: str  # vocabulary name of the class list (data.vocabulary)
    num_classes: int  # K: label values 0..K-1 are classes
    image_dir: str  # relative to the root
    label_dir: str  # relative to the root
    label_suffix: str  # ".png" or ".tif"
    ignore_values: tuple[int, ...]  # on-disk values that mean "not evaluated"
    expected_images: int | None  # the official count (docs/design.md §5), for `data stats`
    index_by: str = "images"  # "images": every image needs a label; "labels": the label files
    # define the split (VOC/PASCAL-Context folders hold images of every split)
    image_suffixes: tuple[str, ...] = (".jpg", ".jpeg", ".png")
    prepare: str = ""  # how to make it: `cli.py data prepare ...`, or what to unpack where
    background_from: int | None = None  # voc20b: predictions >= this id count as background
    split_file: str = ""  # relative to the root: the split's ids, one per line (mmseg's
    # ann_file); when set it defines the split and index_by is not used
    image_id_suffix: str = ""  # end of an image's stem after the sample id ("_leftImg8bit"):
    # stripped to pair it; images whose stem lacks it are not part of the dataset
    label_id_suffix: str = ""  # likewise for labels ("_gtFine_labelTrainIds"); other files in
    # the label folder (Cityscapes' *_labelIds.png, COCO's *_labelTrainIds.png) are passed over
    recursive: bool = False  # search the folders recursively (Cityscapes: one folder per city)
    unseen_classes: tuple[str, ...] = ()  # classes kept out of training (the toy world): the
    # results then give mIoU over seen and unseen classes and their harmonic mean
    reduce_zero_label: bool = False  # mmseg's flag: on-disk 0 is ignore (so 0 must be among
    # ignore_values) and on-disk value v is class v - 1 (ISPRS Potsdam/Vaihingen)

    def __post_init__(self) -> None:
        if self.index_by not in ("images", "labels"):
            raise ValueError(f"{self.name}: index_by={self.index_by!r}; use 'images' or 'labels'")
        if self.reduce_zero_label and 0 not in self.ignore_values:
            raise ValueError(
                f"{self.name}: reduce_zero_label makes on-disk 0 an ignore value; add 0 to "
                f"ignore_values {self.ignore_values}"
            )

    @property
    def label_offset(self) -> int:
        """On-disk value of class 0: 1 with reduce_zero_label (class k is stored as k + 1)."""
        return 1 if self.reduce_zero_label else 0

    def image_root(self, root: str | os.PathLike) -> Path:
        return Path(root) / self.image_dir

    def label_root(self, root: str | os.PathLike) -> Path:
        return Path(root) / self.label_dir

    def split_path(self, root: str | os.PathLike) -> Path | None:
        return Path(root) / self.split_file if self.split_file else None


def datasets_root(root: str | os.PathLike | None = None) -> Path:
    """The datasets root: the argument, else ``$DETECTRON2_DATASETS``, else ``./datasets``."""
    return Path(root if root is not None else os.environ.get(DATASETS_ENV, "datasets"))


_VOC10 = "VOCdevkit/VOC2010"
_VOC12 = "VOCdevkit/VOC2012"

DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec(
            name="coco171",
            vocabulary="coco171",
            num_classes=171,
            image_dir="coco-stuff/images/val2017",
            label_dir="coco-stuff/annotations_detectron2/val2017",
            label_suffix=".png",
            ignore_values=(255,),
            expected_images=5000,
            prepare="cli.py data prepare coco171 --root DIR",
        ),
        DatasetSpec(
            name="coco171:train",
            vocabulary="coco171",
            num_classes=171,
            image_dir="coco-stuff/images/train2017",
            label_dir="coco-stuff/annotations_detectron2/train2017",
            label_suffix=".png",
            ignore_values=(255,),
            expected_images=118287,
            prepare="cli.py data prepare coco171 --root DIR",
        ),
        DatasetSpec(
            name="ade150",
            vocabulary="ade150",
            num_classes=150,
            image_dir="ADEChallengeData2016/images/validation",
            label_dir="ADEChallengeData2016/annotations_detectron2/validation",
            label_suffix=".png",
            ignore_values=(255,),
            expected_images=2000,
            prepare="cli.py data prepare ade150 --root DIR",
        ),
        DatasetSpec(
            name="ade847",
            vocabulary="ade847",
            num_classes=847,
            image_dir="ADE20K_2021_17_01/images_detectron2/validation",
            label_dir="ADE20K_2021_17_01/annotations_detectron2/validation",
            label_suffix=".tif",
            ignore_values=(65535,),
            expected_images=2000,
            prepare="cli.py data prepare ade847 --root DIR",
        ),
        DatasetSpec(
            name="pc59",
            vocabulary="pc59",
            num_classes=59,
            image_dir=f"{_VOC10}/JPEGImages",
            label_dir=f"{_VOC10}/annotations_detectron2/pc59_val",
            label_suffix=".png",
            ignore_values=(255,),
            expected_images=5104,
            index_by="labels",
            prepare="cli.py data prepare pc59 --root DIR",
        ),
        # PC-459: 459 never occurs (docs/design.md §5); 65535 marks pixels the .mat left unlabelled.
        DatasetSpec(
            name="pc459",
            vocabulary="pc459",
            num_classes=459,
            image_dir=f"{_VOC10}/JPEGImages",
            label_dir=f"{_VOC10}/annotations_detectron2/pc459_val",
            label_suffix=".tif",
            ignore_values=(459, 65535),
            expected_images=5104,
            index_by="labels",
            prepare="cli.py data prepare pc459 --root DIR",
        ),
        DatasetSpec(
            name="voc20",
            vocabulary="voc20",
            num_classes=20,
            image_dir=f"{_VOC12}/JPEGImages",
            label_dir=f"{_VOC12}/annotations_detectron2/val",
            label_suffix=".png",
            ignore_values=(255,),
            expected_images=1449,
            index_by="labels",
            prepare="cli.py data prepare voc20 --root DIR",
        ),
        # VOC with background: label 20 is background; the 59 prompts are VOC's 20 and 39
        # PASCAL-Context names, and any prediction >= 20 counts as background.
        DatasetSpec(
            name="voc20b",
            vocabulary="voc20b",
            num_classes=21,
            image_dir=f"{_VOC12}/JPEGImages",
            label_dir=f"{_VOC12}/annotations_detectron2_bg/val",
            label_suffix=".png",
            ignore_values=(255,),
            expected_images=1449,
            index_by="labels",
            prepare="cli.py data prepare voc20b --root DIR",
            background_from=20,
        ),
        # mmsegmentation layout (SCLIP, ClearCLIP, VIP): background is class 0 and is scored.
        DatasetSpec(
            name="voc21",
            vocabulary="voc21",
            num_classes=21,
            image_dir=f"{_VOC12}/JPEGImages",
            label_dir=f"{_VOC12}/SegmentationClass",
            label_suffix=".png",
            ignore_values=(255,),
            expected_images=1449,
            split_file=f"{_VOC12}/ImageSets/Segmentation/val.txt",
            prepare="unpack VOCtrainval_11-May-2012.tar of PASCAL VOC 2012 into DIR",
        ),
        # 5104, not the 5105 of the PASCAL-Context paper: mmseg's pascal_context.py (Detail API)
        # writes 5104 val ids (mmsegmentation issue #394), the count of CAT-Seg's pc59 list too.
        DatasetSpec(
            name="pc60",
            vocabulary="pc60",
            num_classes=60,
            image_dir=f"{_VOC10}/JPEGImages",
            label_dir=f"{_VOC10}/SegmentationClassContext",
            label_suffix=".png",
            ignore_values=(255,),
            expected_images=5104,
            split_file=f"{_VOC10}/ImageSets/SegmentationContext/val.txt",
            prepare="run mmsegmentation's tools/dataset_converters/pascal_context.py "
            "DIR/VOCdevkit DIR/VOCdevkit/VOC2010/trainval_merged.json (it writes "
            "SegmentationClassContext and ImageSets/SegmentationContext)",
        ),
        DatasetSpec(
            name="coco-object",
            vocabulary="coco_object",
            num_classes=81,
            image_dir="coco_stuff164k/images/val2017",
            label_dir="coco_stuff164k/annotations/val2017",
            label_suffix=".png",
            ignore_values=(255,),
            expected_images=5000,
            label_id_suffix="_instanceTrainIds",
            prepare="cli.py data prepare coco-object --root DIR",
        ),
        DatasetSpec(
            name="cityscapes",
            vocabulary="cityscapes",
            num_classes=19,
            image_dir="cityscapes/leftImg8bit/val",
            label_dir="cityscapes/gtFine/val",
            label_suffix=".png",
            ignore_values=(255,),
            expected_images=500,
            image_id_suffix="_leftImg8bit",
            label_id_suffix="_gtFine_labelTrainIds",
            recursive=True,
            prepare="cli.py data prepare cityscapes --root DIR",
        ),
        # Remote sensing, as VIP reads them (mmseg's dataset classes). ISPRS: on-disk 0 is the
        # eroded boundary, 1..6 the classes (reduce_zero_label); mmseg's docs count 2016 and
        # 398 val crops. iSAID: 255 is the padding of images smaller than a patch; 11644 val
        # patches (mmseg's docs). VDD: its test split; the count is not pinned (unverified).
        DatasetSpec(
            name="potsdam",
            vocabulary="potsdam",
            num_classes=6,
            image_dir="potsdam/img_dir/val",
            label_dir="potsdam/ann_dir/val",
            label_suffix=".png",
            ignore_values=(0, 255),
            expected_images=2016,
            reduce_zero_label=True,
            prepare="cli.py data prepare potsdam --root DIR",
        ),
        DatasetSpec(
            name="vaihingen",
            vocabulary="vaihingen",
            num_classes=6,
            image_dir="vaihingen/img_dir/val",
            label_dir="vaihingen/ann_dir/val",
            label_suffix=".png",
            ignore_values=(0, 255),
            expected_images=398,
            reduce_zero_label=True,
            prepare="cli.py data prepare vaihingen --root DIR",
        ),
        DatasetSpec(
            name="isaid",
            vocabulary="isaid",
            num_classes=16,
            image_dir="iSAID/img_dir/val",
            label_dir="iSAID/ann_dir/val",
            label_suffix=".png",
            ignore_values=(255,),
            expected_images=11644,
            label_id_suffix="_instance_color_RGB",
            prepare="cli.py data prepare isaid --root DIR",
        ),
        DatasetSpec(
            name="vdd",
            vocabulary="vdd",
            num_classes=7,
            image_dir="VDD/test/src",
            label_dir="VDD/test/gt",
            label_suffix=".png",
            ignore_values=(255,),
            expected_images=None,
            prepare="download VDD (https://github.com/RussRobin/VDD) and unzip it into "
            "DIR/VDD so that DIR/VDD/test/src and DIR/VDD/test/gt exist (`cli.py data "
            "prepare vdd --root DIR` checks them)",
        ),
        # toy: the test split (reported); toy:val: the split settings are chosen on
        DatasetSpec(
            name="toy",
            vocabulary="toy",
            num_classes=31,
            image_dir="toy/images/test",
            label_dir="toy/annotations_detectron2/test",
            label_suffix=".png",
            ignore_values=(255,),
            expected_images=None,
            prepare="cli.py data toy --root DIR",
            unseen_classes=tuple(unseen_names()),
        ),
        DatasetSpec(
            name="toy:val",
            vocabulary="toy",
            num_classes=31,
            image_dir="toy/images/val",
            label_dir="toy/annotations_detectron2/val",
            label_suffix=".png",
            ignore_values=(255,),
            expected_images=None,
            prepare="cli.py data toy --root DIR",
            unseen_classes=tuple(unseen_names()),
        ),
        DatasetSpec(
            name="toy:train",
            vocabulary="toy_seen",
            num_classes=25,
            image_dir="toy/images/train",
            label_dir="toy/annotations_detectron2/train",
            label_suffix=".png",
            ignore_values=(255,),
            expected_images=None,
            prepare="cli.py data toy --root DIR",
        ),
        DatasetSpec(
            name="synthetic",
            vocabulary="synthetic",
            num_classes=8,
            image_dir="synthetic/images/val",
            label_dir="synthetic/annotations_detectron2/val",
            label_suffix=".png",
            ignore_values=(255,),
            expected_images=None,
            prepare="cli.py data synthetic --root DIR",
        ),
        DatasetSpec(
            name="synthetic:train",
            vocabulary="synthetic",
            num_classes=8,
            image_dir="synthetic/images/train",
            label_dir="synthetic/annotations_detectron2/train",
            label_suffix=".png",
            ignore_values=(255,),
            expected_images=None,
            prepare="cli.py data synthetic --root DIR",
        ),
    ]
}


def get_dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DatasetError(
            f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (a split other than val is "
            "NAME:SPLIT, e.g. coco171:train)"
        )
    return DATASETS[name]
