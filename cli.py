"""dpseg command line: ``python cli.py COMMAND ...`` (also installed as ``dpseg``).

Each command imports what it needs when it runs, so ``--help`` answers at once. User errors
(unknown names, malformed files, unreachable weights) print one message and exit with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

from data.errors import USER_ERRORS, UserError  # the one user-error type (cheap: no torch)


def _version() -> str:
    try:
        return version("dpseg")
    except PackageNotFoundError:
        return "unknown (not installed: run make install)"


# ---------------------------------------------------------------------------------------------
# the command tree (jsonargparse) and options taken from dataclasses
#
# Every command but LightningCLI's four is a jsonargparse parser in one tree (build_parser). Where
# a command runs a settings dataclass (BuildConfig, SelectionConfig, PretrainConfig) its options
# are that dataclass's fields, added by _add_fields: ``--field-name``, the field's type and
# default, and as help the comment the field carries in its class. Where the user types strings
# that become objects (a vocabulary, templates) a small *Options dataclass here documents them.


@dataclasses.dataclass
class Command:
    """One command: its help line, what adds its options, what runs it, its subcommands."""

    help: str
    options: Callable | None = None  # options(parser): adds the options (only when it is chosen)
    run: Callable | None = None  # run(args) -> exit status (None: 0); None: a group
    subcommands: dict[str, Command] = dataclasses.field(default_factory=dict)
    description: str | None = None  # the -h text (default: help)


def _field_docs(cls) -> dict[str, str]:
    """Each dataclass field's comment: ``name: type = default  # what it is``, continued on the
    comment-only lines right below it (``# fmt:`` directives are no documentation)."""
    import inspect
    import io
    import re
    import textwrap
    import tokenize

    source = textwrap.dedent(inspect.getsource(cls))
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT and not token.string.lstrip("# ").startswith("fmt:")
    }
    names = {f.name for f in dataclasses.fields(cls)}
    docs: dict[str, str] = {}
    current = None
    for number, line in enumerate(source.splitlines(), 1):
        field = re.match(r" {4}(\w+)\s*:", line)
        if field and field.group(1) in names:
            current = field.group(1) if number in comments else None
            if current:
                docs[current] = comments[number]
        elif current and line.lstrip().startswith("#") and number in comments:
            docs[current] += " " + comments[number]
        else:
            current = None
    return docs


