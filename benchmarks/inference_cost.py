"""Two-round inference cost: round II against round I, and decoder memory with class chunking.

    .venv/bin/python benchmarks/inference_cost.py                # tiny preset, 128 px, CPU ok
    .venv/bin/python benchmarks/inference_cost.py --full-size    # convnext-b-laion with random
                                                                 #   weights, paper decoder, 768 px,
                                                                 #   bf16 autocast; meant for a GPU
    .venv/bin/python benchmarks/inference_cost.py --full-size --classes 171 847
    .venv/bin/python benchmarks/inference_cost.py --flops [--refined 8] [--json PATH]
                                 [--attention global|coarse|window|none [--attention-window 8]]
                                                                 # FLOPs per image, device-
                                                                 #   independent (meta tensors)
    .venv/bin/python benchmarks/inference_cost.py --ckpt last.ckpt --images DIR --vocab V
                                                                 # a trained model on real images

docs/design.md §2.3 (ours): round II reuses round I's image features (no second backbone pass), so it
should cost at most 1.5x a single round. Prints, per K (default 8, every class refined: the
worst case; and 150, the paper's regime, with 8 refined):

- median time per image (the modes interleaved: each iteration runs every mode once, so a drift
  of the machine's speed moves them alike) of round I and of round II under each policy of
  ``--policies``
  (``model.refine.CROP_POLICIES``: box and masked crops, pooled, pooled-own; round II's total,
  round I included), their ratio, the passes per image of the trained backbone
  (``ClipBackbone.forward``, a pre-hook) and of the frozen prompt encoder (one per batch of
  crops, or the pooled policy's one pass over the image), the crops, and the classes refined.
  ``--min-area 0`` (default) and ``--max-classes 8`` (default): the 8 largest classes of round
  I's argmax are refined (random prompts make it speckled over almost every class), so round II
  does real work; the refined count drives its cost (a crop encoding and a decode each).
- the floor no policy can go below (``policy_floor``): round I's backbone and decode, and the
  refined classes decoded again, timed alone; round II >= (backbone + decode + re-decode) /
  (backbone + decode) even if its new prompts cost nothing. With every class refined the
  re-decode is a whole decode, so the floor is 1 + decode / (backbone + decode).
- default mode only: peak memory of round I for K = 64 and 847 with the decoder's class chunking
  (``DPSegConfig.class_chunk``, default 64) and without it (``class_chunk=K``), each in a fresh
  process (CPU: peak RSS increase over the forward, from ``resource.getrusage`` after resetting
  the high-water mark; CUDA: ``torch.cuda.max_memory_allocated`` above the model's baseline).
- ``--full-size``: images/s and peak memory (CUDA: ``max_memory_allocated``; CPU: peak RSS).
- ``--ckpt``: the same table for a trained model on the first ``--max-images`` of a folder,
  through the user's protocol (``Predictor``), with the checkpoint's inference settings: the
  classes refined are those round I detects (``min_area``), not a fixed count.

Without ``--ckpt``, prompts are random (normalised text and visual prompts, random level
features) and the image is fixed random colour blocks: timings, not accuracy.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.memory import current_memory_mb, peak_memory_mb, reset_peak
from model.cost_volume import Prompts, class_mean
from model.decoder import DECODER_ATTENTION
from model.dpseg import DPSeg, DPSegConfig
from model.factory import build_dpseg
from model.labels import class_labels
from model.refine import CROP_POLICIES, RefineConfig, TwoRoundSegmenter, detected_classes
from pretrained.backbone import BackboneFeatures, ClipEncoder

TINY_PRESET = "tiny-convnext"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FULL_PRESET = "convnext-b-laion"


def tiny_config(class_chunk: int = 64) -> DPSegConfig:
    return DPSegConfig(
        cost_channels=32,
        decoder_channels=(32, 32, 16),
        guidance_channels=(16, 16, 8),
        attention_heads=2,
        class_chunk=class_chunk,
    )


def with_attention(config: DPSegConfig, args) -> DPSegConfig:
    """The config with ``--attention`` / ``--attention-window`` where given."""
    changes = {"attention": args.attention, "attention_window": args.attention_window}
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})


def attention_label(config: DPSegConfig) -> str:
    window = config.attention_window
    return f"window ({window} x {window})" if config.attention == "window" else config.attention


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(preset: str, config: DPSegConfig, num_templates: int, device: torch.device):
    """DPSeg and the frozen prompt encoder, as ``cli.py fit`` builds them (``build_dpseg``)."""
    parts = build_dpseg(preset, num_templates, config, random_weights=True)
    return parts.model.eval().to(device), parts.prompt_encoder.to(device)


def random_prompts(encoder: ClipEncoder, k: int, p: int, device: torch.device) -> Prompts:
    gen = torch.Generator().manual_seed(k)
    d = encoder.embed_dim
    text = F.normalize(torch.randn(k, p, d, generator=gen), dim=-1)
    visual = F.normalize(torch.randn(k, p, d, generator=gen), dim=-1)
    levels = [torch.randn(k, c, generator=gen) for c in encoder.level_dims()]
    return Prompts(text, visual, levels).to(device)


def block_images(batch: int, size: int, device: torch.device, blocks: int = 4) -> torch.Tensor:
    """Images of blocks x blocks flat random colours: regions for round II to crop."""
    gen = torch.Generator().manual_seed(0)
    colours = torch.rand(batch, 3, blocks, blocks, generator=gen)
    return F.interpolate(colours, size=(size, size), mode="nearest").to(device)


class CallCounter:
    """Counts backbone forwards (a pre-hook) and the frozen encoder's crop encodings."""

    def __init__(self, model: DPSeg, encoder: ClipEncoder, device: torch.device):
        self.backbone = self.encodes = self.crops = self.frozen = 0
        self.encode_s = 0.0
        model.backbone.register_forward_pre_hook(self._on_backbone)
        original = encoder.encode_images

        def encode_images(images, size=None):  # an instance attribute: this encoder only
            sync(device)
            start = time.perf_counter()
            out = original(images, size)
            sync(device)
            self.encode_s += time.perf_counter() - start
            self.encodes += 1
            self.crops += images.shape[0]
            return out

        encoder.encode_images = encode_images

    def _on_backbone(self, module, args) -> None:
        self.backbone += 1

    def on_frozen_pass(self, module, args) -> None:
        self.frozen += 1

    def reset(self) -> None:
        self.backbone = self.encodes = self.crops = self.frozen = 0
        self.encode_s = 0.0

    def counts(self) -> dict:
        """What was counted since the last reset; ``frozen``: crop batches + pooled passes."""
        return dict(
            backbone=self.backbone,
            frozen=self.encodes + self.frozen,
            crops=self.crops,
            encode_s=self.encode_s,
        )


