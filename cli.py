"""dpseg command line: ``python cli.py COMMAND ...`` (also installed as ``dpseg``).

Each command imports what it needs when it runs, so ``--help`` answers at once. User errors
(unknown names, malformed files, unreachable weights) print one message and exit with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    try:
        return version("dpseg")
    except PackageNotFoundError:
        return "unknown (not installed: run make install)"


class UserError(Exception):
    """A mistake of the user's the command line found itself: one line, exit status 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from data.catalog import DatasetError
    from data.templates import TemplateError
    from data.vocabulary import VocabularyError
    from pretrained.hub import WeightsUnavailableError
    from pretrained.presets import PresetError
    from prompt_bank.format import BankFormatError, BankMismatchError

    return (
        UserError,
        DatasetError,
        VocabularyError,
        TemplateError,
        PresetError,
        WeightsUnavailableError,
        BankFormatError,
        BankMismatchError,
        FileExistsError,
        FileNotFoundError,
    )


# ---------------------------------------------------------------------------------------------
# presets


def cmd_presets(args: argparse.Namespace) -> None:
    """Print every preset with what it needs (optionally building the offline ones)."""
    import time

    from pretrained.fingerprint import check_recorded
    from pretrained.presets import list_presets

    rows = []
    for p in list_presets(args.kind):
        kind = type(p).__name__.removesuffix("Preset").lower()
        row = {"kind": kind, "name": p.name, "description": p.description, "needs": p.needs}
        if kind == "bank":
            row["description"] = f"{p.generator} + {p.encoder}: {p.description}"
        if args.fingerprints and kind != "bank" and p.offline:
            from pretrained.backbone import create_encoder
            from prompt_bank.generator import create_generator

            start = time.perf_counter()
            built = create_encoder(p) if kind == "encoder" else create_generator(p)
            row["fingerprint"] = built.fingerprint
            row["build_seconds"] = round(time.perf_counter() - start, 2)
            row["mismatch"] = check_recorded(p.name, built.fingerprint)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    headers = {
        "encoder": "image encoders (open_clip)",
        "generator": "generators (diffusers)",
        "bank": "bank presets (a generator and an encoder that build a prompt bank together)",
    }
    width = max(len(r["name"]) for r in rows)
    shown = None
    for row in rows:
        if row["kind"] != shown:
            shown = row["kind"]
            print(f"\n{headers[shown]}")
        print(f"  {row['name']:<{width}}  {row['description']}")
        print(f"  {'':<{width}}  needs: {row['needs']}")
        if "fingerprint" in row:
            state = "as recorded" if row["mismatch"] is None else "NOT as recorded"
            print(
                f"  {'':<{width}}  sha256: {row['fingerprint']} ({state}; built in "
                f"{row['build_seconds']} s)"
            )
            if row["mismatch"] is not None:
                print(f"  {'':<{width}}  {row['mismatch']}")
    print(
        "\nReal presets load weights from the Hugging Face hub or its cache; a local file or folder "
        "goes in --encoder-weights / --generator-weights. Offline: the tiny presets (PRESET=tiny)."
    )


def _dinotxt_zero_shot(report: dict) -> str:
    """dino.txt's other zero-shot figures (the first two are VIP's: proxy head, patch half)."""
    if "zero_shot_plain_global" not in report:
        return ""
    plain, global_ = report["zero_shot_plain_plain_head"], report["zero_shot_plain_global"]
    return (
        f" with VIP's proxy head on the patch half; {100 * plain:.1f}% with the plain head, "
        f"{100 * global_:.1f}% on the 2C global embedding (plain head, as trained)"
    )


