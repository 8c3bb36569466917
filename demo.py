"""`make demo`: the whole DPSeg path in the toy world, offline, as a user runs it.

    toy world data -> toy prompt bank (renderer + pretrained toy ConvNeXt) -> fit on the seen
    classes -> test on seen and unseen classes (1 and 2 rounds) -> segment a few test
    images -> explain an unseen class -> report

Every step is the real command line (``cli.py ...``) in its own process; the report says where
each output is, the mIoU of each round and the time of each step. ``--quick`` runs a few steps
on a few images (the test suite uses it so this script and the README cannot drift).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent
CONFIG = ROOT / "configs" / "toy_world.yaml"
EXPLAINED = "red triangle"  # an unseen class: never in training
DEMO_SCHEDULE = {
    "trainer": {"max_steps": 7000, "val_check_interval": 7000},
    "data": {"batch_size": 4},
}
"""(ours) The demo's schedule over configs/toy_world.yaml's (batch 8, 2800 steps, which
``make claims`` trains 8000 steps): 7000 steps of 4 images, validated once at the end. Smaller
batches learn more per image seen, and batch 4 more per second than batch 2: in a demo of about
10 minutes on 2 cores (the machine of 2026-12-08), batch 4 x 7000 steps scored 62.5 / 63.3 /
59.0 (all / seen / unseen, test split; 62.2 / 62.9 / 59.2 validated half-way too) and batch 2
x 10000 steps 58.4 / 59.2 / 55.1 (docs/toy_world.md, "The demo's schedule")."""


def stale_bank(bank: Path) -> None:
    """The demo's own bank, left by an older dpseg in another format, is built again (a
    bank of the user's is never deleted: this is demo_out's)."""
    from prompt_bank.format import FORMAT_VERSION

    root = bank / "zarr.json"
    if not root.is_file():
        return
    try:
        version = json.loads(root.read_text())["attributes"]["format_version"]
    except (ValueError, KeyError, TypeError):
        version = None
    if version != FORMAT_VERSION:
        print(f"demo: {bank} is a bank of format {version!r} (an older dpseg): building it again")
        shutil.rmtree(bank)


def run(step: str, args: list[str], times: dict, quiet: bool = False) -> str:
    """Run ``cli.py ARGS``; stop the demo with the command's output if it fails."""
    print(f"\n== {step}: cli.py {' '.join(args)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args], capture_output=quiet, text=True, cwd=ROOT
    )
    times[step] = time.perf_counter() - start
    if result.returncode != 0:
        if quiet:
            print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
        sys.exit(f"demo: step {step!r} failed (exit {result.returncode}); see above")
    return result.stdout or ""


def overlay_config(out: Path, bank: Path, quick: bool) -> Path:
    """The demo's settings over configs/toy_world.yaml: its folders (and --quick sizes)."""
    logger = {"save_dir": str(out / "runs"), "name": "dpseg", "version": "demo"}
    config = {
        "trainer": {
            **DEMO_SCHEDULE["trainer"],
            "logger": [
                {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": logger},
                {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": logger},
            ],
        },
        "data": {
            **DEMO_SCHEDULE["data"],
            "root": str(out / "datasets"),
            "train": {"dataset": "toy:train", "bank": str(bank)},
            "val": [{"dataset": "toy:val", "bank": str(bank)}],
            "test": [{"dataset": "toy", "bank": str(bank)}],
        },
    }
    if quick:
        config["trainer"].update(max_steps=6, val_check_interval=6, log_every_n_steps=2)
        config["data"].update(limit_eval=4, num_workers=0, batch_size=4)
    path = out / "demo_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def contact_sheet(paths: list[Path], out: Path) -> Path:
    """The overlays side by side (the README's picture)."""
    from PIL import Image

    tiles = [Image.open(p).convert("RGB") for p in paths]
    sheet = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)), "white")
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width
    sheet.save(out, optimize=True)
    return out