def _add_fields(parser, cls, skip=(), overrides: dict | None = None, unset: str = "") -> None:
    """One option per field of the dataclass ``cls`` (but ``skip``): ``--field-name``, typed,
    with the field's default, and its comment as help. ``overrides[field]``: add_argument keywords
    that add to or replace these (choices, a metavar, a help where the class has none).
    ``unset``: every option defaults to None, "not given", and its help says what then applies
    (``unset`` and the field's own default), for settings another default can decide."""
    import typing

    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        kwargs: dict = {"help": docs.get(f.name, "")}
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if unset:
            kwargs.update(type=kind | None, default=None)
            kwargs["help"] += f" (not given: {unset} {default})"
        elif kind is bool and default is False:
            kwargs["action"] = "store_true"
        elif default is dataclasses.MISSING:
            kwargs.update(type=kind, required=True)
        else:
            kwargs.update(type=kind, default=default)
        extra = (overrides or {}).get(f.name, {})
        if "choices" in extra:  # the choices are strings: no type (Literal, str | None) to apply
            kwargs.pop("type", None)
        kwargs.update(extra)
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def _config_from(cls, args, **values):
    """An instance of the dataclass ``cls`` from the parsed options named after its fields (those
    given: an option left None keeps the field's default), ``values`` on top."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }
    return cls(**{**given, **values})


def _config_file(parser) -> None:
    """``--config FILE.yaml``: the command's options from a YAML file (``--print_config`` writes
    one); options given after it override it."""
    from jsonargparse import ActionConfigFile

    parser.add_argument(
        "--config",
        action=ActionConfigFile,
        help="a YAML file of these options, keys spelled with underscores (images_per_prompt: 2); "
        "options after it override it; --print_config prints one",
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


TOY_PRESETS = ("toy-convnext", "toy-vit", "toy-dinotxt")


def _presets_pretrain_options(p) -> None:
    from pretrained.presets import PRETRAIN_STEPS, PretrainConfig  # light: no torch

    p.description = (
        "Contrastive pretraining of toy-convnext, toy-vit or toy-dinotxt on captioned pictures "
        "of the toy world (pretrained/toy_pretrain.py); prints zero-shot accuracies. The options "
        "are pretrained.presets.PretrainConfig's fields."
    )
    _config_file(p)
    p.add_argument("name", choices=TOY_PRESETS, help="the toy preset")
    p.add_argument("--out", help="weights file (default runs/pretrain/NAME.safetensors)")
    own = ", ".join(f"{name} {steps}" for name, steps in PRETRAIN_STEPS.items())
    _add_fields(p, PretrainConfig, overrides={"steps": {
        "type": int | None, "default": None,
        "help": f"training steps (default {PretrainConfig.steps}; {own}: the steps of the "
        "committed weights)"}})  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_presets_pretrain(args: argparse.Namespace) -> int:
    """Pretrain a toy preset on the toy world and write its weights file."""
    from pretrained.presets import PRETRAIN_STEPS, PretrainConfig
    from pretrained.toy_pretrain import pretrain

    steps = args.steps if args.steps is not None else PRETRAIN_STEPS.get(args.name)
    try:
        config = _config_from(PretrainConfig, args, **({} if steps is None else {"steps": steps}))
    except ValueError as e:
        raise UserError(f"{e}") from None
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


@dataclasses.dataclass
class BankBuildOptions:
    """``bank build``'s options typed as strings before they become a BuildConfig (its other
    options are prompt_bank.build.BuildConfig's own fields)."""

    vocab: str  # vocabulary: a name, a .json/.txt file, or 'a; b, c'
    out: str  # bank location: a path or an fsspec URL
    preset: str | None = None  # bank preset: paper (default), fast, vit, tiny, toy, toy-vit,
    # toy-dinotxt (cli.py presets --kind bank)
    generator: str | None = None  # generator preset (overrides the bank preset's)
    encoder: str | None = None  # encoder preset (overrides the bank preset's)
    templates: str = "imagenet80"  # imagenet80, imagenet80:N, single, or a file
    allow_duplicate_classes: bool = False  # accept exactly repeated vocabulary entries
    quiet: bool = False  # no progress bar


def _bank_build_options(p) -> None:
    from prompt_bank.build import BuildConfig

    p.description = (
        "Build or resume a prompt bank: one process, or every rank of torchrun/accelerate. Its "
        "options: the strings you type (vocabulary, templates, presets), then "
        "prompt_bank.build.BuildConfig's fields; all of them can come from --config FILE.yaml."
    )
    _config_file(p)
    _add_fields(p, BankBuildOptions)
    _add_fields(p, BuildConfig, skip=("vocabulary", "templates", "generator", "encoder",
                                      "progress", "command"), overrides={
        "generator_weights": {"metavar": "DIR"},
        "encoder_weights": {"metavar": "PATH"},
        "level_dtype": {"choices": ("float16", "float32")},
        "device": {"choices": ("cpu", "cuda")},
    })  # fmt: skip


