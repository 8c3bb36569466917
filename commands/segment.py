"""``segment``: any images with a checkpoint (DPSeg) or VIP; ``explain``: one class's cost maps."""

from __future__ import annotations

import argparse
import sys
from typing import Literal

from commands.options import Command, log_ours
from common.errors import say


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment images with a checkpoint (DPSeg) or VIP and any vocabulary; outputs in --out."""

    _check_segment_arguments(args)  # before torch is imported, a model loaded, a prompt made
    from model.predictor import expand_images, predict_images

    log_ours(args.quiet)
    paths = expand_images(args.images)
    if not paths:
        raise FileNotFoundError(f"--images {' '.join(args.images)}: no image found")
    _refuse_images_in_out(paths, args.out)
    if args.method == "vip":
        from model.vip.predictor import VIPPredictor

        predictor = VIPPredictor.from_config(args.config, args.encoder, args.device)
        predictor.set_vocabulary(args.vocab, bank=args.dual_prompts)
    else:
        from model.predictor import Predictor

        if args.model:
            predictor = Predictor.from_pretrained(
                args.model, device=args.device, rounds=args.rounds
            )
        else:
            predictor = Predictor.from_checkpoint(args.ckpt, device=args.device, rounds=args.rounds)
        if args.reject is not None or args.reject_max is not None:
            predictor.set_rejection(args.reject, args.reject_max)
        predictor.use_vocabulary(
            args.vocab, args.bank, args.text_only, args.generator_weights, not args.quiet
        )
    summary = predict_images(predictor, paths, args.out, not args.quiet, args.redo)
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
    kept = summary["kept"]
    made = summary["images"] - kept
    speed = f"{summary['images_per_second']} images/s" if made else "nothing to segment"
    earlier = f" ({kept} kept from an earlier run: --redo segments them again)" if kept else ""
    say(
        f"segment: {summary['images']} images{earlier} in {summary['seconds']} s "
        f"({speed}), {len(summary['skipped'])} skipped; "
        f"{classes}; outputs in {args.out} (label maps, overlays, class areas, summary.json)"
    )
    return 0


DPSEG_ONLY = {
    "ckpt": "--ckpt",
    "model": "--model",
    "bank": "--bank",
    "text_only": "--text-only",
    "rounds": "--rounds",
    "generator_weights": "--generator-weights",
    "reject": "--reject",
    "reject_max": "--reject-max",
}
VIP_ONLY = {"config": "--config", "encoder": "--encoder", "dual_prompts": "--dual-prompts"}


def _refuse_images_in_out(paths: list, out: str) -> None:
    """An --images file inside --out: the next run would segment this run's label maps and
    overlays too (found by a probe). One line, before any work."""
    import os

    from common.errors import SettingError

    # realpath, not Path.resolve: a link that loops among the images (skipped later, with its
    # reason) would raise RuntimeError here (found by a probe)
    folder = os.path.realpath(out)
    inside = next((p for p in paths if os.path.dirname(os.path.realpath(p)) == folder), None)
    if inside is not None:
        raise SettingError(
            f"--out {out!r} holds images that --images names ({str(inside)!r}): the outputs "
            "(label maps, overlays) would be read as images on the next run; give an --out "
            "folder of its own"
        )


def _check_segment_arguments(args: argparse.Namespace) -> None:
    """segment's options checked before any work: the device, --out, and no option of the other
    method (it would be silently ignored). One line naming the option (SettingError)."""
    from common.errors import SettingError, check_device, check_output_folder

    if args.reject is not None and not 0 < args.reject < 1:
        raise SettingError(f"--reject {args.reject}: a probability in (0, 1), e.g. 0.05")
    if args.reject_max is not None and args.reject_max < 1:
        raise SettingError(f"--reject-max {args.reject_max}: give 1 or more")
    if args.method == "dpseg" and not (args.ckpt or args.model):
        raise SettingError(
            "segment needs --ckpt (a checkpoint of cli.py fit) or --model (a folder of cli.py "
            "model export), or --method vip (training-free)"
        )
    if args.ckpt and args.model:
        raise SettingError(f"--ckpt {args.ckpt!r} and --model {args.model!r}: give one of them")
    check_device(args.device)
    check_output_folder(args.out, "--out")
    from data.datasets import max_pixels

    max_pixels()  # a bad $DPSEG_MAX_PIXELS: one line before --out is made
    if args.max_pixels is not None:
        if args.max_pixels < 1:
            raise SettingError(f"--max-pixels {args.max_pixels}: give a number of pixels >= 1")
        import os

        os.environ["DPSEG_MAX_PIXELS"] = str(args.max_pixels)  # data.datasets.read_image
    other, method = (DPSEG_ONLY, "DPSeg") if args.method == "vip" else (VIP_ONLY, "VIP")
    for key, option in other.items():
        if getattr(args, key, None):
            fix = (
                "VIP takes --config configs/vip_*.yaml (and --encoder, --dual-prompts); drop "
                f"{option}, or use --method dpseg"
                if args.method == "vip"
                else f"DPSeg takes --ckpt; drop {option}, or add --method vip"
            )
            raise SettingError(f"{option} is for {method} only, not --method {args.method}: {fix}")


def _segment_options(p) -> None:
    p.description = (
        "Segment images with a checkpoint of cli.py fit (DPSeg) or with VIP (--method vip, no "
        "training) and any vocabulary: label maps, overlays, class areas and summary.json in "
        "--out. (LightningCLI's predict, over data.test: cli.py predict --config ... "
        "--ckpt_path ...)"
    )
    p.add_argument("--method", choices=("dpseg", "vip"), default="dpseg", help="the method")
    p.add_argument("--ckpt", help="DPSeg: a checkpoint of cli.py fit")
    p.add_argument(
        "--model",
        help="DPSeg: a model folder of cli.py model export, or a URL it was "
        "pushed to (hf://ORG/NAME, s3://, file://, https://: pulled into the cache)",
    )
    p.add_argument("--images", nargs="+", required=True, help="files, folders or glob patterns")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        metavar="N",
        help="skip images with more pixels (default 80 M, or $DPSEG_MAX_PIXELS)",
    )
    p.add_argument("--vocab", required=True, help="'cat, kitty; dog', one class, a name or a file")
    p.add_argument(
        "--out",
        required=True,
        help="output folder; an image whose outputs there were made by the same model, settings "
        "and vocabulary from the same bytes is kept, not segmented again",
    )
    p.add_argument("--redo", action="store_true", help="segment every image again")
    p.add_argument("--bank", help="DPSeg: prompt bank (default: the checkpoint's training bank)")
    p.add_argument(
        "--text-only", action="store_true", help="DPSeg: no visual prompts for missing classes"
    )
    p.add_argument(
        "--rounds", type=Literal[1, 2] | None, help="DPSeg: inference rounds (default 1)"
    )
    p.add_argument(
        "--reject",
        type=float,
        metavar="P",
        help="DPSeg: class early rejection, decode only the classes the coarse head finds with "
        "probability >= P somewhere (0.05 in the configs; default off)",
    )
    p.add_argument(
        "--reject-max",
        type=int,
        metavar="N",
        help="DPSeg: class early rejection, decode at most N classes per image, those that "
        "stand out most of the vocabulary (48 in the configs; with or without --reject)",
    )
    p.add_argument("--generator-weights", help="DPSeg: local generator weights for missing classes")
    p.add_argument("--config", help="VIP: settings from a configs/vip_*.yaml (its model: section)")
    p.add_argument("--encoder", help="VIP: encoder preset (default: the config's, dinotxt-l16)")
    p.add_argument("--dual-prompts", metavar="BANK", help="VIP: add a bank's visual prompts")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info lines")


def cmd_explain(args: argparse.Namespace) -> int:
    """Text, visual and dual-prompt cost maps of one class on one image (paper's Figure 1)."""
    from common.errors import SettingError, check_device
    from data.datasets import read_image
    from data.vocabulary import Vocabulary, load_vocabulary
    from model.explain import check_explanation_out, write_explanation
    from model.predictor import Predictor
    from prompt_bank.store import Bank

    log_ours(args.quiet)
    if ";" in args.class_name or not args.class_name.strip():
        raise SettingError(
            f"--class {args.class_name!r}: one class name (the vocabulary goes in --vocab, "
            "classes separated by ';')"
        )
    if "," in args.class_name:
        first = args.class_name.split(",")[0].strip()
        raise SettingError(
            f"--class {args.class_name!r}: one class name, without synonyms (they go in "
            f"--vocab: '{args.class_name}; ...' with --class {first!r})"
        )
    Vocabulary.from_entries([args.class_name], source="--class")  # a control character, bytes
    # that are not UTF-8: named as --class's (a probe: "bank: entry 9")
    check_device(args.device)  # the arguments, before the checkpoint is read
    check_explanation_out(args.out)
    image = read_image(args.image)
    predictor = Predictor.from_checkpoint(args.ckpt, device=args.device)
    if args.vocab:
        vocabulary = load_vocabulary(args.vocab)
    else:  # the bank's classes: the other classes matter when prompts are centred
        bank = args.bank or predictor.training_bank()
        if bank is None:
            raise FileNotFoundError(
                f"no vocabulary: {predictor.missing_bank_note()}, and its classes are explain's "
                "default; give --vocab 'a; b; ...' (the other classes), or --bank BANK"
            )
        vocabulary = Vocabulary.from_entries(Bank.open(bank).classes, name="bank")
    if args.class_name not in vocabulary.names:
        vocabulary = Vocabulary.from_entries(
            [*vocabulary.entries, args.class_name], vocabulary.name
        )
    predictor.use_vocabulary(vocabulary, args.bank, args.text_only, progress=not args.quiet)
    out = write_explanation(predictor, image, args.class_name, args.out)
    say(f"explain: {out} ({args.class_name!r}: {predictor.sources[args.class_name]} prompts)")
    return 0


def _explain_options(p) -> None:
    p.add_argument("--ckpt", required=True, help="a checkpoint of cli.py fit")
    p.add_argument("--image", required=True, help="an image file")
    p.add_argument("--class", dest="class_name", required=True, help="the class to explain")
    p.add_argument("--vocab", help="the other classes (default: the bank's)")
    p.add_argument("--bank", help="prompt bank (default: the checkpoint's training bank)")
    p.add_argument("--text-only", action="store_true", help="no generated visual prompts")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--out", default="explain.png", help="output PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info lines")


COMMANDS = {
    "segment": Command(
        "segment images with a checkpoint (DPSeg) or VIP and any vocabulary",
        _segment_options,
        cmd_segment,
        keeps_finished_work=True,
    ),
    "explain": Command(
        "text, visual and dual-prompt cost maps of one class on one image",
        _explain_options,
        cmd_explain,
    ),
}