def image_with_class(root: Path, name: str) -> Path | None:
    """The toy test image where the class ``name`` covers most pixels (None if in none)."""
    import numpy as np
    from PIL import Image

    from data.vocabulary import load_vocabulary

    index = load_vocabulary("toy").names.index(name)
    labels = sorted((root / "toy" / "annotations_detectron2" / "test").glob("*.png"))[:300]
    areas = {label.stem: int((np.asarray(Image.open(label)) == index).sum()) for label in labels}
    best = max(areas, key=areas.get, default=None)
    return root / "toy" / "images" / "test" / f"{best}.jpg" if best and areas[best] else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--quick", action="store_true", help="a few steps on a few images")
    args = parser.parse_args(argv)
    from common.errors import SettingError, check_output_folder

    try:
        check_output_folder(args.out, "--out")  # a file in the way: one line, before any work
    except SettingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    quick = args.quick
    bank = out / "banks" / "toy.zarr"

    sizes = ["--train", "24", "--val", "8", "--test", "8"] if quick else []
    run(
        "data",
        [
            "data",
            "toy",
            "--root",
            str(out / "datasets"),
            *sizes,
            "--preview",
            str(out / "toy_preview.png"),
            "--quiet",
        ],
        times,
    )
    templates = "imagenet80:4" if quick else "imagenet80"
    stale_bank(bank)
    run(
        "bank",
        [
            "bank",
            "build",
            "--vocab",
            "toy",
            "--preset",
            "toy",
            "--templates",
            templates,
            "--images-per-prompt",
            "1",
            "--keep-images",
            "--batch-size",
            "32",
            "--out",
            str(bank),
            "--quiet",
        ],
        times,
    )
    run("gallery", ["bank", "gallery", str(bank), "--out", str(out / "bank_gallery.png")], times)
    info = json.loads(
        run("bank info", ["bank", "info", str(bank), "--prompts", "--json"], times, quiet=True)
    )["prompts"]

    config = overlay_config(out, bank, quick)
    run_dir = out / "runs" / "dpseg" / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun trains afresh in the same folder
    common = ["--config", str(CONFIG), "--config", str(config)]
    run("fit", ["fit", *common], times)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        sys.exit(f"demo: fit wrote no {ckpt}")
    scores = {}
    for rounds in (1, 2):
        results = out / "results" / f"round{rounds}"
        run(
            f"test, round {'I' * rounds}",
            [
                "test",
                *common,
                "--ckpt_path",
                str(ckpt),
                "--model.inference.rounds",
                str(rounds),
                "--model.results_dir",
                str(results),
                "--trainer.logger",
                "false",
            ],
            times,
            quiet=True,
        )
        scores[rounds] = json.loads((results / "toy.json").read_text())

    model = out / "model"
    shutil.rmtree(model, ignore_errors=True)
    run(
        "model export",
        [
            "model",
            "export",
            str(ckpt),
            "--out",
            str(model),
            "--metrics",
            *(str(out / "results" / f"round{r}" / "toy.run.json") for r in (1, 2)),
        ],
        times,
        quiet=True,
    )

    test = sorted((out / "datasets" / "toy" / "images" / "test").glob("*.jpg"))
    shown = image_with_class(out / "datasets", EXPLAINED) or test[0]
    images = [shown, *[p for p in test if p != shown][:3]]
    run(
        "segment",
        [
            "segment",
            "--ckpt",
            str(ckpt),
            "--images",
            *map(str, images),
            "--vocab",
            "toy",
            "--out",
            str(out / "predict"),
            "--quiet",
        ],
        times,
    )
    run(
        "explain",
        [
            "explain",
            "--ckpt",
            str(ckpt),
            "--image",
            str(shown),
            "--class",
            EXPLAINED,
            "--out",
            str(out / "explain.png"),
        ],
        times,
    )

    sheet = contact_sheet(
        sorted((out / "predict").glob("*_overlay.png")), out / "predict_sheet.png"
    )

    steps = 6 if quick else DEMO_SCHEDULE["trainer"]["max_steps"]
    batch = 4 if quick else DEMO_SCHEDULE["data"]["batch_size"]

    def rel(path: Path) -> str:
        return os.path.relpath(path) if str(path).startswith(os.getcwd()) else str(path)

    print("\n" + "=" * 72)
    print(
        f"dpseg demo: DPSeg in the toy world ({steps} training steps of {batch} images on the 24 "
        "seen classes, 2 CPU threads); mIoU on the test split (toy)"
    )
    print(f"  bank: visual -> text prompt retrieval {info['retrieved']}/{info['classes']} classes")
    labels = {1: "round I  (bank prompts):", 2: "round II (prompts from the image):"}
    print(
        f"  {'mIoU (%)':35s} {'all':>5s}  {'seen':>5s}  {'unseen':>6s}  {'hIoU':>5s}   (chance 3.2)"
    )
    for rounds, label in labels.items():
        m = scores[rounds]
        print(
            f"  {label:35s} {100 * m['mIoU']:5.1f}  {100 * m['mIoU_seen']:5.1f}  "
            f"{100 * m['mIoU_unseen']:6.1f}  {100 * m['hIoU']:5.1f}"
        )
    print("outputs:")
    for what, path in [
        ("dataset + preview", out / "toy_preview.png"),
        ("prompt bank", bank),
        ("bank gallery", out / "bank_gallery.png"),
        ("checkpoint", ckpt),
        ("model to share (make app)", model),
        ("TensorBoard / CSV logs", run_dir),
        ("test results, round I", out / "results" / "round1" / "summary.md"),
        ("per-class IoU chart", out / "results" / "round1" / "toy_per_class_iou.png"),
        ("test results, round II", out / "results" / "round2" / "summary.md"),
        ("predictions (overlays)", out / "predict"),
        ("the overlays on one sheet", sheet),
        (f"cost maps of {EXPLAINED!r}", out / "explain.png"),
    ]:
        print(f"  {what:27s} {rel(path)}{'' if path.exists() else '  (MISSING)'}")
    print("time per step:")
    for step, seconds in times.items():
        print(f"  {step:27s} {seconds:6.1f} s")
    print(f"  {'total':27s} {sum(times.values()):6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
