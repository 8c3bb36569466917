"""GPU benchmark in one command: prompt-bank builds, DPSeg inference and a training step.

    make bench-gpu                                     # .venv/bin/python benchmarks/bench_gpu.py
    .venv/bin/python benchmarks/bench_gpu.py [--json PATH] [--budget SECONDS]

Prints one markdown table and writes JSON (``bench_gpu.json`` unless ``--json``). Sections,
each time-boxed (``--budget``, default 420 s in all: a configuration is skipped, and said so,
when the time its section has left, or the whole run has left, is shorter than the last
configuration of that kind took):

1. bank: the real builder (``prompt_bank.build.build_bank``, a fresh Zarr bank per run) with
   random weights of the real architectures: sd15 (25 DPM-Solver++ steps, guidance 7.5) and
   sd-turbo (1 step), 512 px, fp16 (the builder's CUDA dtype), the convnext-b-laion encoder in
   bf16 autocast; batch sizes 1, 4, 8, max(8, 2 x batch) images each (one class, that many
   templates, one image each), after one warm-up build (one batch of 8) per generator.
   images/s = images / the build's seconds (text prompts, Stable Diffusion prompt embeddings,
   generation, encoding, storage); the shares are the builder's own Stopwatch (generation,
   encoding, storage). The pipelines are built once per generator (``BankModels`` cached across
   the builds: model construction is not in the rates). Peak memory: weights included.
2. inference: DPSeg with convnext-b-laion and convnext-l-laion (random weights, the paper's
   decoder), 768 px, K = 150 and 847, P = 80, batch 1, bf16 autocast, ``TwoRoundSegmenter``
   rounds I and II (round II: ``min_area=0``, at most ``--refined`` classes, 8 by default; the
   count refined is reported). ms per image (median) and the peak of
   ``torch.cuda.max_memory_allocated`` (weights included).
3. training: one optimiser step at 768 px, batch 4, K = 171 (COCO-Stuff's training
   vocabulary), P = 80, bf16 autocast with fp32 weights (Lightning's ``bf16-mixed``): DPSeg's
   forward + ``model.lightning.bce_loss`` + backward + gradient clipping (norm 0.01) + AdamW with
   ``DPSegModule.configure_optimizers``' groups. Not the LightningModule itself: it needs a
   Trainer and a data module, and builds its encoder with pretrained weights. Median time of
   the steps after one warm-up step (which allocates AdamW's state) and the peak memory
   (weights, gradients, AdamW's state, activations, and the frozen prompt encoder, which the
   LightningModule also holds on the device).

4. cost vs K: ``benchmarks/cost_vs_k.py --device cuda`` (its own process): round I at K = 20,
   59, 150, 459 and 847 for the decoder before issue 29, the default and the default with class
   early rejection, tiny at 320 px and convnext-b-laion at 768 px in bf16 autocast: FLOPs, ms
   per image and peak memory (``bench_gpu_cost_vs_k.json/.md/.png`` beside ``--json``).

A configuration that runs out of GPU memory is reported as skipped; a section that fails is
reported (FAILED row, traceback on stderr, exit status 1) and the others still run.

Where no CUDA GPU exists it prints one line and exits 0, before building anything.
``--allow-cpu --tiny`` (hidden; tests) runs every section on CPU with the tiny presets.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SKIP_LINE = "bench-gpu: no CUDA GPU here (torch.cuda.is_available() is False); nothing measured"


@dataclass(frozen=True)
class Plan:
    """What each section measures (the full-size plan, or the tiny one for CPU tests)."""

    generators: tuple[tuple[str, int], ...]  # (generator preset, steps)
    bank_encoder: str
    bank_batches: tuple[int, ...]
    bank_items: int  # images per build (at least 2 batches): amortises the build's fixed costs
    presets: tuple[str, ...]  # DPSeg encoders
    classes: tuple[int, ...]
    templates: int
    image_size: int
    warmup: int
    iters: int
    train_preset: str
    train_classes: int
    train_batch: int
    train_size: int
    train_steps: int
    budgets: dict = field(default_factory=dict)  # section -> share of --budget


FULL = Plan(
    generators=(("sd15", 25), ("sd-turbo", 1)),
    bank_encoder="convnext-b-laion",
    bank_batches=(1, 4, 8),
    bank_items=8,
    presets=("convnext-b-laion", "convnext-l-laion"),
    classes=(150, 847),
    templates=80,
    image_size=768,
    warmup=1,
    iters=3,
    train_preset="convnext-b-laion",
    train_classes=171,
    train_batch=4,
    train_size=768,
    train_steps=2,
    budgets={"bank": 0.5, "inference": 0.35, "training": 0.15},
)
TINY = Plan(
    generators=(("tiny-sd", 2),),
    bank_encoder="tiny-convnext",
    bank_batches=(1, 2),
    bank_items=2,
    presets=("tiny-convnext",),
    classes=(8, 16),
    templates=4,
    image_size=128,
    warmup=1,
    iters=1,
    train_preset="tiny-convnext",
    train_classes=8,
    train_batch=2,
    train_size=64,
    train_steps=1,
    budgets={"bank": 0.5, "inference": 0.35, "training": 0.15},
)


class Clock:
    """The run's time boxes: per section, and for the whole run."""

    def __init__(self, budget: float, shares: dict):
        self.start = time.perf_counter()
        self.budget = budget
        self.boxes = {name: share * budget for name, share in shares.items()}
        self.spent = dict.fromkeys(shares, 0.0)
        self.last: dict[str, float] = {}  # kind of configuration -> seconds it last took

    def allows(self, section: str, kind: str) -> bool:
        """Whether a configuration of this kind fits in what its section and the run have left
        (estimated by the last one of its kind; the first always runs)."""
        estimate = self.last.get(kind, 0.0)
        left_run = self.budget - (time.perf_counter() - self.start)
        return self.spent[section] + estimate <= self.boxes[section] and estimate <= left_run

    @contextlib.contextmanager
    def timed(self, section: str, kind: str | None = None):
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.spent[section] += seconds
            if kind is not None:
                self.last[kind] = seconds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; fp32 on CPU (the tiny CPU mode only checks the plumbing)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