def cmd_presets_pretrain(args: argparse.Namespace) -> int:
    """Pretrain a toy preset on the toy world and write its weights file."""
    from pretrained.presets import PRETRAIN_STEPS, PretrainConfig
    from pretrained.toy_pretrain import pretrain

    try:
        config = PretrainConfig(
            steps=PRETRAIN_STEPS.get(args.name, PretrainConfig.steps)
            if args.steps is None
            else args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            pool=args.pool,
            seed=args.seed,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or f"runs/pretrain/{args.name}.safetensors"
    report = pretrain(args.name, config, out, progress=not args.quiet)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{args.name}: zero-shot accuracy on held-out pictures {100 * report['zero_shot_plain']:.1f}% "
        f"('a photo of a {{}}.'), {100 * report['zero_shot_any_template']:.1f}% (any template "
        f"and style){_dinotxt_zero_shot(report)}; chance {100 * report['chance']:.1f}%; "
        f"{config.steps} steps in "
        f"{report['seconds']} s; {report['bytes'] / 1e6:.2f} MB written to {out}\n"
        f"use it with --encoder-weights {out} (or --model.encoder_weights), or copy it to "
        f"pretrained/weights/ and run tests/golden/regenerate.py to make it the preset's weights"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# vocab


def cmd_vocab(args: argparse.Namespace) -> None:
    """List known vocabularies, or show one (name, file or inline list)."""
    from data.vocabulary import list_vocabularies, load_vocabulary, vocab_dir

    if args.spec is None:
        known = list_vocabularies()
        if args.json:
            print(json.dumps(known, indent=2))
            return
        for name, source in known.items():
            print(f"{name:12s} {source}")
        print(f"(more: put NAME.json or NAME.txt in {str(vocab_dir())!r}, or set DPSEG_VOCAB_DIR)")
        return
    vocab = load_vocabulary(args.spec, allow_duplicates=args.allow_duplicate_classes)
    if args.json:
        print(json.dumps({"name": vocab.name, "source": vocab.source, "classes": vocab.entries}))
        return
    print(f"{vocab.name}: {len(vocab)} classes ({vocab.source})")
    for i, c in enumerate(vocab):
        print(f"{i:5d}  {c}")


# ---------------------------------------------------------------------------------------------
# data


def _write_dataset(args: argparse.Namespace, config_class, write, class_names, what: str) -> int:
    """Write a rendered dataset (synthetic, toy) in the detectron2 layout, with a preview."""
    from pathlib import Path

    from data.catalog import datasets_root

    try:
        config = config_class(
            train_images=args.train, val_images=args.val, size=args.size, seed=args.seed
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = write(datasets_root(args.root), config, progress=not args.quiet)
    print(
        f"{what}: {summary['train']} train + {summary['val']} val images in {summary['root']} "
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
    """Write the toy world's segmentation dataset (toy, toy:train), optionally with a preview."""
    from data.toy_world import ToySceneConfig, class_names, write_toy_dataset

    return _write_dataset(args, ToySceneConfig, write_toy_dataset, class_names(),
                          "toy world (train: seen classes, val: all)")  # fmt: skip


def cmd_data_stats(args: argparse.Namespace) -> None:
    """Counts, label values, pixels per class and problems of a prepared dataset."""
    from data.stats import dataset_stats, format_stats

    stats = dataset_stats(args.name, args.root, progress=not (args.quiet or args.json))
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))


# ---------------------------------------------------------------------------------------------
# bank


def _command_line() -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in ["python", "cli.py", *sys.argv[1:]])


def _storage_options(args: argparse.Namespace) -> dict | None:
    from prompt_bank.store import parse_storage_options

    raw = getattr(args, "storage_options", None)
    return None if raw is None else parse_storage_options(raw, "--storage-options")


def _run_build(config, location: str) -> None:
    """Build/resume/repair; Ctrl-C or SIGTERM ends in one line once finished items are saved."""
    from accelerate import PartialState

    from prompt_bank.build import build_bank
    from prompt_bank.safety import Interrupted

    try:
        summary = build_bank(config, location)
    except Interrupted as e:
        raise UserError(
            f"interrupted by {e}: the {e.saved} items this run finished are saved in "
            f"{location}; run the same command again to resume"
        ) from None
    if PartialState().is_main_process:
        print(summary.line())


