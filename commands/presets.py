"""``presets``: every model preset and what it needs; ``presets pretrain``: a toy one."""

from __future__ import annotations

import argparse
import json
import os

from commands.options import Command, add_fields, config_file, config_from
from common.errors import check_output_file


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
    print(OPEN_NAMES)


# what the user may type besides a preset (pretrained.names)
OPEN_NAMES = """
Besides the presets, --encoder and --generator take any model by its own library's name
(recorded in banks, cards and checkpoints with its revision, fingerprint and licence):
  --encoder    MODEL:TAG                an open_clip model and pretrained tag
                                        (open_clip.list_pretrained(); e.g.
                                        convnext_base_w:laion2b_s13b_b82k_augreg, ViT-B-16:openai)
               hf-hub:ORG/NAME[@REV]    an open_clip repository on the hub
               DIR (or local-dir:DIR)   a folder with open_clip_config.json and the weights
               ConvNeXt (timm trunks) and ViT (open_clip) towers; others are refused.
  --generator  ORG/NAME[@REV]           a diffusers repository: StableDiffusionPipeline (SD 1.x,
                                        2.x, SD-Turbo) or StableDiffusionXLPipeline (SDXL,
                                        SDXL-Turbo), e.g. stabilityai/sdxl-turbo
               DIR                      a diffusers folder (model_index.json)
               defaults (ours): size from the UNet and VAE configs; SD 25 steps, guidance 7.5;
               SDXL 25 steps, guidance 5.0; a name with "turbo" 1 step, no guidance;
               --steps, --guidance and --resolution override them."""


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
    config_file(p)
    p.add_argument("name", choices=TOY_PRESETS, help="the toy preset")
    p.add_argument("--out", help="weights file (default runs/pretrain/NAME.safetensors)")
    own = ", ".join(f"{name} {steps}" for name, steps in PRETRAIN_STEPS.items())
    add_fields(
        p,
        PretrainConfig,
        group="training (pretrained.presets.PretrainConfig)",
        overrides={
            "steps": {
                "type": int | None,
                "default": None,
                "help": f"training steps (default {PretrainConfig.steps}; {own}: the steps of the "
                "committed weights)",
            }
        },
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a file already at --out (refused else)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_presets_pretrain(args: argparse.Namespace) -> int:
    """Pretrain a toy preset on the toy world and write its weights file."""
    from pretrained.presets import PRETRAIN_STEPS, PretrainConfig

    steps = args.steps if args.steps is not None else PRETRAIN_STEPS.get(args.name)
    # PretrainConfig's checks raise SettingError (a UserError): one line, exit 2
    config = config_from(PretrainConfig, args, **({} if steps is None else {"steps": steps}))
    out = args.out or f"runs/pretrain/{args.name}.safetensors"
    check_output_file(out, "--out", example=f"{args.name}.safetensors")  # before the training
    if os.path.lexists(out) and not args.overwrite:
        from pretrained.bundled_weights import existing_weights_error

        raise existing_weights_error(out)
    from pretrained.toy_pretrain import pretrain  # torch: after the checks

    report = pretrain(args.name, config, out, progress=not args.quiet, overwrite=args.overwrite)
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


def _presets_options(p) -> None:
    p.add_argument("--kind", choices=("encoder", "generator", "bank"), help="only this kind")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--fingerprints",
        action="store_true",
        help="build the offline presets and print their sha256 fingerprints",
    )


COMMANDS = {
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
}
