"""dpseg command line: ``python cli.py COMMAND ...`` (also installed as ``dpseg``).

Each command imports what it needs when it runs, so ``--help`` answers at once. User errors
(unknown names, malformed files, unreachable weights) print one message and exit with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    try:
        return version("dpseg")
    except PackageNotFoundError:
        return "unknown (not installed: run make install)"


def _user_errors() -> tuple[type[BaseException], ...]:
    from data.templates import TemplateError
    from data.vocabulary import VocabularyError
    from model.hub import WeightsUnavailableError
    from model.presets import PresetError

    return (VocabularyError, TemplateError, PresetError, WeightsUnavailableError, FileExistsError)


# ---------------------------------------------------------------------------------------------
# presets


def cmd_presets(args: argparse.Namespace) -> None:
    """Print every preset with what it needs (optionally building the offline ones)."""
    import time

    from model.presets import list_presets

    rows = []
    for p in list_presets(args.kind):
        kind = type(p).__name__.removesuffix("Preset").lower()
        row = {"kind": kind, "name": p.name, "description": p.description, "needs": p.needs}
        if kind == "bank":
            row["description"] = f"{p.generator} + {p.encoder}: {p.description}"
        if args.fingerprints and kind != "bank" and p.is_random:
            from model.backbone import create_clip
            from prompt_bank.generator import create_generator

            start = time.perf_counter()
            built = create_clip(p) if kind == "encoder" else create_generator(p)
            row["fingerprint"] = built.fingerprint
            row["build_seconds"] = round(time.perf_counter() - start, 2)
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
            print(
                f"  {'':<{width}}  sha256: {row['fingerprint']} (built in {row['build_seconds']} s)"
            )
    print(
        "\nReal presets load weights from the Hugging Face hub or its cache; a local file or folder "
        "goes in --encoder-weights / --generator-weights. Offline: the tiny presets (PRESET=tiny)."
    )


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


def cmd_data_synthetic(args: argparse.Namespace) -> None:
    """Write the synthetic dataset in the detectron2 layout, optionally with a preview picture."""
    from data.synthetic import SyntheticConfig, write_synthetic_dataset

    try:
        config = SyntheticConfig(
            train_images=args.train, val_images=args.val, size=args.size, seed=args.seed
        )
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    summary = write_synthetic_dataset(args.root, config, progress=not args.quiet)
    print(
        f"synthetic dataset: {summary['train']} train + {summary['val']} val images in "
        f"{summary['root']} ({summary['written']} written, {summary['seconds']} s)"
    )
    if args.preview:
        from data.preview import write_synthetic_preview

        path = write_synthetic_preview(args.root, args.preview, count=8)
        print(f"preview: {path}")


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cli.py",
        description="dpseg: open-vocabulary semantic segmentation with dual prompts (DPSeg, VIP).",
    )
    parser.add_argument("--version", action="version", version=f"dpseg {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("presets", help="list model presets and what each needs")
    p.add_argument("--kind", choices=("encoder", "generator", "bank"), help="only this kind")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--fingerprints",
        action="store_true",
        help="build the offline (random-weight) presets and print their sha256 fingerprints",
    )
    p.set_defaults(func=cmd_presets)

    p = commands.add_parser("vocab", help="list vocabularies, or show one")
    p.add_argument("spec", nargs="?", help="a name, a .json/.txt file, or 'cat, kitty; dog'")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--allow-duplicate-classes", action="store_true", help="accept exactly repeated entries"
    )
    p.set_defaults(func=cmd_vocab)

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "root", "unset") is None:
        import os

        args.root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    try:
        args.func(args)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