def cmd_bank_build(args: argparse.Namespace) -> None:
    """Build or resume a prompt bank (one process, or every rank of torchrun/accelerate)."""
    from data.templates import load_templates
    from data.vocabulary import load_vocabulary
    from prompt_bank.build import BuildConfig, resolve_preset

    generator, encoder = resolve_preset(args.preset, args.generator, args.encoder)
    try:
        config = BuildConfig(
            vocabulary=load_vocabulary(args.vocab, allow_duplicates=args.allow_duplicate_classes),
            templates=load_templates(args.templates),
            images_per_prompt=args.images_per_prompt,
            generator=generator,
            encoder=encoder,
            generator_weights=args.generator_weights,
            encoder_weights=args.encoder_weights,
            random_weights=args.random_weights,
            seed=args.seed,
            steps=args.steps,
            guidance=args.guidance,
            batch_size=args.batch_size,
            classes_per_shard=args.classes_per_shard,
            keep_images=args.keep_images,
            level_dtype=args.level_dtype,
            device=args.device,
            cpu_threads=args.cpu_threads,
            flush_seconds=args.flush_seconds,
            progress=not args.quiet,
            command=_command_line(),
        )
        _run_build(config, args.out)
    except ValueError as e:
        if type(e) is not ValueError:
            raise
        raise UserError(f"{e}") from None


def cmd_bank_repair(args: argparse.Namespace) -> None:
    """Resume a bank with the settings it records: damaged shards are dropped and rebuilt."""
    from prompt_bank.build import config_from_bank
    from prompt_bank.format import BankFormatError
    from prompt_bank.store import open_group

    attrs = dict(open_group(args.bank, mode="r").attrs)
    if "classes" not in attrs or "build" not in attrs:
        raise BankFormatError(
            f"{args.bank} has no complete bank attributes (its root zarr.json is damaged or the "
            "build never started): run its bank build command again"
        )
    config = config_from_bank(
        attrs, args.generator_weights, args.encoder_weights, progress=not args.quiet
    )
    try:
        _run_build(config, args.bank)
    except ValueError as e:
        if type(e) is not ValueError:
            raise
        raise UserError(f"{e}") from None


def _open_bank(location: str, args: argparse.Namespace | None = None):
    from prompt_bank.store import Bank

    return Bank.open(location, _storage_options(args) if args is not None else None)


def cmd_bank_info(args: argparse.Namespace) -> None:
    from prompt_bank.inspect import bank_info, format_info, prompt_agreement

    bank = _open_bank(args.bank, args)
    info = bank_info(bank)
    if args.prompts:
        info["prompts"] = prompt_agreement(bank)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_info(info))


def cmd_bank_verify(args: argparse.Namespace) -> int:
    from prompt_bank.verify import verify_bank

    report = verify_bank(
        _open_bank(args.bank, args),
        regenerate=args.regenerate,
        seed=args.seed,
        tolerance=args.tolerance,
        generator_weights=args.generator_weights,
        encoder_weights=args.encoder_weights,
    )
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def cmd_bank_merge(args: argparse.Namespace) -> None:
    from prompt_bank.compose import merge_banks

    summary = merge_banks(
        _open_bank(args.a, args), _open_bank(args.b, args), args.out, _storage_options(args)
    )
    print(
        f"merged bank {summary['out']}: {summary['classes']} classes ({summary['from_a']} from "
        f"{args.a}, {summary['from_b']} more from {args.b}, {summary['shared']} in both)"
    )


def cmd_bank_subset(args: argparse.Namespace) -> None:
    from data.vocabulary import load_vocabulary
    from prompt_bank.compose import subset_bank

    summary = subset_bank(
        _open_bank(args.bank, args), load_vocabulary(args.vocab), args.out, _storage_options(args)
    )
    print(
        f"subset bank {summary['out']}: {summary['classes']} of the {summary['of']} classes of "
        f"{args.bank} ({summary['by_synonym']} found under another spelling or by synonym)"
    )


def cmd_bank_push(args: argparse.Namespace) -> None:
    from prompt_bank.share import push_bank

    result = push_bank(args.bank, args.url, _storage_options(args), progress=not args.quiet)
    if not result["uploaded"]:
        print(f"{args.url} already holds this bank (content key {result['content_key'][:16]})")
    else:
        print(
            f"pushed {args.bank} to {args.url}: {result['uploaded'] / 1e6:.2f} MB in "
            f"{result['seconds']:.1f} s (content key {result['content_key'][:16]})"
        )


def cmd_bank_pull(args: argparse.Namespace) -> None:
    from prompt_bank.share import pull_bank

    result = pull_bank(args.url, args.to, _storage_options(args), progress=not args.quiet)
    if not result["downloaded"]:
        print(f"{result['path']} (already here; content key {result['content_key'][:16]})")
    else:
        print(
            f"{result['path']}: {result['downloaded'] / 1e6:.2f} MB from {args.url} in "
            f"{result['seconds']:.1f} s, every object checked (content key "
            f"{result['content_key'][:16]})"
        )


