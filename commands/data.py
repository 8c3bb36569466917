"""``data synthetic|toy|stats|prepare`` and ``eval-masks``: datasets and scoring saved masks."""

from __future__ import annotations

import argparse
import json

from commands.options import ROOT_HELP, Command
from common.errors import say

MAX_IMAGES = 1_000_000
"""(ours) The most images ``data synthetic|toy`` writes per split: far past any use, and under
what the plan of a split holds in memory (a billion ran out of it)."""


def root_option(args: argparse.Namespace) -> str:
    """How the datasets root was given: ``--root``, or ``$DETECTRON2_DATASETS`` when the option
    was left out and the variable set it (cli.main), so errors name what the user set."""
    return getattr(args, "root_from", None) or "--root"


def _write_dataset(args: argparse.Namespace, config_class, write, class_names, what: str) -> int:
    """Write a rendered dataset (synthetic, toy) in the detectron2 layout, with a preview."""
    from pathlib import Path

    from common.errors import SettingError, check_output_file, check_output_folder
    from common.io import check_picture_out
    from data.catalog import datasets_root
    from data.synthetic import MAX_SIZE, MIN_SIZE

    splits = {"train_images": args.train, "val_images": args.val}
    if getattr(args, "test", None) is not None:
        splits["test_images"] = args.test
    for key, count in splits.items():
        option = "--" + key.removesuffix("_images")  # named as typed, not as the config's field
        if count < 0:
            raise SettingError(f"{option} {count}: give 0 or more images")
        if count > MAX_IMAGES:  # ours: a billion was the OOM killer's, without a word
            raise SettingError(f"{option} {count}: give at most {MAX_IMAGES} images")
    if args.preview and args.val == 0:
        raise SettingError(
            f"--preview {args.preview!r} shows val images, and --val is 0: give --val 1 or more, "
            "or leave --preview out"
        )
    if not MIN_SIZE <= args.size <= MAX_SIZE:
        bound = f"at least {MIN_SIZE}" if args.size < MIN_SIZE else f"at most {MAX_SIZE}"
        raise SettingError(
            f"--size {args.size}: images must be {bound} px; give a side of {MIN_SIZE} to "
            f"{MAX_SIZE} px (default 128)"
        )
    if args.seed < 0:
        raise SettingError(f"--seed {args.seed}: give 0 or more (numpy seeds cannot be negative)")
    config = config_class(**splits, size=args.size, seed=args.seed)  # SettingError: one line
    check_output_folder(datasets_root(args.root), root_option(args))  # before any drawing
    if args.preview:
        check_output_file(args.preview, "--preview", example="preview.png")
        check_picture_out(args.preview, "--preview")
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

    return _write_dataset(
        args, SyntheticConfig, write_synthetic_dataset, synthetic_class_names(), "synthetic dataset"
    )


def cmd_data_toy(args: argparse.Namespace) -> int:
    """Write the toy world's segmentation dataset (toy:train, toy:val, toy = its test split),
    optionally with a preview."""
    from data.toy_world import ToySceneConfig, class_names, write_toy_dataset

    return _write_dataset(
        args,
        ToySceneConfig,
        write_toy_dataset,
        class_names(),
        "toy world (train: seen classes; val, test: all)",
    )


def cmd_data_stats(args: argparse.Namespace) -> int:
    """Counts, label values, pixels per class and problems of a prepared dataset; exit status 1
    when it has problems (as `bank verify`), with what to do about them."""
    from data.stats import dataset_stats, format_stats, has_problems

    stats = dataset_stats(args.name, args.root, progress=not (args.quiet or args.json))
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 1 if has_problems(stats) else 0


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