def time_segmenters(segmenters: dict, run, args, counter, device, autocast, per_run: int) -> dict:
    """Time ``run(segmenter)`` (one pass over the inputs, ``per_run`` images) for every
    segmenter: ``args.warmup`` passes each, then ``args.iters`` interleaved passes (each pass
    runs every mode once, so a drift of the machine's speed, other processes or the clock,
    moves every mode alike and leaves the ratios alone). Returns per mode: the median seconds
    per image, the passes of the backbone and of the frozen encoder, crops and their encoding
    seconds per image, and the peak memory."""
    totals = {
        name: dict(times=[], backbone=0, frozen=0, crops=0, encode_s=0.0, peak=0.0)
        for name in segmenters
    }
    with torch.inference_mode(), autocast:
        for segmenter in segmenters.values():
            for _ in range(args.warmup):
                run(segmenter)
            if segmenter._dense is not None:  # the pooled policy's frozen pass, counted too
                segmenter._dense[0].register_forward_pre_hook(counter.on_frozen_pass)
        for _ in range(args.iters):
            for name, segmenter in segmenters.items():
                total = totals[name]
                sync(device)
                counter.reset()
                reset_peak(device)
                start = time.perf_counter()
                run(segmenter)
                sync(device)
                total["times"].append(time.perf_counter() - start)
                for key, value in counter.counts().items():
                    total[key] += value
                total["peak"] = max(total["peak"], peak_memory_mb(device))
    n = args.iters * per_run
    return {
        name: dict(
            s=statistics.median(t["times"]) / per_run,
            backbone=t["backbone"] / n,
            frozen=t["frozen"] / n,
            crops=t["crops"] / n,
            encode_s=t["encode_s"] / n,
            peak=t["peak"],
        )
        for name, t in totals.items()
    }


def print_rows(rows: dict, device: torch.device) -> None:
    memory = "max_memory_allocated" if device.type == "cuda" else "process peak RSS"
    print(
        f"{'mode':16s} {'ms/image':>9s} {'x round I':>9s} {'backbone':>9s} {'frozen':>7s} "
        f"{'crops':>6s} {'crop enc ms':>12s} {memory + ' MB':>22s}"
    )
    base = rows["round I"]["s"]
    for name, r in rows.items():
        print(
            f"{name:16s} {r['s'] * 1e3:9.1f} {r['s'] / base:8.2f}x {r['backbone']:9.2f} "
            f"{r['frozen']:7.2f} {r['crops']:6.2f} {r['encode_s'] * 1e3:12.1f} {r['peak']:22.1f}"
        )
    print(
        "backbone / frozen: passes per image of the trained backbone and of the frozen prompt "
        "encoder (one per batch of crops, or the pooled policy's whole image); goal "
        "(docs/design.md §2.3): round II <= 1.5x round I"
    )


