"""``vip select-aliases``: VIP's visual-guided alias selection."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Literal

from commands.options import Command, add_fields, config_file, config_from, log_ours
from common.errors import say


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
    device: str | None = None  # cpu, cuda, cuda:N (default: cuda when available)
    quiet: bool = False  # no progress bar or info lines


def _select_aliases_options(p) -> None:
    from model.vip.selection import AFFINITIES, SelectionConfig

    p.description = (
        "Score every alias of --vocab on unlabeled images of --data (activation region, "
        "agreement with the map propagated by the image's patch affinity, entropy); keep the "
        "canonical name and the aliases that beat it on agreement and entropy; write them with "
        "the scores as comments."
    )
    config_file(p)
    add_fields(
        p,
        SelectAliasesOptions,
        group="what is scored, with what",
        overrides={"rule": {"choices": ("ours", "reported")}},
    )
    add_fields(
        p,
        SelectionConfig,
        group="how aliases are scored (model.vip.selection.SelectionConfig)",
        unset="the --rule's; ours",
        overrides={"affinity": {"choices": AFFINITIES}},
    )


def cmd_vip_select_aliases(args: argparse.Namespace) -> int:
    """Score every alias on images of the target data; write the kept ones with their scores."""
    from common.errors import SettingError
    from model.vip.selection import SelectionConfig, select_aliases

    log_ours(args.quiet)
    for option, value, most in (("size", args.size, 2048), ("batch-size", args.batch_size, 1024)):
        if value > most:  # ours: beyond any use, and 100000 px was a 120 GB traceback
            raise SettingError(f"--{option} {value}: must be at most {most}")
    # SelectionConfig's checks raise SettingError (a UserError): one line, exit 2
    if args.rule == "reported":
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SelectionConfig)}
        config = SelectionConfig.reported(**{k: v for k, v in given.items() if v is not None})
    else:
        config = config_from(SelectionConfig, args)
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
    say(
        f"select-aliases: {classes} classes, {len(scores)} aliases scored, {kept} kept "
        f"({kept - classes} besides the canonical names) -> {path}"
    )
    return 0


COMMANDS = {
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
}
