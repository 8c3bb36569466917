"""``bank build|info|verify|repair|merge|subset|push|pull|gallery``: prompt banks."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from commands.options import (
    Command,
    add_fields,
    add_storage_option,
    config_file,
    config_from,
    pull_target,
    storage_options,
)
from common.errors import say
from common.io import command_line
from common.signals import PUSH_CUT, STARTS_OVER, interruption_report


def _run_build(config, location: str) -> None:
    """Build/resume/repair; Ctrl-C or SIGTERM ends in one line once finished items are saved."""
    from accelerate import PartialState

    from common.signals import Interrupted
    from prompt_bank.build import build_bank

    try:
        summary = build_bank(config, location)
    except Interrupted as e:
        # every rank of torchrun/accelerate gets the signal and says what it saved (no
        # collective is safe once one rank stops)
        state = PartialState()
        rank = (
            f"rank {state.process_index} of {state.num_processes}: "
            if (state.num_processes > 1)
            else ""
        )
        who = "rank" if rank else "run"
        saved = (
            f"the {e.saved} items this {who} finished are saved in {location}; run the same "
            "command again to resume"
            if e.saved
            else f"before this {who} saved any item; run the same command again"
        )
        raise Interrupted(e.signum, f"{rank}interrupted by {e}: {saved}") from None
    state = PartialState()
    if state.is_main_process:
        print(summary.line())
    # Tear the ranks' process group down before the interpreter exits: left to exit, gloo's
    # threads once aborted a rank ("terminate called without an active exception", SIGABRT)
    # after a build that had finished (a fresh-clone CI run, 2026-12-01; 1 in 9 runs seen).
    state.destroy_process_group()


@dataclasses.dataclass
class BankBuildOptions:
    """``bank build``'s options typed as strings before they become a BuildConfig (its other
    options are prompt_bank.build.BuildConfig's own fields)."""

    vocab: str  # vocabulary: a name, a .json/.txt file, or 'a; b, c'
    out: str  # bank location: a path or an fsspec URL
    preset: str | None = None  # bank preset: paper (default), fast, vit, tiny, toy, toy-vit,
    # toy-dinotxt (cli.py presets --kind bank)
    generator: str | None = None  # generator (overrides the bank preset's): a preset, a diffusers
    # repository ORG/NAME[@REV] or folder (cli.py presets)
    encoder: str | None = None  # encoder (overrides the bank preset's): a preset, an open_clip
    # MODEL:TAG, hf-hub:ORG/NAME[@REV] or a folder (cli.py presets)
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
    config_file(p)
    add_fields(p, BankBuildOptions, group="what to build (the strings you type)")
    add_fields(
        p,
        BuildConfig,
        group="how items are made and stored (prompt_bank.build.BuildConfig)",
        skip=("vocabulary", "templates", "generator", "encoder", "progress", "command"),
        overrides={
            "generator_weights": {"metavar": "DIR"},
            "encoder_weights": {"metavar": "PATH"},
            "level_dtype": {"choices": ("float16", "float32")},
            "device": {"choices": ("cpu", "cuda")},
        },
    )


def cmd_bank_build(args: argparse.Namespace) -> None:
    """Build or resume a prompt bank (one process, or every rank of torchrun/accelerate)."""
    from common.errors import refuse_unwritable
    from data.templates import load_templates
    from data.vocabulary import load_vocabulary
    from prompt_bank.build import BuildConfig, resolve_preset
    from prompt_bank.integrity import refuse_read_only_url
    from prompt_bank.store import is_url

    refuse_read_only_url(args.out, "--out")
    if not is_url(args.out) and not os.path.lexists(args.out):  # a new bank: its folder's
        refuse_unwritable(args.out, "--out")  # fault now (an existing one: the lock says it)
    generator, encoder = resolve_preset(args.preset, args.generator, args.encoder)
    config = config_from(
        BuildConfig,
        args,
        vocabulary=load_vocabulary(args.vocab, allow_duplicates=args.allow_duplicate_classes),
        templates=load_templates(args.templates),
        generator=generator,
        encoder=encoder,
        progress=not args.quiet,
        command=command_line(),
    )
    _run_build(config, args.out)


