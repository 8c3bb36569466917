"""VIP's inference overhead against plain dense inference with the same encoder.

    .venv/bin/python benchmarks/vip_overhead.py --threads 2      # tiny-vit, 336 px, CPU ok
    .venv/bin/python benchmarks/vip_overhead.py --full-size --threads 2 --repeats 3 --warmup 1
                                  # dino.txt L/16 (dinotxt-l16's architecture, random weights,
                                  #   no files) on CPU
    .venv/bin/python benchmarks/vip_overhead.py --full-size --device cuda --bf16   # on a GPU
    .venv/bin/python benchmarks/vip_overhead.py --full-size --preset vit-b16-openai
                                  # CLIP ViT-B/16 with ClearCLIP's last block (the old figure)

The VIP paper claims a marginal overhead over the dense backbone it wraps (docs/design.md §3). All rows
run on the same random windows (B x 3 x S x S, default 1 x 3 x 336 x 336, VIP's window), one
encoder built once, its modules shared by the rows.

dino.txt (``--full-size``: ``dinotxt-l16``, the DINOv3 ViT-L/16 backbone + dino.txt's 2-block
vision head, VIP's real encoder; ``--preset tiny-dinotxt`` at small width):

1. ``plain``: ``create_dense_encoder(built, "none")``, the plain dino.txt head's patch
   embeddings, one cosine against K class queries (one (K, D) tensor), x logit scale, argmax;
2. ``VIP``: ``create_dense_encoder(built, "proxy")`` (VIP's proxy attention in both head blocks,
   from the backbone's patch affinity) + ``VIPSegmenter`` over A aliases of K classes (A cosines,
   per-image alias weights, weighted logsumexp per class) + ``assign_labels``;
3. ``VIP + dual``: row 2 with ``AliasQueries.visual`` set (K random normalised visual prompts,
   query = (1 - w) text + w visual).

The backbone (0.3 B parameters, 24 blocks) is the same in all rows; row 2 against row 1 is the
proxy head and the alias head together. There is no ``clear`` row: ClearCLIP's block is a CLIP
ViT's. D = 1024, the width of the patch embeddings (the second half of dino.txt's 2048-d text
embedding is what pixels are compared with). The text tower (24 layers of width 1280) is built
with the model and dropped before timing: it runs once per vocabulary, not per image.

CLIP ViT (the default ``tiny-vit``; ``--preset vit-b16-openai``: ViT-B/16's architecture, random
weights, no download): ``plain`` = ``DenseCLIP(attention="none")`` (the unchanged last block) +
the same single-query head; ``clear`` = ``DenseCLIP(attention="clear")`` (ClearCLIP's last block)
+ the same head; ``VIP`` and ``VIP + dual`` as above with ``DenseCLIP(attention=--attention)``
(default clear). Row 2 against row 1 is the cost of the training-free last block, row 3 against
row 2 the cost of the alias head.

``x plain`` is each row's time over row 1's. Timings: median over ``--repeats`` after
``--warmup`` calls, the rows taken in turn within each repeat (so a load change on a shared
machine hits every row alike), ``torch.cuda.synchronize`` around each call on CUDA. The header
names the device: the CPU model (``/proc/cpuinfo``), torch's CPU capability, logical CPUs and
torch threads; on CUDA the GPU's name.

Peak memory: CUDA, ``torch.cuda.max_memory_allocated`` over one call after resetting it (and its
increase over the memory allocated before the call: weights and input excluded). CPU, as
``benchmarks/inference_cost.py``: peak RSS over one call after resetting the high-water mark
through ``/proc/self/clear_refs``, and its increase over the RSS before the call, measured in a
fresh process run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors go back to the
system and the rows do not share a heap. The peak is read from ``VmHWM`` (``/proc/self/status``),
not ``ru_maxrss``, which in a child process includes the parent's RSS at the spawn.

A second table times the VIP test protocol (``data.transforms.get_test_protocol("vip")``: short
side 336, 336 px windows every 112 px, logits averaged) on one 512 x 683 random image, plain
against VIP, in images/s (2 windows of 336 px per image).

The tiny presets (tiny-vit: width 64, 4 blocks, patch 8, 1,765 tokens at 336 px) are dominated
by attention and the heads, so their ratios say little about a real encoder: ``--full-size`` is
the figure to quote. CPU timings on a shared machine are noisy (the load average is printed when
high).

Figures: the README's VIP section quotes this script's output with the command and the machine.
The CUDA path (``--device cuda --bf16``) is written but has not been run (no GPU here).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.memory import current_memory_mb, peak_memory_mb, reset_peak
from data.transforms import get_test_protocol, resize_short_side, window_starts
from model.vip.aggregation import VIPConfig, assign_labels
from model.vip.dense import DENSE_ENCODERS, check_attention, create_dense_encoder
from model.vip.segmenter import AliasQueries, VIPSegmenter
from pretrained.backbone import create_encoder, text_encoder_for
from pretrained.families import family_of
from pretrained.presets import get_encoder_preset, list_presets

TINY_PRESET = "tiny-vit"
FULL_PRESET = "dinotxt-l16"  # VIP's encoder; --preset vit-b16-openai: CLIP ViT-B/16


def rows_of(family) -> tuple[str, ...]:
    """The rows, in order (row 1 is the x plain reference); ClearCLIP's where the family has it."""
    clear = ("clear",) if "clear" in family.vip_attentions else ()
    return ("plain", *clear, "VIP", "VIP + dual")


