"""Converters from the official benchmark downloads to the detectron2 layout of docs/design.md §5 (and to
the mmsegmentation layout of the training-free methods).

``python cli.py data prepare NAME --root DIR`` turns what the dataset authors publish into the
label maps that :mod:`data.catalog` describes, the same files CAT-Seg and SED evaluate on (their
``datasets/prepare_*.py`` scripts, after MaskFormer's). Facts about the raw formats used here:

- **coco171**: COCO-Stuff's ``stuffthingmaps`` are 8-bit grayscale PNGs whose value is the COCO
  category id - 1 (0..181) and 255 = unlabeled. 11 of the 182 ids were never used (thing ids
  dropped from COCO 2014's list), so the 171 used values are renumbered 0..170 in order.
- **ade150**: ADEChallengeData2016 PNGs hold 0 = "other" and 1..150 the classes: label - 1, and
  0 becomes the ignore value 255.
- **ade847**: the full ADE20K release (``ADE20K_2021_17_01``) encodes the class of a pixel in its
  ``*_seg.png`` as ``R // 10 * 256 + G``; value c is ``objectnames[c - 1]`` of
  ``index_ade20k.pkl`` (0 = unlabeled; the index is off by one from the mask, see
  CSAILVision/ADE20K issue #15). Classes are matched by name to CAT-Seg's 847-entry vocabulary,
  everything else becomes 65535. As MaskFormer's converter, images whose shorter side exceeds
  512 are resized so that it is 512 (image bilinear, label nearest) and labels are uint16 TIFFs.
- **pc459 / pc59**: PASCAL-Context ``trainval/<id>.mat`` files hold ``LabelMap`` (uint16, 1..459
  index the names of ``labels.txt``). PC-459 stores label - 1 as uint16 TIFF (0 -> 65535); PC-59
  keeps the 59 classes of the usual subset, which are ordered by their 459-id, -> 0..58, else 255.
  The 5104 validation ids come from ``pascalcontext_val.txt`` (shipped by CAT-Seg).
- **voc20 / voc20b**: VOC 2012 ``SegmentationClass`` PNGs are palette images whose indices are
  0 = background, 1..20 classes, 255 = void boundary. voc20 drops the background (-> 255),
  voc20b keeps it as class 20. (``voc21`` reads these PNGs as they are: nothing to prepare.)

Two more write the mmsegmentation layout of the training-free methods (SCLIP, ClearCLIP, VIP):

- **coco-object**: COCO-Stuff 164k as 80 things + background, GroupViT's
  ``convert_coco_object.py`` (which SCLIP and NACLIP ship as ``cvt_coco_object.py``): thing t
  (0..79 of coco171) -> t + 1, the 91 stuff classes -> 0 = background, and unlabeled -> 0 too
  (that script maps raw 255 to background, so the published numbers count unlabeled pixels as
  background). Read from mmseg's ``coco_stuff164k/annotations/val2017/<id>_labelTrainIds.png``
  (0..170 in coco171's order, 255 unlabeled), else from the coco171 labels of this project
  (``coco-stuff/annotations_detectron2/val2017``, same values); written as
  ``<id>_instanceTrainIds.png`` beside mmseg's files.
- **cityscapes**: ``gtFine/val/<city>/*_gtFine_labelIds.png`` -> ``*_gtFine_labelTrainIds.png``
  with the id -> trainId table of cityscapesScripts' ``labels.py`` (19 classes, else 255).

And the remote-sensing benchmarks of VIP, as mmsegmentation's converters write them (their code
read at open-mmlab/mmsegmentation ``tools/dataset_converters/{potsdam,vaihingen,isaid}.py``):

- **potsdam / vaihingen**: the official zips are read in place (``<root>/potsdam/2_Ortho_RGB.zip``
  + ``5_Labels_all_noBoundary.zip``; ``<root>/vaihingen/ISPRS_semantic_labeling_Vaihingen.zip`` +
  ``..._ground_truth_eroded_COMPLETE.zip``; where the zips go is ours, mmseg takes a folder of
  zips). The val tiles of mmseg's split lists (14 Potsdam tiles, 17 Vaihingen areas) are cut
  into 512 x 512 crops (:func:`isprs_boxes`: mmseg's window grid, so stride 256 does not give
  overlapping crops) named ``<tile>_<x0>_<y0>_<x1>_<y1>.png``; the RGB colour code becomes the
  on-disk index 0 (black, eroded boundary) .. 6 (:func:`isprs_colour_to_index`). Only val is
  written (ours: evaluation needs nothing else); Vaihingen images stay IRRG false colour, as
  mmseg (and so VIP) feeds them.
- **isaid**: DOTA-v1.0 val images (``<root>/iSAID/val/images/*.zip``) and iSAID semantic masks
  (``<root>/iSAID/val/Semantic_masks/*.zip``), mmseg's raw layout, -> 896 x 896 patches every 512
  pixels (:func:`isaid_windows`; smaller images padded, image 0, label 255), mask colours ->
  0..15 (:func:`isaid_colour_to_index`). mmseg saves the image patches as BMP data under a .png
  name; we write real PNGs (ours, same pixels), and pad any side shorter than 896 (mmseg leaves
  a side of exactly 896 next to a shorter one unpadded and slices at a negative offset).
- **vdd**: nothing to convert (VDD's ``test/gt`` PNGs hold 0..6); ``prepare vdd`` checks that
  ``VDD/test/src`` and ``VDD/test/gt`` pair up.

When the zips are absent but the mmseg layout is already on disk (made by mmseg's own
converters), ``prepare`` says so instead of failing.

Every output is written whole (temp file + ``os.replace``) and skipped when it is already there
and reads to its end (:func:`~data.prepare.common.whole_image`), so a rerun is a no-op, a killed
run resumes, and an output damaged since (cut short by a copy or a full disk) is written again. A missing or malformed download raises
:class:`~data.catalog.DatasetError` naming the file, what to download and where to put it.

Modules: :mod:`~data.prepare.common` (the datasets and their downloads, path checks, plans and
the threaded runner), :mod:`~data.prepare.natural` (coco171, ade150, voc20/voc20b, coco-object,
cityscapes), :mod:`~data.prepare.pascal_context` (pc59, pc459), :mod:`~data.prepare.ade847`,
:mod:`~data.prepare.remote_sensing` (potsdam, vaihingen, isaid, vdd) and
:mod:`~data.prepare.run` (:func:`prepare_dataset` and the command line); this package
re-exports their public names.
"""