# -- 1. bank ------------------------------------------------------------------------------------


class CachedModels:
    """Stands in for ``prompt_bank.build.BankModels`` during the bank section: one instance per
    (generator, encoder, steps, device), reused across builds with a fresh Stopwatch each, so
    each build times the builder's work and not the model construction."""

    def __init__(self, original):
        self.original = original
        self.current: tuple | None = None
        self.models = None

    def __call__(self, config, device):
        from prompt_bank.build import Stopwatch

        key = (config.generator, config.encoder, config.steps, config.guidance, str(device))
        if key != self.current:
            self.models = None  # one pipeline on the device at a time
            free_memory(device)
            self.models = self.original(config, device)
            self.current = key
        self.models.timer = Stopwatch(device)
        return self.models


@contextlib.contextmanager
def cached_bank_models():
    import prompt_bank.build as build_module

    saved = (
        build_module.BankModels,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    cache = CachedModels(build_module.BankModels)
    build_module.BankModels = cache
    try:
        yield cache
    finally:
        # the builder pins cuDNN (benchmark off, deterministic on) for its own bits: not ours
        build_module.BankModels = saved[0]
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1:]
        cache.models = None


def one_build(
    generator: str, steps: int, encoder: str, batch: int, items: int, device, cache: CachedModels
) -> dict:
    """Build a fresh bank of ``items`` images (one class, ``items`` templates, one image each)
    with the real builder, ``batch`` images per batch."""
    from benchmarks.memory import peak_memory_mb, reset_peak
    from data.templates import load_templates
    from data.vocabulary import Vocabulary
    from prompt_bank.build import BuildConfig, build_bank

    config = BuildConfig(
        vocabulary=Vocabulary.from_entries(["cat"], name="bench-gpu", source="bench-gpu"),
        templates=load_templates(f"imagenet80:{items}"),
        generator=generator,
        encoder=encoder,
        random_weights=True,
        steps=steps,
        batch_size=batch,
        classes_per_shard=1,
        flush_seconds=3600.0,
        device=device.type,
        progress=False,
    )
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        reset_peak(device)
        summary = build_bank(config, Path(tmp) / "bank.zarr")
        peak = peak_memory_mb(device)
    phases = dict(cache.models.timer.seconds)
    total = sum(phases.values()) or 1.0
    gen = cache.models.gen.preset
    return {
        "generator": generator,
        "steps": cache.models.steps,
        "guidance": cache.models.guidance,
        "scheduler": type(cache.models.pipe.scheduler).__name__,
        "resolution": gen.height,
        "dtype": str(cache.models.dtype).removeprefix("torch."),
        "encoder": encoder,
        "batch_size": batch,
        "images": summary.items_done,
        "seconds": summary.seconds,
        "images_per_s": summary.items_done / summary.seconds,
        "share": {k: v / total for k, v in phases.items()},
        "phase_seconds": phases,
        "peak_mb": peak,
    }


