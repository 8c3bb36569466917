"""The papers' claims measured in the toy world (``make claims``).

    .venv/bin/python benchmarks/claims.py [--seeds 0 1 2] [--steps 300] [--out claims_out]
                                          [--jobs 2] [--threads 1] [--rows TEXT ...]

Every row is one existing config switch, run as a user runs it (``cli.py fit`` / ``cli.py test``
in fresh processes), on the toy world (docs/toy_world.md): DPSeg trained on the 24 seen classes
and tested on all 30 + background of ``toy`` (val), reporting mIoU over all, seen and unseen
classes and their harmonic mean; VIP training-free on the same images.

DPSeg rows (configs/toy_world.yaml + one file of configs/ablations/), mean and spread over seeds:
    dual prompt (avg), F_v^{2,3,4}, round I     the full model
    text prompt / visual prompt                 prompt_text.yaml / prompt_visual.yaml
    F_v none / F_v^2                            fv_none.yaml / fv_2.yaml
    text prompt with F_v kept (ours)            prompt_text_keep_fv.yaml
    cost volumes averaged / concatenated        prompt_cost_avg.yaml / prompt_cost_concat.yaml
    round II, masked / box crops / pooled /     rounds_2.yaml (the full model's checkpoints)
      pooled-own
VIP rows (configs/vip_toy.yaml on toy-vit, configs/vip_toy_dinotxt.yaml on toy-dinotxt;
deterministic, one run each):
    plain dense encoder                         --model.attention none, canonical names only
    VIP: aliases + saliency-aware aggregation   the config as it is
    VIP + dual prompts                          --dual-prompts (a bank of the same encoder)

It also prints what the claims rest on: the toy presets' zero-shot accuracy (recorded in their
weights files) and each bank's prompt retrieval (``bank info --prompts``). Writes
``OUT/claims.md``, ``OUT/claims.json`` and ``OUT/claims.png``; every run's outputs stay in OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = ROOT / "configs" / "ablations"

DPSEG_ROWS = [  # (row, the paper's claim it tests, ablation file or None)
    ("DPSeg: dual prompt (avg), F_v^{2,3,4}", "the full model", None),
    ("DPSeg: text prompt only", "dual > text", "prompt_text.yaml"),
    ("DPSeg: visual prompt only", "dual > visual", "prompt_visual.yaml"),
    ("DPSeg: no visual cost volume", "F_v^{2,3,4} > none", "fv_none.yaml"),
    ("DPSeg: F_v^2 only", "F_v^{2,3,4} > F_v^2 > none", "fv_2.yaml"),
    ("DPSeg: text prompt, F_v kept (ours)", "what F_v adds to text", "prompt_text_keep_fv.yaml"),
    ("DPSeg: cost volumes averaged", "avg(T,V) > cost-level avg", "prompt_cost_avg.yaml"),
    ("DPSeg: cost volumes concatenated", "avg(T,V) > cost-level concat", "prompt_cost_concat.yaml"),
]
ROUND_II = [  # (row, claim, extra arguments) over the full model's checkpoints
    ("DPSeg: round II, masked crops (config)", "round II > round I", []),
    ("DPSeg: round II, box crops (paper)", "round II > round I",
     ["--model.inference.crop_policy", "box"]),
    ("DPSeg: round II, pooled (ours)", "pooled as good as crops",
     ["--model.inference.crop_policy", "pooled"]),
    ("DPSeg: round II, pooled-own (ours)", "pooled-own as good as crops",
     ["--model.inference.crop_policy", "pooled-own"]),
]  # fmt: skip
VIP_ROWS = [  # (row, claim, encoder preset, extra arguments): configs/vip_toy[_dinotxt].yaml
    ("plain dense CLIP (canonical names)", "the baseline", "toy-vit",
     ["--model.attention", "none", "--model.vocabularies", "{toy: toy}"]),
    ("VIP: aliases + saliency-aware aggregation", "VIP > plain", "toy-vit", []),
    ("VIP + dual prompts (ours)", "dual prompts help VIP", "toy-vit", ["--dual-prompts", "BANK"]),
    ("dino.txt: plain head (canonical names)", "the baseline", "toy-dinotxt",
     ["--model.attention", "none", "--model.vocabularies", "{toy: toy}"]),
    ("dino.txt: VIP (proxy head + aliases)", "VIP > plain", "toy-dinotxt", []),
    ("dino.txt: VIP + dual prompts (ours)", "dual prompts help VIP", "toy-dinotxt",
     ["--dual-prompts", "BANK"]),
]  # fmt: skip
METRICS = ("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU")
NO_LOGS = ["--trainer.logger", "false"]  # test results go to --model.results_dir


class Runner:
    """Runs ``cli.py`` commands, times them and prints progress with an ETA (thread-safe: runs
    of different rows go side by side, each with its own CPU threads)."""

    def __init__(self, total: int, threads: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.lock = threading.Lock()

    def __call__(self, what: str, args: list[str]) -> str:
        started = time.perf_counter()
        result = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args],
                                capture_output=True, text=True, cwd=ROOT, env=self.env)  # fmt: skip
        if result.returncode != 0:
            print(result.stdout[-2000:], result.stderr[-3000:], sep="\n")
            raise SystemExit(f"claims: {what} failed (exit {result.returncode}): "
                             f"cli.py {' '.join(args)}")  # fmt: skip
        with self.lock:
            self.done += 1
            elapsed = time.perf_counter() - self.start
            eta = elapsed / self.done * (self.total - self.done)
            print(f"[{self.done}/{self.total}] {what}: {time.perf_counter() - started:.0f} s "
                  f"(elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min)", flush=True)  # fmt: skip
        return result.stdout


def overlay(out: Path, data_root: Path, bank: Path, steps: int) -> Path:
    """The claims' settings over configs/toy_world.yaml: folders, steps, no validation."""
    pair = {"dataset": "toy", "bank": str(bank)}
    config = {
        "trainer": {
            "max_steps": steps,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
        },
        "data": {
            "root": str(data_root),
            "train": {"dataset": "toy:train", "bank": str(bank)},
            "val": [pair],
            "test": [pair],
        },
    }
    path = out / "claims_overlay.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_logger(run_dir: Path) -> Path:
    """A config giving one run its own CSV log folder (its checkpoints go there too)."""
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger",
              "init_args": {"save_dir": str(run_dir), "name": "dpseg", "version": "run"}}  # fmt: skip
    path = run_dir.with_suffix(".yaml")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"trainer": {"logger": [logger]}}, sort_keys=False))
    return path


