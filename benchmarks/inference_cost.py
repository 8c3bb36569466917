"""Two-round inference cost: round II against round I, and decoder memory with class chunking.

    .venv/bin/python benchmarks/inference_cost.py                # tiny preset, 128 px, CPU ok
    .venv/bin/python benchmarks/inference_cost.py --full-size    # convnext-b-laion with random
                                                                 #   weights, paper decoder, 768 px,
                                                                 #   bf16 autocast; meant for a GPU
    .venv/bin/python benchmarks/inference_cost.py --full-size --classes 171 847

DESIGN §2.3 (ours): round II reuses round I's image features (no second backbone pass), so it
should cost at most 1.5x a single round. Prints, per K:

- median time per image of ``rounds=1`` and of ``rounds=2`` (round II's total, round I
  included), their ratio, the backbone (``ClipBackbone.forward``) calls per image in each mode
  (a forward pre-hook), the crops the frozen prompt encoder encoded, and the classes refined.
  ``--min-area 0`` (default): every class in round I's argmax is refined, so round II does real
  work; the refined count drives round II's cost (one crop encoding each).
- default mode only: peak memory of round I for K = 64 and 847 with the decoder's class chunking
  (``DPSegConfig.class_chunk``, default 64) and without it (``class_chunk=K``), each in a fresh
  process (CPU: peak RSS increase over the forward, from ``resource.getrusage`` after resetting
  the high-water mark; CUDA: ``torch.cuda.max_memory_allocated`` above the model's baseline).
- ``--full-size``: images/s and peak memory (CUDA: ``max_memory_allocated``; CPU: peak RSS).

Prompts are random (normalised text and visual prompts, random level features) and the image is
fixed random colour blocks: timings, not accuracy.
"""

from __future__ import annotations

import argparse
import copy
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
from model.backbone import ClipBackbone, ClipEncoder, create_clip
from model.cost_volume import Prompts
from model.dpseg import DPSeg, DPSegConfig
from model.refine import RefineConfig, TwoRoundSegmenter, detected_classes

TINY_PRESET = "tiny-convnext"
FULL_PRESET = "convnext-b-laion"


def tiny_config(class_chunk: int = 64) -> DPSegConfig:
    return DPSegConfig(
        cost_channels=32,
        decoder_channels=(32, 32, 16),
        guidance_channels=(16, 16, 8),
        attention_heads=2,
        class_chunk=class_chunk,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(preset: str, config: DPSegConfig, num_templates: int, device: torch.device):
    """DPSeg and the frozen prompt encoder, built as ``DPSegModule.__init__`` builds them."""
    built = create_clip(preset, random_weights=True)
    prompt_clip = copy.deepcopy(built.model).requires_grad_(False).eval()
    prompt_encoder = ClipEncoder(prompt_clip, built.preset)
    level_dims = tuple(prompt_encoder.level_dims())
    backbone = ClipBackbone(built.model, built.preset)
    model = DPSeg(backbone, num_templates, level_dims, config).eval().to(device)
    return model, prompt_encoder.to(device)


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
        self.backbone = self.encodes = self.crops = 0
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

    def reset(self) -> None:
        self.backbone = self.encodes = self.crops = 0
        self.encode_s = 0.0


def time_modes(args, model, encoder, counter, device, autocast, k: int) -> None:
    """Round I and round II of one K: time, calls, refined classes, peak memory."""
    prompts = random_prompts(encoder, k, args.templates, device)
    images = block_images(args.batch, args.image_size, device)
    refine = dict(min_area=args.min_area, crop_policy=args.crop_policy, crop_size=args.crop_size)
    with torch.inference_mode(), autocast:
        first = model(images, prompts)
        labels = first.logits.argmax(dim=1)
        refined = [len(detected_classes(lb, k, args.min_area)) for lb in labels]
        del first, labels
    rows = {}
    for rounds in (1, 2):
        segmenter = TwoRoundSegmenter(model, encoder, RefineConfig(rounds=rounds, **refine))
        times = []
        with torch.inference_mode(), autocast:
            for _ in range(args.warmup):
                segmenter(images, prompts)
            sync(device)
            counter.reset()
            reset_peak(device)
            for _ in range(args.iters):
                start = time.perf_counter()
                segmenter(images, prompts)
                sync(device)
                times.append(time.perf_counter() - start)
        rows[rounds] = dict(
            s=statistics.median(times) / args.batch,
            backbone=counter.backbone / (args.iters * args.batch),
            crops=counter.crops / (args.iters * args.batch),
            encode_s=counter.encode_s / (args.iters * args.batch),
            peak=peak_memory_mb(device),
        )
    memory = "max_memory_allocated" if device.type == "cuda" else "process peak RSS"
    print(
        f"\nK={k} classes, P={args.templates} templates, {args.image_size}x{args.image_size} px, "
        f"batch {args.batch}; median of {args.iters} iterations after {args.warmup} warm-up"
    )
    print(
        f"{'mode':9s} {'ms/image':>10s} {'images/s':>9s} {'backbone/img':>13s} "
        f"{'crops/img':>10s} {'crop enc ms':>12s} {memory + ' MB':>22s}"
    )
    for rounds, name in ((1, "round I"), (2, "round II")):
        r = rows[rounds]
        print(
            f"{name:9s} {r['s'] * 1e3:10.1f} {1 / r['s']:9.2f} {r['backbone']:13.2f} "
            f"{r['crops']:10.2f} {r['encode_s'] * 1e3:12.1f} {r['peak']:22.1f}"
        )
    ratio = rows[2]["s"] / rows[1]["s"]
    print(
        f"classes refined per image (min_area={args.min_area:g}, {args.crop_policy} crops): "
        f"{', '.join(map(str, refined))} of {k}"
    )
    print(
        f"round II total / round I: {ratio:.2f}x (DESIGN §2.3 goal <= 1.5x: "
        f"{'met' if ratio <= 1.5 else 'NOT met'}); round II extra: "
        f"{(rows[2]['s'] - rows[1]['s']) * 1e3:.1f} ms/image, of which crop encoding "
        f"{rows[2]['encode_s'] * 1e3:.1f} ms"
        + (
            f" ({rows[2]['encode_s'] / rows[2]['crops'] * 1e3:.1f} ms per crop)"
            if rows[2]["crops"]
            else ""
        )
    )


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
        "--classes", type=int, nargs="+", default=None, help="K values; default 8 or 171"
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
    parser.add_argument("--crop-policy", default="box", choices=("box", "masked"))
    parser.add_argument("--crop-size", type=int, default=None, help="round II crop size (ConvNeXt)")
    parser.add_argument("--memory-classes", type=int, nargs="+", default=[64, 847])
    parser.add_argument("--no-memory", action="store_true", help="skip the chunking memory table")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--one-memory", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    args.templates = args.templates or (80 if args.full_size else 8)
    args.image_size = args.image_size or (768 if args.full_size else 128)
    if args.one_memory:
        one_memory(args, *args.one_memory)
        return
    args.classes = args.classes or ([171] if args.full_size else [8])
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
    config = DPSegConfig() if args.full_size else tiny_config()
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


if __name__ == "__main__":
    main()