def cmd_bank_build(args: argparse.Namespace) -> None:
    """Build or resume a prompt bank (one process, or every rank of torchrun/accelerate)."""
    from data.templates import load_templates
    from data.vocabulary import load_vocabulary
    from prompt_bank.build import BuildConfig, resolve_preset

    generator, encoder = resolve_preset(args.preset, args.generator, args.encoder)
    try:
        config = _config_from(
            BuildConfig,
            args,
            vocabulary=load_vocabulary(args.vocab, allow_duplicates=args.allow_duplicate_classes),
            templates=load_templates(args.templates),
            generator=generator,
            encoder=encoder,
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


def _storage_option(p) -> None:
    p.add_argument(
        "--storage-options",
        metavar="JSON",
        help="fsspec storage options for URLs, as a JSON object (default: $DPSEG_STORAGE_OPTIONS; "
        "credentials come from the filesystem's usual places)",
    )


def _bank_info_options(p) -> None:
    p.add_argument("bank", help="a path or an fsspec URL")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--prompts",
        action="store_true",
        help="also check that visual prompts carry class information (nearest text prompt of "
        "each class's mean visual prompt; reads every embedding)",
    )
    _storage_option(p)


def _bank_verify_options(p) -> None:
    p.add_argument("bank", help="a path or an fsspec URL")
    p.add_argument("--regenerate", type=int, default=0, metavar="K", help="rebuild K random items")
    p.add_argument("--seed", type=int, default=0, help="which items --regenerate picks")
    p.add_argument("--tolerance", type=float, default=0.0, help="max abs difference allowed")
    p.add_argument("--generator-weights", metavar="DIR", help="the bank's generator weights")
    p.add_argument("--encoder-weights", metavar="PATH", help="the bank's encoder weights")
    _storage_option(p)


def _bank_repair_options(p) -> None:
    p.add_argument("bank", help="a path or an fsspec URL")
    p.add_argument("--generator-weights", metavar="DIR", help="the bank's generator weights")
    p.add_argument("--encoder-weights", metavar="PATH", help="the bank's encoder weights")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _bank_merge_options(p) -> None:
    p.add_argument("a", help="a bank: a path or an fsspec URL")
    p.add_argument("b", help="another bank, with the same encoder and templates")
    p.add_argument("--out", required=True, help="a new path or URL (never an existing bank)")
    _storage_option(p)


def _bank_subset_options(p) -> None:
    p.add_argument("bank", help="a path or an fsspec URL")
    p.add_argument("--vocab", required=True, help="a name, a file, 'a; b, c' or one class")
    p.add_argument("--out", required=True, help="a new path or URL (never an existing bank)")
    _storage_option(p)


def _bank_push_options(p) -> None:
    p.add_argument("bank", help="a local bank folder")
    p.add_argument("url", help="hf://datasets/ORG/NAME or an fsspec URL (s3://, gs://, file://)")
    _storage_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _bank_pull_options(p) -> None:
    p.add_argument("url", help="hf://datasets/ORG/NAME[@REVISION] or an fsspec URL")
    p.add_argument("--to", metavar="DIR", help="where (default: the cache, keyed by content)")
    _storage_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _bank_gallery_options(p) -> None:
    p.add_argument("bank", help="a path or an fsspec URL")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--max-classes", type=int, default=32, help="classes shown")


def _explain_options(p) -> None:
    p.add_argument("--ckpt", required=True, help="a checkpoint of cli.py fit")
    p.add_argument("--image", required=True, help="an image file")
    p.add_argument("--class", dest="class_name", required=True, help="the class to explain")
    p.add_argument("--vocab", help="the other classes (default: the bank's)")
    p.add_argument("--bank", help="prompt bank (default: the checkpoint's training bank)")
    p.add_argument("--text-only", action="store_true", help="no generated visual prompts")
    p.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    p.add_argument("--out", default="explain.png", help="output PNG")


def _presets_options(p) -> None:
    p.add_argument("--kind", choices=("encoder", "generator", "bank"), help="only this kind")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--fingerprints",
        action="store_true",
        help="build the offline presets and print their sha256 fingerprints",
    )


def _vocab_options(p) -> None:
    p.add_argument(
        "spec",
        nargs="?",
        help="a name, a .json/.txt file, 'cat, kitty; dog', or one class: 'cat', 'car/truck' "
        "(a word with a digit or _ is taken as a name; 'toys;' forces a class)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--allow-duplicate-classes", action="store_true", help="accept exactly repeated entries"
    )


