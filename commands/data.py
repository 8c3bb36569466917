"""``data synthetic|toy|stats|prepare`` and ``eval-masks``: datasets and scoring saved masks."""

from __future__ import annotations

import argparse
import json

from commands.options import ROOT_HELP, Command, lazy


def _write_dataset(args: argparse.Namespace, config_class, write, class_names, what: str) -> int:
    """Write a rendered dataset (synthetic, toy) in the detectron2 layout, with a preview."""
    from pathlib import Path

    from data.catalog import datasets_root
    from data.errors import check_output_file, check_output_folder

    splits = {"train_images": args.train, "val_images": args.val}
    if getattr(args, "test", None) is not None:
        splits["test_images"] = args.test
    config = config_class(**splits, size=args.size, seed=args.seed)  # SettingError: one line
    check_output_folder(datasets_root(args.root), "--root")  # before any image is drawn
    if args.preview:
        check_output_file(args.preview, "--preview", example="preview.png")
    summary = write(datasets_root(args.root), config, progress=not args.quiet)
    counts = " + ".join(f"{summary[s]} {s}" for s in config.split_sizes())
    print(
        f"{what}: {counts} images in {summary['root']} "
        f"({summary['written']} written, {summary['seconds']} s)"
    )
    if args.preview:
        from data.preview import write_dataset_preview

        path = write_dataset_preview(Path(summary["root"]), class_names, args.preview, count=8)
        print(f"preview: {path}")
    return 0


def cmd_data_synthetic(args: argparse.Namespace) -> int:
    """Write the synthetic dataset in the detectron2 layout, optionally with a preview picture."""
    from data.synthetic import SyntheticConfig, synthetic_class_names, write_synthetic_dataset

    return _write_dataset(args, SyntheticConfig, write_synthetic_dataset,
                          synthetic_class_names(), "synthetic dataset")  # fmt: skip


def cmd_data_toy(args: argparse.Namespace) -> int:
    """Write the toy world's segmentation dataset (toy:train, toy:val, toy = its test split),
    optionally with a preview."""
    from data.toy_world import ToySceneConfig, class_names, write_toy_dataset

    return _write_dataset(args, ToySceneConfig, write_toy_dataset, class_names(),
                          "toy world (train: seen classes; val, test: all)")  # fmt: skip


def cmd_data_stats(args: argparse.Namespace) -> None:
    """Counts, label values, pixels per class and problems of a prepared dataset."""
    from data.stats import dataset_stats, format_stats

    stats = dataset_stats(args.name, args.root, progress=not (args.quiet or args.json))
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))


def _dataset_options(train: int, val: int, what: str, test: int | None = None):
    def options(p) -> None:
        p.add_argument("--root", default=None, help=ROOT_HELP)
        p.add_argument("--train", type=int, default=train, help=f"train images{what}")
        p.add_argument("--val", type=int, default=val, help="val images")
        if test is not None:
            p.add_argument("--test", type=int, default=test, help="test images")
        p.add_argument("--size", type=int, default=128, help="image side in pixels")
        p.add_argument("--seed", type=int, default=0, help="base seed")
        p.add_argument("--preview", metavar="PNG", help="also write a picture of a few val samples")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    return options


def _data_stats_options(p) -> None:
    from data.catalog import DATASETS

    p.add_argument("name", choices=list(DATASETS), metavar="NAME", help=", ".join(DATASETS))
    p.add_argument("--root", default=None, help=ROOT_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output, every count")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


COMMANDS = {
    "eval-masks": Command(
        "score saved prediction maps against label maps (mIoU, fwIoU, mACC, pACC)",
        lazy("data.eval_masks", "eval_masks_options"),
        lazy("data.eval_masks", "cmd_eval_masks"),
    ),
    "data": Command(
        "datasets: write synthetic/toy ones, check one, convert a benchmark download",
        subcommands={
            "synthetic": Command(
                "write the synthetic dataset (detectron2 layout)",
                _dataset_options(400, 64, ""),
                cmd_data_synthetic,
            ),
            "toy": Command(
                "write the toy world's dataset: toy:train, toy:val, toy (test)",
                _dataset_options(6000, 300, ", seen classes (val, test: all)", test=2000),
                cmd_data_toy,
            ),
            "stats": Command(
                "check a prepared dataset: counts, values, problems",
                _data_stats_options,
                cmd_data_stats,
            ),
            "prepare": Command(
                "convert an official benchmark download into the detectron2 layout",
                lazy("data.prepare", "prepare_options"),
                lazy("data.prepare", "cmd_prepare"),
            ),
        },
    ),
}
