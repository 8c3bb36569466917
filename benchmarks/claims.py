"""The papers' claims decided in the toy world (``make claims``), with paired seeds.

    .venv/bin/python benchmarks/claims.py [--seeds 0 1 2 3 4] [--steps 8000] [--out claims_out]
                                          [--jobs 2] [--threads 1] [--rows TEXT ...]
                                          [--checkpoint-every 1000] [--ledger PATH] [--report]

Every row is one existing config switch, run as a user runs it (``cli.py fit`` / ``cli.py test``
in fresh processes), on the toy world (docs/toy_world.md): DPSeg trained on the 24 seen classes
of ``toy:train`` (``--steps``, default :data:`CLAIMS_STEPS`, 8000) and tested on all 30 +
background of ``toy`` (the test split; ``toy:val`` is the val split settings are chosen on),
reporting mIoU over all, seen and unseen classes and their harmonic mean hIoU; VIP
training-free on the same test images.

DPSeg rows (configs/toy_world.yaml + one file of configs/ablations/), one run per seed:
    dual prompt (avg), F_v^{2,3,4}, round I     the full model
    text prompt / visual prompt                 prompt_text.yaml / prompt_visual.yaml
    F_v none / F_v^2                            fv_none.yaml / fv_2.yaml
    text prompt with F_v kept (ours)            prompt_text_keep_fv.yaml
    cost volumes averaged / concatenated        prompt_cost_avg.yaml / prompt_cost_concat.yaml
    decoder attention global (ours, issue 29)   attention_global.yaml (the toy config has none)
    round II: masked / box crops / box crops    rounds_2.yaml on the full model's checkpoint of
      with background not refined / pooled /    each seed (--model.inference.crop_policy,
      pooled-own / true regions (oracle)        refine_background, regions)
VIP rows (configs/vip_toy.yaml on toy-vit, configs/vip_toy_dinotxt.yaml on toy-dinotxt;
deterministic, one run each):
    plain dense encoder                         --model.attention none, canonical names only
    VIP: aliases + saliency-aware aggregation   the config as it is
    VIP + dual prompts                          --model.dual_prompts (a bank of the same encoder)

**Paired seeds.** Seed s of every DPSeg row starts from the same initial weights wherever the
networks agree (``model.seeding``) and sees the same data order, so rows differ in the switch
alone, and the claims are decided on per-seed differences: for a comparison a - b, d_s = a_s -
b_s over the seeds, and its 95% interval mean(d) +- t_{0.975, n-1} sd(d) / sqrt(n). Round II
rows are compared with round I of the same seed's full model. A claim (every comparison is
written so that the paper claims a - b > 0) **holds** when the interval of the mIoU difference
lies above 0, **fails** when it lies below 0, and is **undecided** when it contains 0 (always
with one seed). The comparisons (``COMPARISONS``):

    dual > text                     full - text only
    dual > visual                   full - visual only
    averaging > cost-level fusion   full - cost volumes averaged; full - cost volumes concatenated
    each F_v level helps            F_v^{2,3,4} - F_v^2 only; F_v^2 only - no F_v
    what F_v adds to text (ours)    text with F_v kept - text only (the paper's text row
                                    removes both V and F_v)
    removing V alone (ours)         full - text with F_v kept
    the decoder of issue 29 keeps   full (no attention, coarse head, rejection) - the decoder
      accuracy (ours)               before (global attention, no head, every class decoded)
    round II helps                  each round II row - round I

It also prints what the claims rest on: the toy presets' zero-shot accuracy (recorded in their
weights files) and each bank's prompt retrieval (``bank info --prompts``). Writes, in OUT:

- ``claims.md``: the rows (mean +- std over seeds per metric, and each DPSeg row's paired
  difference from the full model), then the verdicts (claim, comparison, mean difference, 95%
  interval and verdict in mIoU, the same for unseen classes, seeds);
- ``claims.json``: every per-seed score, the differences, intervals and verdicts;
- ``claims.png``: a forest plot, one line per comparison (the mean mIoU difference, its 95%
  interval, a line at 0, coloured by verdict); ``claims_rows.png``: the rows' bars.

Every run's outputs stay in OUT, and a run given the same OUT again keeps them: fits marked done
and tests with results are not redone, so an interrupted claims run goes on where it stopped.
A fit saves ``last.ckpt`` every ``--checkpoint-every`` steps and a stopped fit resumes from it
(``runs/TAG/resumed`` records that it did: Lightning then starts that epoch's data order again).
Jobs go seed by seed (every row of seed 0 first), so that a partial run has paired seeds.

**The ledger** (``--ledger``, default benchmarks/claims_ledger.jsonl, committed): every finished
test appends one JSON line (the row's tag, a fingerprint of its steps, config files' contents and
extra arguments, its scores, the commit it ran at and the date). A run on a fresh machine takes a
test found there with the same fingerprint as done, and skips a fit whose tests are all done, so
the hours of a claims run add up across machines. ``--report`` runs nothing and writes the report
from the ledger alone, over the seeds whose every chosen row it holds. A change to the code that
changes what a row scores (the configs are fingerprinted, the code is not) must start a new
ledger (``git rm`` the old one); the report names the commits its runs were made at.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = ROOT / "configs" / "ablations"
CONFIG = ROOT / "configs" / "toy_world.yaml"

CLAIMS_STEPS = 8000
"""Training steps per DPSeg run (ours): the claims are decided on models trained to convergence.
configs/toy_world.yaml's 2800 steps fitted `make demo`'s 10 minutes before the demo had a
schedule of its own; on toy:val, seed 0, the same config scored 0.472 / 0.629 / 0.679 / 0.701
mIoU at steps 2000 / 4000 / 6000 / 8000 of an 8000-step run (0.514 at the end of a 2800-step
one), and 70.7 / 71.8 / 65.9 (all / seen / unseen) on the test split (docs/toy_world.md)."""

DPSEG_ROWS = [  # (key, row, the paper's claim it tests, ablation file or None)
    ("full", "DPSeg: dual prompt (avg), F_v^{2,3,4}", "the full model", None),
    ("text", "DPSeg: text prompt only", "dual > text", "prompt_text.yaml"),
    ("visual", "DPSeg: visual prompt only", "dual > visual", "prompt_visual.yaml"),
    ("fv_none", "DPSeg: no visual cost volume", "F_v^{2,3,4} > none", "fv_none.yaml"),
    ("fv_2", "DPSeg: F_v^2 only", "F_v^{2,3,4} > F_v^2 > none", "fv_2.yaml"),
    (
        "text_keep_fv",
        "DPSeg: text prompt, F_v kept (ours)",
        "what F_v adds to text",
        "prompt_text_keep_fv.yaml",
    ),
    (
        "cost_avg",
        "DPSeg: cost volumes averaged",
        "avg(T,V) > cost-level avg",
        "prompt_cost_avg.yaml",
    ),
    (
        "cost_concat",
        "DPSeg: cost volumes concatenated",
        "avg(T,V) > cost-level concat",
        "prompt_cost_concat.yaml",
    ),
    (
        "attention_global",
        "DPSeg: decoder attention global (the decoder before issue 29)",
        "the new decoder keeps accuracy (ours)",
        "attention_global.yaml",
    ),
]
ROUND_II = [  # (key, row, claim, extra arguments) over the full model's checkpoints
    ("r2_masked", "DPSeg: round II, masked crops (config)", "round II > round I", []),
    (
        "r2_box",
        "DPSeg: round II, box crops (paper)",
        "round II > round I",
        ["--model.inference.crop_policy", "box"],
    ),
    (
        "r2_box_no_bg",
        "DPSeg: round II, box crops, background not refined (ours)",
        "round II > round I",
        ["--model.inference.crop_policy", "box", "--model.inference.refine_background", "false"],
    ),
    (
        "r2_pooled",
        "DPSeg: round II, pooled (ours)",
        "round II > round I",
        ["--model.inference.crop_policy", "pooled"],
    ),
    (
        "r2_pooled_own",
        "DPSeg: round II, pooled-own (ours)",
        "round II > round I",
        ["--model.inference.crop_policy", "pooled-own"],
    ),
    (
        "r2_oracle",
        "DPSeg: round II, true regions of round I's classes (oracle, ours)",
        "round II > round I, were round I's regions right",
        ["--model.inference.regions", "true"],
    ),
]
COMPARISONS = [  # (claim, comparison a - b, key a, key b): the paper claims a - b > 0
    ("dual > text", "full - text only", "full", "text"),
    ("dual > visual", "full - visual only", "full", "visual"),
    ("averaging > cost-level fusion", "full - cost volumes averaged", "full", "cost_avg"),
    ("averaging > cost-level fusion", "full - cost volumes concatenated", "full", "cost_concat"),
    ("each F_v level helps", "F_v^{2,3,4} - F_v^2 only", "full", "fv_2"),
    ("each F_v level helps", "F_v^2 only - no F_v", "fv_2", "fv_none"),
    ("what F_v adds to text (ours)", "text, F_v kept - text only", "text_keep_fv", "text"),
    ("removing V alone (ours)", "full - text, F_v kept", "full", "text_keep_fv"),
    (
        "the decoder of issue 29 keeps accuracy (ours)",
        "full (no attention, coarse head, rejection) - the decoder before",
        "full",
        "attention_global",
    ),
    *(
        ("round II helps", f"{row.removeprefix('DPSeg: ')} - round I", key, "full")
        for key, row, _, _ in ROUND_II
    ),
]
VIP_ROWS = [  # (row, claim, encoder preset, extra arguments): configs/vip_toy[_dinotxt].yaml
    (
        "plain dense CLIP (canonical names)",
        "the baseline",
        "toy-vit",
        ["--model.attention", "none", "--model.vocabularies", "{toy: toy}"],
    ),
    ("VIP: aliases + saliency-aware aggregation", "VIP > plain", "toy-vit", []),
    (
        "VIP + dual prompts (ours)",
        "dual prompts help VIP",
        "toy-vit",
        ["--model.dual_prompts", "BANK"],
    ),
    (
        "dino.txt: plain head (canonical names)",
        "the baseline",
        "toy-dinotxt",
        ["--model.attention", "none", "--model.vocabularies", "{toy: toy}"],
    ),
    ("dino.txt: VIP (proxy head + aliases)", "VIP > plain", "toy-dinotxt", []),
    (
        "dino.txt: VIP + dual prompts (ours)",
        "dual prompts help VIP",
        "toy-dinotxt",
        ["--model.dual_prompts", "BANK"],
    ),
]
METRICS = ("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU")
DECIDING = "mIoU"  # the verdicts' metric (all classes); unseen classes are reported beside it
NO_LOGS = ["--trainer.logger", "false"]  # test results go to --model.results_dir

T_975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)
"""Student's t quantile t_{0.975, df} for df = 1..30 (the normal's 1.96 beyond)."""


def t_quantile(df: int) -> float:
    """t_{0.975, df}: the half width of a two-sided 95% interval in standard errors."""
    if df < 1:
        raise ValueError(f"df={df}: a t interval needs 2 or more values")
    return T_975[df - 1] if df <= len(T_975) else 1.96


def paired_differences(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a_s - b_s for every seed s (a and b in the same seed order)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need as many of each: {len(a)} and {len(b)}")
    return [x - y for x, y in zip(a, b)]


def paired_interval(diffs: Sequence[float]) -> dict:
    """The mean paired difference and its 95% t interval, mean +- t_{0.975, n-1} sd / sqrt(n);
    with one value the interval is unknown (``low``, ``high`` None)."""
    n = len(diffs)
    if n == 0:
        raise ValueError("no differences")
    mean = statistics.fmean(diffs)
    if n == 1:
        return {
            "n": 1,
            "mean": mean,
            "sd": None,
            "t": None,
            "half_width": None,
            "low": None,
            "high": None,
        }
    sd = statistics.stdev(diffs)
    t = t_quantile(n - 1)
    half = t * sd / math.sqrt(n)
    return {
        "n": n,
        "mean": mean,
        "sd": sd,
        "t": t,
        "half_width": half,
        "low": mean - half,
        "high": mean + half,
    }


def verdict(interval: dict) -> str:
    """The verdict of an interval: "holds" when it lies above 0 (the claimed side), "fails"
    when below, else (it contains 0, or is unknown) "undecided"."""
    low, high = interval["low"], interval["high"]
    if low is None or high is None:
        return "undecided"
    if low > 0:
        return "holds"
    if high < 0:
        return "fails"
    return "undecided"


def compare(a: Sequence[dict[str, float]], b: Sequence[dict[str, float]]) -> dict[str, dict]:
    """Per metric, the per-seed differences a - b of two rows' runs (same seed order), their
    interval and its verdict."""
    result = {}
    for k in METRICS:
        diffs = paired_differences([r[k] for r in a], [r[k] for r in b])
        interval = paired_interval(diffs)
        result[k] = {"diffs": diffs, **interval, "verdict": verdict(interval)}
    return result


def decide(rows: dict[str, dict], comparisons=COMPARISONS) -> list[dict]:
    """The comparisons whose two rows were run (``rows``: key -> row with ``runs`` in seed
    order), each with its per-metric differences and the verdicts in mIoU and unseen mIoU."""
    decided = []
    for claim, comparison, a, b in comparisons:
        if a not in rows or b not in rows:
            continue
        metrics = compare(rows[a]["runs"], rows[b]["runs"])
        decided.append(
            {
                "claim": claim,
                "comparison": comparison,
                "a": a,
                "b": b,
                "n": metrics[DECIDING]["n"],
                "metrics": metrics,
                "verdict": metrics[DECIDING]["verdict"],
                "verdict_unseen": metrics["mIoU_unseen"]["verdict"],
            }
        )
    return decided


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        k: {
            "mean": statistics.fmean(r[k] for r in runs),
            "std": statistics.stdev([r[k] for r in runs]) if len(runs) > 1 else 0.0,
        }
        for k in METRICS
    }


class Runner:
    """Runs ``cli.py`` commands, times them and prints progress with an ETA (thread-safe: runs
    of different rows go side by side, each with its own CPU threads)."""

    def __init__(self, total: int, threads: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.lock = threading.Lock()

    def __call__(self, what: str, args: list[str]) -> str:
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, str(ROOT / "cli.py"), *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=self.env,
        )
        if result.returncode != 0:
            print(result.stdout[-2000:], result.stderr[-3000:], sep="\n")
            raise SystemExit(
                f"claims: {what} failed (exit {result.returncode}): cli.py {' '.join(args)}"
            )
        with self.lock:
            self.done += 1
            elapsed = time.perf_counter() - self.start
            eta = elapsed / self.done * (self.total - self.done)
            print(
                f"[{self.done}/{self.total}] {what}: {time.perf_counter() - started:.0f} s "
                f"(elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min)",
                flush=True,
            )
        return result.stdout

    def skip(self, what: str) -> None:
        """A step whose outputs a previous run left (``--out`` reused): not run, not counted."""
        with self.lock:
            self.total -= 1
            print(f"[{self.done}/{self.total}] {what}: done before, kept", flush=True)


LEDGER = ROOT / "benchmarks" / "claims_ledger.jsonl"
"""Every finished claims test, one JSON line, committed (ours): a claims run takes longer than a
machine is lent, so a fresh machine goes on from the tests finished anywhere before."""


def fingerprint(steps: int | None, files: Sequence[Path], args: Sequence[str]) -> str:
    """What makes two runs of a row the same: the training steps, the contents of its config
    files and its extra arguments (not the folders it ran in)."""
    digest = {
        "steps": steps,
        "files": [[p.name, hashlib.sha256(p.read_bytes()).hexdigest()] for p in files],
        "args": list(args),
    }
    return hashlib.sha256(json.dumps(digest).encode()).hexdigest()[:16]


def code_version() -> str:
    """The commit the runs are made at (``+dirty`` with uncommitted changes), for the ledger."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