PROTOCOL_IMAGE = (512, 683)  # (H, W) of the sliding-window table's image


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_queries(k: int, per_class: int, dim: int, device: torch.device) -> AliasQueries:
    """A = k x per_class random alias queries (the first of each class its canonical name) and,
    as ``visual``, k random visual prompts; all L2-normalised."""
    gen = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(k * per_class, dim, generator=gen), dim=-1)
    owner = torch.arange(k).repeat_interleave(per_class)
    aliases = [
        f"class{c}" if j == 0 else f"class{c} alias{j}" for c in range(k) for j in range(per_class)
    ]
    visual = F.normalize(torch.randn(k, dim, generator=gen), dim=-1)
    return AliasQueries(text, owner, aliases, k, visual).to(device)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``?`` where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (
        f"{cpu_model()}, {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} logical "
        f"CPUs, {torch.get_num_threads()} torch threads"
    )


class SingleQueryHead:
    """Plain dense inference: cosine of each pixel with K class queries, argmax."""

    def __init__(self, dense: torch.nn.Module, classes: torch.Tensor, scale: float):
        self.dense, self.classes, self.scale = dense, classes, scale

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.dense(images).float(), dim=1)  # (B, D, h, w)
        return self.scale * torch.einsum("bdhw,kd->bkhw", features, self.classes.to(features))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).argmax(dim=1)


class VIPHead:
    """VIP: alias logits, alias weights, logsumexp aggregation, ``assign_labels``."""

    def __init__(self, segmenter: VIPSegmenter, queries: AliasQueries):
        self.segmenter, self.queries = segmenter, queries

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.segmenter(images, self.queries)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return assign_labels(self.logits(images), self.segmenter.config)


Head = SingleQueryHead | VIPHead


def build(args, device: torch.device) -> tuple[dict[str, Head], AliasQueries, str]:
    """The rows' label functions (:func:`rows_of` the family), sharing one image encoder, and
    the preset's name."""
    built = create_encoder(args.preset, random_weights=True)
    family = family_of(built.preset)
    config = VIPConfig()
    dim = text_encoder_for(built).embed_dim  # the space the pixels are compared in
    if isinstance(getattr(built.model, "text", None), torch.nn.Module):
        built.model.text = None  # dino.txt's text tower: once per vocabulary, not per image
    single = ("none", "clear") if "clear" in family.vip_attentions else ("none",)
    dense = {
        name: create_dense_encoder(built, name, config.proxy_beta, config.proxy_gamma)
        .eval()
        .to(device)
        for name in dict.fromkeys((*single, args.attention))
    }  # the modules share one image encoder (a CLIP's visual tower, or dino.txt's backbone +
    # head), which alone moves to the device
    queries = random_queries(args.classes, args.aliases_per_class, dim, device)
    text_only = AliasQueries(queries.text, queries.owner, queries.aliases, queries.num_classes)
    canonical = queries.text[:: args.aliases_per_class, 0]  # (K, D) the single-query rows'
    segmenter = VIPSegmenter(dense[args.attention], config).eval()
    rows: dict[str, Head] = {
        name: SingleQueryHead(dense[attention], canonical, config.logit_scale)
        for name, attention in (("plain", "none"), ("clear", "clear"))
        if attention in dense
    }
    rows["VIP"] = VIPHead(segmenter, text_only)
    rows["VIP + dual"] = VIPHead(segmenter, queries)
    assert tuple(rows) == rows_of(family), (tuple(rows), family.name)
    return rows, queries, built.preset.name