def bank_section(plan: Plan, device, clock: Clock, out: dict) -> None:
    with cached_bank_models() as cache:
        for generator, steps in plan.generators:
            kind = f"bank:{generator}"
            if not clock.allows("bank", kind + ":warmup"):
                out["skipped"].append(f"bank {generator}: time box")
                continue
            with clock.timed("bank", kind + ":warmup"):  # builds the models, warms the kernels
                biggest = max(plan.bank_batches)
                one_build(generator, steps, plan.bank_encoder, biggest, biggest, device, cache)
            for batch in plan.bank_batches:
                if not clock.allows("bank", f"{kind}:{batch}"):
                    out["skipped"].append(f"bank {generator} batch {batch}: time box")
                    continue
                with clock.timed("bank", f"{kind}:{batch}"):
                    items = max(plan.bank_items, 2 * batch)
                    row = one_build(
                        generator, steps, plan.bank_encoder, batch, items, device, cache
                    )
                out["bank"].append(row)
                print(
                    f"  bank {generator} batch {batch}: {row['images_per_s']:.2f} images/s",
                    flush=True,
                )
    free_memory(device)


# -- 2. inference and 3. training -----------------------------------------------------------------


def time_segmenter(segmenter, images, prompts, device, warmup: int, iters: int):
    """Median seconds per call and the peak memory over the timed calls (MB)."""
    from benchmarks.memory import peak_memory_mb, reset_peak

    with torch.inference_mode(), autocast_for(device):
        for _ in range(warmup):
            segmenter(images, prompts)
        sync(device)
        reset_peak(device)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            segmenter(images, prompts)
            sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times), peak_memory_mb(device)


def inference_rows(
    plan: Plan, preset: str, model, encoder, device, clock: Clock, out: dict, refined: int
) -> None:
    from benchmarks.inference_cost import block_images, random_prompts
    from model.refine import RefineConfig, TwoRoundSegmenter, detected_classes

    images = block_images(1, plan.image_size, device)
    for k in plan.classes:
        prompts = random_prompts(encoder, k, plan.templates, device)
        for rounds in (1, 2):
            kind = f"inference:{preset}:{k}:{rounds}"
            if not clock.allows("inference", kind):
                out["skipped"].append(f"inference {preset} K={k} round {rounds}: time box")
                continue
            config = RefineConfig(rounds=rounds, min_area=0.0, max_classes=refined)
            segmenter = TwoRoundSegmenter(model, encoder, config)
            try:
                with clock.timed("inference", kind):
                    seconds, peak = time_segmenter(
                        segmenter, images, prompts, device, plan.warmup, plan.iters
                    )
                    if rounds == 2:  # how many classes round II refined (data-dependent)
                        with torch.inference_mode(), autocast_for(device):
                            labels = model(images, prompts).logits.argmax(dim=1)[0]
                        count = len(detected_classes(labels, k, 0.0, refined))
            except torch.OutOfMemoryError:
                out["skipped"].append(f"inference {preset} K={k} round {rounds}: out of memory")
                free_memory(device)
                continue
            row = {
                "preset": preset,
                "classes": k,
                "templates": plan.templates,
                "image_size": plan.image_size,
                "round": rounds,
                "ms_per_image": seconds * 1e3,
                "peak_mb": peak,
                "iters": plan.iters,
                "warmup": plan.warmup,
            }
            if rounds == 2:
                row["refined_per_image"] = count
            out["inference"].append(row)
            print(
                f"  {preset} K={k} round {rounds}: {row['ms_per_image']:.1f} ms/image", flush=True
            )
        del prompts
        free_memory(device)


def training_row(plan: Plan, preset: str, model, encoder, device, clock: Clock, out: dict):
    try:
        _training_row(plan, preset, model, encoder, device, clock, out)
    except torch.OutOfMemoryError:
        out["skipped"].append(f"training {preset}: out of memory")
    model.zero_grad(set_to_none=True)
    model.eval()
    free_memory(device)


