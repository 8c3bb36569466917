"""Round I's cost against the vocabulary size K: the decoder before and after issue 29.

    .venv/bin/python benchmarks/cost_vs_k.py [--classes 20 59 150 459 847] [--repeats 3]
                     [--plot docs/cost_vs_k.png] [--json PATH] [--no-full] [--device cuda]

Three decoders, per K (random weights, random prompts: cost, not accuracy):

- ``before``: attention global at every stage, every class decoded (the decoder before issue 29;
  the paper configs' reading until then);
- ``default``: ``DPSegConfig()``'s attention (``coarse``), every class decoded;
- ``default + rejection``: the same with configs/dpseg_convnext_b.yaml's class early rejection
  (``model.rejection``: the classes whose coarse-head probability reaches
  ``rejection_threshold`` somewhere, at most ``rejection_max_classes``, go on through the finer
  stages; ``--threshold`` / ``--max-classes`` to try others).

Two sizes:

- tiny: ``tiny-convnext`` with the tiny decoder (configs/toy_world.yaml's sizes), 320 px, P = 80:
  FLOPs, time per image (median of ``--repeats``, the decoders interleaved) and peak memory of
  the forward (CPU: peak RSS increase, ``benchmarks/memory.py``; CUDA: max_memory_allocated);
- full: ``convnext-b-laion`` (random weights) with the paper decoder, 768 px, P = 80: FLOPs on
  meta tensors (shapes only), and on CUDA (``--device cuda``, bf16 autocast) time and memory.

FLOPs follow ``benchmarks/inference_cost.py --flops`` (FlopCounterMode; a multiply-add is 2).
Rejection's FLOPs depend on the image: they are counted at their bound, the cost volume of all K
and the decoder's first stage and coarse head over all K, plus ``min(K, rejection_max_classes)``
classes decoded through every stage; an image whose positions nominate fewer classes costs less. Its timed rows decode what the random image nominates (``kept`` column).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.inference_cost import block_images, build, flop_counter, random_prompts, sync
from benchmarks.memory import current_memory_mb, peak_memory_mb, reset_peak
from model.dpseg import DPSeg, DPSegConfig
from model.refine import RefineConfig

CLASSES = (20, 59, 150, 459, 847)
PAPER_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "dpseg_convnext_b.yaml"
TEMPLATES = 80
TINY = dict(
    preset="tiny-convnext",
    size=320,
    config=dict(
        cost_channels=32,
        decoder_channels=(32, 32, 16),
        guidance_channels=(16, 16, 8),
        attention_heads=2,
    ),
)
FULL = dict(preset="convnext-b-laion", size=768, config={})
DECODERS = ("before", "default", "default + rejection")


@dataclasses.dataclass
class Decoder:
    name: str
    attention: str
    threshold: float | None  # rejection (None: every class decoded)
    max_classes: int | None


def decoders(threshold: float, max_classes: int | None) -> list[Decoder]:
    default = DPSegConfig().attention
    return [
        Decoder("before", "global", None, None),
        Decoder("default", default, None, None),
        Decoder("default + rejection", default, threshold, max_classes),
    ]


def paper_rejection() -> tuple[float | None, int | None]:
    """configs/dpseg_convnext_b.yaml's rejection_threshold and rejection_max_classes."""
    inference = yaml.safe_load(PAPER_CONFIG.read_text())["model"]["inference"]
    return inference.get("rejection_threshold"), inference.get("rejection_max_classes")


def round_one(model: DPSeg, images, prompts, decoder: Decoder) -> int:
    """One round I; returns the classes decoded per image (mean)."""
    if decoder.threshold is None:
        model(images, prompts)
        return prompts.num_classes
    _, kept = model.forward_kept(images, prompts, decoder.threshold, None, decoder.max_classes)
    return round(sum(len(k) for k in kept) / len(kept))


def count_flops(model: DPSeg, images, prompts, decoder: Decoder) -> int:
    """Round I's FLOPs per image; with rejection at its bound (see the module's docstring)."""
    with torch.no_grad(), flop_counter() as counter:
        if decoder.threshold is None:
            model(images, prompts)
        else:
            features = model.backbone(images)
            model.coarse_logits(features, prompts)  # the first stage over all K: nominations
            n = min(prompts.num_classes, decoder.max_classes or prompts.num_classes)
            kept = [torch.arange(n, device=images.device)] * len(images)
            model.decode_classes(images.shape[-2:], features, [prompts] * len(images), kept)
    return counter.get_total_flops()


