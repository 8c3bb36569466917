"""Build time, size and forward speed of the encoder presets, and of the tiny generator.

    .venv/bin/python benchmarks/preset_build.py                  # offline presets, CPU
    .venv/bin/python benchmarks/preset_build.py --full-size      # + real architectures, random
                                                                 #   weights (no download); GPU if any

Prints one line per preset: parameters, build seconds (including the sha256 fingerprint), and
images/s of the image encoder at the preset's input size (bf16 autocast on CUDA, fp32 on CPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrained.backbone import create_clip
from pretrained.presets import list_presets
from prompt_bank.generator import create_generator


def images_per_second(fn, batch: int, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (cudnn autotune, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full-size", action="store_true", help="also the real architectures")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    print(
        f"device: {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'},"
        f" {torch.get_num_threads()} threads), torch {torch.__version__}"
    )

    for preset in list_presets("encoder"):
        if not (preset.is_random or args.full_size):
            continue
        start = time.perf_counter()
        built = create_clip(preset, random_weights=not preset.is_random)
        build_s = time.perf_counter() - start
        model = built.model.to(device)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        x = torch.randn(args.batch, 3, preset.image_size, preset.image_size, device=device)

        @torch.inference_mode()
        def forward(model=model, x=x):
            with autocast:
                model.visual.forward_intermediates(x)

        rate = images_per_second(forward, args.batch, device, args.repeats)
        print(
            f"encoder   {preset.name:18s} {params:8.1f} M params  build {build_s:6.2f} s  "
            f"{rate:8.1f} images/s at {preset.image_size} px"
        )
        del model, built

    start = time.perf_counter()
    gen = create_generator("tiny-sd")
    build_s = time.perf_counter() - start
    pipe = gen.pipeline.to(device)
    params = (
        sum(
            sum(p.numel() for p in m.parameters()) for m in (pipe.unet, pipe.vae, pipe.text_encoder)
        )
        / 1e6
    )
    prompts = [f"a photo of a class {i}" for i in range(args.batch)]

    def generate():
        with autocast:
            pipe(
                prompt=prompts,
                num_inference_steps=gen.preset.steps,
                generator=[torch.Generator(device).manual_seed(i) for i in range(args.batch)],
                output_type="pt",
            )

    rate = images_per_second(generate, args.batch, device, args.repeats)
    print(
        f"generator tiny-sd            {params:8.1f} M params  build {build_s:6.2f} s  "
        f"{rate:8.1f} images/s at {gen.preset.height} px, {gen.preset.steps} steps"
    )


if __name__ == "__main__":
    main()