def segmenters_for(model, encoder, policies, **settings) -> dict:
    """Round I and round II under each policy, the other inference settings alike."""
    modes = [("round I", 1, "box")] + [(f"II {p}", 2, p) for p in policies]
    return {
        name: TwoRoundSegmenter(
            model, encoder, RefineConfig(rounds=rounds, crop_policy=policy, **settings)
        )
        for name, rounds, policy in modes
    }


def time_modes(args, model, encoder, counter, device, autocast, k: int) -> dict:
    """Round I and round II (every policy of ``--policies``) of one K: time, calls, refined
    classes, peak memory. Returns the rows (for --json)."""
    prompts = random_prompts(encoder, k, args.templates, device)
    images = block_images(args.batch, args.image_size, device)
    with torch.inference_mode(), autocast:
        first = model(images, prompts)
        labels = class_labels(first.logits, dim=1)
        refined = [len(detected_classes(lb, k, args.min_area, args.max_classes)) for lb in labels]
        del first, labels
    segmenters = segmenters_for(
        model,
        encoder,
        args.policies,
        min_area=args.min_area,
        crop_size=args.crop_size,
        max_classes=args.max_classes,
    )
    rows = time_segmenters(
        segmenters, lambda s: s(images, prompts), args, counter, device, autocast, args.batch
    )
    print(
        f"\nK={k} classes, P={args.templates} templates, {args.image_size}x{args.image_size} px, "
        f"batch {args.batch}; median of {args.iters} iterations after {args.warmup} warm-up; "
        f"classes refined per image (min_area={args.min_area:g}): "
        f"{', '.join(map(str, refined))} of {k}"
    )
    print_rows(rows, device)
    floor = policy_floor(args, model, images, prompts, device, autocast)
    print(
        f"floor for every policy: round I = backbone {floor['backbone_s'] * 1e3:.1f} ms + "
        f"decode of K {floor['decode_s'] * 1e3:.1f} ms; decoding the refined classes again "
        f"{floor['redecode_s'] * 1e3:.1f} ms -> round II >= {floor['ratio']:.2f}x round I with "
        "a free new prompt"
    )
    return {"classes": k, "refined": refined, "rows": rows, "floor": floor}


def policy_floor(args, model: DPSeg, images, prompts: Prompts, device, autocast) -> dict:
    """What no round II policy can go below: round I's backbone and decode, and the decode of
    the refined classes again (round II's decoder call, every image's in one), all medians of
    ``args.iters`` interleaved passes. Floor = (backbone + decode + re-decode) / (backbone +
    decode): round II with a new visual prompt that costs nothing."""
    times = {"backbone_s": [], "decode_s": [], "redecode_s": []}
    with torch.inference_mode(), autocast:
        first = model(images, prompts)
        classes = [
            detected_classes(lb, prompts.num_classes, args.min_area, args.max_classes)
            for lb in class_labels(first.logits, dim=1)
        ]
        todo = [b for b, c in enumerate(classes) if len(c)]
        refined = BackboneFeatures(
            first.features.dense[todo], [lv[todo] for lv in first.features.levels]
        )
        mean = class_mean(prompts, model.config.prompt_mode)  # as second_round
        steps = {
            "backbone_s": lambda: model.backbone(images),
            "decode_s": lambda: model(images, prompts, features=first.features),
            "redecode_s": lambda: (
                todo
                and model.decode_per_image(
                    images.shape[-2:],
                    refined,
                    [prompts] * len(todo),
                    [classes[b] for b in todo],
                    mean,
                )
            ),
        }
        for i in range(args.warmup + args.iters):
            for key, step in steps.items():
                sync(device)
                start = time.perf_counter()
                step()
                sync(device)
                if i >= args.warmup:
                    times[key].append(time.perf_counter() - start)
    out = {key: statistics.median(t) / args.batch for key, t in times.items()}
    first_round = out["backbone_s"] + out["decode_s"]
    out["ratio"] = (first_round + out["redecode_s"]) / first_round
    return out