def measure(size: dict, ks, decoders_, device, repeats: int, timed: bool, bf16: bool) -> list[dict]:
    rows = []
    models, metas = {}, {}
    for d in decoders_:
        config = DPSegConfig(**size["config"], attention=d.attention)
        model, encoder = build(size["preset"], config, TEMPLATES, torch.device("cpu"))
        if timed:
            models[d.name] = (model, encoder)
            model, encoder = copy.deepcopy(model), copy.deepcopy(encoder)
        metas[d.name] = (model.to("meta"), encoder.to("meta"))  # FLOPs: shapes only
    for k in ks:
        for d in decoders_:
            model, encoder = metas[d.name]
            images = torch.zeros(1, 3, size["size"], size["size"], device="meta")
            flops = count_flops(model, images, random_prompts(encoder, k, TEMPLATES, "meta"), d)
            rows.append(
                {
                    "size": size["preset"],
                    "image_size": size["size"],
                    "classes": k,
                    "decoder": d.name,
                    "attention": d.attention,
                    "threshold": d.threshold,
                    "max_classes": d.max_classes,
                    "gflops": flops / 1e9,
                }
            )
        if not timed:
            continue
        images = block_images(1, size["size"], device)
        times = {d.name: [] for d in decoders_}
        kept = {}
        autocast = torch.autocast("cuda", torch.bfloat16) if bf16 else nullcontext()
        with torch.inference_mode(), autocast:
            for d in decoders_:
                model, encoder = models[d.name]
                model.to(device)
                prompts = random_prompts(encoder, k, TEMPLATES, device)
                round_one(model, images, prompts, d)  # warm-up
            for _ in range(repeats):  # interleaved: a drift of the machine moves them alike
                for d in decoders_:
                    model, encoder = models[d.name]
                    prompts = random_prompts(encoder, k, TEMPLATES, device)
                    sync(device)
                    start = time.perf_counter()
                    kept[d.name] = round_one(model, images, prompts, d)
                    sync(device)
                    times[d.name].append(1000 * (time.perf_counter() - start))
            for d in decoders_:
                model, encoder = models[d.name]
                prompts = random_prompts(encoder, k, TEMPLATES, device)
                exact = reset_peak(device)
                before = current_memory_mb(device)
                round_one(model, images, prompts, d)
                sync(device)
                row = next(
                    r
                    for r in rows
                    if r["classes"] == k and r["decoder"] == d.name and r["size"] == size["preset"]
                )
                row.update(
                    ms=statistics.median(times[d.name]),
                    kept=kept[d.name],
                    peak_mb=peak_memory_mb(device) - before,
                    peak_exact=exact,
                )
        print(f"  {size['preset']} K={k} done", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| size | K | decoder | GFLOPs | ms / image | peak MB | classes decoded |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ms = f"{r['ms']:.1f}" if "ms" in r else "—"
        mb = f"{r['peak_mb']:.0f}" if "peak_mb" in r else "—"
        kept = str(r.get("kept", "—"))
        lines.append(
            f"| {r['size']} {r['image_size']} px | {r['classes']} | {r['decoder']} | "
            f"{r['gflops']:,.1f} | {ms} | {mb} | {kept} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(dict.fromkeys(r["size"] for r in rows))
    panels = [(s, "gflops", "GFLOPs per image") for s in sizes]
    panels += [
        (s, "ms", "ms per image (CPU)")
        for s in sizes
        if any("ms" in r for r in rows if r["size"] == s)
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8))
    for ax, (size, key, label) in zip(list(axes) if len(panels) > 1 else [axes], panels):
        for name, style in zip(DECODERS, ("o-", "s-", "^-")):
            points = [
                (r["classes"], r[key])
                for r in rows
                if r["size"] == size and r["decoder"] == name and key in r
            ]
            if points:
                ax.plot(*zip(*points), style, label=name)
        px = next(r["image_size"] for r in rows if r["size"] == size)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="classes K",
            ylabel=label,
            title=f"{size}, {px} px, round I",
        )
        ax.set_xticks(CLASSES, [str(k) for k in CLASSES])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=list(CLASSES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-full", action="store_true", help="skip the full-size FLOPs")
    parser.add_argument("--plot", default=None, help="write the figure here (PNG)")
    parser.add_argument("--json", default=None)
    threshold, max_classes = paper_rejection()
    parser.add_argument(
        "--threshold",
        type=float,
        default=threshold,
        help="rejection_threshold (default: the paper config's)",
    )
    parser.add_argument(
        "--max-classes",
        type=int,
        default=max_classes,
        help="rejection_max_classes (default: the paper config's)",
    )
    args = parser.parse_args()
    bad = [k for k in args.classes if k < 1]
    if bad or args.repeats < 1:
        parser.error(f"--classes {bad or ''} / --repeats {args.repeats}: give 1 or more")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    threshold, max_classes = args.threshold, args.max_classes
    try:
        RefineConfig(rejection_threshold=threshold, rejection_max_classes=max_classes)
    except ValueError as e:
        parser.error(str(e))
    if threshold is None:
        parser.error("--threshold: the paper config has rejection off; give one to compare")
    chosen = decoders(threshold, max_classes)
    print(
        f"round I, batch 1, P={TEMPLATES}; rejection: threshold={threshold}, max_classes="
        f"{max_classes}; {torch.get_num_threads()} threads, {device}"
    )
    start = time.perf_counter()
    rows = measure(TINY, args.classes, chosen, device, args.repeats, True, False)
    if not args.no_full:
        cuda = device.type == "cuda"
        rows += measure(FULL, args.classes, chosen, device, args.repeats, cuda, cuda)
    print(table(rows))
    for size in dict.fromkeys(r["size"] for r in rows):
        for k in args.classes:
            by = {r["decoder"]: r for r in rows if r["size"] == size and r["classes"] == k}
            base = by["before"]
            parts = [
                f"{name} {base['gflops'] / by[name]['gflops']:.1f}x fewer FLOPs"
                + (f", {base['ms'] / by[name]['ms']:.1f}x faster" if "ms" in base else "")
                for name in DECODERS[1:]
            ]
            print(f"{size} K={k}: " + "; ".join(parts))
    print(f"(measured in {time.perf_counter() - start:.0f} s)")
    if args.plot:
        plot(rows, Path(args.plot))
        print(f"wrote {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