_ROOT_HELP = "datasets root (default $DETECTRON2_DATASETS or ./datasets)"


def _dataset_options(train: int, val: int, what: str):
    def options(p) -> None:
        p.add_argument("--root", default=None, help=_ROOT_HELP)
        p.add_argument("--train", type=int, default=train, help=f"train images{what}")
        p.add_argument("--val", type=int, default=val, help="val images")
        p.add_argument("--size", type=int, default=128, help="image side in pixels")
        p.add_argument("--seed", type=int, default=0, help="base seed")
        p.add_argument("--preview", metavar="PNG", help="also write a picture of a few val samples")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    return options


def _data_stats_options(p) -> None:
    from data.catalog import DATASETS

    p.add_argument("name", choices=list(DATASETS), metavar="NAME", help=", ".join(DATASETS))
    p.add_argument("--root", default=None, help=_ROOT_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output, every count")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _lazy(module: str, name: str) -> Callable:
    """``module.name``, imported when first called (a command's options or its run)."""

    def call(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    return call


LIGHTNING_COMMANDS = {
    "fit": "train DPSeg (LightningCLI: cli.py fit --config configs/tiny_synthetic.yaml)",
    "validate": "validate a checkpoint on data.val (LightningCLI)",
    "test": "test on every (dataset, bank) of data.test; metrics + summary (LightningCLI; VIP: "
    "cli.py test --config configs/vip_tiny.yaml [--dual-prompts BANK])",
    "predict": "LightningCLI's predict over data.test: --config ... --ckpt_path ... (any images: "
    "cli.py segment)",
}
"""Run by LightningCLI (``model/lightning_cli.py``): ``cli.py fit --config configs/X.yaml``."""


def commands() -> dict[str, Command]:
    """Every command of ``cli.py``: name -> :class:`Command` (LightningCLI's four have no
    options here: they are LightningCLI's)."""
    return {
        **{name: Command(what) for name, what in LIGHTNING_COMMANDS.items()},
        "segment": Command(
            "segment images with a checkpoint (DPSeg) or VIP and any vocabulary",
            _segment_options,
            cmd_segment,
        ),
        "explain": Command(
            "text, visual and dual-prompt cost maps of one class on one image",
            _explain_options,
            cmd_explain,
        ),
        "presets": Command(
            "list model presets and what each needs; presets pretrain: train a toy one",
            _presets_options,
            cmd_presets,
            {
                "pretrain": Command(
                    "pretrain a toy preset (CLIP or dino.txt) on the toy world (writes its "
                    "weights file)",
                    _presets_pretrain_options,
                    cmd_presets_pretrain,
                )
            },
        ),
        "vocab": Command("list vocabularies, or show one", _vocab_options, cmd_vocab),
        "bank": Command(
            "build, inspect, verify, repair, merge, subset, push and pull prompt banks",
            subcommands={
                "build": Command(
                    "build or resume a prompt bank (Stable Diffusion + CLIP)",
                    _bank_build_options,
                    cmd_bank_build,
                ),
                "info": Command("what a bank holds", _bank_info_options, cmd_bank_info),
                "verify": Command(
                    "check schema, values, completeness; optionally rebuild items",
                    _bank_verify_options,
                    cmd_bank_verify,
                ),
                "repair": Command(
                    "rebuild damaged shards with the bank's recorded settings (a resume)",
                    _bank_repair_options,
                    cmd_bank_repair,
                ),
                "merge": Command(
                    "union of the classes of two compatible banks",
                    _bank_merge_options,
                    cmd_bank_merge,
                ),
                "subset": Command(
                    "a bank of some classes of a bigger one (by name or synonym)",
                    _bank_subset_options,
                    cmd_bank_subset,
                ),
                "push": Command(
                    "upload a complete bank (hf://datasets/ORG/NAME, s3://, ...)",
                    _bank_push_options,
                    cmd_bank_push,
                ),
                "pull": Command(
                    "download a bank, check every object, cache it by content",
                    _bank_pull_options,
                    cmd_bank_pull,
                ),
                "gallery": Command(
                    "a contact sheet of the stored images", _bank_gallery_options, cmd_bank_gallery
                ),
            },
        ),
        "vip": Command(
            "VIP tools (testing VIP: cli.py test --config configs/vip_*.yaml)",
            subcommands={
                "select-aliases": Command(
                    "keep the aliases that images agree with (visual-guided selection)",
                    _select_aliases_options,
                    cmd_vip_select_aliases,
                )
            },
        ),
        "eval-masks": Command(
            "score saved prediction maps against label maps (mIoU, fwIoU, mACC, pACC)",
            _lazy("data.eval_masks", "eval_masks_options"),
            _lazy("data.eval_masks", "cmd_eval_masks"),
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
                    "write the toy world's dataset: toy (val), toy:train",
                    _dataset_options(600, 160, ", seen classes (val: all)"),
                    cmd_data_toy,
                ),
                "stats": Command(
                    "check a prepared dataset: counts, values, problems",
                    _data_stats_options,
                    cmd_data_stats,
                ),
                "prepare": Command(
                    "convert an official benchmark download into the detectron2 layout",
                    _lazy("data.prepare", "prepare_options"),
                    _lazy("data.prepare", "cmd_prepare"),
                ),
            },
        ),
    }