def cmd_bank_gallery(args: argparse.Namespace) -> None:
    from prompt_bank.inspect import write_gallery

    try:
        path = write_gallery(_open_bank(args.bank, args), args.out, max_classes=args.max_classes)
    except ValueError as e:
        raise UserError(f"{e}") from None
    print(f"gallery: {path}")


def add_bank_commands(commands) -> None:
    bank = commands.add_parser(
        "bank", help="build, inspect, verify, repair, merge, subset, push and pull prompt banks"
    ).add_subparsers(dest="bank_command", metavar="BANK_COMMAND", required=True)
    remote = {
        "metavar": "JSON",
        "help": "fsspec storage options for URLs, as a JSON object (default: "
        "$DPSEG_STORAGE_OPTIONS; credentials come from the filesystem's usual places)",
    }
    p = bank.add_parser("build", help="build or resume a prompt bank (Stable Diffusion + CLIP)")
    p.add_argument(
        "--vocab", required=True, help="vocabulary: a name, a .json/.txt file, or 'a; b, c'"
    )
    p.add_argument("--out", required=True, help="bank location: a path or an fsspec URL")
    p.add_argument("--preset", default=None, help="bank preset: paper (default), fast, vit, tiny")
    p.add_argument("--generator", help="generator preset (overrides the bank preset's)")
    p.add_argument("--encoder", help="encoder preset (overrides the bank preset's)")
    p.add_argument("--generator-weights", metavar="DIR", help="local diffusers folder")
    p.add_argument("--encoder-weights", metavar="PATH", help="local CLIP weights file or folder")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="real architectures with random weights: for speed checks, not for use",
    )
    p.add_argument(
        "--templates", default="imagenet80", help="imagenet80, imagenet80:N, single, or a file"
    )
    p.add_argument(
        "--images-per-prompt", type=int, default=1, help="N images per (class, template)"
    )
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the generator preset's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the preset's)")
    p.add_argument(
        "--batch-size", type=int, help="items per batch (default 8; a resume keeps the bank's)"
    )
    p.add_argument(
        "--classes-per-shard", type=int, default=16, help="classes per shard (default 16)"
    )
    p.add_argument("--keep-images", action="store_true", help="also store the generated images")
    p.add_argument("--level-dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--cpu-threads", type=int, help="CPU threads (recorded: results depend on it)")
    p.add_argument("--flush-seconds", type=float, default=60.0, help="write results this often")
    p.add_argument("--allow-duplicate-classes", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bank_build)

    p = bank.add_parser("info", help="what a bank holds")
    p.add_argument("bank", help="a path or an fsspec URL")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--prompts",
        action="store_true",
        help="also check that visual prompts carry class information (nearest text prompt of "
        "each class's mean visual prompt; reads every embedding)",
    )
    p.add_argument("--storage-options", **remote)
    p.set_defaults(func=cmd_bank_info)

    p = bank.add_parser(
        "verify", help="check schema, values, completeness; optionally rebuild items"
    )
    p.add_argument("bank", help="a path or an fsspec URL")
    p.add_argument("--regenerate", type=int, default=0, metavar="K", help="rebuild K random items")
    p.add_argument("--seed", type=int, default=0, help="which items --regenerate picks")
    p.add_argument("--tolerance", type=float, default=0.0, help="max abs difference allowed")
    p.add_argument("--generator-weights", metavar="DIR")
    p.add_argument("--encoder-weights", metavar="PATH")
    p.add_argument("--storage-options", **remote)
    p.set_defaults(func=cmd_bank_verify)

    p = bank.add_parser(
        "repair", help="rebuild damaged shards with the bank's recorded settings (a resume)"
    )
    p.add_argument("bank", help="a path or an fsspec URL")
    p.add_argument("--generator-weights", metavar="DIR", help="the bank's generator weights")
    p.add_argument("--encoder-weights", metavar="PATH", help="the bank's encoder weights")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bank_repair)

    p = bank.add_parser("merge", help="union of the classes of two compatible banks")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--out", required=True, help="a new path or URL (never an existing bank)")
    p.add_argument("--storage-options", **remote)
    p.set_defaults(func=cmd_bank_merge)

    p = bank.add_parser(
        "subset", help="a bank of some classes of a bigger one (by name or synonym)"
    )
    p.add_argument("bank", help="a path or an fsspec URL")
    p.add_argument("--vocab", required=True, help="the classes: a name, a file, or 'a; b, c'")
    p.add_argument("--out", required=True, help="a new path or URL (never an existing bank)")
    p.add_argument("--storage-options", **remote)
    p.set_defaults(func=cmd_bank_subset)

    p = bank.add_parser("push", help="upload a complete bank (hf://datasets/ORG/NAME, s3://, ...)")
    p.add_argument("bank", help="a local bank folder")
    p.add_argument("url", help="hf://datasets/ORG/NAME or an fsspec URL (s3://, gs://, file://)")
    p.add_argument("--storage-options", **remote)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bank_push)

    p = bank.add_parser("pull", help="download a bank, check every object, cache it by content")
    p.add_argument("url", help="hf://datasets/ORG/NAME[@REVISION] or an fsspec URL")
    p.add_argument("--to", metavar="DIR", help="where (default: the cache, keyed by content)")
    p.add_argument("--storage-options", **remote)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bank_pull)

    p = bank.add_parser("gallery", help="a contact sheet of the stored images")
    p.add_argument("bank")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--max-classes", type=int, default=32)
    p.set_defaults(func=cmd_bank_gallery)


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cli.py",
        description="dpseg: open-vocabulary semantic segmentation with dual prompts (DPSeg, VIP).",
    )
    parser.add_argument("--version", action="version", version=f"dpseg {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name, what in (
        ("fit", "train DPSeg (LightningCLI: cli.py fit --config configs/tiny_synthetic.yaml)"),
        ("validate", "validate a checkpoint on data.val (LightningCLI)"),
        (
            "test",
            "test on every (dataset, bank) of data.test; metrics + summary (LightningCLI; "
            "VIP: cli.py test --config configs/vip_tiny.yaml [--dual-prompts BANK])",
        ),
        ("predict", "segment images: --ckpt --images --vocab --out (see predict --images -h)"),
    ):
        commands.add_parser(name, help=what, add_help=False)

    p = commands.add_parser(
        "explain", help="text, visual and dual-prompt cost maps of one class on one image"
    )
    p.add_argument("--ckpt", required=True, help="a checkpoint of cli.py fit")
    p.add_argument("--image", required=True, help="an image file")
    p.add_argument("--class", dest="class_name", required=True, help="the class to explain")
    p.add_argument("--vocab", help="the other classes (default: the bank's)")
    p.add_argument("--bank", help="prompt bank (default: the checkpoint's training bank)")
    p.add_argument("--text-only", action="store_true", help="no generated visual prompts")
    p.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    p.add_argument("--out", default="explain.png", help="output PNG (default explain.png)")
    p.set_defaults(func=cmd_explain)

    p = commands.add_parser("presets", help="list model presets and what each needs")
    p.add_argument("--kind", choices=("encoder", "generator", "bank"), help="only this kind")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--fingerprints",
        action="store_true",
        help="build the offline presets and print their sha256 fingerprints",
    )
    p.set_defaults(func=cmd_presets)
    sub = p.add_subparsers(dest="presets_command", metavar="{pretrain}")
    from pretrained.presets import PretrainConfig  # light: the trainer itself imports torch

    defaults = PretrainConfig()
    q = sub.add_parser(
        "pretrain",
        help="pretrain a toy preset (CLIP or dino.txt) on the toy world (writes its weights file)",
        description="Contrastive pretraining of toy-convnext, toy-vit or toy-dinotxt on captioned "
        "pictures of the toy world (pretrained/toy_pretrain.py); prints zero-shot accuracies.",
    )
    q.add_argument(
        "name", choices=("toy-convnext", "toy-vit", "toy-dinotxt"), help="the toy preset"
    )
    q.add_argument("--out", help="weights file (default runs/pretrain/NAME.safetensors)")
    q.add_argument(
        "--steps",
        type=int,
        help=f"({defaults.steps}; toy-dinotxt 2000: the steps of the committed weights)",
    )
    q.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help=f"({defaults.batch_size})"
    )
    q.add_argument("--lr", type=float, default=defaults.lr, help=f"({defaults.lr})")
    q.add_argument("--pool", type=int, default=defaults.pool, help=f"pictures ({defaults.pool})")
    q.add_argument("--seed", type=int, default=defaults.seed, help=f"({defaults.seed})")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_presets_pretrain)

    p = commands.add_parser("vocab", help="list vocabularies, or show one")
    p.add_argument("spec", nargs="?", help="a name, a .json/.txt file, or 'cat, kitty; dog'")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--allow-duplicate-classes", action="store_true", help="accept exactly repeated entries"
    )
    p.set_defaults(func=cmd_vocab)

    add_bank_commands(commands)
    add_vip_commands(commands)

    from data.eval_masks import add_eval_masks_parser

    add_eval_masks_parser(commands)

    data = commands.add_parser("data", help="datasets").add_subparsers(
        dest="data_command", metavar="DATA_COMMAND", required=True
    )
    p = data.add_parser("synthetic", help="write the synthetic dataset (detectron2 layout)")
    p.add_argument(
        "--root", default=None, help="datasets root (default $DETECTRON2_DATASETS or ./datasets)"
    )
    p.add_argument("--train", type=int, default=400, help="train images (default 400)")
    p.add_argument("--val", type=int, default=64, help="val images (default 64)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--preview", metavar="PNG", help="also write a picture of a few val samples")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_synthetic)

    p = data.add_parser("toy", help="write the toy world's dataset: toy (val), toy:train")
    p.add_argument(
        "--root", default=None, help="datasets root (default $DETECTRON2_DATASETS or ./datasets)"
    )
    p.add_argument("--train", type=int, default=600, help="train images, seen classes (600)")
    p.add_argument("--val", type=int, default=160, help="val images, all classes (160)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--preview", metavar="PNG", help="also write a picture of a few val samples")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_toy)

    from data.catalog import DATASETS

    p = data.add_parser("stats", help="check a prepared dataset: counts, values, problems")
    p.add_argument("name", choices=list(DATASETS), metavar="NAME", help=", ".join(DATASETS))
    p.add_argument(
        "--root", default=None, help="datasets root (default $DETECTRON2_DATASETS or ./datasets)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output, every count")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_stats)

    from data.prepare import add_prepare_parser

    add_prepare_parser(data)
    return parser