def _training_row(plan: Plan, preset: str, model, encoder, device, clock: Clock, out: dict):
    from benchmarks.inference_cost import block_images, random_prompts
    from benchmarks.memory import peak_memory_mb, reset_peak
    from data.catalog import IGNORE_INDEX
    from model.lightning import LossConfig, OptimConfig, bce_loss

    kind = f"training:{preset}"
    if not clock.allows("training", kind):
        out["skipped"].append(f"training {preset}: time box")
        return
    optim, loss_config = OptimConfig(), LossConfig()
    mixed = "bf16 autocast, fp32 weights" if device.type == "cuda" else "fp32"
    with clock.timed("training", kind):
        model.train()
        encoder_params = [p for p in model.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in encoder_params}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        optimizer = torch.optim.AdamW(
            [
                {"params": rest, "lr": optim.lr},
                {"params": encoder_params, "lr": optim.lr * optim.encoder_lr_mult},
            ],
            weight_decay=optim.weight_decay,
        )
        k, size, batch = plan.train_classes, plan.train_size, plan.train_batch
        prompts = random_prompts(encoder, k, plan.templates, device)
        images = block_images(batch, size, device)
        gen = torch.Generator().manual_seed(0)
        labels = torch.randint(0, k, (batch, size, size), generator=gen)
        labels[:, : size // 16] = IGNORE_INDEX  # a strip of ignore pixels, as real labels have
        labels = labels.to(device)

        def step() -> float:
            optimizer.zero_grad(set_to_none=True)
            with autocast_for(device):
                out_ = model(images, prompts)
                loss = bce_loss(out_.logits, labels, loss_config.ignore_mode)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)  # the config's clip
            optimizer.step()
            return float(loss.detach())

        step()  # warm-up: AdamW's state is allocated here
        sync(device)
        reset_peak(device)
        times = []
        for _ in range(plan.train_steps):
            start = time.perf_counter()
            loss = step()
            sync(device)
            times.append(time.perf_counter() - start)
        peak = peak_memory_mb(device)
    out["training"].append(
        {
            "preset": preset,
            "classes": k,
            "templates": plan.templates,
            "image_size": size,
            "batch": batch,
            "ms_per_step": statistics.median(times) * 1e3,
            "peak_mb": peak,
            "steps": plan.train_steps,
            "loss": loss,
            "how": "DPSeg forward + bce_loss + backward + clip_grad_norm 0.01 + AdamW "
            f"(DPSegModule's parameter groups), {mixed}; not the LightningModule",
        }
    )
    print(f"  training {preset}: {out['training'][-1]['ms_per_step']:.0f} ms/step", flush=True)


def model_sections(plan: Plan, device, clock: Clock, out: dict, refined: int) -> None:
    """Per encoder preset: build once, inference rows, and (for the training preset) the
    training step on the same model, then free it (one model on the device at a time)."""
    from benchmarks.inference_cost import build, tiny_config
    from model.dpseg import DPSegConfig

    for preset in plan.presets:
        wants_training = preset == plan.train_preset
        if not (
            clock.allows("inference", f"inference:{preset}:{plan.classes[0]}:1") or wants_training
        ):
            out["skipped"].append(f"inference {preset}: time box")
            continue
        config = tiny_config() if preset.startswith("tiny") else DPSegConfig()
        with clock.timed("inference"):
            model, encoder = build(preset, config, plan.templates, device)
        inference_rows(plan, preset, model, encoder, device, clock, out, refined)
        if wants_training:
            training_row(plan, preset, model, encoder, device, clock, out)
        del model, encoder
        free_memory(device)


# -- report -------------------------------------------------------------------------------------