def trained_main(args, device: torch.device) -> None:
    """``--ckpt``: round I against round II of a trained model on real images, with the
    checkpoint's inference settings (detection threshold, crop size) and the user's protocol
    (``Predictor``: the image resized, logits back to its size); every policy of
    ``--policies``. The classes refined are the ones round I really detects."""

    from common.errors import USER_ERRORS, one_line
    from data.datasets import read_image
    from data.transforms import image_tensor
    from model.predictor import Predictor

    folder = Path(args.images)
    found = (
        sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if (folder.is_dir())
        else []
    )
    if not found:
        print(f"error: --images {folder}: no .jpg/.png images there", file=sys.stderr)
        sys.exit(2)
    try:
        predictor = Predictor.from_checkpoint(args.ckpt, device=str(device))
        prompts = predictor.set_vocabulary(args.vocab, bank=args.bank)
    except USER_ERRORS as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    module = predictor.module
    images = [image_tensor(read_image(p)) for p in found[: args.max_images]]
    images = [x.to(device) for x in images]
    protocol = predictor.protocol()
    config = module.inference_config
    settings = dict(
        min_area=config.min_area,
        crop_margin=config.crop_margin,
        max_classes=config.max_classes,
        crop_size=config.crop_size,
    )
    model, encoder = module.model, module.segmenter.prompt_encoder
    refined = []  # per image: the classes round II refines (summed over a protocol's windows)

    def count_refined(batch: torch.Tensor) -> torch.Tensor:  # what the protocol feeds the model
        logits = model(batch, prompts).logits
        refined[-1] += sum(
            len(detected_classes(lb, prompts.num_classes, config.min_area, config.max_classes))
            for lb in class_labels(logits, dim=1)
        )
        return logits

    with torch.inference_mode():
        for x in images:
            refined.append(0)
            protocol(count_refined, x)
    segmenters = segmenters_for(model, encoder, args.policies, **settings)
    counter = CallCounter(model, encoder, device)

    def run(segmenter):
        for x in images:
            protocol(lambda b: segmenter(b, prompts), x)

    rows = time_segmenters(segmenters, run, args, counter, device, nullcontext(), len(images))
    print(
        f"\n{args.ckpt} ({module.model.backbone.preset.name}, "
        f"{module.model.backbone.image_size} px), {len(images)} images of {args.images}, "
        f"K={prompts.num_classes} ({args.vocab}); median of {args.iters} passes after "
        f"{args.warmup} warm-up; min_area={config.min_area:g}; classes refined per image: "
        f"mean {statistics.mean(refined):.1f}, range {min(refined)}-{max(refined)}"
    )
    print_rows(rows, device)


def one_memory(args, k: int, chunk: int) -> None:
    """(Hidden mode, a fresh process) peak memory of one round-I forward; prints PEAK_MB x."""
    device = torch.device(args.device)
    model, encoder = build(TINY_PRESET, tiny_config(chunk), args.templates, device)
    images = block_images(1, args.image_size, device)
    with torch.inference_mode():
        model(images, random_prompts(encoder, min(k, 8), args.templates, device))  # warm-up
        prompts = random_prompts(encoder, k, args.templates, device)
        sync(device)
        exact = reset_peak(device)
        before = current_memory_mb(device)
        logits = model(images, prompts).logits
        sync(device)
        peak = peak_memory_mb(device)
    print(f"PEAK_MB {peak - before:.1f} {int(exact)} {tuple(logits.shape)}")


def memory_table(args) -> None:
    what = (
        "max_memory_allocated above the model"
        if args.device.startswith("cuda")
        else "peak RSS increase over the forward"
    )
    print(
        f"\npeak memory of round I ({TINY_PRESET}, tiny decoder, {args.image_size} px, batch 1, "
        f"P={args.templates}), {what}, fresh process each"
    )
    print(f"{'K':>5s} {'chunk 64':>12s} {'no chunking':>12s} {'ratio':>7s}")
    for k in args.memory_classes:
        values, inexact = [], False
        for chunk in (64, k):
            cmd = [sys.executable, __file__, "--one-memory", str(k), str(chunk)]
            cmd += ["--device", args.device, "--templates", str(args.templates)]
            cmd += ["--image-size", str(args.image_size)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("PEAK_MB")]
            if out.returncode or not line:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
            _, mb, exact, _ = line[0].split(maxsplit=3)
            values.append(float(mb))
            inexact |= exact == "0"
        note = "  (upper bounds: peak RSS could not be reset)" if inexact else ""
        ratio = values[1] / values[0] if values[0] > 0 else float("nan")
        print(f"{k:5d} {values[0]:9.1f} MB {values[1]:9.1f} MB {ratio:6.2f}x{note}")


MIN_IMAGE_SIZE = 32
"""The smallest --image-size: one cell of the ConvNeXt's last stage (stride 32)."""