def _eval_masks_options(p) -> None:
    """``eval-masks``'s description and options (cli.py's jsonargparse tree adds them)."""
    from data.eval_masks import ON_BAD_SAMPLE

    p.description = (
        "Score the prediction maps of any method against label maps, matched by file stem, "
        "with detectron2's rules (mIoU over classes with ground truth). Maps are PNG or "
        "TIFF, 8- or 16-bit, one class id per pixel (a palette PNG reads as its indices)."
    )
    p.add_argument("--pred", required=True, metavar="DIR", help="folder of prediction maps")
    p.add_argument("--gt", required=True, metavar="DIR", help="folder of label maps")
    p.add_argument(
        "--num-classes",
        type=int,
        required=True,
        metavar="K",
        help="label values 0..K-1 are classes",
    )
    p.add_argument(
        "--ignore-index",
        type=int,
        nargs="+",
        required=True,
        metavar="I",
        help="on-disk label value(s) not scored: 255 (most), 65535 (ADE-847), 459 65535 (PC-459)",
    )
    p.add_argument(
        "--background-from",
        type=int,
        metavar="C",
        help="predictions >= C count as class C (VOC with background: 20)",
    )
    p.add_argument(
        "--vocab", metavar="NAME", help="class names (a vocabulary with K classes) for the outputs"
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument(
        "--out", metavar="DIR", help="also write metrics.json, a per-class CSV and an IoU chart"
    )
    p.add_argument(
        "--on-bad-sample",
        choices=ON_BAD_SAMPLE,
        default="error",
        help="error (default): stop at a bad or missing file; skip: leave it out and count it",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_eval_masks(args: argparse.Namespace) -> int:
    """Run ``eval-masks``: print the scores, optionally write them (a user error ends the
    command in one line: ``cli.main``)."""
    import sys

    from data.catalog import DatasetError
    from data.eval_masks import SKIP_REASONS, evaluate_mask_folders, listing
    from data.evaluator import format_metrics, metrics_to_json, write_results
    from data.vocabulary import load_vocabulary

    names = None
    if args.vocab:
        vocab = load_vocabulary(args.vocab)
        if len(vocab) != args.num_classes:
            raise DatasetError(
                f"vocabulary {args.vocab!r} has {len(vocab)} classes but --num-classes is "
                f"{args.num_classes}; give a vocabulary with one class per label id"
            )
        names = vocab.names
    metrics, report = evaluate_mask_folders(
        args.pred,
        args.gt,
        args.num_classes,
        args.ignore_index,
        class_names=names,
        on_bad_sample=args.on_bad_sample,
        progress=not getattr(args, "quiet", False) and not args.json,
        background_from=getattr(args, "background_from", None),
    )
    # With --json stdout holds only the JSON document; the notes go to stderr.
    notes = sys.stderr if args.json else sys.stdout
    if args.json:
        print(json.dumps({"metrics": metrics_to_json(metrics, names), "report": report}, indent=2))
    else:
        print(format_metrics(metrics))
        print(f"scored {report['evaluated']} of {report['ground_truth_files']} ground-truth files")
    for reason, count in report["skipped"].items():
        files = listing(report["skipped_files"][reason])
        print(f"skipped {count}: {SKIP_REASONS[reason]} ({files})", file=notes)
    if args.out:
        paths = write_results(metrics, args.out, names)
        say(f"results: {', '.join(str(p) for p in paths.values())}", file=notes)
    return 0


def _prepare_options(p) -> None:
    """``data prepare``'s description and options (cli.py's jsonargparse tree adds them)."""
    from data.prepare import PREPARABLE, RAW_SOURCES

    p.description = (
        "Convert the official download of a benchmark into the detectron2 layout "
        "(docs/design.md §5). Existing outputs are kept: a rerun is a no-op, a killed run resumes."
    )
    p.epilog = "what each dataset needs under --root:\n" + "\n".join(
        f"  {n}: {RAW_SOURCES[n]}" for n in PREPARABLE
    )
    p.formatter_class = type(  # the epilog's lines as written
        "RawDescription", (argparse.RawDescriptionHelpFormatter, p.formatter_class), {}
    )
    p.add_argument("name", metavar="NAME", choices=PREPARABLE, help=", ".join(PREPARABLE))
    p.add_argument(
        "--root", default=None, help="datasets root (default $DETECTRON2_DATASETS or ./datasets)"
    )
    p.add_argument(
        "--vocab-dir",
        default=None,
        help="folder with ade847.json (default $DPSEG_VOCAB_DIR or ./vocab)",
    )
    p.add_argument("--workers", type=int, default=None, help="threads (default min(8, CPUs))")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """Run ``data.prepare.prepare_dataset`` and print the summary (a ``DatasetError`` ends the
    command in one line, as every user error does: ``cli.main``)."""
    import sys

    from data.catalog import datasets_root
    from data.prepare import prepare_dataset

    root = datasets_root(getattr(args, "root", None))
    s = prepare_dataset(
        args.name,
        root,
        progress=not getattr(args, "quiet", False),
        vocab_dir=getattr(args, "vocab_dir", None),
        workers=getattr(args, "workers", None),
    )
    for warning in s["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{s['dataset']}: {s['written']} written, {s['skipped']} already converted, "
        + (f"{s['replaced']} damaged and converted again, " if s["replaced"] else "")
        + f"{s['missing']} missing from the download ({s['seconds']} s) -> "
        + ", ".join(s["outputs"])
    )
    for note in s["notes"]:
        print(note)
    return 0


COMMANDS = {
    "eval-masks": Command(
        "score saved prediction maps against label maps (mIoU, fwIoU, mACC, pACC)",
        _eval_masks_options,
        cmd_eval_masks,
    ),
    "data": Command(
        "datasets: write synthetic/toy ones, check one, convert a benchmark download",
        subcommands={
            "synthetic": Command(
                "write the synthetic dataset (detectron2 layout)",
                _dataset_options(400, 64, ""),
                cmd_data_synthetic,
                keeps_finished_work=True,
            ),
            "toy": Command(
                "write the toy world's dataset: toy:train, toy:val, toy (test)",
                _dataset_options(6000, 300, ", seen classes (val, test: all)", test=2000),
                cmd_data_toy,
                keeps_finished_work=True,
            ),
            "stats": Command(
                "check a prepared dataset: counts, values, problems",
                _data_stats_options,
                cmd_data_stats,
            ),
            "prepare": Command(
                "convert an official benchmark download into the detectron2 layout",
                _prepare_options,
                cmd_data_prepare,
                keeps_finished_work=True,
            ),
        },
    ),
}
