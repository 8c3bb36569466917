"""benchmarks/bench_gpu.py (``make bench-gpu``) and ``benchmarks/inference_cost.py --flops``, on CPU
with the tiny presets, each in a fresh process as a user runs them."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_LINE = "bench-gpu: no CUDA GPU here (torch.cuda.is_available() is False); nothing measured"


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root with no CUDA device visible."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout
    )


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_gpu_skips_in_one_line_without_cuda(tmp_path):
    out = run_script("benchmarks/bench_gpu.py", "--json", str(tmp_path / "bench.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == [SKIP_LINE]
    assert not (tmp_path / "bench.json").exists()  # nothing measured, nothing written


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_bench_gpu_runs_the_script():
    out = subprocess.run(
        ["make", "-n", "bench-gpu"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "benchmarks/bench_gpu.py" in out.stdout


def test_bench_gpu_tiny_on_cpu_measures_every_section(tmp_path):
    path = tmp_path / "bench.json"
    out = run_script("benchmarks/bench_gpu.py", "--allow-cpu", "--tiny", "--json", str(path))
    assert out.returncode == 0, out.stderr[-3000:]
    table = [line for line in out.stdout.splitlines() if line.startswith("|")]
    assert table[0] == "| section | configuration | result | peak memory | detail |"
    assert {line.split("|")[1].strip() for line in table[2:]} == {"bank", "inference", "training"}

    data = json.loads(path.read_text())
    assert data["skipped"] == [] and data["errors"] == [] and data["tiny"] is True
    assert [r["batch_size"] for r in data["bank"]] == [1, 2]
    for row in data["bank"]:
        for key in ("images", "seconds", "images_per_s", "peak_mb"):
            assert positive(row[key]), (key, row)
        assert set(row["share"]) == {"generation", "encoding", "storage"}
        assert all(positive(v) for v in row["share"].values()), row["share"]
        assert sum(row["share"].values()) == pytest.approx(1.0)
    measured = {(r["preset"], r["classes"], r["round"]) for r in data["inference"]}
    assert measured == {("tiny-convnext", k, rounds) for k in (8, 16) for rounds in (1, 2)}
    for row in data["inference"]:
        assert positive(row["ms_per_image"]) and positive(row["peak_mb"]), row
        if row["round"] == 2:
            assert positive(row["refined_per_image"]), row
    (train,) = data["training"]
    for key in ("ms_per_step", "peak_mb", "loss"):
        assert positive(train[key]), (key, train)
    assert positive(data["seconds"])
    grid = {(r["classes"], r["decoder"]) for r in data["cost_vs_k"]}  # section 4, tiny on CPU
    assert grid == {(k, d) for k in (20, 59) for d in ("before", "default", "default + rejection")}
    assert all(positive(r["ms"]) for r in data["cost_vs_k"])
    assert (tmp_path / "bench_cost_vs_k.png").exists() and (
        tmp_path / "bench_cost_vs_k.md"
    ).exists()


def flops_rows(tmp_path: Path, device: str) -> list[dict]:
    path = tmp_path / f"flops-{device}.json"
    out = run_script(
        "benchmarks/inference_cost.py",
        "--flops",
        "--preset",
        "tiny-convnext",
        "--classes",
        "8",
        "16",
        "--templates",
        "4",
        "--image-size",
        "128",
        "--refined",
        "3",
        "--flops-device",
        device,
        "--json",
        str(path),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| model | K | round | total GFLOPs |" in out.stdout
    return json.loads(path.read_text())["rows"]


@pytest.fixture(scope="module")
def meta_rows(tmp_path_factory) -> list[dict]:
    return flops_rows(tmp_path_factory.mktemp("flops"), "meta")


def test_flops_parts_sum_to_the_total_and_round_two_costs_more(meta_rows):
    rows = meta_rows
    assert [(r["classes"], r["round"]) for r in rows] == [(8, 1), (8, 2), (16, 1), (16, 2)]
    for row in rows:
        assert sum(row["parts"].values()) == row["total"], row
        assert all(v >= 0 for v in row["parts"].values()), row
        for key in (
            "backbone",
            "cost_cos",
            "cost_embedding",
            "decoder_stage1",
            "decoder_stage2",
            "decoder_stage3",
            "decoder_head",
        ):
            assert row["parts"][key] > 0, (key, row)
        assert row["parts"]["cost_cos"] == row["analytic_cost_cos"]  # the attribution, by hand
    for first, second in zip(rows[::2], rows[1::2]):
        assert second["total"] > first["total"]
        assert second["parts"]["round2_crops"] > 0 and second["parts"]["round2_redecode"] > 0
        assert second["refined"] == 3
        same = {k: v for k, v in second["parts"].items() if not k.startswith("round2")}
        assert same == {k: v for k, v in first["parts"].items() if not k.startswith("round2")}
    # K scales the class-wise parts (the decoder's nearly: its guidance convolutions are per
    # image), not the backbone
    assert rows[0]["parts"]["backbone"] == rows[2]["parts"]["backbone"]
    assert rows[2]["parts"]["cost_embedding"] == 2 * rows[0]["parts"]["cost_embedding"]
    ratio = rows[2]["parts"]["decoder_stage3"] / rows[0]["parts"]["decoder_stage3"]
    assert 1.9 < ratio <= 2


def test_flops_on_meta_tensors_equal_real_cpu_tensors(meta_rows, tmp_path):
    meta, cpu = meta_rows, flops_rows(tmp_path, "cpu")
    assert [r["parts"] for r in meta] == [r["parts"] for r in cpu]
    assert [r["total"] for r in meta] == [r["total"] for r in cpu]


def table_rows(stdout: str) -> dict[str, dict[str, str]]:
    """inference_cost.py's rows: mode -> ms, ratio, backbone, frozen and crops columns."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith(("round I ", "II ")):
            name, values = line[:16].strip(), line[16:].split()
            rows[name] = dict(zip(("ms", "ratio", "backbone", "frozen", "crops"), values))
    return rows


