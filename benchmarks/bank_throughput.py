"""Prompt-bank build throughput: the batched builder against one item at a time (same items).

    .venv/bin/python benchmarks/bank_throughput.py                 # tiny preset, CPU
    .venv/bin/python benchmarks/bank_throughput.py --full-size     # sd-turbo + convnext-b with
                                                                   #   random weights, GPU, fp16/bf16

Both runs build the same items (classes x templates x images) into fresh banks with the real
builder (generation, encoding, Zarr writes); only the batch size differs. Prints items/s of each,
the speed-up, and where the time goes (generation, encoding, storage).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.templates import load_templates
from data.vocabulary import load_vocabulary
from prompt_bank.build import BuildConfig, build_bank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--full-size", action="store_true", help="real architectures, random weights"
    )
    parser.add_argument(
        "--generator", default=None, help="default: tiny-sd, or sd-turbo with --full-size"
    )
    parser.add_argument("--encoder", default=None, help="default: tiny-convnext / convnext-b-laion")
    parser.add_argument("--templates", default="imagenet80:8")
    parser.add_argument("--vocab", default="synthetic")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    generator = args.generator or ("sd-turbo" if args.full_size else "tiny-sd")
    encoder = args.encoder or ("convnext-b-laion" if args.full_size else "tiny-convnext")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vocab, templates = load_vocabulary(args.vocab), load_templates(args.templates)
    items = len(vocab) * len(templates)
    print(
        f"{generator} + {encoder} on {device} ({torch.cuda.get_device_name() if device == 'cuda' else f'{torch.get_num_threads()} threads'}), "
        f"{items} items ({len(vocab)} classes x {len(templates)} templates x 1 image)"
    )
    rates = {}
    for batch_size in (1, args.batch_size):
        with tempfile.TemporaryDirectory() as tmp:
            config = BuildConfig(
                vocabulary=vocab,
                templates=templates,
                generator=generator,
                encoder=encoder,
                random_weights=args.full_size,
                batch_size=batch_size,
                classes_per_shard=len(vocab),
                flush_seconds=3600,
                progress=False,
            )
            build_bank(config, Path(tmp) / "warmup.zarr")  # models cached by the OS, kernels warm
            summary = build_bank(config, Path(tmp) / "bank.zarr")
        rates[batch_size] = summary.items_done / summary.seconds
        print(
            f"batch {batch_size:3d}: {rates[batch_size]:8.2f} items/s "
            f"({summary.seconds:.2f} s for {summary.items_done} items); time: {summary.phases}"
        )
    print(f"batched / one at a time: {rates[args.batch_size] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
