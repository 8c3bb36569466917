"""``model``: a trained DPSeg as a folder to share (``model.export``)."""

from __future__ import annotations

import argparse

from commands.options import Command


def cmd_model_export(args: argparse.Namespace) -> None:
    from model.export import export_model

    out = export_model(args.ckpt, args.out)
    print(f"model: {out} (model.safetensors, config.json, README.md); use it with "
          f"cli.py segment --model {out}")  # fmt: skip


def _model_export_options(p) -> None:
    p.add_argument("ckpt", help="a checkpoint of cli.py fit")
    p.add_argument("--out", required=True, help="a new folder")


COMMANDS = {
    "model": Command(
        "share a trained DPSeg: export it as safetensors, config.json and a card",
        subcommands={
            "export": Command(
                "a checkpoint -> a model folder (safetensors, config.json, README.md)",
                _model_export_options,
                cmd_model_export,
            ),
        },
    )
}