def _help_formatter():
    from jsonargparse import DefaultHelpFormatter

    class HelpFormatter(DefaultHelpFormatter):
        """jsonargparse's, but an option whose help tells its default is not given another."""

        def _get_help_string(self, action) -> str:
            text = super()._get_help_string(action)
            if "default" in (action.help or ""):
                text = text.replace(", default: %(default)s)", ")")
                text = text.replace(" (default: %(default)s)", "")
            return text

    return HelpFormatter


def build_parser(argv: list[str] | None = None, parsers: dict | None = None):
    """The command tree, one jsonargparse parser. Only the commands named in ``argv`` get their
    options (what they import, torch for some, waits until they are chosen); None: all do.
    ``parsers`` (a dict) receives each command's parser by its path (``("bank", "build")``)."""
    from jsonargparse import ArgumentParser

    formatter = _help_formatter()
    parser = ArgumentParser(
        prog="cli.py",
        formatter_class=formatter,
        description="dpseg: open-vocabulary semantic segmentation with dual prompts (DPSeg, VIP). "
        "fit, validate, test and predict are LightningCLI's (cli.py fit -h); any images: "
        "cli.py segment -h.",
    )
    parser.add_argument("--version", action="version", version=f"dpseg {_version()}")
    _add_commands(parser, commands(), argv, formatter, {} if parsers is None else parsers)
    return parser


def _add_commands(parser, tree, argv, formatter, parsers, path=(), required=True) -> None:
    from jsonargparse import ArgumentParser

    subcommands = parser.add_subcommands(dest="command", metavar="COMMAND", required=required)
    for name, command in tree.items():
        sub = ArgumentParser(
            description=command.description or command.help, formatter_class=formatter
        )
        subcommands.add_subcommand(name, sub, help=command.help)  # before its own subcommands
        parsers[(*path, name)] = sub
        if argv is None or name in argv:
            if command.options is not None:
                command.options(sub)
            if command.subcommands:
                _add_commands(sub, command.subcommands, argv, formatter, parsers,
                              (*path, name), command.run is None)  # fmt: skip


