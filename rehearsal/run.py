"""``make rehearse``: every real loading path run on the real architectures, from the rehearsal
snapshots (``rehearsal.snapshots``), offline, on CPU, as a user runs it.

    python -m rehearsal.run --home ~/.cache/dpseg-rehearsal              # full size
    python -m rehearsal.run --home /tmp/h --scale reduced                 # make test's form

Rows (each in its own process, so its peak RSS is its own):

- each generator (sd15, sd21, sd-turbo, stabilityai/sdxl-turbo): one bank item through the bank
  builder's own models (``prompt_bank.build``), at the generator's real resolution with **1
  sampler step** (a timing of the path, not of a full sample), encoded by convnext-b-laion;
- each DPSeg encoder (convnext-b-laion, convnext-l-laion, vit-b16-openai): ``cli.py fit`` of its
  paper config (``configs/dpseg_*.yaml``, its decoder and crop; CPU, float32, batch 1, 1 step)
  on a COCO-Stuff-format dataset of a few random images (converted by ``cli.py data prepare
  coco171``) with a bank of the 171 classes (1 template, pictures by ``toy-render``: the
  encoder's path, not the generator's), then ``cli.py test`` with rounds I and II on one image;
- dinotxt-l16: one VIP window (``model.factory.build_vip``, the official files' folder).

Prints a table: row, load s, item or step s, peak RSS, the shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GENERATORS = ("sd15", "sd21", "sd-turbo", "stabilityai/sdxl-turbo")
DPSEG = {
    "convnext-b-laion": "dpseg_convnext_b",
    "convnext-l-laion": "dpseg_convnext_l",
    "vit-b16-openai": "dpseg_vit_b",
}


def encoder_name(preset: str, scale: str) -> str:
    """The name the row loads: the preset (full size), or its hub repository as an open name
    (reduced: the snapshot's own config is the tiny one, which the preset's fixed
    architecture would refuse)."""
    from pretrained.presets import get_encoder_preset

    return preset if scale == "full" else f"hf-hub:{get_encoder_preset(preset).hub_id}"


def hub_env(home: Path) -> dict:
    return dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1")


# ---------------------------------------------------------------------------------------------
# rows (each runs in a process of its own: python -m rehearsal.run --row NAME)


def generator_row(name: str, home: Path, scale: str) -> dict:
    import torch

    from data.vocabulary import Vocabulary
    from prompt_bank.build import BankModels, BuildConfig

    encoder = encoder_name("convnext-b-laion", scale)
    start = time.perf_counter()
    config = BuildConfig(
        vocabulary=Vocabulary.from_entries(["cat"], name="rehearsal"),
        templates=["a photo of a {}."],
        generator=name,
        encoder=encoder,
        steps=1,
        progress=False,
    )
    models = BankModels(config, torch.device("cpu"))
    load = time.perf_counter() - start
    start = time.perf_counter()
    images, encoding = models.generate_and_encode(models.prompt_embeds(["a photo of a cat."]), [0])
    item = time.perf_counter() - start
    assert torch.isfinite(encoding.embedding).all(), "non-finite embedding"
    levels = " ".join("x".join(map(str, f.shape[1:])) for f in encoding.levels)
    return {
        "load_s": load,
        "work_s": item,
        "what": "1 bank item, 1 step",
        "shapes": f"image {'x'.join(map(str, images.shape[1:]))}; levels {levels}",
    }


def fake_coco_stuff(root: Path, images: int = 2, side: int = 800) -> None:
    """A few random images and label maps in COCO-Stuff's official layout (stuffthingmaps)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train2017", "val2017"):
        (root / "coco-stuff/images" / split).mkdir(parents=True, exist_ok=True)
        (root / "coco-stuff/annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(images):
            stem = f"{i:012d}"
            pixels = rng.integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "coco-stuff/images" / split / f"{stem}.jpg")
            blocks = rng.integers(0, 182, (6, 8)).astype(np.uint8)  # ids 0..181 as published
            label = np.kron(blocks, np.ones((side * 3 // 4 // 6 + 1, side // 8 + 1), np.uint8))
            label = label[: side * 3 // 4, :side]
            Image.fromarray(label).save(root / "coco-stuff/annotations" / split / f"{stem}.png")


def cli(args: list[str], env: dict, log: Path) -> float:
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ cli.py {' '.join(args)}\n")
        f.flush()
        result = subprocess.run(
            [sys.executable, str(ROOT / "cli.py"), *args],
            env=env,
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    if result.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(
            f"rehearsal: cli.py {' '.join(args[:3])} failed ({result.returncode}):\n{tail}"
        )
    return time.perf_counter() - start


def dpseg_row(encoder: str, home: Path, scale: str) -> dict:
    import yaml

    env = hub_env(home)
    work = Path(tempfile.mkdtemp(prefix=f"rehearse-{encoder}-"))
    log = work / "log.txt"
    fake_coco_stuff(work / "datasets", side=800 if scale == "full" else 160)
    cli(["data", "prepare", "coco171", "--root", str(work / "datasets"), "--quiet"], env, log)
    name = encoder_name(encoder, scale)
    bank = work / "coco171.zarr"
    bank_s = cli(
        [
            "bank",
            "build",
            "--vocab",
            "coco171",
            "--templates",
            "imagenet80:1",
            "--generator",
            "toy-render",
            "--encoder",
            name,
            "--out",
            str(bank),
            "--quiet",
        ],
        env,
        log,
    )
    overlay = {
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "strategy": "auto",
            "precision": "32-true",
            "max_steps": 1,
            "limit_val_batches": 0,
            "logger": False,
            "default_root_dir": str(work / "runs"),
            "enable_progress_bar": False,
        },
        "data": {
            "root": str(work / "datasets"),
            "batch_size": 1,
            "num_workers": 0,
            "train": {"dataset": "coco171:train", "bank": str(bank)},
            "val": [],
            "test": [{"dataset": "coco171", "bank": str(bank)}],
        },
    }
    if scale == "reduced":  # the tiny architectures' own input size
        overlay["model"] = {"encoder": name, "test_protocol": "resize:128"}
        overlay["data"]["crop"] = 128
    (work / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    config = [
        "--config",
        str(ROOT / "configs" / f"{DPSEG[encoder]}.yaml"),
        "--config",
        str(work / "overlay.yaml"),
    ]
    memory = work / "step_memory.json"
    fit_s = cli(
        [
            "fit",
            *config,
            "--trainer.callbacks+=rehearsal.memory.StepMemory",
            "--trainer.callbacks.init_args.out",
            str(memory),
        ],
        env,
        log,
    )
    ckpt = next((work / "runs").rglob("*.ckpt"))
    test_s = cli(
        [
            "test",
            *config,
            "--ckpt_path",
            str(ckpt),
            "--data.limit_eval",
            "1",
            "--model.inference.rounds",
            "2",
        ],
        env,
        log,
    )
    shutil.rmtree(work / "runs")  # the checkpoint (GBs at full size); the log and figures stay
    shutil.rmtree(bank)
    crop = yaml.safe_load((ROOT / "configs" / f"{DPSEG[encoder]}.yaml").read_text())["data"]["crop"]
    return {
        "load_s": bank_s,
        "work_s": fit_s,
        "test_s": test_s,
        "what": "fit 1 step + test rounds I+II on 1 image",
        "step_memory": json.loads(memory.read_text()),
        "shapes": f"crop {overlay['data'].get('crop', crop)} px, K = 171, batch 1; log {log}",
    }


def vip_row(home: Path, scale: str) -> dict:
    import torch

    from data.vocabulary import load_vocabulary
    from model.factory import build_vip
    from model.vip.segmenter import encode_aliases

    name = "dinotxt-l16" if scale == "full" else "tiny-dinotxt"
    start = time.perf_counter()
    if scale == "full":
        vip = build_vip(name, encoder_weights=home / "dinotxt-l16")
    else:
        vip = build_vip(name)
    load = time.perf_counter() - start
    vocabulary = load_vocabulary("voc20")
    queries = encode_aliases(vip.text_encoder, vocabulary, ["a photo of a {}."], vip.tokenizer)
    side = 336 if scale == "full" else 64
    with torch.no_grad():
        start = time.perf_counter()
        logits = vip.segmenter(torch.rand(1, 3, side, side), queries)
    window = time.perf_counter() - start
    assert torch.isfinite(logits).all(), "non-finite logits"
    return {
        "load_s": load,
        "work_s": window,
        "what": f"1 VIP window ({side} px)",
        "shapes": f"logits {'x'.join(map(str, logits.shape))}",
    }


def run_row(row: str, home: Path, scale: str) -> dict:
    if row in GENERATORS:
        out = generator_row(row, home, scale)
    elif row in DPSEG:
        out = dpseg_row(row, home, scale)
    elif row == "dinotxt-l16":
        out = vip_row(home, scale)
    else:
        raise SystemExit(
            f"--row {row!r}: known rows {', '.join([*GENERATORS, *DPSEG, 'dinotxt-l16'])}"
        )
    # this process and the cli.py processes it started (their peak, not their sum)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out["peak_rss_gb"] = max(own, children) / 2**20
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True, help="the rehearsal hub cache (HF_HOME)")
    parser.add_argument("--scale", choices=("full", "reduced"), default="full")
    parser.add_argument("--rows", nargs="*", help="only these rows")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # one row, in this process
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args(argv)
    home = Path(args.home).resolve()
    if args.row:
        os.environ.update(HF_HOME=str(home), HF_HUB_OFFLINE="1")
        print("ROW " + json.dumps(run_row(args.row, home, args.scale)))
        return
    rows = args.rows or [*GENERATORS, *DPSEG, "dinotxt-l16"]
    results, start = {}, time.perf_counter()
    for i, row in enumerate(rows, 1):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "rehearsal.run",
                "--home",
                str(home),
                "--scale",
                args.scale,
                "--row",
                row,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=hub_env(home),
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("ROW ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"rehearsal: row {row} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
        results[row] = json.loads(line[4:])
        r = results[row]
        elapsed = time.perf_counter() - start
        print(
            f"[{i}/{len(rows)}] {row}: load {r['load_s']:.1f} s, {r['what']} {r['work_s']:.1f} s"
            + (f", test {r['test_s']:.1f} s" if "test_s" in r else "")
            + f", peak RSS {r['peak_rss_gb']:.1f} GB (elapsed {elapsed / 60:.1f} min)",
            flush=True,
        )
    print(f"\nrehearsal ({args.scale}, {time.perf_counter() - start:.0f} s in all)")
    print("| row | load s | what | s | test s | peak RSS GB | shapes |")
    print("|---|---|---|---|---|---|---|")
    for row, r in results.items():
        test = f"{r['test_s']:.1f}" if "test_s" in r else ""
        shapes = r["shapes"].split("; log")[0]
        print(
            f"| {row} | {r['load_s']:.1f} | {r['what']} | {r['work_s']:.1f} | {test} | "
            f"{r['peak_rss_gb']:.1f} | {shapes} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