def scores(results: Path) -> dict[str, float]:
    metrics = json.loads((results / "toy.json").read_text())
    return {k: 100 * float(metrics[k]) for k in METRICS}


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        k: {
            "mean": statistics.fmean(r[k] for r in runs),
            "std": statistics.stdev([r[k] for r in runs]) if len(runs) > 1 else 0.0,
        }
        for k in METRICS
    }


def chart(rows: list[dict], out: Path) -> Path:
    """Bars of mIoU on seen and unseen classes per row, with the spread over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["row"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
    y = range(len(rows))
    for offset, key, colour in ((-0.2, "mIoU_seen", "#4c72b0"), (0.2, "mIoU_unseen", "#dd8452")):
        ax.barh([i + offset for i in y], [r["scores"][key]["mean"] for r in rows], height=0.38,
                xerr=[r["scores"][key]["std"] for r in rows], color=colour,
                label=key.replace("mIoU_", "mIoU, ") + " classes")  # fmt: skip
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel("mIoU (%) on the toy world's val images (bars: mean; lines: spread over seeds)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300, help="training steps per DPSeg run")
    parser.add_argument("--out", default="claims_out")
    parser.add_argument("--jobs", type=int, default=2, help="DPSeg runs side by side (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run (default 1)")
    parser.add_argument(
        "--rows",
        nargs="+",
        metavar="TEXT",
        help="only the rows whose name contains one of these (case-insensitive); the full "
        "model is trained whenever a round II row is chosen",
    )
    args = parser.parse_args()
    if args.jobs < 1 or args.threads < 1:
        parser.error(f"--jobs {args.jobs} / --threads {args.threads}: give 1 or more")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_root, bank = out / "datasets", out / "banks" / "toy.zarr"
    vip_banks = {
        p: out / "banks" / f"{p.replace('-', '_')}.zarr" for p in ("toy-vit", "toy-dinotxt")
    }
    seeds = args.seeds

    def wanted(name: str) -> bool:
        return not args.rows or any(t.lower() in name.lower() for t in args.rows)

    round_ii = [r for r in ROUND_II if wanted(r[0])]
    dpseg_rows = [r for r in DPSEG_ROWS if wanted(r[0]) or (r[2] is None and round_ii)]
    vip_rows = [r for r in VIP_ROWS if wanted(r[0])]
    if not (dpseg_rows or vip_rows):
        parser.error(f"--rows {' '.join(args.rows)}: no row's name contains any of them")
    total = 4 + len(dpseg_rows) * len(seeds) * 2 + len(round_ii) * len(seeds) + len(vip_rows)
    run = Runner(total, args.threads)
    start = time.perf_counter()

    run("data", ["data", "toy", "--root", str(data_root), "--quiet"])
    agreement = {}
    for path, preset in ((bank, "toy"), *((b, p) for p, b in vip_banks.items())):
        run(
            f"bank {preset}",
            [
                "bank",
                "build",
                "--vocab",
                "toy",
                "--preset",
                preset,
                "--templates",
                "imagenet80",
                "--batch-size",
                "32",
                "--out",
                str(path),
                "--quiet",
            ],
        )
        info = subprocess.run(
            [
                sys.executable,
                str(ROOT / "cli.py"),
                "bank",
                "info",
                str(path),
                "--prompts",
                "--json",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        agreement[preset] = json.loads(info.stdout)["prompts"]  # fmt: skip
    from pretrained.bundled_weights import bundled_path, read_metadata

    zero_shot = {
        name: {k: float(read_metadata(bundled_path(f"{name}.safetensors"))[k])
               for k in ("zero_shot_plain", "zero_shot_any_template", "chance")}
        for name in ("toy-convnext", "toy-vit", "toy-dinotxt")
    }  # fmt: skip

    base = overlay(out, data_root, bank, args.steps)
    common = ["--config", str(ROOT / "configs" / "toy_world.yaml"), "--config", str(base)]

    def dpseg_run(ablation: str | None, seed: int) -> tuple[dict, list[dict]]:
        """Fit one row with one seed, test it (and, for the full model, its round II rows)."""
        extra = ["--config", str(ABLATIONS / ablation)] if ablation else []
        tag = f"{(ablation or 'full').removesuffix('.yaml')}_seed{seed}"
        ckpt_dir = out / "runs" / tag
        run(f"fit {tag}", ["fit", *common, *extra, "--config", str(run_logger(ckpt_dir)),
                           "--seed_everything", str(seed)])  # fmt: skip
        ckpt = next(ckpt_dir.rglob("last.ckpt"))
        results = out / "results" / tag
        run(f"test {tag}", ["test", *common, *extra, "--ckpt_path", str(ckpt),
                            "--model.results_dir", str(results), *NO_LOGS])  # fmt: skip
        second = []
        for n, (row2, _, extra2) in enumerate(round_ii if ablation is None else []):
            results2 = out / "results" / f"round2_{n}_seed{seed}"
            run(f"test {row2}, seed {seed}", ["test", *common, "--config",
                str(ABLATIONS / "rounds_2.yaml"), *extra2, "--ckpt_path", str(ckpt),
                "--model.results_dir", str(results2), *NO_LOGS])  # fmt: skip
            second.append(scores(results2))
        return scores(results), second

    jobs = [(ablation, seed) for _, _, ablation in dpseg_rows for seed in seeds]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = dict(zip(jobs, pool.map(lambda job: dpseg_run(*job), jobs)))
    rows = []
    for row, claim, ablation in dpseg_rows:
        runs = [done[ablation, seed][0] for seed in seeds]
        rows.append({"row": row, "claim": claim, "runs": runs, "scores": summarise(runs)})
        for n, (row2, claim2, _) in enumerate(round_ii if ablation is None else []):
            runs2 = [done[ablation, seed][1][n] for seed in seeds]
            rows.append({"row": row2, "claim": claim2, "runs": runs2, "scores": summarise(runs2)})
    configs = {"toy-vit": "vip_toy.yaml", "toy-dinotxt": "vip_toy_dinotxt.yaml"}
    for row, claim, preset, extra in vip_rows:
        extra = [str(vip_banks[preset]) if a == "BANK" else a for a in extra]
        vip_config = ["--config", str(ROOT / "configs" / configs[preset]), "--data.root",
                      str(data_root)]  # fmt: skip
        results = out / "results" / f"vip_{len(rows)}"
        run(f"test {row}", ["test", *vip_config, *extra, "--model.results_dir", str(results),
                            *NO_LOGS])  # fmt: skip
        one = scores(results)
        rows.append({"row": row, "claim": claim, "runs": [one], "scores": summarise([one])})

    minutes = (time.perf_counter() - start) / 60
    lines = [
        f"Toy world, {len(seeds)} seeds ({', '.join(map(str, seeds))}), {args.steps} training "
        f"steps per DPSeg run, {args.jobs} runs side by side with {args.threads} CPU thread(s) "
        f"each, {minutes:.1f} min (`.venv/bin/python benchmarks/claims.py`)",
        "",
        "| row | claim tested | mIoU | seen | unseen | hIoU |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["scores"]
        cells = " | ".join(f"{s[k]['mean']:.1f} ± {s[k]['std']:.1f}" if len(r["runs"]) > 1
                           else f"{s[k]['mean']:.1f}" for k in METRICS)  # fmt: skip
        lines.append(f"| {r['row']} | {r['claim']} | {cells} |")
    lines += ["", "What the rows rest on:"]
    for name, z in zero_shot.items():
        lines.append(
            f"- {name}: zero-shot accuracy {100 * z['zero_shot_plain']:.1f}% ('a photo of a "
            f"{{}}.'), {100 * z['zero_shot_any_template']:.1f}% (any template), chance "
            f"{100 * z['chance']:.1f}%"
        )
    for preset, a in agreement.items():
        lines.append(
            f"- bank {preset}: visual -> text prompt retrieval {a['retrieved']}/{a['classes']} "
            f"classes; mean cosine between classes' visual prompts {a['visual_between_classes']:.3f}"
        )
    table = "\n".join(lines) + "\n"
    (out / "claims.md").write_text(table)
    record = {"seeds": seeds, "steps": args.steps, "jobs": args.jobs, "threads": args.threads,
              "minutes": minutes, "rows": rows,
              "zero_shot": zero_shot, "bank_agreement": agreement}  # fmt: skip
    (out / "claims.json").write_text(json.dumps(record, indent=2) + "\n")
    picture = chart(rows, out / "claims.png")
    print("\n" + table + f"\nchart: {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