def _parse(argv: list[str]) -> tuple[Command, object]:
    """The command a command line chose and its options. The deepest command named at its
    start parses the rest itself, so that its errors come with its own usage line (jsonargparse
    4.53 reports an unknown key of a YAML file given to a subcommand's subcommand as a KeyError
    of the parent's name)."""
    parsers: dict = {}
    parser = build_parser(argv, parsers)
    tree, path, command = commands(), (), None
    while len(path) < len(argv) and argv[len(path)] in tree:
        command = tree[argv[len(path)]]
        path = (*path, argv[len(path)])
        tree = command.subcommands
    if command is None:
        return _chosen(parser.parse_args(argv))
    parser = parsers[path]
    vars(parser).pop("parent_parser", None)  # a root now: --print_config prints its options
    return _chosen(parser.parse_args(argv[len(path) :]), command)


def _chosen(config, command: Command | None = None) -> tuple[Command, object]:
    """The command a parsed command line chose (below ``command``), and its own options."""
    tree = commands() if command is None else command.subcommands
    args = config
    while args.get("command"):
        command, args = tree[args.command], args[args.command]
        tree = command.subcommands
    return command, args


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


def cmd_segment(args: argparse.Namespace) -> int:
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
                "segment needs --ckpt (a checkpoint of cli.py fit), or --method vip (training-free)"
            )
        predictor = Predictor.from_checkpoint(args.ckpt, device=args.device, rounds=args.rounds)
        _dpseg_prompts(
            predictor, args.vocab, args.bank, args.text_only, args.generator_weights, not args.quiet
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
        f"segment: {summary['images']} images in {summary['seconds']} s "
        f"({summary['images_per_second']} images/s), {len(summary['skipped'])} skipped; "
        f"{classes}; outputs in {args.out} (label maps, overlays, class areas, summary.json)"
    )
    return 0


def _segment_options(p) -> None:
    p.description = (
        "Segment images with a checkpoint of cli.py fit (DPSeg) or with VIP (--method vip, no "
        "training) and any vocabulary: label maps, overlays, class areas and summary.json in "
        "--out. (LightningCLI's predict, over data.test: cli.py predict --config ... "
        "--ckpt_path ...)"
    )
    p.add_argument("--method", choices=("dpseg", "vip"), default="dpseg", help="the method")
    p.add_argument("--ckpt", help="DPSeg: a checkpoint of cli.py fit")
    p.add_argument("--images", nargs="+", required=True, help="files, folders or glob patterns")
    p.add_argument("--vocab", required=True, help="'cat, kitty; dog', one class, a name or a file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--bank", help="DPSeg: prompt bank (default: the checkpoint's training bank)")
    p.add_argument(
        "--text-only", action="store_true", help="DPSeg: no visual prompts for missing classes"
    )
    p.add_argument(
        "--rounds", type=Literal[1, 2] | None, help="DPSeg: inference rounds (default 1)"
    )
    p.add_argument("--generator-weights", help="DPSeg: local generator weights for missing classes")
    p.add_argument("--config", help="VIP: settings from a configs/vip_*.yaml (its model: section)")
    p.add_argument("--encoder", help="VIP: encoder preset (default: the config's, dinotxt-l16)")
    p.add_argument("--dual-prompts", metavar="BANK", help="VIP: add a bank's visual prompts")
    p.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _dpseg_prompts(predictor, vocabulary, bank: str | None, text_only: bool,
                   generator_weights: str | None = None, progress: bool = True) -> None:  # fmt: skip
    """A DPSeg predictor's prompts: classes the bank (default: the checkpoint's training bank)
    lacks are built first with its own settings (``prompt_bank.extend``), unless text-only."""
    from prompt_bank.extend import build_missing_classes
    from prompt_bank.store import Bank

    bank = bank or predictor.training_bank()
    extra = []
    if bank is not None and not text_only:
        opened = predictor.module.check_templates(Bank.open(bank))  # before any generation
        extra = build_missing_classes(opened, vocabulary, generator_weights, progress)
        bank = opened  # opened once
    predictor.set_vocabulary(vocabulary, bank=bank, extra_banks=extra, text_only=text_only)


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
    _dpseg_prompts(predictor, vocabulary, args.bank, args.text_only)
    out = write_explanation(predictor, image, args.class_name, args.out)
    print(f"explain: {out} ({args.class_name!r}: {predictor.sources[args.class_name]} prompts)")
    return 0


