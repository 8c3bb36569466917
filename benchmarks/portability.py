"""What is bit-identical across CPU kernels and thread counts, and how close the rest is.

    .venv/bin/python benchmarks/portability.py [--vocab synthetic] [--templates imagenet80:4]

Builds the same tiny bank in fresh processes under several ``ATEN_CPU_CAPABILITY`` settings
(torch's vector kernels: AVX-512 where the CPU has it, AVX2, scalar ``default``) and thread
counts, then prints, per setting, whether the offline presets' weights are the recorded bits
and the largest absolute difference of every bank array from the first build, relative to
the array's largest magnitude (a repeat of the
first setting shows what is bit-identical on one machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [  # (ATEN_CPU_CAPABILITY, threads); None = torch's own choice for this CPU
    (None, 2),
    (None, 2),
    ("avx2", 2),
    ("default", 2),
    (None, 1),
]
ARRAYS = ("text/embeddings", "visual/embeddings", "visual/level_1", "visual/level_4")


def build(out: Path, capability: str | None, threads: int, args) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    env["OMP_NUM_THREADS"] = str(threads)
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    command = [sys.executable, str(ROOT / "cli.py"), "bank", "build", "--vocab", args.vocab]
    command += ["--preset", "tiny", "--templates", args.templates, "--out", str(out)]
    command += ["--cpu-threads", str(threads), "--quiet"]
    subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    return subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", default="synthetic")
    parser.add_argument("--templates", default="imagenet80:4")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from pretrained.fingerprint import recorded_fingerprints

    recorded = recorded_fingerprints()["fingerprints"]
    rows, first = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for i, (capability, threads) in enumerate(SETTINGS):
            out = Path(tmp) / f"bank{i}.zarr"
            kernel = build(out, capability, threads, args)
            group = zarr.open_group(str(out), mode="r")
            attrs = dict(group.attrs)
            weights_ok = (
                attrs["encoder"]["fingerprint"] == recorded[attrs["encoder"]["preset"]]
                and attrs["generator"]["fingerprint"] == recorded[attrs["generator"]["preset"]]
            )
            data = {name: np.asarray(group[name][...]) for name in ARRAYS}
            if first is None:
                first = data
            diffs = {
                name: float(np.abs(data[name].astype(np.float64) - first[name]).max())
                / float(np.abs(first[name].astype(np.float64)).max())
                for name in ARRAYS
            }
            rows.append((capability or "unset", kernel, threads, weights_ok, diffs))
    print("levels are stored in float16: one ulp is 4.9e-4 to 9.8e-4 of a value")
    print(
        f"tiny bank ({args.vocab}, {args.templates}), max |difference| from the first build / max |value|"
    )
    header = "| ATEN_CPU_CAPABILITY | kernel | threads | weights as recorded | "
    print(header + " | ".join(ARRAYS) + " |")
    print("|" + "---|" * (4 + len(ARRAYS)))
    for capability, kernel, threads, weights_ok, diffs in rows:
        cells = " | ".join("0 (bit-identical)" if d == 0 else f"{d:.1e}" for d in diffs.values())
        print(
            f"| {capability} | {kernel} | {threads} | {'yes' if weights_ok else 'NO'} | {cells} |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
