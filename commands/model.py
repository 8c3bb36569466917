"""``model export|push|pull``: a trained DPSeg as a folder to share (``model.export``,
``model.share``)."""

from __future__ import annotations

import argparse

from commands.options import Command, pull_target, storage_options
from common.errors import say
from common.signals import PUSH_CUT, STARTS_OVER, interruption_report


def cmd_model_export(args: argparse.Namespace) -> None:
    from model.export import export_model

    with interruption_report(f"model export interrupted by {{signal}}: {STARTS_OVER}"):
        out = export_model(args.ckpt, args.out, args.metrics or [])
    say(
        f"model: {out} (model.safetensors, config.json, README.md); use it with "
        f"cli.py segment --model {out}"
    )


def cmd_model_push(args: argparse.Namespace) -> None:
    from model.share import push_model

    with interruption_report(f"model push interrupted by {{signal}}: {PUSH_CUT}"):
        result = push_model(args.model, args.url, storage_options(args), progress=not args.quiet)
    if not result["uploaded"]:
        say(
            f"{args.url} already holds this model, its weights intact (content key "
            f"{result['key'][:16]})"
        )
        return
    what = "repaired the damaged copy at" if result["repaired"] else "pushed"
    say(
        f"{what} {args.url}: {result['uploaded'] / 1e6:.2f} MB in {result['seconds']:.1f} s "
        f"(content key {result['key'][:16]}); load it with: cli.py segment --model {args.url}"
    )


def cmd_model_pull(args: argparse.Namespace) -> None:
    from model.share import pull_model

    with interruption_report(f"model pull interrupted by {{signal}}: {STARTS_OVER}"):
        result = pull_model(
            args.url, pull_target(args), storage_options(args), progress=not args.quiet
        )
    if not result["downloaded"]:
        say(f"{result['path']} (already here; content key {result['key'][:16]})")
        return
    say(
        f"{result['path']}: {result['downloaded'] / 1e6:.2f} MB from {args.url} in "
        f"{result['seconds']:.1f} s, weights checked (content key {result['key'][:16]})"
    )


def _storage_option(p) -> None:
    p.add_argument(
        "--storage-options",
        metavar="JSON",
        help="fsspec options, e.g. '{\"anon\": true}' (default $DPSEG_STORAGE_OPTIONS)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _model_push_options(p) -> None:
    p.add_argument("model", help="a model folder of cli.py model export")
    p.add_argument("url", help="hf://ORG/NAME or an fsspec URL (s3://, gs://, file://)")
    _storage_option(p)


def _model_pull_options(p) -> None:
    p.add_argument("url", help="hf://ORG/NAME[@REVISION] or an fsspec URL (https:// too)")
    p.add_argument("--to", metavar="DIR", help="where (default: the cache, keyed by content)")
    _storage_option(p)


def _model_export_options(p) -> None:
    p.add_argument("ckpt", help="a checkpoint of cli.py fit")
    p.add_argument("--out", required=True, help="a new folder")
    p.add_argument(
        "--metrics",
        nargs="+",
        metavar="RUN_JSON",
        help="test records for the card: the DATASET.run.json of cli.py test",
    )


COMMANDS = {
    "model": Command(
        "share a trained DPSeg: export it (safetensors, config.json, a card), push, pull",
        subcommands={
            "export": Command(
                "a checkpoint -> a model folder (safetensors, config.json, README.md)",
                _model_export_options,
                cmd_model_export,
            ),
            "push": Command(
                "upload a model folder to a URL (its weights checked; config.json last)",
                _model_push_options,
                cmd_model_push,
                leaves=PUSH_CUT,
            ),
            "pull": Command(
                "download a model (weights checked) into the cache or --to",
                _model_pull_options,
                cmd_model_pull,
            ),
        },
    )
}