def argument_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the parsed options (one line naming the option, the value and the
    fix), or None: checked before anything is built, so that a typo costs no time."""
    from common.errors import USER_ERRORS, one_line

    at_least = [
        ("--iters", args.iters, 1),
        ("--warmup", args.warmup, 0),
        ("--templates", args.templates, 1),
        ("--batch", args.batch, 1),
        ("--max-classes", args.max_classes, 1),
        ("--crop-size", args.crop_size, 1),
        ("--threads", args.threads, 1),
        ("--max-images", args.max_images, 1),
        ("--refined", args.refined, 1),
        ("--attention-window", args.attention_window, 1),
        ("--image-size", args.image_size, MIN_IMAGE_SIZE),
    ]
    at_least += [("--classes", k, 1) for k in args.classes or ()]
    at_least += [("--memory-classes", k, 1) for k in args.memory_classes or ()]
    for option, value, low in at_least:
        if value is not None and value < low:
            return f"{option} {value}: must be >= {low} (leave it out for the default)"
    if not 0 <= args.min_area <= 1:
        return f"--min-area {args.min_area}: must be a share of the image in [0, 1]"
    try:
        if args.flops:
            from pretrained.presets import get_encoder_preset

            for preset in args.preset or ():
                get_encoder_preset(preset)
        elif not args.one_memory:
            from common.errors import check_device

            check_device(args.device)
    except USER_ERRORS as e:
        return f"--preset: {one_line(e)}" if args.flops else one_line(e)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--full-size",
        action="store_true",
        help=f"{FULL_PRESET} with random weights, the paper's decoder, 768 px, K=171, P=80",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=None, help="default 10; --full-size: 5 or 2")
    parser.add_argument("--warmup", type=int, default=None, help="default 2; --full-size CPU: 1")
    parser.add_argument(
        "--classes",
        type=int,
        nargs="+",
        default=None,
        help="K values; default 8 150; --full-size: 171",
    )
    parser.add_argument("--templates", type=int, default=None, help="P; default 8 or 80")
    parser.add_argument("--image-size", type=int, default=None, help="default 128 or 768")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--min-area",
        type=float,
        default=0.0,
        help="round II detection threshold; 0: every class in round I's argmax is refined",
    )
    parser.add_argument(
        "--max-classes",
        type=int,
        default=8,
        help="round II refines at most this many classes per image (default 8, an image's "
        "classes: random prompts make round I's argmax speckled over almost every class)",
    )
    parser.add_argument(
        "--policies",
        nargs="+",
        default=list(CROP_POLICIES),
        choices=CROP_POLICIES,
        help="round II policies to time (default: all)",
    )
    parser.add_argument("--crop-size", type=int, default=None, help="round II crop size (ConvNeXt)")
    parser.add_argument("--memory-classes", type=int, nargs="+", default=[64, 847])
    parser.add_argument("--no-memory", action="store_true", help="skip the chunking memory table")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--attention",
        choices=DECODER_ATTENTION,
        default=None,
        help="the decoder's attention (DPSegConfig.attention; default: the config's, global)",
    )
    parser.add_argument("--attention-window", type=int, default=None, help="for --attention window")
    parser.add_argument("--one-memory", type=int, nargs=2, help=argparse.SUPPRESS)
    group = parser.add_argument_group(
        "a trained model on real images (--ckpt): its inference settings, the classes "
        "round I detects"
    )
    group.add_argument("--ckpt", default=None, help="a DPSeg checkpoint (cli.py fit's)")
    group.add_argument("--images", default=None, help="a folder of .jpg/.png images")
    group.add_argument("--vocab", default=None, help="the vocabulary (name, file or list)")
    group.add_argument("--bank", default=None, help="default: the checkpoint's training bank")
    group.add_argument("--max-images", type=int, default=32, help="the first N images (32)")
    add_flops_arguments(parser)
    args = parser.parse_args()
    if args.ckpt and not (args.images and args.vocab):
        parser.error("--ckpt needs --images DIR and --vocab")
    problem = argument_error(args)
    if problem:  # one line, exit 2 (the project's rule for a user's mistake), before any work
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    if args.flops:  # its own code path: FLOPs only, no timing (flops_main)
        flops_main(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    args.templates = args.templates or (80 if args.full_size else 8)
    args.image_size = args.image_size or (768 if args.full_size else 128)
    if args.one_memory:
        one_memory(args, *args.one_memory)
        return
    if args.ckpt:
        args.iters = args.iters or 5
        args.warmup = 1 if args.warmup is None else args.warmup
        trained_main(args, device)
        return
    args.classes = args.classes or ([171] if args.full_size else [8, 150])
    if args.iters is None:
        args.iters = (2 if cpu else 5) if args.full_size else 10
    if args.warmup is None:
        args.warmup = 1 if args.full_size and cpu else 2
    if args.full_size and cpu:
        warnings.warn(
            "--full-size on CPU is slow (ConvNeXt-B at 768 px and the paper's decoder): "
            "minutes per configuration; it is meant for a GPU",
            stacklevel=1,
        )

    preset = FULL_PRESET if args.full_size else TINY_PRESET
    config = with_attention(DPSegConfig() if args.full_size else tiny_config(), args)
    use_bf16 = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()
    print(
        f"{preset}{' (random weights)' if args.full_size else ''} on {device} "
        f"({torch.cuda.get_device_name(device) if not cpu else f'{torch.get_num_threads()} threads'}"
        f", {'bf16 autocast' if use_bf16 else 'fp32'}), torch {torch.__version__}; decoder "
        f"{'paper' if args.full_size else 'tiny'} (cost {config.cost_channels}, "
        f"channels {config.decoder_channels}, heads {config.attention_heads}, "
        f"class_chunk {config.class_chunk})"
    )
    if cpu and os.getloadavg()[0] > (os.cpu_count() or 1) / 2:
        print(
            f"note: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; torch's CPU "
            "threads slow down badly when other processes share the cores (try --threads 1)"
        )
    start = time.perf_counter()
    model, encoder = build(preset, config, args.templates, device)
    print(f"built in {time.perf_counter() - start:.1f} s")
    counter = CallCounter(model, encoder, device)
    for k in args.classes:
        time_modes(args, model, encoder, counter, device, autocast, k)
    if not (args.full_size or args.no_memory):
        del model, encoder
        memory_table(args)


# ---------------------------------------------------------------------------------------------
# --flops: FLOPs per image by torch.utils.flop_counter.FlopCounterMode. A code path of its own:
# nothing above runs (no timing), nothing here times anything.

FLOP_PRESETS = ("convnext-b-laion", "convnext-l-laion")
FLOP_CLASSES = (150, 847)
FLOP_TEMPLATES = 80
FLOP_IMAGE_SIZE = 768  # the `sed` test protocol: one 768 x 768 pass
FLOP_REFINED = 8
FLOP_PARTS = {  # JSON key: table header. Their sum is the total (checked)
    "backbone": "backbone",
    "cost_cos": "cos(E,R) + F_v",
    "cost_embedding": "cost emb.",
    "decoder_stage1": "dec. stage 1",
    "decoder_stage2": "dec. stage 2",
    "decoder_stage3": "dec. stage 3",
    "decoder_head": "dec. head",
    "round2_crops": "II: crop enc.",
    "round2_redecode": "II: re-decode",
}
FLOP_CONVENTION = (
    "FLOPs: torch.utils.flop_counter.FlopCounterMode, forward pass, batch 1, per image. A "
    "multiply-add counts 2 FLOPs (matmul 2mnk, convolutions alike, attention 4 s^2 d per head); "
    "only matmuls, convolutions and attention are counted: normalisations, activations, "
    "softmax, interpolation and other elementwise ops count 0. Counters that count a "
    "multiply-add as 1 (e.g. fvcore) give half of these figures."
)
PUBLISHED_FIGURES = (
    "Published figures (looked up with a search of papers and repositories; FLOPs not found):\n"
    "  SED (Xie et al., CVPR 2024, arXiv 2311.15537 abstract; github.com/xb534/SED README): "
    "ConvNeXt-B, 82 ms per image on one A6000 on A-150 (a latency, not FLOPs); category early "
    "rejection up to 4.7x faster (PC-459). No GFLOPs figure found.\n"
    "  CAT-Seg (Cho et al., CVPR 2024, arXiv 2303.11797): no FLOPs figure found by the search; "
    "not looked up further (no number given rather than one from memory)."
)


def add_flops_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "FLOPs (--flops; --classes/--templates/--image-size/--crop-size apply too)"
    )
    group.add_argument(
        "--flops",
        action="store_true",
        help="count FLOPs per image instead of timing: "
        f"{' and '.join(FLOP_PRESETS)} (random weights), the paper's decoder, "
        f"{FLOP_IMAGE_SIZE} px, K = {' and '.join(map(str, FLOP_CLASSES))}, "
        f"P = {FLOP_TEMPLATES}, rounds I and II",
    )
    group.add_argument(
        "--preset",
        nargs="+",
        default=None,
        help="--flops: encoder presets (default: the two above); a tiny-* preset gets the tiny "
        "decoder",
    )
    group.add_argument(
        "--refined",
        type=int,
        default=FLOP_REFINED,
        help=f"--flops: classes refined per image in round II (data-dependent; default "
        f"{FLOP_REFINED}, an assumption)",
    )
    group.add_argument(
        "--flops-device",
        choices=("meta", "cpu"),
        default="meta",
        help="--flops: meta tensors (shapes only, default) or real CPU tensors (small sizes)",
    )
    group.add_argument("--json", default=None, help="--flops: also write the results here")


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    """CPU's flash attention has no formula in FlopCounterMode's registry (it would count 0):
    the same formula as the CUDA kernels'."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    cpu_attention = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_attention is not None:
        mapping[cpu_attention] = _cpu_attention_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