def _log_ours() -> None:
    """Our modules' info messages on stderr; other libraries' only from warnings up."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for ours in ("model", "data", "prompt_bank", "pretrained"):
        logger = logging.getLogger(ours)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False  # Lightning's root handler would print it again


def cmd_predict(args: argparse.Namespace) -> int:
    """Segment images with a checkpoint (DPSeg) or VIP and any vocabulary; outputs in --out."""

    from model.predictor import expand_images, predict_images

    _log_ours()
    paths = expand_images(args.images)
    if not paths:
        raise FileNotFoundError(f"--images {' '.join(args.images)}: no image found")
    if args.method == "vip":
        from model.vip.predictor import VIPPredictor

        predictor = VIPPredictor.from_config(args.config, args.encoder, args.device)
        predictor.set_vocabulary(args.vocab, bank=args.dual_prompts)
    else:
        from model.predictor import Predictor

        if not args.ckpt:
            raise FileNotFoundError(
                "predict needs --ckpt (a checkpoint of cli.py fit), or --method vip (training-free)"
            )
        predictor = Predictor.from_checkpoint(args.ckpt, device=args.device, rounds=args.rounds)
        predictor.set_vocabulary(
            args.vocab,
            bank=args.bank,
            text_only=args.text_only,
            generator_weights=args.generator_weights,
            progress=not args.quiet,
        )
    summary = predict_images(predictor, paths, args.out, progress=not args.quiet)
    for item in summary["skipped"]:
        print(f"skipped {item['image']}: {item['error']}", file=sys.stderr)
    if args.method == "vip":
        prompts = "dual prompts" if args.dual_prompts else "text aliases"
        classes = f"{len(predictor.vocabulary)} classes ({prompts})"
    else:
        generated = sum(v == "generated" for v in summary["prompts"].values())
        text = sum(v == "text" for v in summary["prompts"].values())
        classes = (
            f"{len(predictor.vocabulary)} classes ({generated} with generated prompts, {text} "
            "text-only)"
        )
    print(
        f"predict: {summary['images']} images in {summary['seconds']} s "
        f"({summary['images_per_second']} images/s), {len(summary['skipped'])} skipped; "
        f"{classes}; outputs in {args.out} (label maps, overlays, class areas, summary.json)"
    )
    return 1 if summary["skipped"] and not summary["images"] else 0


def predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cli.py predict",
        description="Segment images with a checkpoint (DPSeg) or with VIP (--method vip, no "
        "training) and any vocabulary. (Without --images, `predict` is LightningCLI's over "
        "data.test: cli.py predict --config ... [--ckpt_path ...])",
    )
    p.add_argument("--method", choices=("dpseg", "vip"), default="dpseg", help="default dpseg")
    p.add_argument("--ckpt", help="DPSeg: a checkpoint of cli.py fit")
    p.add_argument("--images", nargs="+", required=True, help="files, folders or glob patterns")
    p.add_argument("--vocab", required=True, help="'cat, kitty; dog; grass', a name or a file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--bank", help="DPSeg: prompt bank (default: the checkpoint's training bank)")
    p.add_argument(
        "--text-only", action="store_true", help="DPSeg: no visual prompts for missing classes"
    )
    p.add_argument("--rounds", type=int, choices=(1, 2), help="DPSeg: inference rounds (default 1)")
    p.add_argument("--generator-weights", help="DPSeg: local generator weights for missing classes")
    p.add_argument("--config", help="VIP: settings from a configs/vip_*.yaml (its model: section)")
    p.add_argument("--encoder", help="VIP: encoder preset (default: the config's, dinotxt-l16)")
    p.add_argument("--dual-prompts", metavar="BANK", help="VIP: add a bank's visual prompts")
    p.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def cmd_explain(args: argparse.Namespace) -> int:
    """Text, visual and dual-prompt cost maps of one class on one image (paper's Figure 1)."""
    from data.datasets import read_image
    from data.vocabulary import Vocabulary, load_vocabulary
    from model.explain import write_explanation
    from model.predictor import Predictor
    from prompt_bank.store import Bank

    _log_ours()
    image = read_image(args.image)
    predictor = Predictor.from_checkpoint(args.ckpt, device=args.device)
    if args.vocab:
        vocabulary = load_vocabulary(args.vocab)
    else:  # the bank's classes: the other classes matter when prompts are centred
        bank = args.bank or predictor.training_bank()
        if bank is None:
            raise FileNotFoundError("no bank recorded in the checkpoint is here: pass --vocab")
        vocabulary = Vocabulary.from_entries(Bank.open(bank).classes, name="bank")
    if args.class_name not in vocabulary.names:
        vocabulary = Vocabulary.from_entries(
            [*vocabulary.entries, args.class_name], vocabulary.name
        )
    predictor.set_vocabulary(vocabulary, bank=args.bank, text_only=args.text_only)
    out = write_explanation(predictor, image, args.class_name, args.out)
    print(f"explain: {out} ({args.class_name!r}: {predictor.sources[args.class_name]} prompts)")
    return 0


def cmd_vip_select_aliases(args: argparse.Namespace) -> int:
    """Score every alias on images of the target data; write the kept ones with their scores."""
    from model.vip.selection import SelectionConfig, select_aliases

    _log_ours()
    try:
        settings = {"steps": args.steps}
        if args.threshold is not None:
            settings["threshold"] = args.threshold
        if args.prefilter is not None:
            settings["prefilter"] = args.prefilter
        if args.affinity is not None:
            settings["affinity"] = args.affinity
        if args.rule == "reported":
            config = SelectionConfig.reported(**settings)
        else:
            config = SelectionConfig(**settings)
    except ValueError as e:
        raise UserError(f"{e}") from None
    path, scores = select_aliases(
        args.data,
        args.vocab,
        args.out,
        encoder=args.encoder,
        encoder_weights=args.encoder_weights,
        attention=args.attention,
        templates=args.templates,
        config=config,
        root=args.root,
        limit=args.limit,
        size=args.size,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.quiet,
    )
    classes = len({s.owner for s in scores})
    kept = sum(s.kept for s in scores)
    print(
        f"select-aliases: {classes} classes, {len(scores)} aliases scored, {kept} kept "
        f"({kept - classes} besides the canonical names) -> {path}"
    )
    return 0


def add_vip_commands(commands) -> None:
    vip = commands.add_parser(
        "vip", help="VIP tools (testing VIP: cli.py test --config configs/vip_*.yaml)"
    ).add_subparsers(dest="vip_command", metavar="VIP_COMMAND", required=True)
    p = vip.add_parser(
        "select-aliases",
        help="keep the aliases that images agree with (visual-guided selection)",
        description="Score every alias of --vocab on unlabeled images of --data (activation "
        "region, agreement with the map propagated by the image's patch affinity, entropy); keep "
        "the canonical name and the aliases that beat it on agreement and entropy; write them "
        "with the scores as comments.",
    )
    p.add_argument("--data", required=True, help="a dataset name (cli.py data stats) or a folder")
    p.add_argument("--vocab", required=True, help="alias vocabulary: a cls_*.txt file or a name")
    p.add_argument("--out", required=True, help="the alias file to write")
    p.add_argument(
        "--encoder",
        default="dinotxt-l16",
        help="encoder preset (default dinotxt-l16, VIP's; tiny-dinotxt and tiny-vit offline)",
    )
    p.add_argument(
        "--encoder-weights",
        metavar="PATH",
        help="local weights: a CLIP file or folder; dinotxt-l16: the folder of its two files",
    )
    p.add_argument(
        "--attention",
        help="dense path: dino.txt proxy (default) or none; CLIP ViT clear (default), sclip, "
        "vanilla, proxy, none",
    )
    p.add_argument(
        "--templates", default="seg", help="seg (default), city, imagenet80, imagenet80:N, single"
    )
    p.add_argument(
        "--rule",
        choices=("ours", "reported"),
        default="ours",
        help="ours (docs/vip.md), or the rule third-party notes report (unconfirmed): pre-filter "
        "0.7, threshold 0.4, agreement over non-empty regions only, the backbone's attention as "
        "affinity",
    )
    p.add_argument(
        "--threshold", type=float, help="activation: probability >= this (ours 0.5, reported 0.4)"
    )
    p.add_argument(
        "--prefilter",
        type=float,
        help="drop aliases whose text cosine with the canonical name is below this",
    )
    p.add_argument(
        "--affinity",
        choices=("proxy", "attention"),
        help="the random walk's affinity: proxy (ours), attention (reported: the backbone's "
        "last-block attention; dino.txt only)",
    )
    p.add_argument("--steps", type=int, default=2, help="random-walk steps (default 2)")
    p.add_argument("--limit", type=int, default=200, help="images scored (default 200; 0: all)")
    p.add_argument("--size", type=int, default=336, help="image side (short side + centre crop)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--root", default=None, help="datasets root (default $DETECTRON2_DATASETS or ./datasets)"
    )
    p.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_vip_select_aliases)