def cmd_bank_repair(args: argparse.Namespace) -> None:
    """Resume a bank with the settings it records: damaged shards are dropped and rebuilt."""
    from prompt_bank.build import config_from_bank
    from prompt_bank.format import BankFormatError, validate_group
    from prompt_bank.integrity import mend_advice, read_only_url
    from prompt_bank.store import open_group

    if read_only_url(args.bank):
        raise BankFormatError(
            f"bank repair: BANK {args.bank} is an http(s) URL, which can be read but not "
            f"written; {mend_advice(args.bank)}"
        )
    try:
        group = open_group(args.bank, mode="r")  # a damaged root: BankFormatError
    except FileNotFoundError:
        raise BankFormatError(
            f"bank repair: BANK {args.bank!r} does not exist; give the path of a bank that "
            "`python cli.py bank build` started"
        ) from None
    attrs = dict(group.attrs)
    if "classes" not in attrs or "build" not in attrs:
        raise BankFormatError(
            f"{args.bank} has no complete bank attributes (its root zarr.json is damaged or the "
            "build never started): run its bank build command again"
        )
    validate_group(group, args.bank)  # attributes of other types, arrays that disagree: one line
    config = config_from_bank(
        attrs, args.generator_weights, args.encoder_weights, progress=not args.quiet
    )
    _run_build(config, args.bank)


def _open_bank(location: str, args: argparse.Namespace | None = None, check_seal: bool = True):
    from prompt_bank.store import Bank

    options = storage_options(args) if args is not None else None
    return Bank.open(location, options, check_seal=check_seal)


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
    from common.errors import SettingError
    from prompt_bank.verify import verify_bank

    if args.regenerate < 0:
        raise SettingError(f"--regenerate {args.regenerate}: give 0 or more items to rebuild")
    if args.seed < 0:  # numpy's seeds are unsigned (a probe: a traceback)
        raise SettingError(f"--seed {args.seed}: give 0 or more")
    if not args.tolerance >= 0:  # NaN too
        raise SettingError(f"--tolerance {args.tolerance}: give 0 or more (0: bit-identical)")

    report = verify_bank(
        _open_bank(args.bank, args, check_seal=False),  # an edited seal is reported, not raised
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

    with interruption_report(f"bank merge interrupted by {{signal}}: {STARTS_OVER}"):
        summary = merge_banks(
            _open_bank(args.a, args), _open_bank(args.b, args), args.out, storage_options(args)
        )
    say(
        f"merged bank {summary['out']}: {summary['classes']} classes ({summary['from_a']} from "
        f"{args.a}, {summary['from_b']} more from {args.b}, {summary['shared']} in both)"
    )


def cmd_bank_subset(args: argparse.Namespace) -> None:
    from data.vocabulary import load_vocabulary
    from prompt_bank.compose import subset_bank

    with interruption_report(f"bank subset interrupted by {{signal}}: {STARTS_OVER}"):
        summary = subset_bank(
            _open_bank(args.bank, args),
            load_vocabulary(args.vocab),
            args.out,
            storage_options(args),
        )
    say(
        f"subset bank {summary['out']}: {summary['classes']} of the {summary['of']} classes of "
        f"{args.bank} ({summary['by_synonym']} found under another spelling or by synonym)"
    )


def cmd_bank_push(args: argparse.Namespace) -> None:
    from prompt_bank.share import push_bank

    with interruption_report(f"bank push interrupted by {{signal}}: {PUSH_CUT}"):
        result = push_bank(args.bank, args.url, storage_options(args), progress=not args.quiet)
    if result["repaired"]:
        say(
            f"{args.url} held this bank damaged: {len(result['repaired'])} files differed or were "
            f"missing ({', '.join(result['repaired'][:3])}{' ...' if len(result['repaired']) > 3 else ''}); "
            f"uploaded them again, {result['uploaded'] / 1e6:.2f} MB (content key "
            f"{result['content_key'][:16]})"
        )
    elif not result["uploaded"]:
        say(
            f"{args.url} already holds this bank, every file checked (content key "
            f"{result['content_key'][:16]})"
        )
    else:
        say(
            f"pushed {args.bank} to {args.url}: {result['uploaded'] / 1e6:.2f} MB in "
            f"{result['seconds']:.1f} s (content key {result['content_key'][:16]})"
        )


def cmd_bank_pull(args: argparse.Namespace) -> None:
    from prompt_bank.share import pull_bank

    with interruption_report(f"bank pull interrupted by {{signal}}: {STARTS_OVER}"):
        result = pull_bank(
            args.url, pull_target(args), storage_options(args), progress=not args.quiet
        )
    if not result["downloaded"]:
        say(f"{result['path']} (already here; content key {result['content_key'][:16]})")
    else:
        say(
            f"{result['path']}: {result['downloaded'] / 1e6:.2f} MB from {args.url} in "
            f"{result['seconds']:.1f} s, every object checked (content key "
            f"{result['content_key'][:16]})"
        )


def _check_gallery_options(args: argparse.Namespace) -> None:
    """``--max-classes`` and ``--out`` checked before the bank is read."""
    from common.errors import SettingError, check_output_file
    from common.io import check_picture_out

    check_output_file(args.out, "--out", "gallery.png")  # a folder of that name: one line
    if args.max_classes < 1:
        raise SettingError(
            f"--max-classes {args.max_classes}: must be >= 1 (the number of classes shown, one "
            "row each)"
        )
    check_picture_out(args.out, "--out")


def cmd_bank_gallery(args: argparse.Namespace) -> None:
    from prompt_bank.inspect import write_gallery

    _check_gallery_options(args)
    path = write_gallery(_open_bank(args.bank, args), args.out, max_classes=args.max_classes)
    print(f"gallery: {path}")


def _bank_info_options(p) -> None:
    p.add_argument("bank", help="a path or an fsspec URL")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--prompts",
        action="store_true",
        help="also check that visual prompts carry class information (nearest text prompt of "
        "each class's mean visual prompt; reads every embedding)",
    )
    add_storage_option(p)