def dpseg_flop_parts(counter) -> dict[str, int]:
    """One counted ``DPSeg.forward`` split by module (FlopCounterMode's per-module counts).

    The cost volume cos(E, R) and the visual cost volumes F_v^j are einsums in
    ``DPSeg.forward`` itself (no submodule): they are the total less the modules.
    """
    counts = counter.get_flop_counts()

    def of(name: str) -> int:
        return sum(counts.get(name, {}).values())

    total = counter.get_total_flops()
    stages = [of(f"DPSeg.decoder.stages.{s}") for s in range(3)]
    decoder = of("DPSeg.decoder")
    parts = {
        "backbone": of("DPSeg.backbone"),
        "cost_embedding": of("DPSeg.cost_embedding"),
        "decoder_stage1": stages[0],
        "decoder_stage2": stages[1],
        "decoder_stage3": stages[2],
        "decoder_head": decoder - sum(stages),  # the 1x1 head (and any decoder op outside stages)
    }
    parts["cost_cos"] = total - parts["backbone"] - parts["cost_embedding"] - decoder
    if of("DPSeg") != total:
        raise RuntimeError(f"FLOPs outside DPSeg's forward: {total - of('DPSeg')}")
    return parts


def attention_flops(counter) -> list[int]:
    """Per decoder stage, the FLOPs of its self-attention module (q/k/v/out projections and
    attention over the h*w positions of each class map)."""
    counts = counter.get_flop_counts()
    return [sum(counts.get(f"DPSeg.decoder.stages.{s}.attention", {}).values()) for s in range(3)]