@dataclasses.dataclass
class SelectAliasesOptions:
    """``vip select-aliases``: what is scored, with what, on how many images (how aliases are
    scored: model.vip.selection.SelectionConfig's fields, the options after these)."""

    data: str  # a dataset name (cli.py data stats) or a folder of images
    vocab: str  # alias vocabulary: a cls_*.txt file, a name, or 'a, a2; b'
    out: str  # the alias file to write
    encoder: str = "dinotxt-l16"  # encoder preset (VIP's; tiny-dinotxt and tiny-vit run offline)
    encoder_weights: str | None = None  # local weights: a CLIP file or folder; dinotxt-l16: the
    # folder of its two files
    attention: str | None = None  # dense path: dino.txt proxy (default) or none; CLIP ViT clear
    # (default), sclip, vanilla, proxy, none
    templates: str = "seg"  # seg, city, imagenet80, imagenet80:N, single
    rule: Literal["ours", "reported"] = "ours"  # ours (docs/vip.md), or the rule third-party
    # notes report (unconfirmed): pre-filter 0.7, threshold 0.4, agreement over non-empty regions
    # only, the backbone's attention as affinity; the scoring options below override it
    limit: int = 200  # images scored (0: all)
    size: int = 336  # image side (short side + centre crop)
    batch_size: int = 8  # images per batch
    root: str | None = None  # datasets root (default $DETECTRON2_DATASETS or ./datasets)
    device: str | None = None  # cpu, cuda (default: cuda when available)
    quiet: bool = False  # no progress bar


def _select_aliases_options(p) -> None:
    from model.vip.selection import AFFINITIES, SelectionConfig

    p.description = (
        "Score every alias of --vocab on unlabeled images of --data (activation region, "
        "agreement with the map propagated by the image's patch affinity, entropy); keep the "
        "canonical name and the aliases that beat it on agreement and entropy; write them with "
        "the scores as comments."
    )
    _config_file(p)
    _add_fields(p, SelectAliasesOptions, overrides={"rule": {"choices": ("ours", "reported")}})
    _add_fields(p, SelectionConfig, unset="the --rule's; ours", overrides={
        "affinity": {"choices": AFFINITIES}})  # fmt: skip


def cmd_vip_select_aliases(args: argparse.Namespace) -> int:
    """Score every alias on images of the target data; write the kept ones with their scores."""
    from model.vip.selection import SelectionConfig, select_aliases

    _log_ours()
    try:
        if args.rule == "reported":
            given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SelectionConfig)}
            config = SelectionConfig.reported(**{k: v for k, v in given.items() if v is not None})
        else:
            config = _config_from(SelectionConfig, args)
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


# ---------------------------------------------------------------------------------------------


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
    """fit/validate/test/predict, exactly LightningCLI's (model/lightning_cli.py)."""

    _log_ours()
    from model.lightning_cli import main as run

    try:
        run(_dual_prompts_option(argv))
    except SystemExit as e:
        if e.code == 2 and argv[0] == "predict" and any(a.startswith("--images") for a in argv):
            print(
                "hint: predict is LightningCLI's (over data.test); any images: cli.py segment "
                "--images ... --vocab ... --out ...",
                file=sys.stderr,
            )
        raise
    return 0


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):  # `cli.py ... | head` ends quietly, as Unix tools do
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] in LIGHTNING_COMMANDS:
            return lightning_main(argv)
        command, args = _parse(argv)
        if args.get("root", "unset") is None:
            import os

            args.root = os.environ.get("DETECTRON2_DATASETS", "datasets")
        return command.run(args) or 0
    except USER_ERRORS as e:  # data/errors.py: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
