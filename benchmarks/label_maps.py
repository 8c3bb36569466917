"""Label maps from class scores: ``argmax`` against ``max(dim).indices`` (``model/labels.py``).

    .venv/bin/python benchmarks/label_maps.py [--threads 1 2] [--repeats 9]

Both give the same ids (tested in tests/test_lightning.py); this prints, per score shape and
thread count, the median ms of each over ``--repeats`` interleaved calls and their ratio.
Shapes: a 512 x 512 prediction of 150 classes, and round II's detection on 128 px logits of a
batch (B, K, H, W) for K = 8, 150 and 847.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.labels import class_labels

SHAPES = (
    (150, 512, 512),
    (1, 8, 128, 128),
    (1, 150, 128, 128),
    (4, 150, 128, 128),
    (1, 847, 128, 128),
)


def time_both(scores: torch.Tensor, dim: int, repeats: int) -> tuple[float, float]:
    """Median seconds of argmax and of class_labels, the two interleaved call by call."""
    argmax, labels = [], []
    for _ in range(repeats + 1):  # the first round warms up
        start = time.perf_counter()
        scores.argmax(dim)
        middle = time.perf_counter()
        class_labels(scores, dim)
        argmax.append(middle - start)
        labels.append(time.perf_counter() - middle)
    return statistics.median(argmax[1:]), statistics.median(labels[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    if args.repeats < 1 or min(args.threads) < 1:
        parser.error(f"--repeats {args.repeats} / --threads {args.threads}: give 1 or more")
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'scores':>22s} {'threads':>7s} {'argmax ms':>10s} {'max ms':>8s} {'argmax/max':>10s}")
    generator = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        scores = torch.randn(*shape, generator=generator)
        dim = 0 if len(shape) == 3 else 1
        for threads in args.threads:
            torch.set_num_threads(threads)
            a, m = time_both(scores, dim, args.repeats)
            print(f"{shape!s:>22s} {threads:7d} {a * 1e3:10.2f} {m * 1e3:8.2f} {a / m:9.2f}x")


if __name__ == "__main__":
    main()