def analytic_cost_flops(model: DPSeg, features, k: int, p: int) -> int:
    """cos(E, R) and F_v^j by hand (2 FLOPs per multiply-add), to check the attribution."""
    dense = features.dense
    flops = 2 * dense.shape[1] * p * k * dense.shape[2] * dense.shape[3]
    for j in model.config.visual_levels:
        level = features.levels[j - 1]
        flops += 2 * level.shape[1] * k * level.shape[2] * level.shape[3]
    return flops


def count_flops(model, encoder, k: int, args, device: torch.device) -> list[dict]:
    """Round I and round II of one K: FLOPs per image, by part."""
    from model.cost_volume import class_mean

    p, size, n = args.templates, args.image_size, min(args.refined, k)
    crop = args.crop_size or encoder.preset.image_size  # as TwoRoundSegmenter.refined_prompts
    prompts = random_prompts(encoder, k, p, device)
    images = torch.zeros(1, 3, size, size, device=device)
    with torch.no_grad():
        with flop_counter() as first_count:
            first = model(images, prompts)
        first_parts = dpseg_flop_parts(first_count)
        analytic = analytic_cost_flops(model, first.features, k, p)
        # Round II (TwoRoundSegmenter.second_round) without its data-dependent steps (argmax
        # areas, crop boxes): n crops encoded by the frozen prompt encoder, then the n classes
        # decoded again on round I's features. Which classes does not change the count.
        crops = torch.zeros(n, 3, crop, crop, device=device)
        with flop_counter() as crop_count:
            encoding = encoder.encode_images(crops, size=crop)
        classes = torch.arange(n, device=device)
        refined = prompts.with_visual(classes, encoding.embedding, encoding.pooled_levels())
        mean = class_mean(prompts, model.config.prompt_mode)
        with flop_counter() as redo_count:
            model(images, refined, features=first.features, classes=classes, center_mean=mean)
        redo_parts = dpseg_flop_parts(redo_count)
    if redo_parts["backbone"]:
        raise RuntimeError("round II ran the backbone again")
    common = dict(
        preset=encoder.preset.name,
        classes=k,
        templates=p,
        image_size=size,
        analytic_cost_cos=analytic,
        decoder_attention=attention_flops(first_count),
    )
    one = {**first_parts, "round2_crops": 0, "round2_redecode": 0}
    two = {
        **first_parts,
        "round2_crops": crop_count.get_total_flops(),
        "round2_redecode": redo_count.get_total_flops(),
    }
    return [
        {**common, "round": 1, "total": first_count.get_total_flops(), "parts": one},
        {
            **common,
            "round": 2,
            "refined": n,
            "crop_size": crop,
            "total": sum(two.values()),
            "parts": two,
            "redecode_parts": redo_parts,
        },
    ]


def _gflops(flops: int) -> str:
    g = flops / 1e9
    return f"{g:,.1f}" if g >= 10 else f"{g:.3f}"