def random_windows(args, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(args.batch, 3, args.size, args.size, generator=gen).to(device)


def time_calls(fns: dict[str, Callable[[], object]], args, device, autocast) -> dict[str, float]:
    """Median seconds per call of each function; the functions taken in turn in each repeat."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode(), autocast:
        for _ in range(args.warmup):
            for fn in fns.values():
                fn()
        sync(device)
        for _ in range(args.repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# -- peak memory ------------------------------------------------------------------------------


def measure_memory(rows: dict[str, Head], images, device, autocast) -> dict:
    """Per row: (peak MB, increase over the memory before the call MB, exact) of one call."""
    out = {}
    with torch.inference_mode(), autocast:
        for fn in rows.values():  # lazy initialisations (thread pools, kernels) out of the way
            fn(images)
        for name, fn in rows.items():
            if device.type == "cuda":
                torch.cuda.empty_cache()
            sync(device)
            before = current_memory_mb(device)
            exact = reset_peak(device)
            labels = fn(images)
            sync(device)
            peak = peak_memory_mb(device)
            del labels
            out[name] = (peak, peak - before, exact)
    return out


def memory_in_child(args, names: tuple[str, ...]) -> dict:
    """CPU: the memory of every row in a fresh process whose freed tensors go back to the OS."""
    cmd = [sys.executable, __file__, *sys.argv[1:], "--memory-child"]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("PEAK_MB")]
    if out.returncode or len(lines) != len(names):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    result = {}
    for line in lines:
        _, peak, increase, exact, name = line.split(maxsplit=4)
        result[name] = (float(peak), float(increase), exact == "1")
    return result


# -- tables -----------------------------------------------------------------------------------


def row_table(args, rows, images, device, autocast) -> None:
    calls = {name: (lambda fn=fn: fn(images)) for name, fn in rows.items()}
    seconds = time_calls(calls, args, device, autocast)
    memory = {}
    if not args.no_memory:
        cuda = device.type == "cuda"
        memory = (
            measure_memory(rows, images, device, autocast)
            if cuda
            else memory_in_child(args, tuple(rows))
        )
    what = "max_memory_allocated" if device.type == "cuda" else "peak RSS, fresh process"
    print(
        f"\n{args.batch} x 3 x {args.size} x {args.size} random windows on {device.type}; ms per "
        f"{args.size} px window, median of {args.repeats} after {args.warmup} warm-up"
        + ("" if args.no_memory else f"; memory: {what} over one call (+: above the memory before)")
    )
    print(
        f"{'row':12s} {'ms/window':>10s} {'x plain':>8s}"
        + (f" {'peak MB':>9s} {'+ MB':>8s}" if memory else "")
    )
    base = seconds["plain"]
    for name in rows:
        ms = seconds[name] / args.batch * 1e3
        line = f"{name:12s} {ms:10.2f} {seconds[name] / base:7.2f}x"
        if memory:
            peak, increase, exact = memory[name]
            line += f" {peak:9.1f} {increase:8.1f}" + ("" if exact else "  (upper bound)")
        print(line)

    def over(a: float, b: float) -> str:
        return f"{(a - b) / args.batch * 1e3:+.2f} ms/window ({(a / b - 1) * 100:+.1f}%)"

    vip, plain = seconds["VIP"], seconds["plain"]
    if "clear" not in seconds:  # dino.txt: the proxy head and the alias head together
        print(
            f"VIP over plain ({args.attention} head + alias head over the plain head + one "
            f"cosine per class): {over(vip, plain)}"
        )
        return
    head = (
        "the alias head alone (VIP over clear, the same last block)"
        if args.attention == "clear"
        else f"VIP ({args.attention} last block) over clear"
    )
    print(f"VIP over plain: {over(vip, plain)}; {head}: {over(vip, seconds['clear'])}")


def protocol_table(args, rows, device, autocast) -> None:
    protocol = get_test_protocol("vip")
    h, w = PROTOCOL_IMAGE
    gen = torch.Generator().manual_seed(2)
    image = torch.rand(3, h, w, generator=gen).to(device)
    rh, rw = resize_short_side(image, protocol.short_side).shape[-2:]
    windows = len(window_starts(rh, protocol.crop, protocol.stride)) * len(
        window_starts(rw, protocol.crop, protocol.stride)
    ) + int(protocol.global_view)
    config = VIPConfig()

    def plain() -> torch.Tensor:
        return protocol(rows["plain"].logits, image).argmax(dim=0)

    def vip() -> torch.Tensor:
        return assign_labels(protocol(rows["VIP"].logits, image)[None], config)[0]

    seconds = time_calls({"plain": plain, "VIP": vip}, args, device, autocast)
    print(
        f"\nVIP test protocol on one {h} x {w} image: short side {protocol.short_side}, "
        f"{protocol.crop} px windows every {protocol.stride} px ({windows} per image, "
        f"{protocol.batch_size} per forward), logits to {h} x {w}, labels"
    )
    print(f"{'method':12s} {'windows':>8s} {'ms/image':>9s} {'images/s':>9s} {'x plain':>8s}")
    for name in ("plain", "VIP"):
        s = seconds[name]
        print(f"{name:12s} {windows:8d} {s * 1e3:9.1f} {1 / s:9.2f} {s / seconds['plain']:7.2f}x")


def main() -> None:
    presets = [p.name for p in list_presets("encoder") if p.family in DENSE_ENCODERS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--preset",
        "--encoder",
        default=None,
        choices=presets,
        help=f"encoder preset with a VIP dense path (CLIP ViT or ConvNeXt, dino.txt), random weights (default {TINY_PRESET}; "
        f"--full-size: {FULL_PRESET}; --full-size --preset vit-b16-openai: CLIP ViT-B/16)",
    )
    parser.add_argument(
        "--full-size",
        action="store_true",
        help=f"a full-size encoder, random weights: {FULL_PRESET} (dino.txt ViT-L/16) unless "
        "--preset names another",
    )
    parser.add_argument("--size", type=int, default=336, help="window side S (VIP: 336)")
    parser.add_argument("--batch", type=int, default=1, help="windows per call B")
    parser.add_argument("--classes", type=int, default=21, help="K (VOC21: 21)")
    parser.add_argument(
        "--aliases-per-class", type=int, default=5, help="aliases per class, canonical included"
    )
    parser.add_argument(
        "--attention",
        default=None,
        choices=family_of("vit").vip_attentions,
        help="the VIP rows' dense path: a CLIP ViT's last block (default clear), dino.txt's "
        "head (proxy, the default, or none)",
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (meant for CUDA)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory columns")
    parser.add_argument("--no-protocol", action="store_true", help="skip the protocol table")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.size, args.batch, args.classes, args.aliases_per_class, args.repeats) < 1:
        parser.error("--size, --batch, --classes, --aliases-per-class and --repeats must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.preset = args.preset or (FULL_PRESET if args.full_size else TINY_PRESET)
    encoder = get_encoder_preset(args.preset)
    if args.full_size and (encoder.is_random or encoder.bundled):  # tiny-*, toy-*
        parser.error(f"--full-size with --preset {args.preset}: a small preset")
    try:
        args.attention = check_attention(args.attention, encoder)
    except ValueError as err:
        parser.error(str(err))
    device = torch.device(args.device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()
    images = random_windows(args, device)
    start = time.perf_counter()
    rows, queries, preset = build(args, device)
    built_s = time.perf_counter() - start

    if args.memory_child:
        for name, (peak, increase, exact) in measure_memory(rows, images, device, autocast).items():
            print(f"PEAK_MB {peak:.1f} {increase:.1f} {int(exact)} {name}")
        return

    random_note = "random weights" if not encoder.is_random else "seeded"
    where = rows["VIP"].segmenter.encoder.__class__.__name__
    print(
        f"preset {preset} ({random_note}), size {args.size}, batch {args.batch}, "
        f"K={args.classes}, A={len(queries.aliases)} ({args.aliases_per_class} per class), "
        f"VIP attention {args.attention} ({where}), dtype "
        f"{'bf16 autocast' if args.bf16 else 'fp32'}; torch {torch.__version__}; built in "
        f"{built_s:.1f} s"
    )
    print(f"device {device}: {device_name(device)}")
    print(
        f"queries: random normalised (K, D) class and (A, D) alias tensors, D="
        f"{queries.text.shape[-1]}, no text encoder (text is encoded once per vocabulary, not "
        "per image)"
    )
    if device.type == "cpu" and os.getloadavg()[0] > (os.cpu_count() or 1) / 2:
        print(
            f"note: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: other "
            "processes share the cores, timings are noisy"
        )
    row_table(args, rows, images, device, autocast)
    if not args.no_protocol:
        protocol_table(args, rows, device, autocast)


if __name__ == "__main__":
    main()
