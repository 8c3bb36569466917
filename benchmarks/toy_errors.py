"""What a toy-world DPSeg gets wrong: the classes its pixels go to, and accuracy by object size.

    python benchmarks/toy_errors.py --ckpt claims_out/runs/full_seed0/dpseg/run/checkpoints/last.ckpt \\
        --root claims_out/datasets --bank claims_out/banks/toy.zarr --images 300

Prints, per class, its IoU and the four classes its pixels are predicted as most often (the
confusion matrix's row), then, per object size (the pixel area of a class in an image), the share
of its pixels labelled right and the share of objects whose majority label is right. ``--size``
feeds the network at another square side than the checkpoint's (test-time scaling).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.transforms import ResizeSquare
from model.predictor import Predictor

AREAS = (0, 100, 300, 1000, 3000, 1 << 30)  # px


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--root", default="datasets", help="holds toy/ (cli.py data toy)")
    parser.add_argument("--bank", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=None, help="network input side (px)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.ckpt)
    if args.size:
        predictor.protocol = lambda: ResizeSquare(args.size)
    predictor.set_vocabulary("toy", bank=args.bank)
    names = predictor.vocabulary.names
    folder = Path(args.root) / "toy"
    images = sorted((folder / "images" / args.split).glob("*"))[: args.images]
    k = len(names)
    confusion = np.zeros((k, k), np.int64)
    bins = len(AREAS) - 1
    right, total, objects, majority = (np.zeros(bins) for _ in range(4))
    for path in images:
        truth = np.array(
            Image.open(folder / "annotations_detectron2" / args.split / f"{path.stem}.png")
        )
        pred = predictor.predict(np.asarray(Image.open(path).convert("RGB")))
        known = truth != 255
        np.add.at(confusion, (truth[known], pred[known]), 1)
        for c in np.unique(truth[known]):
            if c == 0:  # background is not an object
                continue
            mask = truth == c
            b = np.searchsorted(AREAS, mask.sum(), side="right") - 1
            labels, counts = np.unique(pred[mask], return_counts=True)
            right[b] += (pred[mask] == c).sum()
            total[b] += mask.sum()
            objects[b] += 1
            majority[b] += labels[counts.argmax()] == c
    inter = np.diag(confusion)
    iou = inter / np.maximum(confusion.sum(0) + confusion.sum(1) - inter, 1)
    print(f"{len(images)} {args.split} images; mIoU {100 * iou.mean():.1f}")
    for c in range(1, k):
        row = confusion[c] / max(confusion[c].sum(), 1)
        top = ", ".join(f"{names[j]} {row[j]:.2f}" for j in np.argsort(-row)[:4])
        print(f"  {names[c]:<16} IoU {iou[c]:.2f} -> {top}")
    print("by object size (pixel area of a class in an image):")
    for b in range(bins):
        high = "+" if AREAS[b + 1] == AREAS[-1] else f"-{AREAS[b + 1]}"
        print(
            f"  {AREAS[b]:>5}{high:<6} px: {int(objects[b]):4d} objects, pixels right "
            f"{right[b] / max(total[b], 1):.2f}, majority right {majority[b] / max(objects[b], 1):.2f}"
        )


if __name__ == "__main__":
    main()