def _wants_image_predict(argv: list[str]) -> bool:
    return any(a.split("=")[0] in ("--images", "--ckpt", "--vocab") for a in argv[1:])


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
"""Run by LightningCLI (``model/lightning_cli.py``): ``cli.py fit --config configs/X.yaml``."""


def _dual_prompts_option(argv: list[str]) -> list[str]:
    """``--dual-prompts BANK`` (VIP with a bank's visual prompts) is ``--model.dual_prompts``."""
    out = []
    for arg in argv:
        if arg == "--dual-prompts":
            arg = "--model.dual_prompts"
        elif arg.startswith("--dual-prompts="):
            arg = "--model.dual_prompts=" + arg.split("=", 1)[1]
        out.append(arg)
    return out


def lightning_main(argv: list[str]) -> int:
    """fit/validate/test/predict; our user errors end in one line, as the other commands."""

    _log_ours()
    from model.lightning_cli import main as run

    try:
        run(_dual_prompts_option(argv))
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):  # `cli.py ... | head` ends quietly, as Unix tools do
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["predict"] and _wants_image_predict(argv):
        args = predict_parser().parse_args(argv[1:])
        try:
            return cmd_predict(args)
        except _user_errors() as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return lightning_main(argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "root", "unset") is None:
        import os

        args.root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    try:
        return args.func(args) or 0
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