def test_inference_cost_random_prompts_prints_rows_and_the_floor():
    out = run_script(
        "benchmarks/inference_cost.py",
        "--classes",
        "6",
        "--max-classes",
        "3",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--no-memory",
        "--policies",
        "box",
        "pooled-own",
        "--threads",
        "1",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = table_rows(out.stdout)
    assert set(rows) == {"round I", "II box", "II pooled-own"}
    assert all(r["backbone"] == "1.00" for r in rows.values())
    assert rows["II box"]["crops"] == "3.00" and rows["II box"]["frozen"] == "1.00"
    assert rows["II pooled-own"]["frozen"] == "0.00"
    line = next(x for x in out.stdout.splitlines() if x.startswith("floor for every policy"))
    backbone, decode, redecode = (float(ms) for ms in re.findall(r"([\d.]+) ms", line))
    assert min(backbone, decode, redecode) > 0
    ratio = float(re.search(r"round II >= ([\d.]+)x", line)[1])
    assert ratio == pytest.approx(1 + redecode / (backbone + decode), abs=0.01)


def test_inference_cost_times_a_trained_checkpoint_on_real_images(trained, world):
    images = world / "datasets" / "synthetic" / "images" / "val"
    out = run_script(
        "benchmarks/inference_cost.py",
        "--ckpt",
        str(trained),
        "--images",
        str(images),
        "--vocab",
        "synthetic",
        "--bank",
        str(world / "bank.zarr"),
        "--max-images",
        "2",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--policies",
        "box",
        "pooled-own",
        "--threads",
        "1",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 images of" in out.stdout and "K=8 (synthetic)" in out.stdout
    rows = table_rows(out.stdout)
    assert set(rows) == {"round I", "II box", "II pooled-own"}
    assert rows["round I"]["ratio"] == "1.00x" and float(rows["round I"]["crops"]) == 0
    assert all(r["backbone"] == "1.00" for r in rows.values())  # round II reuses the features
    assert rows["II pooled-own"]["frozen"] == "0.00"  # no frozen pass at all
    refined = out.stdout.split("classes refined per image: mean ")[1].split(",")[0]
    assert float(rows["II box"]["crops"]) == float(refined) > 0  # one crop per refined class


def test_inference_cost_checkpoint_needs_images_and_vocab(trained):
    out = run_script("benchmarks/inference_cost.py", "--ckpt", str(trained))
    assert out.returncode == 2
    assert "--ckpt needs --images DIR and --vocab" in out.stderr


# ---------------------------------------------------------------------------------------------
# benchmarks/claims.py: the paired statistics and the report, on numbers checked by hand


def test_claims_t_quantiles():
    from benchmarks.claims import t_quantile

    assert t_quantile(1) == 12.706 and t_quantile(2) == 4.303 and t_quantile(4) == 2.776
    assert t_quantile(30) == 2.042 and t_quantile(31) == t_quantile(1000) == 1.96
    with pytest.raises(ValueError, match="df=0"):
        t_quantile(0)


def test_claims_paired_interval_by_hand():
    from benchmarks.claims import paired_differences, paired_interval

    diffs = paired_differences([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert diffs == [1.0, 2.0, 3.0]
    ci = paired_interval(diffs)  # mean 2, sd 1, t_{0.975,2} = 4.303, half 4.303 / sqrt(3)
    assert ci["n"] == 3 and ci["mean"] == 2.0 and ci["sd"] == 1.0 and ci["t"] == 4.303
    assert ci["half_width"] == pytest.approx(2.484, abs=1e-3)
    assert (ci["low"], ci["high"]) == pytest.approx((-0.484, 4.484), abs=1e-3)
    one = paired_interval([0.5])  # one seed: no interval
    assert one["mean"] == 0.5 and one["low"] is one["high"] is None
    with pytest.raises(ValueError, match="as many"):
        paired_differences([1.0], [1.0, 2.0])


@pytest.mark.parametrize(
    ("diffs", "expected"),
    [
        ([2.0, 3.0, 4.0], "holds"),  # mean 3 +- 2.484: [0.516, 5.484]
        ([-2.0, -3.0, -4.0], "fails"),
        ([1.0, 2.0, 3.0], "undecided"),  # [-0.484, 4.484] contains 0
        ([1.0, 1.0], "holds"),  # no spread: the interval is the point 1
        ([0.0, 0.0], "undecided"),
        ([5.0], "undecided"),  # one seed decides nothing
    ],
)
def test_claims_verdicts(diffs, expected):
    from benchmarks.claims import paired_interval, verdict

    assert verdict(paired_interval(diffs)) == expected


def _fake_rows(seeds=(0, 1, 2)) -> dict[str, dict]:
    """full scores 10 + s; text 1, 2, 3 below it (holds: dual > text); fv_2 above it (fails)."""
    from benchmarks.claims import METRICS

    def runs(offsets):
        return [{k: 10.0 + s - o for k in METRICS} for s, o in zip(seeds, offsets)]

    rows = {
        "full": runs([0, 0, 0]),
        "text": runs([2, 3, 4]),
        "fv_2": runs([-2, -3, -4]),
        "r2_masked": runs([1, 2, 3]),
    }
    return {
        key: {"key": key, "row": key, "claim": key, "seeds": list(seeds), "runs": r}
        for key, r in rows.items()
    }


def test_claims_decide_pairs_rows_by_seed():
    from benchmarks.claims import decide

    decided = {c["comparison"]: c for c in decide(_fake_rows())}
    # only the comparisons whose two rows were run
    assert set(decided) == {
        "full - text only",
        "F_v^{2,3,4} - F_v^2 only",
        "round II, masked crops (config) - round I",
    }
    text = decided["full - text only"]
    assert text["claim"] == "dual > text" and (text["a"], text["b"]) == ("full", "text")
    assert text["metrics"]["mIoU"]["diffs"] == [2.0, 3.0, 4.0]  # full - text, per seed
    assert text["n"] == 3 and text["verdict"] == "holds" and text["verdict_unseen"] == "holds"
    assert decided["F_v^{2,3,4} - F_v^2 only"]["verdict"] == "fails"
    round_two = decided["round II, masked crops (config) - round I"]
    assert round_two["claim"] == "round II helps"
    assert round_two["metrics"]["hIoU"]["diffs"] == [-1.0, -2.0, -3.0]  # round II - round I
    assert round_two["verdict"] == "undecided"


def test_claims_report_files(tmp_path):
    """claims.md (rows, then verdicts), claims.json (per-seed scores, differences, intervals,
    verdicts), the forest plot claims.png and the bars claims_rows.png."""
    from benchmarks.claims import METRICS, compare, decide, summarise, write_report

    by_key = _fake_rows()
    for key, r in by_key.items():
        r["scores"] = summarise(r["runs"])
        r["vs_full"] = None if key == "full" else compare(r["runs"], by_key["full"]["runs"])
    vip = {
        "key": None,
        "row": "VIP",
        "claim": "VIP > plain",
        "seeds": None,
        "runs": [dict.fromkeys(METRICS, 5.0)],
        "vs_full": None,
    }
    vip["scores"] = summarise(vip["runs"])
    record = {
        "seeds": [0, 1, 2],
        "steps": 900,
        "steps_from": "config",
        "jobs": 2,
        "threads": 1,
        "minutes": 1.5,
        "rows": [*by_key.values(), vip],
        "comparisons": decide(by_key),
        "zero_shot": {
            "toy-convnext": {
                "zero_shot_plain": 0.9,
                "zero_shot_any_template": 0.8,
                "chance": 1 / 31,
            }
        },
        "bank_agreement": {"toy": {"retrieved": 30, "classes": 31, "visual_between_classes": 0.5}},
    }
    table = write_report(tmp_path, record)
    assert (tmp_path / "claims.md").read_text() == table
    assert "3 paired seeds (0, 1, 2), 900 training steps per DPSeg run (the config's)" in table
    assert "| full | full | 11.0 ± 1.0 | 11.0 ± 1.0 | 11.0 ± 1.0 | 11.0 ± 1.0 | — |" in table
    assert (
        "| text | text | 8.0 ± 0.0 | 8.0 ± 0.0 | 8.0 ± 0.0 | 8.0 ± 0.0 | -3.00 [-5.48, -0.52] |"
        in table
    )
    assert "| VIP | VIP > plain | 5.0 | 5.0 | 5.0 | 5.0 | — |" in table
    assert (
        "| dual > text | full - text only | +3.00 | [+0.52, +5.48] | 3 | **holds** | +3.00 "
        "| [+0.52, +5.48] | holds |"
    ) in table
    assert "| **fails** |" in table and "| **undecided** |" in table
    saved = json.loads((tmp_path / "claims.json").read_text())
    assert saved["rows"][1]["runs"][2]["mIoU"] == 8.0  # per-seed scores
    first = saved["comparisons"][0]["metrics"]["mIoU"]
    assert first["diffs"] == [2.0, 3.0, 4.0] and first["low"] == pytest.approx(0.516, abs=1e-3)
    for picture in ("claims.png", "claims_rows.png"):
        assert (tmp_path / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "2 runs side by side with 1 CPU thread(s) each, 1.5 min" in table
    assert "Left out" not in table

    # --report: written from the ledger, whose timing is not the runs', naming what it left out
    record |= {"from_ledger": True, "left_out": ["seed 3 (not every DPSeg row)", "VIP"]}
    (tmp_path / "report").mkdir()
    table = write_report(tmp_path / "report", record)
    assert "(the config's), written from the ledger alone" in table
    assert "side by side" not in table and "1.5 min" not in table
    assert "Left out: " in table and "seed 3 (not every DPSeg row); VIP." in table


def test_claims_command_line_defaults_and_errors(tmp_path):
    help_text = run_script("benchmarks/claims.py", "--help", timeout=60)
    assert help_text.returncode == 0, help_text.stderr
    words = " ".join(help_text.stdout.split())
    assert "(default 0 1 2 3 4)" in words and "(default 8000; 0: the config's max_steps)" in words
    bad = run_script(
        "benchmarks/claims.py", "--rows", "no such row", "--out", str(tmp_path / "out"), timeout=60
    )
    assert bad.returncode == 2 and "no row's name contains any of them" in bad.stderr
    assert not (tmp_path / "out").exists()  # refused before any work


def test_claims_fits_save_a_checkpoint_every_n_steps_whatever_the_defaults(tmp_path):
    """The claims' overlay, as cli.py fit parses it over configs/toy_world.yaml: its ModelCheckpoint
    saves by steps with no monitor (merged with the default's val/mIoU it saved nothing, and a
    stopped 8000-step fit started again from scratch)."""
    import yaml

    from benchmarks.claims import overlay

    path = overlay(tmp_path, tmp_path / "datasets", tmp_path / "toy.zarr", every_steps=250)
    printed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "cli.py"),
            "fit",
            "--config",
            "configs/toy_world.yaml",
            "--config",
            str(path),
            "--print_config",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert printed.returncode == 0, printed.stderr[-2000:]
    callbacks = yaml.safe_load(printed.stdout)["trainer"]["callbacks"]
    (checkpoint,) = [c for c in callbacks if c["class_path"].endswith(".ModelCheckpoint")]
    args = checkpoint["init_args"]
    assert (args["monitor"], args["every_n_train_steps"], args["save_last"]) == (None, 250, True)
    assert len(callbacks) == 3  # the progress bar and the LR monitor stay


def test_claims_round_two_rows_pair_with_round_one_of_their_seed():
    from benchmarks.claims import DPSEG_ROWS, METRICS, ROUND_II, decide, dpseg_record

    def score(v):
        return dict.fromkeys(METRICS, float(v))

    seeds = [3, 7]
    rows = [r for r in DPSEG_ROWS if r[0] in ("full", "text")]
    round_ii = [r for r in ROUND_II if r[0] in ("r2_box", "r2_oracle")]
    done = {  # (row, seed) -> (round I, [the round II rows])
        ("full", 3): (score(10), [score(11), score(14)]),
        ("full", 7): (score(20), [score(22), score(25)]),
        ("text", 3): (score(9), []),
        ("text", 7): (score(17), []),
    }
    by_key = dpseg_record(rows, round_ii, seeds, done)
    assert list(by_key) == ["full", "r2_box", "r2_oracle", "text"]
    assert by_key["r2_oracle"]["runs"] == [score(14), score(25)]
    assert by_key["full"]["vs_full"] is None
    assert by_key["r2_box"]["vs_full"]["mIoU"]["diffs"] == [1.0, 2.0]  # row - round I
    assert by_key["text"]["vs_full"]["mIoU_unseen"]["diffs"] == [-1.0, -3.0]
    assert by_key["text"]["scores"]["mIoU"] == {"mean": 13.0, "std": pytest.approx(5.657, abs=1e-3)}
    decided = {c["comparison"]: c["metrics"]["mIoU"]["diffs"] for c in decide(by_key)}
    assert decided == {
        "full - text only": [1.0, 3.0],
        "round II, box crops (paper) - round I": [1.0, 2.0],
        "round II, true regions of round I's classes (oracle, ours) - round I": [4.0, 5.0],
    }


# benchmarks/cost_vs_k.py: round I's cost against K, the decoder before issue 29 and after
def test_cost_vs_k_rejection_bounds_the_decode(tmp_path):
    import torch

    from benchmarks.cost_vs_k import TINY, decoders, measure, plot, table

    # the figure's shape at a smaller scale (160 px, K up to 64, a bound of 16): 1/8 the time
    small = {**TINY, "size": 160}
    rows = measure(small, [8, 64], decoders(0.05, 16), torch.device("cpu"), 1, True, False)
    by = {(r["classes"], r["decoder"]): r for r in rows}
    assert len(rows) == 6 and all(r["ms"] > 0 for r in rows)
    for k in (8, 64):  # global attention at every stage costs more than the default's
        assert by[k, "before"]["gflops"] > by[k, "default"]["gflops"]
    # K = 8 <= 16: rejection bounds nothing, and pays the coarse pass on top
    assert by[8, "default + rejection"]["gflops"] > by[8, "default"]["gflops"]
    # K = 64: at most 16 classes go past the first stage (FLOPs counted at that bound)
    assert by[64, "default + rejection"]["gflops"] < 0.6 * by[64, "default"]["gflops"]
    assert by[64, "default + rejection"]["kept"] <= 16 and by[64, "default"]["kept"] == 64
    assert "| tiny-convnext 160 px | 64 | default + rejection |" in table(rows)
    plot(rows, tmp_path / "cost.png")
    assert (tmp_path / "cost.png").stat().st_size > 10_000


def test_claims_fingerprint_is_the_settings_not_the_folder(tmp_path):
    """A row's fingerprint: its steps, its config files' contents and its extra arguments; the
    same files in another folder (another machine's checkout) give the same one."""
    from benchmarks.claims import fingerprint

    a, b = tmp_path / "a" / "row.yaml", tmp_path / "b" / "row.yaml"
    for path in (a, b):
        path.parent.mkdir()
        path.write_text("model: {dpseg: {prompt_mode: text}}\n")
    base = fingerprint(8000, [a], ["--x", "1"])
    assert fingerprint(8000, [b], ["--x", "1"]) == base
    assert fingerprint(4000, [a], ["--x", "1"]) != base
    assert fingerprint(8000, [a], ["--x", "2"]) != base
    b.write_text("model: {dpseg: {prompt_mode: visual}}\n")
    assert fingerprint(8000, [b], ["--x", "1"]) != base


def test_claims_ledger_keeps_finished_tests_across_machines(tmp_path):
    """What one machine finished, the next reads back (a fresh OUT skips it); an entry is
    written once; a line that is not an entry stops the run with one line naming it."""
    from benchmarks.claims import METRICS, Ledger

    path = tmp_path / "ledger.jsonl"
    first = Ledger(path)
    scores = {k: 50.0 + n for n, k in enumerate(METRICS)}
    assert first.scores("full_seed0", "f1") is None
    first.add("full_seed0", "f1", scores)
    first.add("full_seed0", "f1", scores)  # a second add of the same test is not a second line
    assert len(path.read_text().splitlines()) == 1
    again = Ledger(path)
    assert again.scores("full_seed0", "f1") == scores
    assert again.scores("full_seed0", "f2") is None  # other settings: not the same run
    assert again.commits() == [first.version]  # the commits of the entries it used
    path.write_text(path.read_text() + "\n{not json\n")
    with pytest.raises(SystemExit, match=r"line 3 is not a ledger entry"):
        Ledger(path)
    memory = Ledger(None)  # --ledger none: kept in memory only
    memory.add("text_seed0", "f1", scores)
    assert memory.scores("text_seed0", "f1") == scores