from __future__ import annotations

from data.prepare.ade847 import (
    ADE847_MAX_SIDE,
    ADE_JPEG_QUALITY,
    ade847_lut,
    ade847_size,
    load_ade20k_index,
    resize_bilinear,
    resize_nearest,
)
from data.prepare.common import IGNORE_U8, IGNORE_U16, RAW_SOURCES, Job
from data.prepare.natural import (
    CITYSCAPES_TRAIN_IDS,
    COCO_OBJECT_UNLABELED,
    COCO_THINGS,
    COCO_UNUSED_IDS,
    ade150_lut,
    cityscapes_lut,
    coco171_lut,
    coco_object_lut,
    voc_lut,
)
from data.prepare.pascal_context import pc59_lut, pc459_lut, read_pascal_context_labels
from data.prepare.remote_sensing import (
    ISAID_COLOURS,
    ISAID_MASK_SUFFIX,
    ISAID_OVERLAP,
    ISAID_PATCH,
    ISPRS_CLIP,
    ISPRS_COLOURS,
    ISPRS_STRIDE,
    POTSDAM_VAL_TILES,
    VAIHINGEN_VAL_AREAS,
    isaid_colour_to_index,
    isaid_windows,
    isprs_boxes,
    isprs_colour_to_index,
)
from data.prepare.run import PREPARABLE, prepare_dataset

__all__ = [
    "ADE847_MAX_SIDE",
    "ADE_JPEG_QUALITY",
    "CITYSCAPES_TRAIN_IDS",
    "COCO_OBJECT_UNLABELED",
    "COCO_THINGS",
    "COCO_UNUSED_IDS",
    "IGNORE_U8",
    "IGNORE_U16",
    "ISAID_COLOURS",
    "ISAID_MASK_SUFFIX",
    "ISAID_OVERLAP",
    "ISAID_PATCH",
    "ISPRS_CLIP",
    "ISPRS_COLOURS",
    "ISPRS_STRIDE",
    "POTSDAM_VAL_TILES",
    "PREPARABLE",
    "RAW_SOURCES",
    "VAIHINGEN_VAL_AREAS",
    "Job",
    "ade150_lut",
    "ade847_lut",
    "ade847_size",
    "cityscapes_lut",
    "coco171_lut",
    "coco_object_lut",
    "isaid_colour_to_index",
    "isaid_windows",
    "isprs_boxes",
    "isprs_colour_to_index",
    "load_ade20k_index",
    "pc59_lut",
    "pc459_lut",
    "prepare_dataset",
    "read_pascal_context_labels",
    "resize_bilinear",
    "resize_nearest",
    "voc_lut",
]