def flops_table(rows: list[dict]) -> str:
    heads = ["model", "K", "round", "total GFLOPs", *FLOP_PARTS.values()]
    lines = [
        "| " + " | ".join(heads) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(heads) - 3)) + "|",
    ]
    for r in rows:
        rnd = "I" if r["round"] == 1 else f"II ({r['refined']} refined)"
        cells = [r["preset"], str(r["classes"]), rnd, _gflops(r["total"])]
        cells += [_gflops(r["parts"][key]) for key in FLOP_PARTS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flops_main(args) -> None:
    """``--flops``: the table (and ``--json``) of FLOPs per image."""
    import json

    presets = args.preset or list(FLOP_PRESETS)
    classes = args.classes or list(FLOP_CLASSES)
    args.templates = args.templates or FLOP_TEMPLATES
    args.image_size = args.image_size or FLOP_IMAGE_SIZE
    device = torch.device(args.flops_device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(FLOP_CONVENTION)
    rows = []
    start = time.perf_counter()
    for preset in presets:
        config = with_attention(tiny_config() if preset.startswith("tiny") else DPSegConfig(), args)
        model, encoder = build(preset, config, args.templates, device)
        for k in classes:
            rows += count_flops(model, encoder, k, args, device)
        del model, encoder
    crop = sorted({f"{r['preset']} {r['crop_size']} px" for r in rows if r["round"] == 2})
    print(
        f"\nPer image, {args.image_size}x{args.image_size} px, P={args.templates} templates, "
        f"decoder {'tiny' if all(p.startswith('tiny') for p in presets) else 'paper'}, "
        f"attention {attention_label(config)}. "
        "Round II "
        f"(docs/design.md §2.3): {args.refined} classes refined per image (--refined; an assumption: "
        "the count is data-dependent, the classes covering >= min_area of round I's argmax), "
        f"each crop encoded by the frozen prompt encoder ({', '.join(crop)}: RefineConfig."
        "crop_size or the preset's), then those classes decoded again on round I's features "
        "(no second backbone pass); its rows repeat round I's parts and add the two II columns."
    )
    print(
        "Parts: backbone = ClipBackbone (ConvNeXt trunk + projection); cos(E,R) + F_v = the "
        "einsums of DPSeg.forward (the rest of the total); cost emb. = the 7x7 CostEmbedding; "
        "dec. stage 1/2/3 = CVGD stages at 1/32, 1/16, 1/8 of the image (fuse, dilated "
        "convolutions, self-attention, 2x up); dec. head = the 1x1 head.\n"
    )
    print(flops_table(rows))
    for r in rows:
        if sum(r["parts"].values()) != r["total"]:
            raise RuntimeError(f"parts do not sum to the total: {r}")
        if r["parts"]["cost_cos"] != r["analytic_cost_cos"]:
            print(
                f"note: {r['preset']} K={r['classes']}: cos(E,R) + F_v counted "
                f"{r['parts']['cost_cos']}, by hand {r['analytic_cost_cos']}"
            )
    shares = [
        f"{r['preset']} K={r['classes']} "
        + "/".join(
            f"{100 * a / max(1, r['parts'][f'decoder_stage{s + 1}']):.0f}%"
            for s, a in enumerate(r["decoder_attention"])
        )
        for r in rows
        if r["round"] == 1
    ]
    print(
        "\nSelf-attention's share of decoder stages 1/2/3 (SpatialSelfAttention, over the h*w "
        f"positions of each class map, per class): {'; '.join(shares)}"
    )
    largest = max(rows, key=lambda r: r["total"])
    logits_gb = largest["classes"] * args.image_size**2 * 4 / 1e9
    if device.type == "meta":
        print(
            "\nTensors: meta (torch.device('meta'): shapes only, nothing allocated or computed; "
            "the models are built on CPU with random weights, then moved). Real CPU tensors "
            f"were not used: the largest count here is {largest['total'] / 1e12:.1f} TFLOPs per "
            f"image, to be computed on this machine's {os.cpu_count()} CPU cores, and its "
            f"logits alone take {logits_gb:.2f} GB (K x H x W x 4 bytes). Meta and CPU tensors "
            "give the same counts (tests/test_benchmarks.py, tiny preset)."
        )
    else:
        print("\nTensors: real CPU tensors, batch 1.")
    print(f"\n(counted in {time.perf_counter() - start:.0f} s)\n")
    print(PUBLISHED_FIGURES)
    if args.json:
        out = {
            "counter": "torch.utils.flop_counter.FlopCounterMode",
            "convention": FLOP_CONVENTION,
            "tensors": device.type,
            "image_size": args.image_size,
            "templates": args.templates,
            "refined": args.refined,
            "rows": rows,
            "published": PUBLISHED_FIGURES,
        }
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