def _bank_verify_options(p) -> None:
    p.add_argument("bank", help="a path or an fsspec URL")
    p.add_argument("--regenerate", type=int, default=0, metavar="K", help="rebuild K random items")
    p.add_argument("--seed", type=int, default=0, help="which items --regenerate picks")
    p.add_argument("--tolerance", type=float, default=0.0, help="max abs difference allowed")
    p.add_argument("--generator-weights", metavar="DIR", help="the bank's generator weights")
    p.add_argument("--encoder-weights", metavar="PATH", help="the bank's encoder weights")
    add_storage_option(p)


def _bank_repair_options(p) -> None:
    p.add_argument("bank", help="a path or an fsspec URL")
    p.add_argument("--generator-weights", metavar="DIR", help="the bank's generator weights")
    p.add_argument("--encoder-weights", metavar="PATH", help="the bank's encoder weights")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _bank_merge_options(p) -> None:
    p.add_argument("a", help="a bank: a path or an fsspec URL")
    p.add_argument("b", help="another bank, with the same encoder and templates")
    p.add_argument("--out", required=True, help="a new path or URL (never an existing bank)")
    add_storage_option(p)


def _bank_subset_options(p) -> None:
    p.add_argument("bank", help="a path or an fsspec URL")
    p.add_argument("--vocab", required=True, help="a name, a file, 'a; b, c' or one class")
    p.add_argument("--out", required=True, help="a new path or URL (never an existing bank)")
    add_storage_option(p)


def _bank_push_options(p) -> None:
    p.add_argument("bank", help="a local bank folder")
    p.add_argument("url", help="hf://datasets/ORG/NAME or an fsspec URL (s3://, gs://, file://)")
    add_storage_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _bank_pull_options(p) -> None:
    p.add_argument("url", help="hf://datasets/ORG/NAME[@REVISION] or an fsspec URL")
    p.add_argument("--to", metavar="DIR", help="where (default: the cache, keyed by content)")
    add_storage_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _bank_gallery_options(p) -> None:
    p.add_argument("bank", help="a path or an fsspec URL")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--max-classes", type=int, default=32, help="classes shown")


COMMANDS = {
    "bank": Command(
        "build, inspect, verify, repair, merge, subset, push and pull prompt banks",
        subcommands={
            "build": Command(
                "build or resume a prompt bank (Stable Diffusion + CLIP)",
                _bank_build_options,
                cmd_bank_build,
                keeps_finished_work=True,
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
                keeps_finished_work=True,
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
                leaves=PUSH_CUT,
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
}