class Ledger:
    """The finished tests' scores by (tag, fingerprint), read from and appended to a JSON-lines
    file (None: kept in memory only). Thread-safe."""

    def __init__(self, path: Path | None):
        self.path, self.lock, self.entries, self.used = path, threading.Lock(), {}, set()
        self.version = code_version()
        if path is not None and path.exists():
            for n, line in enumerate(path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    self.entries[entry["tag"], entry["fingerprint"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise SystemExit(
                        f"claims: --ledger {path}: line {n} is not a ledger entry; "
                        "mend or remove that line"
                    ) from None

    def scores(self, tag: str, print_: str) -> dict[str, float] | None:
        entry = self.entries.get((tag, print_))
        if entry is not None:
            self.used.add((tag, print_))
        return None if entry is None else {k: float(entry["scores"][k]) for k in METRICS}

    def add(self, tag: str, print_: str, scores: dict[str, float]) -> None:
        entry = {
            "tag": tag,
            "fingerprint": print_,
            "scores": scores,
            "commit": self.version,
            "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        }
        with self.lock:
            self.used.add((tag, print_))
            if (tag, print_) in self.entries:
                return
            self.entries[tag, print_] = entry
            if self.path is not None:
                with open(self.path, "a") as f:
                    f.write(json.dumps(entry) + "\n")

    def commits(self) -> list[str]:
        """The commits that the entries read or added were made at, in order of appearance."""
        return list(dict.fromkeys(e["commit"] for k, e in self.entries.items() if k in self.used))


CHECKPOINT_EVERY = 1000
"""Training steps between a fit's checkpoints (ours): a claims run takes hours, and a fit that
is stopped (a machine that goes away, Ctrl-C, a kill) resumes from its last one."""


def periodic_callbacks(every_steps: int = CHECKPOINT_EVERY) -> list[dict]:
    """``cli.py fit``'s callbacks with its ModelCheckpoint saving ``last.ckpt`` every
    ``every_steps`` steps instead of at validation (the claims run none)."""
    from model.lightning_cli import CALLBACKS

    every = {
        "save_last": True,
        "every_n_train_steps": every_steps,
        "save_top_k": 1,
        "monitor": None,
        "filename": "step{step}",
        "auto_insert_metric_name": False,
    }
    return [
        {**c, "init_args": every} if c["class_path"].endswith(".ModelCheckpoint") else c
        for c in CALLBACKS
    ]


def overlay(out: Path, data_root: Path, bank: Path, every_steps: int = CHECKPOINT_EVERY) -> Path:
    """The claims' settings over configs/toy_world.yaml: folders, the splits, no validation,
    a checkpoint every ``every_steps`` steps."""
    config = {
        "trainer": {
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "callbacks": periodic_callbacks(every_steps),
        },
        "data": {
            "root": str(data_root),
            "train": {"dataset": "toy:train", "bank": str(bank)},
            "val": [{"dataset": "toy:val", "bank": str(bank)}],
            "test": [{"dataset": "toy", "bank": str(bank)}],
        },
    }
    path = out / "claims_overlay.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def config_steps() -> int:
    """The training steps of configs/toy_world.yaml (``--steps`` left out)."""
    return int(yaml.safe_load(CONFIG.read_text())["trainer"]["max_steps"])


def run_logger(run_dir: Path) -> Path:
    """A config giving one run its own CSV log folder (its checkpoints go there too)."""
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(run_dir), "name": "dpseg", "version": "run"},
    }
    path = run_dir.with_suffix(".yaml")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"trainer": {"logger": [logger]}}, sort_keys=False))
    return path


