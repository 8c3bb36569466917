"""Class early rejection on a large vocabulary: the toy classes plus every ade847 name.

    .venv/bin/python benchmarks/rejection_recall.py [--ckpt demo_out/.../last.ckpt]
        [--bank demo_out/banks/toy.zarr] [--distractors demo_out/banks/ade847_toy.zarr]
        [--data demo_out/datasets] [--images 500] [--threshold 0.05 0.2] [--max-classes 48 [96 ...]]
        [--order standout rank] [--split val]

The distractor bank is built once with the toy preset (the same encoder and templates; the toy
renderer draws a name it does not know as background alone, so each distractor's visual prompt
is a picture of background), or ``--text-distractors`` gives them text prompts only (the ade847
list from ``$DPSEG_VOCAB_DIR``):

    DPSEG_VOCAB_DIR=../shared/vocab/catseg cli.py bank build --vocab ade847 --preset toy \\
        --templates imagenet80 --out demo_out/banks/ade847_toy.zarr

A trained toy DPSeg (``make demo``'s) segments the first ``--images`` of the ``toy`` test split
with the vocabulary "toy classes + the ade847 names not among them" (K = 31 + 847 - shared),
through ``Predictor`` (the user's path), without and with rejection (``rejection_threshold`` each
of ``--threshold``, alone and with each ``rejection_max_classes`` in each ``--order``; and each
bound without a threshold). Prints per setting:

- recall: the share of each image's true classes that round I kept (summed over images);
- classes decoded per image, and how many of them are distractors;
- mIoU over the toy classes (a pixel given a distractor counts as wrong), beside the same model
  on the toy vocabulary alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.predictor import Predictor

DEMO = Path("demo_out")


def miou(confusion: np.ndarray) -> float:
    """Mean IoU over the classes present in the truth (rows)."""
    tp = np.diag(confusion)[: confusion.shape[0]]
    union = confusion.sum(1) + confusion[:, : confusion.shape[0]].sum(0) - tp
    present = confusion.sum(1) > 0
    return float((tp[present] / union[present]).mean())


def evaluate(
    predictor: Predictor, images, labels, num_true: int, threshold, max_classes, order
) -> dict:
    config = predictor.module.inference_config
    config.rejection_threshold, config.rejection_max_classes = threshold, max_classes
    config.rejection_order = order
    predictor.module.segmenter.config = config
    segmenter = predictor.module.segmenter
    k = predictor.prompts.num_classes
    confusion = np.zeros((num_true, k), dtype=np.int64)
    true = kept_true = kept = distractors = 0
    start = time.perf_counter()
    for image, label in zip(images, labels):
        segmenter.kept = None
        pred = predictor.predict(image)
        valid = (label >= 0) & (label < num_true)
        np.add.at(confusion, (label[valid], pred[valid]), 1)
        if segmenter.kept is not None:  # rejection on
            present = np.unique(label[valid])
            mask = segmenter.kept.numpy()
            true += len(present)
            kept_true += int(mask[present].sum())
            kept += int(mask.sum())
            distractors += int(mask[num_true:].sum())
    n = len(images)
    return {
        "threshold": threshold,
        "max_classes": max_classes,
        "order": order if max_classes else None,
        "classes": k,
        "mIoU": 100 * miou(confusion),
        "recall": kept_true / true if true else None,
        "decoded": kept / n if config.rejects else k,
        "distractors_decoded": distractors / n if config.rejects else k - num_true,
        "s_per_image": (time.perf_counter() - start) / n,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default=str(DEMO / "runs/dpseg/demo/checkpoints/last.ckpt"))
    parser.add_argument("--bank", default=str(DEMO / "banks/toy.zarr"))
    parser.add_argument("--distractors", default=str(DEMO / "banks/ade847_toy.zarr"))
    parser.add_argument("--data", default=str(DEMO / "datasets"))
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--threshold", type=float, nargs="+", default=[0.05, 0.2])
    parser.add_argument("--max-classes", type=int, nargs="+", default=[48])
    parser.add_argument(
        "--order",
        nargs="+",
        choices=("standout", "rank"),
        default=["standout"],
        help="which classes the bound keeps (rejection_order), each",
    )
    parser.add_argument("--split", default="test", help="the toy split (val: to choose settings)")
    parser.add_argument(
        "--text-distractors",
        action="store_true",
        help="distractors with text prompts only (no --distractors bank)",
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None, help="recall against classes decoded (PNG)")
    parser.add_argument(
        "--from-json", default=None, help="print and plot the rows of an earlier --json"
    )
    args = parser.parse_args()
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())
        print_rows(rows)
        if args.plot:
            plot_recall(rows, args.plot)
        return 0
    from PIL import Image

    from data.vocabulary import Vocabulary, load_vocabulary
    from prompt_bank.store import Bank

    for path in (args.ckpt, args.bank, *([] if args.text_distractors else [args.distractors])):
        if not Path(path).exists():
            parser.error(f"{path}: not found (make demo, then the bank build in this docstring)")
    predictor = Predictor.from_checkpoint(args.ckpt)
    toy = load_vocabulary("toy")
    taken = {n.lower() for n in toy.names}
    if args.text_distractors:  # entries with synonyms: ade847 repeats some canonical names
        entries = load_vocabulary("ade847", allow_duplicates=True).entries
    else:
        entries = Bank.open(args.distractors).classes
    extra = [e for e in entries if e.split(",")[0].strip().lower() not in taken]
    large = Vocabulary.from_entries(
        [*toy.entries, *extra], name="toy+ade847", allow_duplicates=True
    )
    root = Path(args.data) / "toy"
    paths = sorted((root / "images" / args.split).iterdir())[: args.images]
    images = [np.array(Image.open(p).convert("RGB")) for p in paths]
    labels = [
        np.array(Image.open(root / "annotations_detectron2" / args.split / f"{p.stem}.png")).astype(
            np.int64
        )
        for p in paths
    ]
    labels = [np.where(lb == 255, -1, lb) for lb in labels]
    num_true = len(toy)
    rows = []
    predictor.set_vocabulary(toy, bank=args.bank)
    settings = [(None, None, None)]
    for t in args.threshold:
        settings += [(t, None, None)] + [(t, m, o) for m in args.max_classes for o in args.order]
    settings += [(None, m, o) for m in args.max_classes for o in args.order]  # the bound alone
    for threshold, cap, order in settings:
        result = evaluate(predictor, images, labels, num_true, threshold, cap, order)
        rows.append({"vocabulary": "toy", **result})
    if args.text_distractors:
        predictor.set_vocabulary(large, bank=args.bank, text_only=True)
    else:
        predictor.set_vocabulary(large, bank=args.bank, extra_banks=[args.distractors])
    for threshold, cap, order in settings:
        result = evaluate(predictor, images, labels, num_true, threshold, cap, order)
        rows.append({"vocabulary": f"toy + {len(extra)} ade847 names", **result})
    print(f"{len(images)} toy {args.split} images, {args.ckpt}")
    print_rows(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    if args.plot:
        plot_recall(rows, args.plot)
    return 0


def print_rows(rows: list[dict]) -> None:
    print(
        "| vocabulary | K | rejection | recall | decoded / image | distractors decoded | "
        "mIoU (toy classes) | s / image |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        parts = [f"p >= {r['threshold']}"] if r["threshold"] is not None else []
        if r["max_classes"]:
            parts.append(f"at most {r['max_classes']} by {r.get('order') or 'rank'}")
        rejection = ", ".join(parts) or "off"
        recall = "—" if r["recall"] is None else f"{r['recall']:.3f}"
        print(
            f"| {r['vocabulary']} | {r['classes']} | {rejection} | {recall} | "
            f"{r['decoded']:.1f} | {r['distractors_decoded']:.1f} | {r['mIoU']:.1f} | "
            f"{r['s_per_image']:.3f} |"
        )


def plot_recall(rows: list[dict], path: str) -> None:
    """Recall against classes decoded per image, one line per (vocabulary, threshold) over the
    bounds, the 0.98 asked for dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["recall"] is not None:
            key = (r["vocabulary"], r["threshold"], r.get("order") or "rank")
            lines.setdefault(key, []).append(r)
    for (vocabulary, threshold, order), points in lines.items():
        points = sorted(points, key=lambda r: r["decoded"])
        xs, ys = [r["decoded"] for r in points], [r["recall"] for r in points]
        where = "no threshold" if threshold is None else f"p >= {threshold}"
        ax.plot(xs, ys, marker="o", label=f"{vocabulary}, {where}, by {order}")
        labels: dict[tuple, list[str]] = {}  # bounds that change nothing share one point
        for r in points:
            where = (round(r["decoded"], 1), r["recall"])
            labels.setdefault(where, []).append(str(r["max_classes"] or "no bound"))
        for (x, y), names in labels.items():
            ax.annotate(
                ", ".join(names), (x, y), fontsize=7, xytext=(4, -10), textcoords="offset points"
            )
    ax.axhline(0.98, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ticks = [10, 20, 50, 100, 200, 500, 1000]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("classes decoded per image (log; labels: rejection_max_classes)")
    ax.set_ylabel("recall of the true classes")
    ax.set_title("Class early rejection: recall against classes decoded")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
