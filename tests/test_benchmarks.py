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


def flops_rows(tmp_path: Path, device: str) -> list[dict]:
    path = tmp_path / f"flops-{device}.json"
    out = run_script(
        "benchmarks/inference_cost.py", "--flops", "--preset", "tiny-convnext",
        "--classes", "8", "16", "--templates", "4", "--image-size", "128", "--refined", "3",
        "--flops-device", device, "--json", str(path),
    )  # fmt: skip
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
        for key in ("backbone", "cost_cos", "cost_embedding", "decoder_stage1",
                    "decoder_stage2", "decoder_stage3", "decoder_head"):  # fmt: skip
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
        "benchmarks/inference_cost.py", "--classes", "6", "--max-classes", "3", "--iters", "1",
        "--warmup", "0", "--no-memory", "--policies", "box", "pooled-own", "--threads", "1",
    )  # fmt: skip
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
        "benchmarks/inference_cost.py", "--ckpt", str(trained), "--images", str(images),
        "--vocab", "synthetic", "--bank", str(world / "bank.zarr"), "--max-images", "2",
        "--iters", "1", "--warmup", "0", "--policies", "box", "pooled-own", "--threads", "1",
    )  # fmt: skip
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