def scores(results: Path) -> dict[str, float]:
    """The test split's (``toy``) scores in %."""
    metrics = json.loads((results / "toy.json").read_text())
    return {k: 100 * float(metrics[k]) for k in METRICS}


def _diff(interval: dict) -> str:
    return f"{interval['mean']:+.2f}"


def _ci(interval: dict) -> str:
    if interval["low"] is None:
        return "—"
    return f"[{interval['low']:+.2f}, {interval['high']:+.2f}]"


def markdown(record: dict) -> str:
    """claims.md: the rows, then the verdicts, then what the rows rest on."""
    seeds, steps = record["seeds"], record["steps"]
    whose = {"config": "the config's", "CLAIMS_STEPS": "the claims' default"}.get(
        record["steps_from"], "--steps"
    )
    how = (
        "written from the ledger alone (`benchmarks/claims.py --report`: no run, no timing)"
        if record.get("from_ledger")
        else f"{record['jobs']} runs side by side with {record['threads']} CPU thread(s) each, "
        f"{record['minutes']:.1f} min (`.venv/bin/python benchmarks/claims.py`)"
    )
    lines = [
        f"Toy world, {len(seeds)} paired seeds ({', '.join(map(str, seeds))}), {steps} training "
        f"steps per DPSeg run ({whose}), {how}; scores on `toy` (the test split), in %."
        + (
            f" Runs made at commit(s) {', '.join(record['commits'])} (the ledger)."
            if record.get("commits")
            else ""
        ),
        "",
        "| row | claim tested | mIoU | seen | unseen | hIoU | row - full, mIoU [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        s = r["scores"]
        cells = " | ".join(
            f"{s[k]['mean']:.1f} ± {s[k]['std']:.1f}"
            if len(r["runs"]) > 1
            else f"{s[k]['mean']:.1f}"
            for k in METRICS
        )
        vs = r.get("vs_full")
        delta = f"{_diff(vs[DECIDING])} {_ci(vs[DECIDING])}" if vs else "—"
        lines.append(f"| {r['row']} | {r['claim']} | {cells} | {delta} |")
    lines += [
        "",
        "Verdicts: paired differences a - b over the seeds (the paper claims a - b > 0; round II "
        "against round I of the same seed's full model), 95% intervals mean ± t_{0.975, n-1} "
        "sd / sqrt(n). **holds**: the mIoU interval lies above 0; **fails**: below 0; "
        "**undecided**: it contains 0. Unseen classes are reported beside it.",
        "",
        "| claim | comparison | mean diff, mIoU | 95% CI | n seeds | verdict | mean diff, unseen "
        "| 95% CI, unseen | unseen |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in record["comparisons"]:
        m, u = c["metrics"][DECIDING], c["metrics"]["mIoU_unseen"]
        lines.append(
            f"| {c['claim']} | {c['comparison']} | {_diff(m)} | {_ci(m)} | {c['n']} | "
            f"**{c['verdict']}** | {_diff(u)} | {_ci(u)} | {c['verdict_unseen']} |"
        )
    if not record["comparisons"]:
        lines.append("| (no comparison: its two rows were not both run) | | | | | | | | |")
    if record.get("left_out"):
        lines += [
            "",
            "Left out: the ledger holds no test of these rows with today's settings (their "
            "configs changed since, or they were never run): "
            + "; ".join(record["left_out"])
            + ". Run without --report to test them.",
        ]
    lines += ["", "What the rows rest on:"]
    for name, z in record["zero_shot"].items():
        lines.append(
            f"- {name}: zero-shot accuracy {100 * z['zero_shot_plain']:.1f}% ('a photo of a "
            f"{{}}.'), {100 * z['zero_shot_any_template']:.1f}% (any template), chance "
            f"{100 * z['chance']:.1f}%"
        )
    for preset, a in record["bank_agreement"].items():
        lines.append(
            f"- bank {preset}: visual -> text prompt retrieval {a['retrieved']}/{a['classes']} "
            f"classes; mean cosine between classes' visual prompts {a['visual_between_classes']:.3f}"
        )
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def chart(rows: list[dict], out: Path) -> Path:
    """Bars of mIoU on seen and unseen classes per row, with the spread over seeds."""
    plt = _pyplot()
    names = [r["row"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
    y = range(len(rows))
    for offset, key, colour in ((-0.2, "mIoU_seen", "#4c72b0"), (0.2, "mIoU_unseen", "#dd8452")):
        ax.barh(
            [i + offset for i in y],
            [r["scores"][key]["mean"] for r in rows],
            height=0.38,
            xerr=[r["scores"][key]["std"] for r in rows],
            color=colour,
            label=key.replace("mIoU_", "mIoU, ") + " classes",
        )
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel("mIoU (%) on the toy world's test images (bars: mean; lines: spread over seeds)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)  # above
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


VERDICT_COLOURS = {"holds": "#2a9d4b", "fails": "#d62728", "undecided": "#7f7f7f"}


def forest(comparisons: list[dict], out: Path) -> Path:
    """One line per comparison: the mean paired mIoU difference with its 95% interval, a line
    at 0, coloured by verdict (an unknown interval, one seed: the point alone)."""
    from matplotlib.lines import Line2D

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12, 0.4 * max(len(comparisons), 1) + 1.8))
    ax.axvline(0, color="black", linewidth=0.8)
    for i, c in enumerate(comparisons):
        m = c["metrics"][DECIDING]
        ax.errorbar(
            m["mean"],
            i,
            xerr=m["half_width"] or 0.0,
            fmt="o",
            capsize=4,
            color=VERDICT_COLOURS[c["verdict"]],
        )
    ax.set_yticks(
        range(len(comparisons)), [f"{c['claim']}: {c['comparison']}" for c in comparisons]
    )
    ax.set_ylim(len(comparisons) - 0.5, -0.5)
    if not comparisons:
        ax.text(0, 0, "no comparison: its two rows were not both run", ha="center")
    n = sorted({c["n"] for c in comparisons})
    ax.set_xlabel(
        f"paired difference a - b in mIoU (%): mean over {'/'.join(map(str, n)) or 0} "
        "seeds and its 95% interval\n(the paper claims a - b > 0)"
    )
    handles = [
        Line2D([], [], marker="o", linestyle="", color=colour, label=v)
        for v, colour in VERDICT_COLOURS.items()
    ]
    ax.legend(handles=handles, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(out: Path, record: dict) -> str:
    """claims.md, claims.json, claims.png (forest plot) and claims_rows.png in ``out``; returns
    the markdown."""
    table = markdown(record)
    (out / "claims.md").write_text(table)
    (out / "claims.json").write_text(json.dumps(record, indent=2) + "\n")
    forest(record["comparisons"], out / "claims.png")
    chart(record["rows"], out / "claims_rows.png")
    return table


def dpseg_record(dpseg_rows, round_ii, seeds, done) -> dict[str, dict]:
    """The DPSeg and round II rows, key -> row with its per-seed runs (seed order) and, but for
    the full model, its paired difference from the full model (round II: from round I)."""
    rows = {}
    for key, row, claim, _ in dpseg_rows:
        rows[key] = {
            "key": key,
            "row": row,
            "claim": claim,
            "seeds": seeds,
            "runs": [done[key, seed][0] for seed in seeds],
        }
        for n, (key2, row2, claim2, _) in enumerate(round_ii if key == "full" else []):
            rows[key2] = {
                "key": key2,
                "row": row2,
                "claim": claim2,
                "seeds": seeds,
                "runs": [done[key, seed][1][n] for seed in seeds],
            }
    for key, r in rows.items():
        r["scores"] = summarise(r["runs"])
        r["vs_full"] = compare(r["runs"], rows["full"]["runs"]) if key != "full" else None
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3, 4],
        help="paired seeds of every DPSeg row (default 0 1 2 3 4)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=CLAIMS_STEPS,
        help=f"training steps per DPSeg run (default {CLAIMS_STEPS}; 0: the config's max_steps)",
    )
    parser.add_argument("--out", default="claims_out")
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=CHECKPOINT_EVERY,
        help=f"steps between a fit's checkpoints, which a stopped run resumes "
        f"from (default {CHECKPOINT_EVERY})",
    )
    parser.add_argument(
        "--ledger",
        default=str(LEDGER.relative_to(ROOT)),
        help="the finished tests' scores, read and appended to (default "
        f"{LEDGER.relative_to(ROOT)}, committed; 'none': not kept)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="run nothing: the report from the ledger alone, over the seeds "
        "whose every chosen row it holds",
    )
    parser.add_argument("--jobs", type=int, default=2, help="DPSeg runs side by side (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run (default 1)")
    parser.add_argument(
        "--rows",
        nargs="+",
        metavar="TEXT",
        help="only the rows whose name contains one of these (case-insensitive); the full "
        "model, which the verdicts compare with, is trained whenever a DPSeg row is chosen",
    )
    args = parser.parse_args()
    if args.jobs < 1 or args.threads < 1:
        parser.error(f"--jobs {args.jobs} / --threads {args.threads}: give 1 or more")
    if args.checkpoint_every < 1:
        parser.error(f"--checkpoint-every {args.checkpoint_every}: give 1 or more")
    if args.steps < 0:
        parser.error(f"--steps {args.steps}: give 1 or more (0: the config's max_steps)")
    args.steps = args.steps or None
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {' '.join(map(str, args.seeds))}: each seed once")

    def wanted(name: str) -> bool:
        return not args.rows or any(t.lower() in name.lower() for t in args.rows)

    round_ii = [r for r in ROUND_II if wanted(r[1])]
    chosen = [r for r in DPSEG_ROWS if wanted(r[1])]
    dpseg_rows = [r for r in DPSEG_ROWS if r in chosen or (r[0] == "full" and (chosen or round_ii))]
    vip_rows = [r for r in VIP_ROWS if wanted(r[0])]
    if not (dpseg_rows or vip_rows):
        parser.error(f"--rows {' '.join(args.rows)}: no row's name contains any of them")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_root, bank = out / "datasets", out / "banks" / "toy.zarr"
    vip_banks = {
        p: out / "banks" / f"{p.replace('-', '_')}.zarr" for p in ("toy-vit", "toy-dinotxt")
    }
    seeds = args.seeds

    total = 4 + len(dpseg_rows) * len(seeds) * 2 + len(round_ii) * len(seeds) + len(vip_rows)
    run = Runner(total, args.threads)
    start = time.perf_counter()

    ledger = Ledger(None if args.ledger == "none" else Path(args.ledger).resolve())
    if args.report:
        run.total = 3
    else:
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
        agreement[preset] = json.loads(info.stdout)["prompts"]
    from pretrained.bundled_weights import bundled_path, read_metadata

    zero_shot = {
        name: {
            k: float(read_metadata(bundled_path(f"{name}.safetensors"))[k])
            for k in ("zero_shot_plain", "zero_shot_any_template", "chance")
        }
        for name in ("toy-convnext", "toy-vit", "toy-dinotxt")
    }

    base = overlay(out, data_root, bank, args.checkpoint_every)
    common = ["--config", str(CONFIG), "--config", str(base)]
    steps = [] if args.steps is None else ["--trainer.max_steps", str(args.steps)]

    def dpseg_run(key: str, ablation: str | None, seed: int) -> tuple[dict, list[dict]] | None:
        """Fit one row with one seed, test it (and, for the full model, its round II rows).
        Finished work is kept: a test whose results are in OUT or in the ledger is not run
        again, nor a fit marked done in OUT or whose tests are all done, so an interrupted run
        goes on where it stopped. With --report, only the ledger: None unless all its tests
        are there."""
        extra = ["--config", str(ABLATIONS / ablation)] if ablation else []
        tag = f"{key}_seed{seed}"
        ckpt_dir = out / "runs" / tag
        fitted = ckpt_dir / "fit.done"
        wanted_steps = str(args.steps or config_steps())
        files = [CONFIG, *([ABLATIONS / ablation] if ablation else [])]
        tests = [(f"test {tag}", tag, extra, fingerprint(int(wanted_steps), files, []))]
        for key2, row2, _, extra2 in round_ii if ablation is None else []:
            tests.append(
                (
                    f"test {row2}, seed {seed}",
                    f"{key2}_seed{seed}",
                    ["--config", str(ABLATIONS / "rounds_2.yaml"), *extra2],
                    fingerprint(int(wanted_steps), [*files, ABLATIONS / "rounds_2.yaml"], extra2),
                )
            )
        if args.report:
            found = [ledger.scores(tag2, print_) for _, tag2, _, print_ in tests]
            return None if None in found else (found[0], found[1:])
        if fitted.exists() and fitted.read_text().strip() != wanted_steps:
            fitted.unlink()  # trained for another number of steps: trained again (tests too)
            for _, tag2, _, _ in tests:
                shutil.rmtree(out / "results" / tag2, ignore_errors=True)
        pending = [
            t
            for t in tests
            if not (out / "results" / t[1] / "toy.json").exists()
            and ledger.scores(t[1], t[3]) is None
        ]
        if fitted.exists() or not pending:
            run.skip(f"fit {tag}")
        else:
            started = ckpt_dir / "fit.steps"  # a stopped fit resumes only for the same steps
            resume = next(ckpt_dir.rglob("last.ckpt"), None)
            if resume is None or not started.exists() or started.read_text() != wanted_steps:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
                resume = None
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            started.write_text(wanted_steps)
            more = []
            if resume is not None:  # recorded: after a resume Lightning starts the epoch's data
                more = ["--ckpt_path", str(resume)]  # order again, unlike an unbroken fit
                with open(ckpt_dir / "resumed", "a") as f:
                    f.write(f"{resume.name}\n")
            run(
                f"fit {tag}" + (" (resumed)" if resume else ""),
                [
                    "fit",
                    *common,
                    *extra,
                    *steps,
                    "--config",
                    str(run_logger(ckpt_dir)),
                    "--seed_everything",
                    str(seed),
                    *more,
                ],
            )
            fitted.write_text(f"{wanted_steps}\n")

        def test(what: str, tag2: str, more: list[str], print_: str) -> dict:
            results = out / "results" / tag2
            if (results / "toy.json").exists():
                run.skip(what)
            elif (known := ledger.scores(tag2, print_)) is not None:
                run.skip(f"{what} (ledger)")
                return known
            else:
                ckpt = next(ckpt_dir.rglob("last.ckpt"))
                run(
                    what,
                    [
                        "test",
                        *common,
                        *more,
                        "--ckpt_path",
                        str(ckpt),
                        "--model.results_dir",
                        str(results),
                        *NO_LOGS,
                    ],
                )
            ledger.add(tag2, print_, scores(results))
            return scores(results)

        first, *second = (test(*t) for t in tests)
        return first, second

    # seed by seed, so that an interrupted run has whole seeds (paired rows) to compare
    jobs = [(key, ablation, seed) for seed in seeds for key, _, _, ablation in dpseg_rows]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda job: dpseg_run(*job), jobs))
    done = {(key, seed): result for (key, _, seed), result in zip(jobs, results)}
    left_out: list[str] = []  # --report: what the ledger holds no test of, with these settings
    if args.report:  # the seeds whose every row the ledger holds
        whole = [s for s in seeds if all(done[key, s] is not None for key, *_ in dpseg_rows)]
        left_out += [f"seed {s} (not every DPSeg row)" for s in seeds if s not in whole]
        seeds = whole
        if dpseg_rows and not seeds:
            raise SystemExit(
                f"claims: --report: the ledger {ledger.path} holds no seed with "
                "every chosen row; run without --report first"
            )
    by_key = dpseg_record(dpseg_rows, round_ii, seeds, done) if dpseg_rows else {}
    rows = list(by_key.values())
    configs = {"toy-vit": "vip_toy.yaml", "toy-dinotxt": "vip_toy_dinotxt.yaml"}
    for n, (row, claim, preset, extra) in enumerate(vip_rows):
        config = ROOT / "configs" / configs[preset]
        tag, print_ = f"vip_{n}", fingerprint(None, [config], extra)
        if (one := ledger.scores(tag, print_)) is not None:
            run.skip(f"test {row} (ledger)")
        elif args.report:
            left_out.append(row)
            continue
        else:
            results = out / "results" / tag
            run(
                f"test {row}",
                [
                    "test",
                    "--config",
                    str(config),
                    "--data.root",
                    str(data_root),
                    *(str(vip_banks[preset]) if a == "BANK" else a for a in extra),
                    "--model.results_dir",
                    str(results),
                    *NO_LOGS,
                ],
            )
            one = scores(results)
            ledger.add(tag, print_, one)
        rows.append(
            {
                "key": None,
                "row": row,
                "claim": claim,
                "seeds": None,
                "runs": [one],
                "scores": summarise([one]),
                "vs_full": None,
            }
        )

    record = {
        "seeds": seeds,
        "steps": config_steps() if args.steps is None else args.steps,
        "steps_from": "config"
        if args.steps is None
        else ("CLAIMS_STEPS" if args.steps == CLAIMS_STEPS else "--steps"),
        "jobs": args.jobs,
        "threads": args.threads,
        "minutes": (time.perf_counter() - start) / 60,
        "from_ledger": args.report,
        "left_out": left_out,
        "t_975": dict(enumerate(T_975, start=1)),
        "rows": rows,
        "comparisons": decide(by_key),
        "ledger": str(ledger.path) if ledger.path else None,
        "commits": ledger.commits(),
        "zero_shot": zero_shot,
        "bank_agreement": agreement,
    }
    table = write_report(out, record)
    print(f"\n{table}\nforest plot: {out / 'claims.png'}; rows: {out / 'claims_rows.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