def _mb(mb: float) -> str:
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def table(out: dict) -> str:
    lines = [
        "| section | configuration | result | peak memory | detail |",
        "|---|---|---:|---:|---|",
    ]
    for r in out["bank"]:
        share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["share"].items())
        lines.append(
            f"| bank | {r['generator']} {r['steps']} steps ({r['scheduler']}, guidance "
            f"{r['guidance']:g}) + {r['encoder']}, {r['resolution']} px {r['dtype']}, batch "
            f"{r['batch_size']}, {r['images']} images | {r['images_per_s']:.2f} images/s | "
            f"{_mb(r['peak_mb'])} | {share} |"
        )
    for r in out["inference"]:
        detail = f"median of {r['iters']} after {r['warmup']} warm-up"
        if r["round"] == 2:
            detail += f"; {r['refined_per_image']} classes refined per image"
            first = [
                x
                for x in out["inference"]
                if x["round"] == 1 and x["preset"] == r["preset"] and x["classes"] == r["classes"]
            ]
            if first:
                detail += f"; {r['ms_per_image'] / first[0]['ms_per_image']:.2f}x round I"
        lines.append(
            f"| inference | {r['preset']}, K={r['classes']}, P={r['templates']}, "
            f"{r['image_size']} px, batch 1, {out['dtype']}, round {'I' * r['round']} | "
            f"{r['ms_per_image']:.1f} ms/image | {_mb(r['peak_mb'])} | {detail} |"
        )
    for r in out["training"]:
        lines.append(
            f"| training | {r['preset']}, K={r['classes']}, P={r['templates']}, "
            f"{r['image_size']} px, batch {r['batch']}, {out['dtype']} | "
            f"{r['ms_per_step']:.0f} ms/step | {_mb(r['peak_mb'])} | median of {r['steps']} "
            f"after 1 warm-up; {r['how']} |"
        )
    for s in out["skipped"]:
        section, _, rest = s.partition(" ")
        lines.append(f"| {section} | {rest} | skipped | | |")
    for s in out["errors"]:
        section, _, rest = s.partition(": ")
        lines.append(f"| {section} | | FAILED | | {rest} |")
    return "\n".join(lines)


def cost_vs_k_section(args, device, out: dict) -> None:
    """4. benchmarks/cost_vs_k.py's grid (K = 20 ... 847, the decoder before issue 29, the
    default, the default with class early rejection) timed on this device, full size in bf16
    (tiny on CPU with --tiny), in its own process; its rows go into the JSON, its table and plot
    beside it (``<json stem>_cost_vs_k.md/.png``)."""
    base = Path(args.json)
    rows_path = base.with_name(f"{base.stem}_cost_vs_k.json")
    plot_path = base.with_name(f"{base.stem}_cost_vs_k.png")
    cmd = [
        sys.executable,
        str(Path(__file__).with_name("cost_vs_k.py")),
        "--device",
        device.type,
        "--json",
        str(rows_path),
        "--plot",
        str(plot_path),
    ]
    if args.tiny:
        cmd += ["--no-full", "--classes", "20", "59", "--repeats", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    out["cost_vs_k"] = json.loads(rows_path.read_text())
    table = "\n".join(line for line in done.stdout.splitlines() if line.startswith("|"))
    base.with_name(f"{base.stem}_cost_vs_k.md").write_text(table + "\n")
    out["notes"].append(
        f"cost vs K: {len(out['cost_vs_k'])} rows in {rows_path.name}, table in "
        f"{base.stem}_cost_vs_k.md, plot {plot_path.name}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default="bench_gpu.json", help="default: bench_gpu.json")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all sections")
    parser.add_argument("--refined", type=int, default=8, help="round II: at most this many")
    parser.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(SKIP_LINE)
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plan = TINY if args.tiny else FULL
    clock = Clock(args.budget, plan.budgets)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    dtype = "bf16 autocast" if device.type == "cuda" else "fp32"
    out = {
        "device": name,
        "torch": torch.__version__,
        "tiny": args.tiny,
        "dtype": dtype,
        "budget_s": args.budget,
        "bank": [],
        "inference": [],
        "training": [],
        "skipped": [],
        "errors": [],
        "notes": [],
    }
    print(f"bench-gpu on {name}, torch {torch.__version__}, budget {args.budget:.0f} s", flush=True)
    sections = (
        ("bank", lambda: bank_section(plan, device, clock, out)),
        ("inference/training", lambda: model_sections(plan, device, clock, out, args.refined)),
        ("cost vs K", lambda: cost_vs_k_section(args, device, out)),
    )
    for name, run in sections:  # a failing section is reported; the others still run
        try:
            run()
        except Exception as e:
            traceback.print_exc()
            out["errors"].append(f"{name}: {type(e).__name__}: {e}")
            free_memory(device)
    out["seconds"] = time.perf_counter() - clock.start
    out["section_seconds"] = dict(clock.spent)
    print()
    print(table(out))
    for note in out["notes"]:
        print(f"\nNOTE {note}")
    spent = ", ".join(f"{k} {v:.0f} s" for k, v in clock.spent.items())
    print(
        f"\n{out['seconds']:.0f} s in all ({spent}); peak memory: "
        f"{'torch.cuda.max_memory_allocated' if device.type == 'cuda' else 'process peak RSS'}"
    )
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
