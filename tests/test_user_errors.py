"""One user-error type (common/errors.py), one line, exit status 2, everywhere.

Each case is a mistake a user made (a file that is not what the option wants, a value out of
range, a damaged bank): the command ends in ONE stderr line ``error: ...`` that names the
argument, the value and the fix, exits with status 2, and prints no traceback. Most run
in-process (``cli.main``); those whose point is the real process (Lightning, the config reader,
decompression bombs) run ``python cli.py`` as a user would.
"""

from __future__ import annotations

import json
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY, cli_here, run_cli, tiny_cli_here
from PIL import Image

import cli
from common.errors import SettingError, UserError


def one_error_line(stderr: str, *, only: bool = True) -> str:
    """The one ``error:`` line of ``stderr``; ``only``: no other non-empty line either (Lightning
    commands print their own info lines first, so those pass only=False)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], stderr[-3000:]
    if only:
        assert len(lines) == 1, stderr[-3000:]
    return errors[0]


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """``cli.main(argv)`` in this process: (exit status, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def user_error(capsys, *argv: str) -> str:
    code, _, err = run_main(capsys, *argv)
    assert code == 2, err
    return one_error_line(err)


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A real 1-bit PNG of side x side pixels (400 M > PIL's 179 M limit), about 50 kB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + side // 8)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(bytes(range(256)) * 8)
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 24), (200, 30, 30)).save(good)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    return {
        "garbage": garbage,
        "good": good,
        "broken": broken,
        "bomb": bomb_png(tmp_path / "bomb.png"),
    }


def test_every_error_class_is_a_user_error_and_keeps_its_base():
    from data.catalog import DatasetError
    from data.datasets import UnreadableImageError
    from data.templates import TemplateError
    from data.vocabulary import VocabularyError
    from model.checkpoint import CheckpointError
    from pretrained.hub import WeightsUnavailableError
    from pretrained.presets import PresetError
    from prompt_bank.format import BankFormatError, BankMismatchError
    from prompt_bank.safety import BankLockError

    assert UserError in cli.USER_ERRORS  # what cli.main turns into one line and exit 2
    for cls in (
        DatasetError,
        VocabularyError,
        TemplateError,
        PresetError,
        BankFormatError,
        BankMismatchError,
        BankLockError,
        UnreadableImageError,
        CheckpointError,
    ):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError), cls
    assert issubclass(WeightsUnavailableError, UserError)
    assert issubclass(WeightsUnavailableError, RuntimeError)


# ---------------------------------------------------------------------------------------------
# 1. a file that is not a checkpoint


def test_garbage_checkpoint_to_segment_is_one_line(files, tmp_path, capsys):
    line = user_error(
        capsys,
        "segment",
        "--ckpt",
        str(files["garbage"]),
        "--images",
        str(files["good"]),
        "--vocab",
        "cat; dog",
        "--out",
        str(tmp_path / "o"),
    )
    assert "--ckpt" in line and "garbage.ckpt" in line and "not a checkpoint" in line
    assert "weights_only" not in line


def test_a_zip_that_is_not_a_checkpoint_is_one_line(tmp_path):
    import zipfile

    from model.checkpoint import CheckpointError, check_checkpoint

    archive = tmp_path / "other.ckpt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match=r"--ckpt_path '.*other.ckpt': not a checkpoint"):
        check_checkpoint(archive, "--ckpt_path")


def test_a_checkpoint_changed_after_it_was_saved_is_refused(trained, tmp_path, capsys):
    """64 bytes overwritten inside a tensor (the fault probe): torch loads it without a word and
    the model segments one class everywhere. The members' CRC-32 catch it, in one line naming
    the member; a device or a folder as --ckpt is "not a regular file"."""
    import zipfile

    from model.checkpoint import CheckpointError, check_checkpoint

    damaged = tmp_path / "damaged.ckpt"
    shutil.copy(trained, damaged)
    with zipfile.ZipFile(damaged) as archive:
        largest = max(archive.infolist(), key=lambda member: member.file_size)
    with open(damaged, "r+b") as f:
        f.seek(largest.header_offset + 200)
        f.write(b"\xff" * 64)
    with pytest.raises(CheckpointError, match=f"damaged \\(its member {largest.filename} "):
        check_checkpoint(damaged)
    line = user_error(capsys, "model", "export", str(damaged), "--out", str(tmp_path / "m"))
    assert "damaged" in line and not (tmp_path / "m").exists()
    check_checkpoint(trained)  # the original passes
    for path in ("/dev/zero", str(tmp_path)):
        with pytest.raises(CheckpointError, match="not a regular file"):
            check_checkpoint(path)


def test_garbage_checkpoint_to_explain_is_one_line(files, capsys):
    line = user_error(
        capsys,
        "explain",
        "--ckpt",
        str(files["garbage"]),
        "--image",
        str(files["good"]),
        "--class",
        "cat",
        "--vocab",
        "cat; dog",
    )
    assert "--ckpt" in line and "garbage.ckpt" in line


def test_garbage_checkpoint_to_lightning_test_is_one_line(world, files, capsys, monkeypatch):
    result = tiny_cli_here(world, capsys, monkeypatch, "test", "--ckpt_path", str(files["garbage"]))
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result.stderr, only=False)
    assert "--ckpt_path" in line and "garbage.ckpt" in line and "not a checkpoint" in line


# ---------------------------------------------------------------------------------------------
# 2. and 9. unreadable images: skipped, one line each; none readable: one error line, exit 2


def test_decompression_bomb_is_skipped_and_the_run_goes_on(files, tmp_path):
    out = tmp_path / "out"
    result = run_cli(
        "segment",
        "--method",
        "vip",
        "--config",
        "configs/vip_tiny.yaml",
        "--images",
        str(files["good"]),
        str(files["bomb"]),
        "--vocab",
        "cat; dog",
        "--out",
        str(out),
        "--quiet",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and "bomb.png" in skipped[0] and "pixels" in skipped[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 1 and summary["skipped"][0]["image"].endswith("bomb.png")
    assert (out / "good.png").is_file()


def test_a_link_that_loops_in_an_images_folder_is_skipped(files, tmp_path, cli_in_process):
    """Probe 6: a folder holding two links that point at each other (one named *.png) ended
    segment in a RuntimeError traceback (Path.resolve); now that entry is skipped with its
    reason, as a folder named x.png is, and the other images are segmented."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "good.png").write_bytes(files["good"].read_bytes())
    (folder / "loopA").symlink_to("loopB.png")
    (folder / "loopB.png").symlink_to("loopA")
    out = tmp_path / "out"
    result = cli_in_process(
        "segment", "--method", "vip", "--config", "configs/vip_tiny.yaml", "--images",
        str(folder), "--vocab", "cat; dog", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and "loopB.png" in skipped[0] and "symbolic links" in skipped[0]
    assert (out / "good.png").is_file()


def test_an_image_this_machine_cannot_hold_is_skipped_in_one_line(files, monkeypatch):
    """Found by the probe: under a raised --max-pixels, a PNG whose header claims 60000 x 60000
    was decoded until the OOM killer ended segment without a word. The header's size against
    the free memory refuses it first (free memory pinned to 1 GiB here)."""
    import data.datasets
    from data.datasets import UnreadableImageError, read_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # lifted: restored
    monkeypatch.setenv("DPSEG_MAX_PIXELS", str(10**9))
    monkeypatch.setattr(data.datasets, "_free_memory", lambda: 2**30)
    with pytest.raises(
        UnreadableImageError,
        match=r"20000 x 20000 pixels would need about 6\.0 "
        r"GiB to decode and segment, more than the 1\.0 GiB free here",
    ):
        read_image(files["bomb"])


def test_read_image_refuses_a_bomb_and_garbage_as_user_errors(files):
    from data.datasets import UnreadableImageError, read_image

    # found by the probe: PIL's guard (on open, before our header check) gave its own "could be
    # decompression bomb DOS attack" and "whatever --max-pixels says", which was not so
    with pytest.raises(
        UnreadableImageError,
        match=r"bomb.png.*400 M pixels, more than the limit of 80 M \(\$DPSEG_MAX_PIXELS; "
        r"segment: --max-pixels\).*resize it, or raise the limit \(\$DPSEG_MAX_PIXELS=N; for "
        r"segment, --max-pixels N\)",
    ):
        read_image(files["bomb"])
    with pytest.raises(UnreadableImageError, match=r"broken.jpg.*not an image"):
        read_image(files["broken"])
    assert read_image(files["good"]).shape == (24, 32, 3)


def test_read_image_refuses_a_pipe_instead_of_waiting_on_it(tmp_path):
    """A FIFO named like an image (found by the fault probe: segment waited forever)."""
    import os

    from data.datasets import UnreadableImageError, read_image

    os.mkfifo(tmp_path / "x.jpg")
    with pytest.raises(UnreadableImageError, match=r"x.jpg.*not a regular file"):
        read_image(tmp_path / "x.jpg")
    with pytest.raises(UnreadableImageError, match="not a regular file"):
        read_image(tmp_path)


def test_no_readable_image_is_a_user_error(files, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_main(
        capsys,
        "segment",
        "--method",
        "vip",
        "--config",
        "configs/vip_tiny.yaml",
        "--images",
        str(files["broken"]),
        str(files["bomb"]),
        "--vocab",
        "cat; dog",
        "--out",
        str(out),
        "--quiet",
    )
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--images" in errors[0] and "none of the 2" in errors[0]
    assert "Traceback" not in err
    assert json.loads((out / "summary.json").read_text())["images"] == 0  # the report is kept


# ---------------------------------------------------------------------------------------------
# 3. explain with an unreadable image


def test_explain_with_an_unreadable_image_is_one_line(files, capsys):
    line = user_error(
        capsys,
        "explain",
        "--ckpt",
        str(files["garbage"]),
        "--image",
        str(files["broken"]),
        "--class",
        "cat",
    )
    assert "broken.jpg" in line and "not an image" in line


# ---------------------------------------------------------------------------------------------
# 4. a config file that is not UTF-8 (or not YAML)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"trainer:\n  max_steps: \xff\xfe 3\n", "not UTF-8"), (b"trainer: [1,\n", "not valid YAML")],
)
def test_a_config_that_is_not_utf8_or_yaml_is_one_line(tmp_path, content, expected):
    config = tmp_path / "bad.yaml"
    config.write_bytes(content)
    result = run_cli("fit", "--config", str(config))
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result.stderr)
    assert "--config" in line and "bad.yaml" in line and expected in line


def test_a_vip_segment_config_that_is_not_utf8_is_one_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_bytes(b"model:\n  tau: \xff\n")
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    argv = [
        "segment",
        "--method",
        "vip",
        "--config",
        str(config),
        "--images",
        str(image),
        "--vocab",
        "cat",
        "--out",
        str(tmp_path / "out"),
    ]
    assert cli.main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--config" in line and "bad.yaml" in line and "not UTF-8" in line


# ---------------------------------------------------------------------------------------------
# 5. a damaged array zarr.json in a bank


@pytest.fixture(scope="module")
def tiny_bank(tmp_path_factory) -> Path:
    """Two classes, one template, one image each (kept, for a gallery): the smallest bank the
    tiny presets build."""
    import torch

    from data.templates import load_templates
    from data.vocabulary import load_vocabulary
    from prompt_bank.build import BuildConfig, build_bank

    location = tmp_path_factory.mktemp("user_errors") / "bank.zarr"
    config = BuildConfig(
        vocabulary=load_vocabulary("red disc; green square"),
        templates=load_templates("single"),
        classes_per_shard=2,
        batch_size=4,
        cpu_threads=1,
        keep_images=True,
        progress=False,
    )
    threads = torch.get_num_threads()
    build_bank(config, location)
    torch.set_num_threads(threads)
    return location


@pytest.mark.parametrize("array", ["text/embeddings", "visual/level_2", "visual"])
@pytest.mark.parametrize("damage", ["truncate", "not utf-8"])
def test_a_damaged_zarr_json_in_a_bank_is_one_line(tiny_bank, tmp_path, capsys, array, damage):
    """The line names the file and the bank's build command, with --out the copy at hand."""
    import zarr

    bank = tmp_path / "bank.zarr"
    shutil.copytree(tiny_bank, bank)
    recorded = "cli.py bank build --vocab 'red disc; green square' --out /elsewhere/bank.zarr"
    zarr.open_group(str(bank), mode="r+").attrs["command"] = recorded
    meta = bank / array / "zarr.json"
    if damage == "truncate":
        meta.write_bytes(meta.read_bytes()[:40])
    else:
        meta.write_bytes(b"\xff\xfe\x00garbage")
    for command in ("info", "repair"):
        line = user_error(capsys, "bank", command, str(bank))
        assert f"{array}/zarr.json is damaged" in line, line
        assert f"(cli.py bank build --vocab 'red disc; green square' --out {bank})" in line, line


def test_a_damaged_bank_given_to_lightning_test_is_one_line(world, tmp_path, capsys, monkeypatch):
    bank = tmp_path / "bank.zarr"
    shutil.copytree(world / "bank.zarr", bank)
    meta = bank / "visual" / "embeddings" / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:40])
    test_sets = json.dumps([{"dataset": "synthetic", "bank": str(bank)}])
    result = tiny_cli_here(world, capsys, monkeypatch, "test", "--data.test", test_sets)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result.stderr, only=False)
    assert "visual/embeddings/zarr.json is damaged" in line and "bank build" in line


# ---------------------------------------------------------------------------------------------
# 6. zero or negative counts are refused, never read as "the default"


@pytest.mark.parametrize(
    "option", [("--cpu-threads", "-2"), ("--cpu-threads", "0"), ("--steps", "0")]
)
def test_bank_build_refuses_zero_and_negative_counts(tmp_path, capsys, option):
    out = tmp_path / "bank.zarr"
    line = user_error(
        capsys,
        "bank",
        "build",
        "--vocab",
        "cat; dog",
        "--preset",
        "tiny",
        "--templates",
        "single",
        "--out",
        str(out),
        "--quiet",
        *option,
    )
    assert line.startswith(f"error: {option[0]} {option[1]}: must be >= 1")
    assert not out.exists()


def test_presets_pretrain_refuses_zero_steps(tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    line = user_error(capsys, "presets", "pretrain", "toy-vit", "--steps", "0", "--out", str(out))
    assert line == "error: --steps 0: must be >= 1" and not out.exists()


# ---------------------------------------------------------------------------------------------
# 7. fit without a progress bar (and without loggers)


def test_fit_without_progress_bar_or_loggers(world, capsys, monkeypatch):
    result = tiny_cli_here(
        world,
        capsys,
        monkeypatch,
        "fit",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
        "--trainer.max_steps",
        "1",
        "--trainer.val_check_interval",
        "1",
        "--trainer.enable_checkpointing",
        "false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# 8. one inline class; a class with a "/"; a typo of a name still gets help


@pytest.mark.parametrize(
    ("spec", "classes"),
    [
        ("cat", ["cat"]),
        ("cat, kitty", ["cat, kitty"]),
        ("car/truck", ["car/truck"]),
        ("cat; traffic light/signal", ["cat", "traffic light/signal"]),
        ("toys;", ["toys"]),
    ],
)
def test_vocab_one_class_and_slashes(capsys, spec, classes):
    code, out, err = run_main(capsys, "vocab", spec, "--json")
    assert code == 0, err
    assert json.loads(out)["classes"] == classes


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ade15O", "unknown vocabulary 'ade15O'; did you mean ade150?"),
        ("ade847", "unknown vocabulary 'ade847'."),
        ("toys", "did you mean toy?"),
        ("no/such/file.json", "vocabulary file 'no/such/file.json' does not exist"),
        ("tests/nothing_here", "vocabulary file 'tests/nothing_here' does not exist"),
    ],
)
def test_vocab_names_and_paths_that_do_not_exist_are_one_line(capsys, spec, expected):
    assert expected in user_error(capsys, "vocab", spec)


# ---------------------------------------------------------------------------------------------
# 9. a failed verification is a result (exit 1), not a user error


def test_bank_verify_failure_is_status_1_and_a_missing_bank_is_2(tiny_bank, tmp_path, capsys):
    bank = tmp_path / "bank.zarr"
    shutil.copytree(tiny_bank, bank)
    code, out, err = run_main(capsys, "bank", "verify", str(bank))
    assert code == 0, out + err
    for chunk in sorted((bank / "visual" / "embeddings" / "c").rglob("*")):
        if chunk.is_file():
            chunk.write_bytes(chunk.read_bytes()[:-8])
            break
    code, out, err = run_main(capsys, "bank", "verify", str(bank))
    assert code == 1 and "Traceback" not in err, out + err
    user_error(capsys, "bank", "verify", str(tmp_path / "nothing.zarr"))
    # the probe: a traceback, and a "failed" bank with a max difference of 0
    line = user_error(capsys, "bank", "verify", str(tiny_bank), "--regenerate", "-3")
    assert line == "error: --regenerate -3: give 0 or more items to rebuild"
    line = user_error(capsys, "bank", "verify", str(tiny_bank), "--tolerance", "-1")
    assert line == "error: --tolerance -1.0: give 0 or more (0: bit-identical)"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_any_command_in_one_line(tmp_path, signum):
    """Ctrl-C or SIGTERM in a long command (here writing the toy dataset): one line, exit
    128 + the signal, no traceback; a second signal does not cut the clean-up short."""
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "cli.py"),
            "data",
            "toy",
            "--root",
            str(tmp_path),
            "--train",
            "200000",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.rglob("*.jpg")) and time.monotonic() < deadline:
        time.sleep(0.2)  # until it is writing images
    process.send_signal(signum)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data interrupted by SIG"), err[-3000:]


def test_a_negative_image_count_names_the_option(capsys):
    """The probe: "train_images=-1, val_images=1: counts must be >= 0" (the config's names)."""
    line = user_error(capsys, "data", "toy", "--root", "r", "--train", "-1")
    assert line == "error: --train -1: give 0 or more images"


@pytest.mark.parametrize("when", ["ended", "began"])
def test_a_signal_just_outside_the_command_ends_in_one_line(when):
    """SIGTERM just after a command ended (its work complete) or just before it began, in
    cli.py's own process: one line saying which, exit 143; not the default handler's silent
    death (the probe's `bank pull` killed as it finished)."""
    script = (
        "import os, signal, sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import cli\n"
        "from common import signals\n"
        + (
            "code = cli.main(['presets'], script=True)\n"
            if when == "ended"
            else "signals.outside_the_command()\n"
        )
        + "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(60)\n"
        "sys.exit(0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    expected = "its work is complete" if when == "ended" else "nothing was done"
    assert len(lines) == 1 and "interrupted by SIGTERM" in lines[0], result.stderr[-3000:]
    assert expected in lines[0], lines
    if when == "ended":
        assert "toy" in result.stdout  # the command's own output was flushed before the exit


@pytest.mark.parametrize(
    "args",
    [
        ["bank", "build", "--vocab", "toy", "--preset", "toy", "--out", "{loop}"],
        ["data", "toy", "--root", "{loop}", "--quiet"],
        ["data", "toy", "--root", "{dangling}/toy", "--quiet"],
        ["segment", "--method", "vip", "--images", "{loop}", "--vocab", "toy", "--out", "o"],
    ],
    ids=["bank-build-out", "data-root", "data-root-dangling", "segment-images"],
)
def test_a_broken_link_is_named_as_one(tmp_path, capsys, monkeypatch, args):
    """A path that is (or lies under) a symbolic link looping to itself or pointing nowhere:
    the link named and what is wrong with it, exit 2 (the probe got "[Errno 17] File exists",
    an ELOOP traceback, and "no image found")."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dangling").symlink_to("nowhere")
    line = user_error(
        capsys, *[a.format(loop=tmp_path / "loop", dangling=tmp_path / "dangling") for a in args]
    )
    kind = "points nowhere" if "{dangling}" in " ".join(args) else "loops"
    expected = "which does not exist" if kind == "points nowhere" else "a symbolic link that loops"
    assert expected in line and str(tmp_path) in line, line


def cli_under_file_size_limit(
    *args: str, limit: int, env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``cli.py ARGS`` with no file allowed to grow past ``limit`` bytes (``ulimit -f``: EFBIG,
    as a full disk), in ``cwd``."""
    import os
    import resource

    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        capture_output=True,
        text=True,
        preexec_fn=set_limit,
        timeout=300,
        env=None if env is None else {**os.environ, **env},
        cwd=cwd,
    )


def test_a_full_disk_while_a_bank_is_sealed_leaves_a_bank_the_rerun_finishes(tmp_path):
    """Probe 7: a full disk between the seal (the root's attributes) and the consolidated root
    left a bank that every command refused for good, after "finished work is kept: run the
    command again". The tiny bank's shards fit under 14 kB; its consolidated root does not."""
    bank = tmp_path / "b.zarr"
    build = ["bank", "build", "--vocab", "red disc; green square", "--preset", "tiny"]
    build += ["--templates", "single", "--classes-per-shard", "1", "--batch-size", "4"]
    build += ["--cpu-threads", "1", "--keep-images", "--quiet", "--out", str(bank)]
    cut = cli_under_file_size_limit(*build, limit=14_000, env={"OMP_NUM_THREADS": "1"})
    assert cut.returncode == 2, cut.stderr[-3000:]
    line = one_error_line(cut.stderr)
    assert f"writing in {bank}" in line and "finished work is kept" in line, line
    again = run_cli(*build, env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 items built" in again.stdout  # nothing was lost: the rerun only sealed it
    verified = run_cli("bank", "verify", str(bank))
    assert verified.returncode == 0 and "verified" in verified.stdout, verified.stderr[-3000:]


def test_a_full_disk_during_repair_names_the_bank_and_the_rerun_finishes(tiny_bank, tmp_path):
    """Probe 7: a repair cut by a full disk named no file or folder (zarr's writes name none)."""
    bank = tmp_path / "bank.zarr"
    shutil.copytree(tiny_bank, bank)
    shard = next(
        p
        for p in (bank / "visual" / "images").rglob("*")
        if p.is_file() and p.stat().st_size > 8192
    )
    shard.unlink()
    cut = cli_under_file_size_limit("bank", "repair", str(bank), "--quiet", limit=8192)
    assert cut.returncode == 2, cut.stderr[-3000:]
    line = one_error_line(cut.stderr, only=False)
    assert line.startswith(f"error: writing in {bank}: File too large (EFBIG)"), line
    assert "finished work is kept" in line
    again = run_cli("bank", "repair", str(bank), "--quiet")
    assert again.returncode == 0, again.stderr[-3000:]
    assert run_cli("bank", "verify", str(bank)).returncode == 0


def test_a_folder_where_the_card_goes_is_named_before_the_seal_writes_anything(
    tiny_bank, tmp_path, capsys
):
    """Probe 7: `bank repair` of a whole bank whose README.md was a folder named zarr's
    temporary file, after rewriting the root: the bank was then refused for good."""
    bank = tmp_path / "bank.zarr"
    shutil.copytree(tiny_bank, bank)
    root = (bank / "zarr.json").read_bytes()
    (bank / "README.md").unlink()
    (bank / "README.md").mkdir()
    line = user_error(capsys, "bank", "repair", str(bank), "--quiet")
    assert line == (
        f"error: {bank}/README.md is a folder where the bank's card goes; remove it (rm -r "
        f"{bank}/README.md), then run `python cli.py bank repair {bank}`, which writes the card"
    )
    assert (bank / "zarr.json").read_bytes() == root  # nothing was written
    (bank / "README.md").rmdir()
    code, _, err = run_main(capsys, "bank", "repair", str(bank), "--quiet")
    assert code == 0, err
    assert run_main(capsys, "bank", "verify", str(bank))[0] == 0


def test_a_file_size_limit_ends_in_one_line(tmp_path):
    """A full disk, as ``ulimit -f`` makes one (EFBIG): one line naming the file, exit 2."""
    result = cli_under_file_size_limit(
        "data",
        "toy",
        "--root",
        str(tmp_path),
        "--train",
        "20",
        "--val",
        "2",
        "--test",
        "2",
        limit=2000,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.splitlines()  # no blank line before it (the progress bar's, once)
    assert len(lines) == 1 and "EFBIG" in lines[0] and str(tmp_path) in lines[0], lines
    assert lines[0].endswith("(finished work is kept: run the command again then)"), lines


def test_a_push_cut_by_a_file_size_limit_names_the_destination_and_leaves_no_half_file(
    tiny_bank, tmp_path
):
    remote = tmp_path / "remote"
    result = cli_under_file_size_limit(
        "bank", "push", str(tiny_bank), f"file://{remote}", "--quiet", limit=1024
    )
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {remote}/") and "EFBIG" in line, line
    assert [p for p in remote.rglob("*") if p.is_file()] == []


def test_a_subset_cut_by_a_file_size_limit_names_its_output_and_leaves_nothing(tiny_bank, tmp_path):
    """zarr's writes raise EFBIG without a file name: the line names the command's --out."""
    out = tmp_path / "subset.zarr"
    result = cli_under_file_size_limit(
        "bank", "subset", str(tiny_bank), "--vocab", "red disc", "--out", str(out), limit=1024
    )
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: writing --out {out}: ") and "EFBIG" in line, line
    assert line.endswith("(nothing partial is left: run the command again then)"), line
    assert list(tmp_path.iterdir()) == []


def test_a_pull_into_the_cache_cut_by_a_file_size_limit_names_the_cache(
    tiny_bank, tmp_path, capsys
):
    """Found by the probe: the line named no place. It names the cache folder the bank was
    going to, says nothing partial is left, and the next pull (no limit) completes."""
    remote = f"file://{tmp_path / 'remote.zarr'}"
    assert run_main(capsys, "bank", "push", str(tiny_bank), remote, "--quiet")[0] == 0
    cache = tmp_path / "cache"
    pull_cut_short("bank", remote, cache, f"the bank cache {cache}/", limit=1024)
    result = cli_under_file_size_limit(
        "bank", "pull", remote, "--quiet", limit=10**9, env={"DPSEG_CACHE": str(cache)}
    )
    assert result.returncode == 0 and len(list(cache.iterdir())) == 1, result.stderr[-3000:]


def pull_cut_short(kind: str, remote: str, cache: Path, names: str, limit: int) -> None:
    """``cli.py KIND pull REMOTE`` into ``cache`` under a file size limit: one line that
    ``names`` where it was writing and says nothing partial is left, and no file left."""
    env = {"DPSEG_CACHE": str(cache)}
    result = cli_under_file_size_limit(kind, "pull", remote, "--quiet", limit=limit, env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: writing {names}") and "EFBIG" in line, line
    assert line.endswith("(nothing partial is left: run the command again then)"), line
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_an_export_cut_by_a_file_size_limit_is_one_line_and_leaves_nothing(trained, tmp_path):
    """Found by the fault probe: safetensors' own error (a traceback) and an empty --out."""
    out = tmp_path / "model"
    result = cli_under_file_size_limit(
        "model", "export", str(trained), "--out", str(out), limit=100_000
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: writing --out {out}: "), lines
    assert "EFBIG" in lines[0] and "partial" in lines[0] and ".partial-" not in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_a_model_pull_cut_by_a_file_size_limit_names_the_cache(trained, tmp_path, capsys):
    """The line names the model cache folder, not the staging file, and nothing is left."""
    model, remote = tmp_path / "model", f"file://{tmp_path / 'remote'}"
    assert run_main(capsys, "model", "export", str(trained), "--out", str(model))[0] == 0
    assert run_main(capsys, "model", "push", str(model), remote, "--quiet")[0] == 0
    cache = tmp_path / "cache"
    pull_cut_short("model", remote, cache, f"the model cache {cache}/models/", limit=4096)


def test_a_file_where_the_cache_belongs_is_named_with_dpseg_cache(
    trained, tiny_bank, tmp_path, capsys, monkeypatch
):
    """Found by the probe: a pull into a cache under a file blamed the URL, the network and the
    credentials. Both pulls now name the cache, $DPSEG_CACHE and the file, before any request."""
    model, remote = tmp_path / "model", f"file://{tmp_path / 'remote'}"
    assert run_main(capsys, "model", "export", str(trained), "--out", str(model))[0] == 0
    assert run_main(capsys, "model", "push", str(model), remote, "--quiet")[0] == 0
    (tmp_path / "afile").write_text("")
    for cache in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        monkeypatch.setenv("DPSEG_CACHE", str(cache))
        for kind, url, label in (
            ("model", remote, "models cache ($DPSEG_CACHE/models)"),
            ("bank", str(tiny_bank), "banks cache ($DPSEG_CACHE)"),
        ):
            line = user_error(capsys, kind, "pull", url, "--quiet")
            assert line.startswith(f"error: the {label} '{cache}"), line
            assert f"'{tmp_path / 'afile'}' is a file" in line and "network" not in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "model", "remote"]


def test_settings_that_do_not_fit_the_weights_are_one_line(trained, tmp_path, capsys):
    """Found by the probe: a checkpoint whose hyper_parameters, or a model folder whose
    config.json, were edited to another decoder size ended in torch's 40-line size mismatch."""
    import torch

    edited = tmp_path / "edited.ckpt"
    state = torch.load(trained, map_location="cpu", weights_only=True)
    state["hyper_parameters"]["dpseg"]["cost_channels"] = 16
    torch.save(state, edited)
    line = user_error(capsys, "model", "export", str(edited), "--out", str(tmp_path / "m"))
    assert line.startswith(f"error: CKPT {str(edited)!r}: its weights do not fit the model its "), (
        line
    )
    assert "size mismatch for" in line and "use the checkpoint as cli.py fit wrote it" in line
    assert not (tmp_path / "m").exists()
    model = tmp_path / "model"
    assert run_main(capsys, "model", "export", str(trained), "--out", str(model))[0] == 0
    config = json.loads((model / "config.json").read_text())
    config["model"]["dpseg"]["cost_channels"] = 16
    (model / "config.json").write_text(json.dumps(config))
    Image.new("RGB", (32, 32)).save(tmp_path / "image.png")
    for option, value in (("--model", model), ("--ckpt", edited)):
        args = [option, str(value), "--images", str(tmp_path / "image.png"), "--vocab", "red disc"]
        args.append("--out")
        line = user_error(capsys, "segment", *args, str(tmp_path / "out"), "--text-only")
        fits = "model.safetensors does not fit" if option == "--model" else "do not fit"
        assert line.startswith(f"error: {option}") and fits in line, line


def test_an_encoder_this_installation_cannot_build_is_said_of_what_recorded_it(
    trained, world, tmp_path, capsys, monkeypatch
):
    """Found by the probe: a checkpoint or model folder recording an unknown encoder was told
    "--encoder 'x' is not a preset", an option the user never gave. The line names the file that
    records it; the Lightning commands name their own option, --model.encoder."""
    import torch

    edited = tmp_path / "edited.ckpt"
    state = torch.load(trained, map_location="cpu", weights_only=True)
    state["hyper_parameters"]["encoder"] = "nope-encoder"
    torch.save(state, edited)
    model = tmp_path / "model"
    assert run_main(capsys, "model", "export", str(trained), "--out", str(model))[0] == 0
    config = json.loads((model / "config.json").read_text())
    config["model"]["encoder"] = "nope-encoder"
    (model / "config.json").write_text(json.dumps(config))
    Image.new("RGB", (32, 32)).save(tmp_path / "image.png")
    for option, value, source in (
        ("--model", model, f"--model {str(model / 'config.json')!r}"),
        ("--ckpt", edited, f"--ckpt {str(edited)!r}"),
    ):
        args = [option, str(value), "--images", str(tmp_path / "image.png"), "--vocab", "red disc"]
        line = user_error(capsys, "segment", *args, "--out", str(tmp_path / "out"))
        assert line.startswith(f"error: the encoder 'nope-encoder' that {source} records is not"), (
            line
        )
    assert not (tmp_path / "out").exists()
    configs = ["--config", str(TINY), "--config", str(world / "overlay.yaml")]
    for extra, start in (
        (["--ckpt_path", str(edited)], f"that --ckpt_path {str(edited)!r} records is not a"),
        (["--model.encoder", "nope"], "error: --model.encoder 'nope' is not a preset"),
    ):
        result = cli_here(capsys, monkeypatch, "test", *configs, *extra, cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-3000:]
        assert start in one_error_line(result.stderr, only=False)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["bank", "subset", "{bank}", "--vocab", "red disc", "--out", "{file}/s.zarr"],
        ["bank", "subset", "{bank}", "--vocab", "red disc", "--out", "{file}"],
        ["bank", "merge", "{bank}", "{bank}", "--out", "{file}/m.zarr"],
    ],
    ids=["subset under a file", "subset onto a file", "merge under a file"],
)
def test_an_output_path_through_a_file_is_one_line(tiny_bank, tmp_path, capsys, command):
    """Found by the probe: NotADirectoryError (a traceback) and a bare "[Errno 17] File exists"."""
    file = tmp_path / "photo.jpg"
    file.write_bytes(b"jpeg")
    args = [a.format(bank=tiny_bank, file=file) for a in command]
    line = user_error(capsys, *args)
    assert str(file) in line and "Errno" not in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.jpg"]


def test_two_exports_racing_into_one_folder_end_in_one_line(trained, tmp_path, monkeypatch):
    """The export that finishes second is told another process exported there, and leaves
    nothing of its own: the winner's folder stays as it was."""
    import model.export as export

    out = tmp_path / "model"
    write = export._write_folder

    def racing(*args):  # the other export finishes while this one writes
        write(*args)
        out.mkdir()
        (out / "theirs.txt").write_text("the winner's")

    monkeypatch.setattr(export, "_write_folder", racing)
    with pytest.raises(SettingError, match="another process exported a model there") as error:
        export.export_model(trained, out)
    assert str(out) in str(error.value) and "nothing of this run was kept" in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]


def _without_write_access() -> list[str]:
    """A command prefix that runs without the right to write into a folder its mode forbids. As
    root (CI) that is an unprivileged user namespace (``unshare -U``: root's files are then
    outside it, so their mode bits hold); any other user has it already."""
    import os

    if os.geteuid() != 0:
        return []
    probe = subprocess.run(["unshare", "-U", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("running as root without user namespaces: no folder is unwritable here")
    return ["unshare", "-U"]


def cli_where_mode_holds(
    path: Path, mode: int, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``cli.py ARGS`` run while ``path`` has ``mode``, by a user that mode binds
    (``_without_write_access``); the mode is restored after."""
    original = path.stat().st_mode & 0o777
    path.chmod(mode)
    try:
        return subprocess.run(
            [*_without_write_access(), sys.executable, str(ROOT / "cli.py"), *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=cwd,
        )
    finally:
        path.chmod(original)


def test_a_cache_this_user_may_not_write_names_how_to_choose_another(
    tiny_bank, tmp_path, monkeypatch
):
    """Probe 7: a read-only cache was named neither as the cache nor with $DPSEG_CACHE / --to."""
    from prompt_bank.share import push_bank

    remote = tmp_path / "remote.zarr"
    push_bank(str(tiny_bank), f"file://{remote}", progress=False)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("DPSEG_CACHE", str(cache))
    result = cli_where_mode_holds(cache, 0o555, "bank", "pull", f"file://{remote}", "--quiet")
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: the banks cache ($DPSEG_CACHE) '{cache}': "), line
    assert line.endswith(
        "set $DPSEG_CACHE to a folder you may write to, or pull with --to DIR (nothing was done)"
    ), line
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize(
    "command",
    [
        ["data", "toy", "--root", "{out}", "--train", "4", "--val", "2", "--test", "2"],
        ["bank", "build", "--vocab", "red disc", "--preset", "toy", "--out", "{out}/b.zarr"],
    ],
    ids=["data toy", "bank build"],
)
def test_an_unwritable_output_folder_ends_in_one_line(tmp_path, command):
    """A folder the user may not write to (EACCES): one line naming it and the fix, exit 2,
    and nothing written."""
    out = tmp_path / "locked"
    out.mkdir()
    result = cli_where_mode_holds(out, 0o555, *(arg.format(out=out) for arg in command), "--quiet")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "EACCES" in lines[0] and str(out) in lines[0], lines
    assert "choose a folder you may write to" in lines[0], lines
    assert list(out.iterdir()) == []


@pytest.fixture
def open_place():
    """A folder under /tmp that any user may read and write (pytest's folders are root's
    alone), for the inputs of a command run as an unprivileged user; removed after."""
    import tempfile

    place = Path(tempfile.mkdtemp(prefix="dpseg-open-"))
    place.chmod(0o777)
    yield place
    shutil.rmtree(place, ignore_errors=True)


def readable_copy(source: Path, place: Path) -> Path:
    """``source`` (a file or a folder) copied into ``place``, readable by any user."""
    target = place / source.name
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


@pytest.mark.parametrize(
    "command",
    [
        [
            *("vip", "select-aliases", "--data", "x", "--vocab", "a"),
            *("--out", "{out}/aliases.txt", "--quiet", "--device", "cpu"),
        ],
        ["bank", "gallery", "{bank}", "--out", "{out}/gallery.png"],
        [
            *("segment", "--ckpt", "{ckpt}", "--vocab", "red disc", "--images", "{image}"),
            *("--bank", "{bank}", "--out", "{out}/o", "--quiet", "--device", "cpu"),
        ],
    ],
    ids=["select-aliases", "gallery", "segment"],
)
def test_an_output_where_this_user_may_not_write_is_refused_before_any_work(
    open_place, tiny_bank, trained, files, command
):
    """Found by the re-probe: select-aliases scored every image, then failed on the write naming
    its temporary file and saying finished work was kept. Now: one line before any work, naming
    the option, the folder, why and the fix."""
    inputs = {
        "bank": readable_copy(tiny_bank, open_place),
        "ckpt": readable_copy(trained, open_place),
        "image": readable_copy(files["good"], open_place),
        "out": open_place / "locked",
    }
    inputs["out"].mkdir()
    args = [arg.format(**inputs) for arg in command]
    result = cli_where_mode_holds(inputs["out"], 0o555, *args)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.splitlines()
    option_value = f"--out {args[args.index('--out') + 1]!r}"
    assert line == (
        f"error: {option_value}: this user may not write in {str(inputs['out'])!r} (EACCES); "
        "choose a folder you may write to, or fix the permissions of this one (nothing was done)"
    )
    assert list(inputs["out"].iterdir()) == []


def test_an_output_on_a_read_only_file_system_is_refused_before_any_work(tmp_path):
    """The same on a read-only mount (EROFS), made by a private mount namespace where this
    user may make one (root, as CI); elsewhere it is skipped."""
    out = tmp_path / "ro"
    out.mkdir()
    script = (
        f"mount --bind {out} {out} && mount -o remount,ro,bind {out} {out} && "
        f"exec {sys.executable} {ROOT / 'cli.py'} vip select-aliases --data x --vocab a "
        f"--out {out}/aliases.txt"
    )
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("this user may not make a mount namespace: no read-only mount here")
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr == (
        f"error: --out '{out}/aliases.txt': '{out}' is on a read-only file system (EROFS); "
        "choose a folder on a writable one (nothing was done)\n"
    )


def test_a_storage_error_of_a_command_with_one_output_promises_no_kept_work(tiny_bank, tmp_path):
    """Found by the re-probe: a gallery cut by a file size limit said "finished work is kept",
    where a command with one output keeps nothing; commands that write item by item (data
    toy, segment, bank build) still say so."""
    out = tmp_path / "gallery.png"
    result = cli_under_file_size_limit(
        "bank", "gallery", str(tiny_bank), "--out", str(out), limit=10
    )
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.splitlines()
    assert "EFBIG" in line and line.endswith(
        "(nothing partial is left: run the command again then)"
    )
    assert list(tmp_path.iterdir()) == []


def test_classes_missing_from_a_read_only_bank_are_cached_in_the_local_cache(world, trained):
    """A team's bank on a folder the user may not write to: the classes it lacks are generated
    into banks/cache/<content key> under the working folder, and read from there next time."""
    import tempfile

    from prompt_bank.store import Bank

    place = Path(tempfile.mkdtemp(prefix="dpseg-ro-"))  # under /tmp: an unprivileged user
    try:  # may reach it (pytest's folders are root's alone)
        place.chmod(0o777)
        share, work = place / "share", place / "work"
        shutil.copytree(world / "bank.zarr", share / "bank.zarr")
        work.mkdir(mode=0o777)
        work.chmod(0o777)
        shutil.copy(trained, place / "model.ckpt")
        image = next((world / "datasets" / "synthetic" / "images" / "val").glob("*.jpg"))
        shutil.copy(image, place / "image.jpg")
        for path in [place / "model.ckpt", place / "image.jpg", *share.rglob("*")]:
            path.chmod(0o777 if path.is_dir() else 0o644)
        args = ["segment", "--ckpt", str(place / "model.ckpt"), "--bank", str(share / "bank.zarr")]
        args += ["--images", str(place / "image.jpg"), "--vocab", "red disc; zebra"]
        for run in range(2):
            out = str(work / f"out{run}")
            # not --quiet: its info line says whether prompts were generated
            result = cli_where_mode_holds(share, 0o555, *args, "--out", out, cwd=work)
            assert result.returncode == 0, result.stderr[-3000:]
            assert "images/s" in result.stdout, result.stdout
            assert json.loads((work / f"out{run}" / "summary.json").read_text())["prompts"] == {
                "red disc": "bank",
                "zebra": "generated",
            }
            assert sorted(p.name for p in share.iterdir()) == ["bank.zarr"]
            (cached,) = (work / "banks" / "cache").glob("*/*.zarr")
            assert Bank.open(cached).classes == ["zebra"] and Bank.open(cached).seal is not None
            generated = "generating prompts for 1 classes" in result.stderr
            assert generated == (run == 0), result.stderr  # the second run reads the cache
    finally:
        shutil.rmtree(place, ignore_errors=True)


def test_a_repair_in_a_read_only_folder_names_the_bank_and_what_can_be_done(tiny_bank):
    """Found by the probe: resuming a complete bank in a folder the user may not write to named
    the lock's temporary file (build.<hex>.partial). The line names the bank and its folder,
    and says that the complete bank can be checked read-only."""
    import tempfile

    place = Path(tempfile.mkdtemp(prefix="dpseg-ro-"))  # under /tmp: reachable unprivileged
    try:
        place.chmod(0o777)
        bank = place / "bank.zarr"
        shutil.copytree(tiny_bank, bank)
        for path in bank.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        before = sorted(p.relative_to(bank) for p in bank.rglob("*"))
        result = cli_where_mode_holds(bank, 0o555, "bank", "repair", str(bank), "--quiet")
        assert result.returncode == 2, result.stderr[-3000:]
        (line,) = result.stderr.strip().splitlines()
        assert line == (
            f"error: {bank}: this user may not write in the bank's folder (EACCES), and a build, "
            "resume or repair takes its lock (build.lock) there; the bank is sealed as complete: "
            f"check it read-only with `python cli.py bank verify {bank}`, and to repair it, copy "
            "it to a folder you may write to and repair the copy"
        )
        assert sorted(p.relative_to(bank) for p in bank.rglob("*")) == before
    finally:
        shutil.rmtree(place, ignore_errors=True)


def test_an_object_the_user_may_not_read_is_one_line_with_the_fix_for_reading(tiny_bank, tmp_path):
    """A bank chunk with mode 000 (EACCES on a read): one line naming it, exit 2, and a fix
    for reading it, not for writing a folder."""
    import shutil

    bank = tmp_path / "bank.zarr"
    shutil.copytree(tiny_bank, bank)
    chunk = next(p for p in sorted((bank / "visual/embeddings").rglob("*")) if p.is_file())
    result = cli_where_mode_holds(chunk, 0o000, "bank", "verify", str(bank))
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr == (
        f"error: {chunk}: Permission denied (EACCES); you may not read it: fix its permissions "
        "(chmod) or run as its owner\n"
    )


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    """13000 x 13000 (169 M pixels, under PIL's own 179 M guard, 9 GB once decoded): refused
    from its header by dpseg's limit; the limit is a setting."""
    import warnings

    from data.datasets import UnreadableImageError, read_image

    big = bomb_png(tmp_path / "big.png", side=13000)
    with warnings.catch_warnings(record=True) as warned:  # PIL's own warning is not shown
        warnings.simplefilter("always")
        with pytest.raises(
            UnreadableImageError, match=r"169 M pixels, more than the limit of 80 M"
        ):
            read_image(big)
    assert [w for w in warned if issubclass(w.category, Image.DecompressionBombWarning)] == []
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(small)
    monkeypatch.setenv("DPSEG_MAX_PIXELS", "1000")
    with pytest.raises(UnreadableImageError, match="for segment, --max-pixels N"):
        read_image(small)
    monkeypatch.setenv("DPSEG_MAX_PIXELS", "1200")
    assert read_image(small).shape == (30, 40, 3)


def test_16_bit_and_float_grey_images_are_scaled_not_saturated(tmp_path):
    from data.datasets import UnreadableImageError, read_image

    ramp = np.linspace(0, 1, 64 * 48).reshape(48, 64)
    sixteen = tmp_path / "grey16.png"
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(sixteen)
    floats = tmp_path / "grey.tif"
    Image.fromarray(ramp.astype(np.float32), mode="F").save(floats)
    expected = np.round(ramp * 255)
    for path in (sixteen, floats):
        image = read_image(path)
        assert image.dtype == np.uint8 and image.shape == (48, 64, 3)
        assert np.abs(image[..., 0].astype(float) - expected).max() <= 1, path
    odd = tmp_path / "odd.tif"
    Image.fromarray((ramp * 1000 - 500).astype(np.float32), mode="F").save(odd)
    with pytest.raises(UnreadableImageError, match="no known scale"):
        read_image(odd)


def test_a_mistyped_preset_gets_a_did_you_mean(tmp_path):
    result = run_cli(
        "bank", "build", "--vocab", "cat", "--preset", "tyny", "--out", str(tmp_path / "b.zarr")
    )
    assert result.returncode == 2 and "did you mean 'tiny'?" in result.stderr
    assert not (tmp_path / "b.zarr").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "vocab: café\n".encode("latin-1"),
            "not UTF-8 text (invalid continuation byte: byte 0xe9 at offset 10); save it as UTF-8",
        ),
        (
            b"vocab: [cat, dog\ntemplates: x: y\n",
            "not valid YAML at line 2, column 10 (expected ',' or ']', but got ':'); fix the file",
        ),
        (  # probe 7: the last one won silently (a one-class bank from two vocab lines)
            b"vocab: red disc\nvocab: green square\n",
            "not valid YAML at line 2, column 1 (the key 'vocab' is given twice (lines 1 and 2);"
            " keep one); fix the file",
        ),
    ],
    ids=["latin-1", "malformed-yaml", "duplicate-key"],
)
@pytest.mark.parametrize(
    "command",
    [
        ["bank", "build", "--out", "b.zarr"],
        ["presets", "pretrain", "toy-convnext"],
        ["vip", "select-aliases"],
    ],
)
def test_a_config_file_that_is_not_utf8_or_yaml_is_one_line(
    tmp_path, capsys, monkeypatch, command, content, expected
):
    """Not jsonargparse's usage text and parser message: one line naming the file."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "bad.yaml"
    config.write_bytes(content)
    assert cli.main([*command, "--config", str(config)]) == 2
    assert capsys.readouterr().err == f"error: --config {str(config)!r}: {expected}\n"
    assert not (tmp_path / "b.zarr").exists()


def test_a_key_given_twice_is_refused_but_a_merged_key_may_be_set(tmp_path, capsys, world):
    """Duplicate keys are invalid YAML 1.2 and PyYAML keeps the last; YAML's merge key (<<)
    stays usable, its keys overridden in the mapping that merges them."""
    from conftest import TINY

    from common.config_files import read_config

    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &b {lr: 1, wd: 2}\nrun:\n  <<: *b\n  lr: 3\n")
    assert read_config(str(merged))["run"] == {"lr": 3, "wd": 2}
    flow = tmp_path / "flow.yaml"
    flow.write_text("a: {x: 1, x: 2}\n")
    with pytest.raises(UserError, match=r"the key 'x' is given twice \(on line 1\)"):
        read_config(str(flow))
    twice = tmp_path / "twice.yaml"
    twice.write_text("data:\n  batch_size: 4\n  batch_size: 2\n")
    argv = ["fit", "--config", str(TINY), "--config", str(world / "overlay.yaml")]
    line = user_error(capsys, *argv, "--config", str(twice))
    assert line.endswith("(the key 'batch_size' is given twice (lines 2 and 3); keep one); fix "
                         "the file"), line  # fmt: skip


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('images_per_prompt: "two"\n', "Expected a <class 'int'>. Got value: two"),
        ("bogus_key: 1\n", "Option 'bogus_key' is not accepted"),
        ("- a\n- b\n", " holds list ['a', 'b'], not a mapping of settings"),
        ("", " is empty, not a mapping of settings"),  # the probe: "Unexpected config:"
        ("\n# nothing\n", " is empty, not a mapping of settings"),
    ],
    ids=["type", "unknown-key", "not-a-mapping", "empty", "only-a-comment"],
)
def test_a_config_file_with_bad_settings_is_one_line_naming_it(
    tmp_path, capsys, monkeypatch, content, expected
):
    """Found by a fault probe: jsonargparse's 25 lines of usage text; a mistake on the command
    line itself keeps argparse's usage."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    argv = ["bank", "build", "--config", str(config), "--vocab", "cat", "--out", "b.zarr"]
    assert cli.main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: --config {str(config)!r}") and expected in line, line
    assert "cli.py bank build --help lists the settings" in line
    with pytest.raises(SystemExit) as stop:
        cli.main(["bank", "build", "--vocab", "cat", "--out", "b.zarr", "--bogus"])
    assert stop.value.code == 2 and "usage:" in capsys.readouterr().err
    assert not (tmp_path / "b.zarr").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("trainer:\n  max_stepz: 10\n", "does not accept option 'trainer.max_stepz'"),
        (
            "model:\n  init_args:\n    optim:\n      lrr: 1\n",
            "model.optim: Option 'lrr' is not accepted",
        ),
        ("", None),  # the probe: "Unexpected config:"
    ],
    ids=["trainer-key", "nested-model-key", "empty"],
)
def test_a_lightning_config_file_with_a_bad_setting_is_one_line_naming_it(
    tmp_path, capsys, monkeypatch, content, expected
):
    """fit/test's --config files as cli.py's own: the file and the setting's dotted path with
    the innermost reason, in one line (jsonargparse printed the usage and, for a nested key,
    twenty lines); a mistake on the command line keeps the subcommand's usage."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    toy = str(ROOT / "configs" / "toy_world.yaml")
    assert cli.main(["fit", "--config", toy, "--config", str(config)]) == 2
    line = one_error_line(capsys.readouterr().err)
    if expected is None:
        assert line == (
            f"error: --config {str(config)!r} is empty, not a mapping of settings: write each as "
            "`key: value` (cli.py fit --help lists the settings it takes)"
        )
        return
    assert line.startswith(f"error: --config {str(config)!r}: {expected}; fix the file"), line
    with pytest.raises(SystemExit) as stop:
        cli.main(["fit", "--config", toy, "--trainer.max_stepz", "3"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "usage: cli.py [options] fit" in err, err[-2000:]
    assert "unrecognized arguments: --trainer.max_stepz 3" in err


@pytest.mark.parametrize("kind", ["missing", "folder", "device", "pipe"])
@pytest.mark.parametrize("command", [["bank", "build", "--out", "b.zarr"], ["fit"]])
def test_a_config_path_that_is_no_file_is_one_line(tmp_path, capsys, monkeypatch, kind, command):
    """The probe: a missing --config or a folder printed the whole usage text (23 lines for
    bank build, 58 for fit), /dev/zero too, and a named pipe blocked the command forever."""
    import os

    monkeypatch.chdir(tmp_path)
    path = {"missing": "nosuch.yaml", "folder": str(tmp_path), "device": "/dev/zero"}.get(kind)
    if kind == "pipe":
        path = str(tmp_path / "settings.yaml")
        os.mkfifo(path)
    line = user_error(capsys, *command, "--config", path)
    expected = "no such file" if kind == "missing" else "not a regular file"
    assert line.startswith(f"error: --config {path!r}: {expected}"), line


def test_inline_yaml_settings_as_config_still_work(tmp_path, capsys, monkeypatch):
    """jsonargparse takes inline YAML as --config: it is not mistaken for a missing file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "b").write_text("a file where the bank would go")
    argv = ["bank", "build", "--config", "{batch_size: 4}", "--vocab", "a", "--preset", "tiny"]
    line = user_error(capsys, *argv, "--out", "b")
    assert line.startswith("error: --out b is a file"), line  # parsed: the next check speaks


@pytest.mark.parametrize(
    "given, expected",
    [
        (
            "red disc; flag",
            "one class name (the vocabulary goes in --vocab, classes separated by ';')",
        ),
        (  # found by the re-probe: "red disc" was then listed twice in the vocabulary
            "red disc, red circle",
            "one class name, without synonyms (they go in --vocab: 'red disc, red circle; ...' "
            "with --class 'red disc')",
        ),
    ],
)
def test_explain_takes_one_class_not_a_vocabulary(tmp_path, capsys, given, expected):
    argv = ["explain", "--ckpt", "x.ckpt", "--image", "x.png", "--class", given]
    line = user_error(capsys, *argv, "--out", str(tmp_path / "e.png"))
    assert line == f"error: --class {given!r}: {expected}", line


def test_a_control_character_in_explains_class_is_named_as_class(tmp_path, capsys):
    """Probe 6: blamed on "bank: entry 9", a vocabulary the user did not type."""
    argv = ["explain", "--ckpt", "x.ckpt", "--image", "x.png", "--class", "red\ndisc"]
    line = user_error(capsys, *argv, "--out", str(tmp_path / "e.png"))
    assert line.startswith("error: --class: entry 1 ('red\\ndisc') holds a control character")


def test_missing_options_are_named_as_typed(capsys):
    """Probe 6: "the following arguments are required: ignore_index" (the destination)."""
    for argv, missing in [
        (["eval-masks", "--pred", "p", "--gt", "g"], "--num-classes, --ignore-index"),
        (["explain", "--ckpt", "x", "--image", "y"], "--class"),
        (["bank", "gallery"], "bank, --out"),  # a positional keeps its name
    ]:
        with pytest.raises(SystemExit) as exited:  # argparse's usage, then the line
            cli.main(argv)
        assert exited.value.code == 2
        last = capsys.readouterr().err.splitlines()[-1]
        assert last == f"error: the following arguments are required: {missing}", last


def test_a_datasets_root_that_is_a_file_is_named_by_how_it_was_given(tmp_path, capsys, monkeypatch):
    """Probe 6: $DETECTRON2_DATASETS pointing at a file was blamed on --root, which was not
    given; and `data stats` told to write a dataset under the file."""
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(afile))
    line = user_error(capsys, "data", "toy", "--train", "1", "--val", "1", "--test", "1")
    assert line.startswith(f"error: $DETECTRON2_DATASETS {str(afile)!r} is a file"), line
    line = user_error(capsys, "data", "toy", "--root", str(afile), "--train", "1")
    assert line.startswith(f"error: --root {str(afile)!r} is a file"), line
    line = user_error(capsys, "data", "stats", "synthetic", "--root", str(afile))
    assert line == (
        f"error: dataset 'synthetic': the datasets root {str(afile)!r} is a file, not a folder; "
        "give the folder that holds the datasets (--root or $DETECTRON2_DATASETS)"
    )


def test_storage_options_are_never_echoed(capsys, monkeypatch):
    """Storage options carry credentials: a malformed value is named by its source alone."""
    monkeypatch.setenv("DPSEG_STORAGE_OPTIONS", '{"secret": "AKIA-SECRET", oops')
    line = user_error(capsys, "bank", "info", "http://127.0.0.1:9/x.zarr")
    assert line.startswith("error: $DPSEG_STORAGE_OPTIONS is not JSON (") and "AKIA" not in line
    monkeypatch.setenv("DPSEG_STORAGE_OPTIONS", '["AKIA-SECRET"]')
    line = user_error(capsys, "bank", "info", "http://127.0.0.1:9/x.zarr")
    assert line == (
        "error: $DPSEG_STORAGE_OPTIONS is a JSON list; it must be a JSON object, e.g. "
        "'{\"anon\": true}'"
    )


def test_a_generated_set_missing_a_split_gives_a_command_that_makes_it(tmp_path, capsys):
    """Probe 7: the command printed for a missing split (`data synthetic --root R`) was refused,
    since the folder holds a set made with other options; and `test` was told of --root."""
    argv = ["data", "synthetic", "--root", str(tmp_path), "--train", "3", "--val", "2"]
    assert run_main(capsys, *argv, "--quiet")[0] == 0
    shutil.rmtree(tmp_path / "synthetic" / "images" / "val")
    line = user_error(capsys, "data", "stats", "synthetic", "--root", str(tmp_path))
    command = f"cli.py data synthetic --root {tmp_path} --train 3 --val 2 --size 128 --seed 0"
    assert f"Prepare it with `{command}` (the datasets root: --root, or --data.root" in line
    assert run_main(capsys, *command.split()[1:], "--quiet")[0] == 0
    assert run_main(capsys, "data", "stats", "synthetic", "--root", str(tmp_path))[0] == 0


def test_probe_8_inputs_are_one_line(tiny_bank, tmp_path, capsys, monkeypatch):
    """Probe 8: `bank verify --seed -3` was a numpy traceback; a vocabulary file of gigabytes
    was read whole (minutes, gigabytes of memory); a synonym repeated within an entry evaded the
    duplicate-class check; a config key `null` was jsonargparse's bare "Key must be a string"."""
    line = user_error(capsys, "bank", "verify", str(tiny_bank), "--regenerate", "1", "--seed", "-3")
    assert line == "error: --seed -3: give 0 or more"
    huge = tmp_path / "huge.txt"
    with huge.open("wb") as f:
        f.truncate(3_000_000_000)  # sparse: no disk used
    line = user_error(capsys, "vocab", str(huge))
    assert line == (
        f"error: vocabulary file {str(huge)!r} is 3000 MB, more than the 16 MB a vocabulary may "
        "take (ade847's is 20 kB); give a file of class names, one per line"
    )
    line = user_error(capsys, "vocab", "red disc, red disc; red disc")
    assert "entry 2 (' red disc') repeats entry 1" in line, line
    vocab_dir = tmp_path / "vocab"
    vocab_dir.mkdir()
    (vocab_dir / "zero.txt").symlink_to("/dev/zero")
    monkeypatch.setenv("DPSEG_VOCAB_DIR", str(vocab_dir))
    line = user_error(capsys, "vocab", "zero")
    assert line.startswith(f"error: vocabulary 'zero': '{vocab_dir}/zero.txt' is not a regular")
    config = tmp_path / "nullkey.yaml"
    config.write_text("vocab: red disc\nnull: 3\n")
    line = user_error(capsys, "bank", "build", "--config", str(config), "--out", "x.zarr")
    assert line == (
        f"error: --config {str(config)!r}: not valid YAML at line 2, column 1 (a key is empty "
        "(null); give the setting's name); fix the file"
    )


def test_a_bank_path_that_is_a_link_loop_is_named_so(tmp_path, capsys):
    """Probe 6: `bank info` on a link loop said "build one there", which build refuses."""
    (tmp_path / "a.zarr").symlink_to("b.zarr")
    (tmp_path / "b.zarr").symlink_to("a.zarr")
    line = user_error(capsys, "bank", "info", str(tmp_path / "a.zarr"))
    assert line == (
        f"error: no bank at '{tmp_path / 'a.zarr'}': {tmp_path / 'a.zarr'}: a symbolic link that "
        "loops (to b.zarr); remove it or point it at a real folder"
    )


def test_a_checkpoint_whose_training_bank_moved_names_it_and_the_options(
    trained, files, tmp_path, capsys
):
    """Found by the re-probe: explain said "no bank recorded in the checkpoint is here" without
    the path, and with --vocab the fix spoke Python (bank=, text_only=True) to a CLI user."""
    import torch

    checkpoint = torch.load(trained, map_location="cpu", weights_only=False)
    gone = str(tmp_path / "moved" / "bank.zarr")
    for info in checkpoint["dpseg"]["banks"].values():
        info["location"] = gone
    moved = tmp_path / "moved.ckpt"
    torch.save(checkpoint, moved)
    argv = ["explain", "--ckpt", str(moved), "--image", str(files["good"]), "--class", "red disc"]
    argv += ["--device", "cpu", "--out", str(tmp_path / "e.png")]
    note = f"the training bank {gone!r} that the checkpoint records is not here"
    assert user_error(capsys, *argv) == (
        f"error: no vocabulary: {note}, and its classes are explain's default; give --vocab "
        "'a; b; ...' (the other classes), or --bank BANK"
    )
    assert user_error(capsys, *argv, "--vocab", "red disc; green square") == (
        f"error: no bank: {note}; give --bank, a bank built with the model's encoder (that one "
        "copied here, or any other), or --text-only for text prompts alone (from Python: bank=, "
        "text_only=True)"
    )
    assert not (tmp_path / "e.png").exists()


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    """`cli.py vocab ... | head -1`: exit 141 as Unix tools, no traceback; SIGPIPE itself stays
    ignored, so a server or client whose socket peer hangs up is not killed silently."""
    import os

    names = [f"class {i} with a fairly long name to fill the pipe" for i in range(5000)]
    (tmp_path / "v.txt").write_text("\n".join(names))
    read, write = os.pipe()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "vocab", str(tmp_path / "v.txt")],
        stdout=write,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    os.close(write)
    with os.fdopen(read, "rb") as reader:
        assert reader.read(20)  # the first lines, then the reader hangs up
    assert process.wait(timeout=120) == 141
    assert process.stderr.read().decode() == ""


def test_an_image_whose_temporary_file_another_writer_took_is_one_user_error(tmp_path):
    """Two writers of one output folder (the probe ran two `data toy` at once): when the
    temporary file goes away between the write and the rename, a UserError naming the file and
    the fix, not FileNotFoundError's traceback; the image is never left half written. The other
    writer is a real thread deleting the temporary file; the race is hit within a few tries."""
    import threading

    from common.io import save_image_atomic

    path = tmp_path / "a.png"
    image = Image.new("RGB", (64, 64), "red")
    stop = threading.Event()

    def other_writer() -> None:
        while not stop.is_set():
            path.with_name("a.png.tmp").unlink(missing_ok=True)

    thread = threading.Thread(target=other_writer)
    thread.start()
    try:
        with pytest.raises(UserError, match="another process was writing this file"):
            for _ in range(20000):
                save_image_atomic(image, path, "PNG")
    finally:
        stop.set()
        thread.join()
    if path.exists():  # an earlier try's rename: a whole image
        assert Image.open(path).convert("RGB").getpixel((0, 0)) == (255, 0, 0)


def test_a_bank_whose_out_is_not_utf8_is_sealed(tmp_path):
    """The probe: --out b"b\\xff.zarr" built every item, then the card (which quotes the build
    command) failed to encode, so the bank was never sealed and every rerun failed the same
    way. The card now shows the name escaped; the bank is complete and sealed."""
    import os

    from prompt_bank.store import Bank

    out = os.fsdecode(b"b\xff.zarr")
    result = run_cli(
        "bank",
        "build",
        "--vocab",
        "red disc",
        "--preset",
        "tiny",
        "--templates",
        "single",
        "--out",
        out,
        "--quiet",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\\udcff" in (tmp_path / out / "README.md").read_text()
    assert Bank.open(tmp_path / out).attrs["contents"]["complete"] is True


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["bank", "build", "--vocab", "x", "--out", "y.zarr", "--batch-size", "abc"],
            "error: --batch-size 'abc': expected an integer (cli.py bank build --help lists the "
            "options)",
        ),
        (
            [
                "segment",
                "--ckpt",
                "x",
                "--images",
                "y",
                "--vocab",
                "z",
                "--out",
                "o",
                "--rounds",
                "3",
            ],
            "error: --rounds '3': expected one of 1, 2 (cli.py segment --help lists the options)",
        ),
        (
            ["bank", "verify", "b.zarr", "--tolerance=xyz"],
            "error: --tolerance 'xyz': expected a number (cli.py bank verify --help lists the "
            "options)",
        ),
    ],
    ids=["int", "literal", "float"],
)
def test_an_option_value_of_the_wrong_type_is_one_line(capsys, args, expected):
    """Found by the probe: the usage, then jsonargparse's ten-line dump of the subtypes."""
    code, _, err = run_main(capsys, *args)
    assert (code, err) == (2, expected + "\n")


def test_a_pixel_limit_above_pils_guard_lifts_it_and_a_bad_one_writes_nothing(
    tmp_path, monkeypatch, capsys
):
    """Found by the probe: --max-pixels 500000000 still met PIL's own 179 M refusal on open;
    DPSEG_MAX_PIXELS=abc left an empty --out behind."""
    from data.datasets import read_image

    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(small)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    monkeypatch.setenv("DPSEG_MAX_PIXELS", "500000000")
    assert read_image(small).shape == (30, 40, 3)
    assert Image.MAX_IMAGE_PIXELS == 500_000_000  # PIL refuses from twice this, on open
    monkeypatch.setenv("DPSEG_MAX_PIXELS", "abc")
    out = tmp_path / "out"
    args = ["--ckpt", "x.ckpt", "--images", str(small), "--vocab", "cat", "--out", str(out)]
    line = user_error(capsys, "segment", *args)
    assert line == "error: $DPSEG_MAX_PIXELS='abc': give a whole number of pixels >= 1"
    assert not out.exists()


def test_a_file_where_a_banks_cache_belongs_sends_the_cache_to_the_keyed_folder(
    tiny_bank, tmp_path
):
    """The probe: ``<bank>.cache`` a file was reported as a read-only folder."""
    from prompt_bank.extend import cache_dir, cache_dirs
    from prompt_bank.store import Bank

    bank = tmp_path / "bank.zarr"
    shutil.copytree(tiny_bank, bank)
    opened = Bank.open(bank)
    key = opened.seal["content_key"][:16]
    assert cache_dir(opened) == tmp_path / "bank.cache"
    (tmp_path / "bank.cache").write_text("not a folder")
    assert cache_dir(opened) == Path("banks") / "cache" / key
    assert cache_dirs(opened) == [tmp_path / "bank.cache", Path("banks") / "cache" / key]


@pytest.mark.parametrize(
    "command, cut_in, says",
    [
        (["bank", "pull", "{remote}", "--to", "{out}", "--quiet"], "", "over"),
        (["bank", "subset", "{bank}", "--vocab", "red disc", "--out", "{out}"], "", "over"),
        (["bank", "merge", "{bank}", "{bank}", "--out", "{out}"], "", "over"),
        (
            ["bank", "push", "{bank}", "{fresh}", "--quiet"],
            "prompt_bank.share.upload_folder",
            "part",
        ),
        (["model", "export", "{ckpt}", "--out", "{out}"], "model.export.move_into_place", "over"),
        (
            ["model", "push", "{model}", "{fresh}", "--quiet"],
            "prompt_bank.share.upload_folder",
            "part",
        ),
        (
            ["model", "pull", "{model_remote}", "--to", "{out}", "--quiet"],
            "model.share._download",
            "over",
        ),
    ],
    ids=["bank-pull", "bank-subset", "bank-merge", "bank-push", "export", "model-push", "pull"],
)
def test_a_signal_in_a_transfer_says_what_a_rerun_does(
    trained, tiny_bank, tmp_path, capsys, monkeypatch, command, cut_in, says
):
    """Found by the probe: every transfer ended in "finished work is kept and nothing partial is
    left", where a pull or subset starts over and a push leaves part of its upload. A real
    SIGINT arrives mid-command (sent from inside a step of ours): the line says which."""
    import importlib
    import os

    model, model_remote = tmp_path / "model", f"file://{tmp_path / 'model_remote'}"
    remote = f"file://{tmp_path / 'remote.zarr'}"
    assert run_main(capsys, "model", "export", str(trained), "--out", str(model))[0] == 0
    assert run_main(capsys, "model", "push", str(model), model_remote, "--quiet")[0] == 0
    assert run_main(capsys, "bank", "push", str(tiny_bank), remote, "--quiet")[0] == 0
    module, _, name = (cut_in or "prompt_bank.share.move_into_place").rpartition(".")
    real = getattr(importlib.import_module(module), name)

    def signal_then_go_on(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(f"{module}.{name}", signal_then_go_on)
    out, fresh = tmp_path / "out", f"file://{tmp_path / 'fresh'}"
    values = dict(bank=tiny_bank, remote=remote, out=out, fresh=fresh, ckpt=trained)
    values.update(model=model, model_remote=model_remote)
    code, _, err = run_main(capsys, *[a.format(**values) for a in command])
    assert code == 128 + signal.SIGINT, err
    line = one_error_line(err)
    assert line.startswith(f"error: {command[0]} {command[1]} interrupted by SIGINT: "), line
    if says == "over":
        assert "nothing partial is left" in line and "which starts over" in line, line
        assert not out.exists() and not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    else:
        assert "the URL may hold part of the upload" in line and "complete it" in line, line
        monkeypatch.undo()
        rerun = [a.format(**values) for a in command]
        assert run_main(capsys, *rerun)[0] == 0


def test_a_build_interrupted_before_its_first_item_says_so(tmp_path, capsys, monkeypatch):
    """Found by the probe: a build stopped before its first flush said "the 0 items this run
    finished are saved in OUT", a folder that did not exist."""
    import os

    import prompt_bank.build

    real = prompt_bank.build.open_group

    def signal_then_go_on(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(prompt_bank.build, "open_group", signal_then_go_on)
    out = tmp_path / "bank.zarr"
    args = ["bank", "build", "--vocab", "toy", "--preset", "toy", "--out", str(out), "--quiet"]
    code, _, err = run_main(capsys, *args)
    assert code == 128 + signal.SIGTERM, err
    assert one_error_line(err) == (
        "error: interrupted by SIGTERM: before this run saved any item; run the same command again"
    )


@pytest.mark.parametrize(
    "option, value, most",
    [
        ("--cpu-threads", "100000", 1024),
        ("--images-per-prompt", "1000000", 1000),
        ("--resolution", "100000", 2048),
    ],
)
def test_a_build_size_beyond_any_use_is_refused_before_any_work(
    tmp_path, capsys, option, value, most
):
    """Found by the probe: a diffusers traceback (threads), or the OOM killer with no message and
    a half-made bank that refused the rerun with sane settings (images, resolution)."""
    out = tmp_path / "b.zarr"
    args = ["bank", "build", "--vocab", "red disc", "--preset", "tiny", "--out", str(out)]
    line = user_error(capsys, *args, option, value, "--quiet")
    assert line == f"error: {option} {value}: must be <= {most}"
    assert not out.exists()


@pytest.mark.parametrize(
    "command, expected",
    [
        (
            ["bank", "build", "--vocab", "red disc", "--preset", "tiny", "--out", "{http}/x.zarr"],
            "error: --out {http}/x.zarr: an http(s) URL can be read but not written; write the",
        ),
        (
            ["bank", "subset", "{bank}", "--vocab", "red disc", "--out", "{http}/s.zarr"],
            "error: --out {http}/s.zarr: an http(s) URL can be read but not written",
        ),
        (
            ["bank", "merge", "{bank}", "{bank}", "--out", "{http}/m.zarr"],
            "error: --out {http}/m.zarr: an http(s) URL can be read but not written",
        ),
        (
            ["bank", "repair", "{http}/b.zarr"],
            "error: bank repair: BANK {http}/b.zarr is an http(s) URL, which can be read but "
            "not written; a bank at an http(s) URL is mended by the owner of that server, who puts",
        ),
        (
            ["bank", "build", "--vocab", "red disc", "--preset", "tiny", "--out", ""],
            "error: --out '': empty; give the path or URL of the bank to write",
        ),
        (
            ["bank", "push", "{bank}", "file://{file}/sub/b.zarr"],
            "error: bank push to file://{file}/sub/b.zarr: '{file}' is a file, so no folder can",
        ),
    ],
    ids=[
        "build-http",
        "subset-http",
        "merge-http",
        "repair-http",
        "build-empty",
        "push-under-file",
    ],
)
def test_an_output_no_bank_can_be_written_to_is_one_line(
    tiny_bank, tmp_path, capsys, command, expected
):
    """Found by the probe: aiohttp's 501 traceback for an http(s) --out or repair, a blank value
    for --out '' (read as the working folder), and a file:// push under a file blamed on the
    network. Each is refused before any request or work."""
    values = {"http": "http://127.0.0.1:9", "bank": str(tiny_bank), "file": str(tmp_path / "f")}
    (tmp_path / "f").write_text("")
    line = user_error(capsys, *[a.format(**values) for a in command])
    assert line.startswith(expected.format(**values)), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_a_signal_while_segment_generates_classes_says_so(trained, tmp_path, capsys, monkeypatch):
    """Found by the probe: Ctrl-C while segment generated the classes its bank lacks said
    "finished work is kept", with nothing cached and nothing segmented."""
    import os

    import prompt_bank.build

    real = prompt_bank.build.open_group

    def signal_then_go_on(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(prompt_bank.build, "open_group", signal_then_go_on)
    Image.new("RGB", (32, 32)).save(tmp_path / "image.png")
    args = ["segment", "--ckpt", str(trained), "--images", str(tmp_path / "image.png")]
    args += ["--vocab", "red disc; zebra", "--out", str(tmp_path / "out"), "--quiet"]
    code, _, err = run_main(capsys, *args)
    assert code == 128 + signal.SIGINT, err
    assert one_error_line(err) == (  # --quiet: no info line before it (found by the re-probe)
        "error: interrupted by SIGINT while generating prompts for 1 classes the bank lacks, "
        "before segmenting: no item was finished yet; the same command starts them again"
    )
    assert not (tmp_path / "out").exists()


def test_a_second_segment_waits_for_the_classes_another_is_generating(tiny_bank, tmp_path, caplog):
    """Found by the probe: two segments generating the same missing class; the second ended
    with a build lock's advice (torchrun ranks, delete build.lock). It now waits for the first,
    then reads the classes it made."""
    import os
    import threading

    from data.vocabulary import load_vocabulary
    from prompt_bank.extend import build_missing_classes, cache_location, missing_classes
    from prompt_bank.safety import build_lock
    from prompt_bank.store import Bank, open_group

    bank = tmp_path / "bank.zarr"
    shutil.copytree(tiny_bank, bank)
    opened = Bank.open(bank)
    location = cache_location(opened, missing_classes(opened, load_vocabulary("red disc; zebra")))
    os.makedirs(location)
    group = open_group(location, mode="a")
    group.attrs.update({"format": "dpseg-prompt-bank", "format_version": 2})
    held, release = threading.Event(), threading.Event()

    def the_other_segment():
        with build_lock(group.store, location, "the other segment"):
            held.set()
            release.wait(30)

    other = threading.Thread(target=the_other_segment)
    other.start()
    held.wait(30)
    threading.Timer(2.0, release.set).start()
    try:
        caplog.set_level("WARNING")
        (cached,) = build_missing_classes(opened, "red disc; zebra", progress=False)
    finally:
        release.set()
        other.join()
    assert "another process is generating these classes" in caplog.text
    assert cached == location and Bank.open(cached).classes == ["zebra"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["presets", "pretrain", "toy-vit", "--pool", "1000000000", "--out", "{tmp}/p.pt"],
            "error: --pool 1000000000: must be at most 200000 (held in memory)",
        ),
        (
            [
                *("vip", "select-aliases", "--data", "x", "--vocab", "a", "--out", "{tmp}/a.txt"),
                *("--size", "100000"),
            ],
            "error: --size 100000: must be at most 2048",
        ),
    ],
    ids=["pretrain-pool", "select-aliases-size"],
)
def test_sizes_that_cannot_fit_in_memory_are_one_line(tmp_path, capsys, args, expected):
    """Found by the re-probe: 11 TiB and 120 GB allocation tracebacks."""
    assert user_error(capsys, *[a.format(tmp=tmp_path) for a in args]) == expected
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["garbled", "folder"])
def test_a_damaged_meta_json_of_a_toy_dataset_is_one_line(tmp_path, capsys, kind):
    """Found by the re-probe: rerunning data toy over a damaged meta.json, or a folder in its
    place, was a traceback."""
    args = ["data", "toy", "--root", str(tmp_path), "--train", "1", "--val", "0", "--test", "0"]
    assert run_main(capsys, *args, "--quiet")[0] == 0
    meta = tmp_path / "toy" / "meta.json"
    meta.unlink()
    meta.write_text("garbage") if kind == "garbled" else meta.mkdir()
    line = user_error(capsys, *args, "--quiet")
    expected = "is damaged (JSONDecodeError)" if kind == "garbled" else "is not a file (a folder"
    assert line.startswith(f"error: {str(meta)!r} {expected}"), line


def test_a_gallery_out_that_is_a_folder_is_one_line(tiny_bank, tmp_path, capsys):
    """Found by the re-probe: an IsADirectoryError traceback."""
    (tmp_path / "x.png").mkdir()
    line = user_error(capsys, "bank", "gallery", str(tiny_bank), "--out", str(tmp_path / "x.png"))
    assert line.startswith(f"error: --out {str(tmp_path / 'x.png')!r} is a folder"), line


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--bank", "{tmp}/nope.zarr"], "error: no bank at '{tmp}/nope.zarr'"),
        (["--vocab", ";;"], "error: vocabulary ';;' is an empty list"),
    ],
    ids=["bank", "vocab"],
)
def test_the_app_refuses_a_bad_bank_or_vocabulary_before_it_serves(
    trained, tmp_path, capsys, extra, expected
):
    """Found by the re-probe: the app said it was serving, and refused the bank at the first
    request; the one starting it saw no error."""
    pytest.importorskip("gradio")
    args = ["app", "--ckpt", str(trained), "--port", "0", *(a.format(tmp=tmp_path) for a in extra)]
    assert user_error(capsys, *args).startswith(expected.format(tmp=tmp_path))


def test_data_prepare_names_a_file_root_and_its_workers_option(tmp_path, capsys):
    """Found by the re-probe: a --root that is a file "does not exist"; --workers 0 was named
    "workers=0"."""
    afile = tmp_path / "afile"
    afile.write_text("")
    line = user_error(capsys, "data", "prepare", "ade150", "--root", str(afile))
    assert line.startswith(f"error: datasets root {str(afile)!r} is a file, not a folder"), line
    line = user_error(
        capsys, "data", "prepare", "ade150", "--root", str(tmp_path), "--workers", "0"
    )
    assert line == "error: --workers 0: must be at least 1 (threads that convert)"


def test_an_interrupted_generation_counts_every_run_s_cached_items(tiny_bank, tmp_path):
    """Found by the re-probe: a second interrupt said "40 items finished" where 272 were cached
    (only its own run's). The count is read from the cached bank's done flags."""
    from prompt_bank.extend import _items_done

    assert _items_done(str(tiny_bank), 7) == 2  # two classes, one template, one image each
    assert _items_done(str(tmp_path / "not-made.zarr"), 7) == 7


# ---------------------------------------------------------------------------------------------
# found by the third probe (2026-12-07)


def test_a_name_longer_than_the_file_system_allows_is_one_line(tmp_path, capsys):
    root = tmp_path / ("x" * 300)
    line = user_error(
        capsys, "data", "synthetic", "--root", str(root), "--train", "1", "--val", "1"
    )
    assert "(ENAMETOOLONG); a name on that path, or the whole path, is longer than" in line
    assert line.endswith("(most: 255 bytes a name, 4096 a path): choose a shorter one"), line
    assert list(tmp_path.iterdir()) == []


def test_pretrain_cut_by_a_file_size_limit_is_one_line_naming_its_out(tmp_path):
    """It was safetensors' own error (a traceback): the weights are now encoded in memory and
    written by Python, whole or not at all."""
    out = tmp_path / "w.safetensors"
    result = cli_under_file_size_limit(
        *("presets", "pretrain", "toy-vit", "--steps", "1", "--out", str(out), "--quiet"),
        limit=10_000,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {out}: File too large (EFBIG);"), line
    assert line.endswith("(nothing partial is left: run the command again then)"), line
    assert list(tmp_path.iterdir()) == []


def test_pretrain_never_replaces_a_file_unasked(tmp_path, capsys):
    """It replaced any file at --out, the committed preset weights included."""
    out = tmp_path / "precious.safetensors"
    out.write_bytes(b"earlier weights")
    argv = ["presets", "pretrain", "toy-vit", "--steps", "1", "--out", str(out), "--quiet"]
    assert user_error(capsys, *argv) == (
        f"error: --out {str(out)!r} already holds a file (earlier weights?); give another path, "
        "or --overwrite to replace it"
    )
    assert out.read_bytes() == b"earlier weights"


def test_weights_made_by_another_process_meanwhile_are_not_replaced(tmp_path):
    """Two pretrains to one --out: the second to finish refuses instead of replacing."""
    import torch

    from common.errors import SettingError
    from pretrained.bundled_weights import save_weights

    out = tmp_path / "w.safetensors"
    save_weights(torch.nn.Linear(2, 2), out, {}, overwrite=False)
    first = out.read_bytes()
    with pytest.raises(SettingError, match="already holds a file"):
        save_weights(torch.nn.Linear(3, 3), out, {}, overwrite=False)
    assert out.read_bytes() == first and sorted(tmp_path.iterdir()) == [out]
    save_weights(torch.nn.Linear(3, 3), out, {})  # overwrite: the default of the Python API
    assert out.read_bytes() != first


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--preview", "{tmp}/preview.txt"],
            "--preview '{tmp}/preview.txt': unknown image file extension '.txt'; give a .png "
            "path (or another image format PIL writes: .jpg, .webp, ...)",
        ),
        (
            ["--val", "0", "--preview", "{tmp}/p.png"],
            "--preview '{tmp}/p.png' shows val images, and --val is 0: give --val 1 or more, or "
            "leave --preview out",
        ),
        (["--train", "1000000000"], "--train 1000000000: give at most 1000000 images"),
    ],
    ids=["preview-suffix", "preview-without-val", "a-billion-images"],
)
@pytest.mark.parametrize("kind", ["synthetic", "toy"])
def test_dataset_writers_check_preview_and_counts_before_any_image(
    tmp_path, capsys, kind, args, expected
):
    """A --preview name PIL cannot write was a traceback after the dataset was written; --val 0
    with --preview got a wrong fix; a billion images met the OOM killer."""
    argv = ["data", kind, "--root", str(tmp_path / "d"), "--train", "1", "--val", "1"]
    argv += [a.format(tmp=tmp_path) for a in args]
    if kind == "toy":
        argv += ["--test", "0"]
    assert user_error(capsys, *argv) == f"error: {expected.format(tmp=tmp_path)}"
    assert list(tmp_path.iterdir()) == []


def test_a_config_of_nested_aliases_is_refused_at_once(tmp_path, capsys):
    """A "billion laughs" YAML hung fit and bank build while memory grew."""
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for previous, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    config = tmp_path / "laughs.yaml"
    config.write_text("\n".join([*lines, "batch_size: *i"]) + "\n")
    argv = ["bank", "build", "--config", str(config), "--vocab", "a", "--preset", "tiny"]
    assert user_error(capsys, *argv, "--out", str(tmp_path / "b.zarr")) == (
        f"error: --config {str(config)!r}: its YAML aliases expand to more than 100000 values (a "
        "file made to exhaust memory?); write the settings out without nested aliases"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["laughs.yaml"]


def test_segment_refuses_an_out_that_holds_its_images(trained, tmp_path, capsys):
    """--images X --out X segmented its own label maps and overlays on the next run."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "a.png")
    argv = ["segment", "--ckpt", str(trained), "--vocab", "red disc", "--images", str(folder)]
    assert user_error(capsys, *argv, "--out", str(folder), "--device", "cpu") == (
        f"error: --out {str(folder)!r} holds images that --images names "
        f"({str(folder / 'a.png')!r}): the outputs (label maps, overlays) would be read as images "
        "on the next run; give an --out folder of its own"
    )
    assert [p.name for p in folder.iterdir()] == ["a.png"]


def test_a_signal_to_a_command_that_keeps_nothing_says_it_starts_over(
    tmp_path, capsys, monkeypatch
):
    """eval-masks, pretrain, select-aliases and test said "finished work is kept" after a signal,
    where they keep nothing: they start over."""
    import os

    import data.eval_masks

    real = data.eval_masks._index_folder

    def signal_then_go_on(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(data.eval_masks, "_index_folder", signal_then_go_on)
    for name in ("pred", "gt"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / name / "a.png")
    argv = ["eval-masks", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]
    argv += ["--num-classes", "2", "--ignore-index", "255", "--out", str(tmp_path / "out")]
    code, _, err = run_main(capsys, *argv)
    assert code == 128 + signal.SIGINT, err
    assert one_error_line(err) == (
        "error: interrupted by SIGINT; nothing partial is left (the same command starts over)"
    )
    assert not (tmp_path / "out").exists()


def test_eval_masks_names_a_prediction_as_one(tmp_path, capsys):
    """A file given as --pred was "does not exist"; an RGB prediction was called a label."""
    for name in ("pred", "gt"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / name / "a.png")
    (tmp_path / "afile").write_text("x")
    argv = [
        "eval-masks",
        "--gt",
        str(tmp_path / "gt"),
        "--num-classes",
        "2",
        "--ignore-index",
        "255",
    ]
    line = user_error(capsys, *argv, "--pred", str(tmp_path / "afile"))
    assert line == f"error: prediction folder {str(tmp_path / 'afile')!r} is a file, not a folder"
    Image.new("RGB", (4, 4)).save(tmp_path / "pred" / "a.png")
    _, out, err = run_main(capsys, *argv, "--pred", str(tmp_path / "pred"))
    assert f"prediction {str(tmp_path / 'pred' / 'a.png')!r} has mode RGB" in out + err


def test_a_checkpoint_cut_by_a_full_disk_leaves_no_truncated_file(world, tmp_path):
    """Probe 7: a disk that filled while a checkpoint was written left a truncated last.ckpt
    (fsspec wrote it in /tmp, then copied it over), and the line named the /tmp file. The logs
    fit under 1 MB; a checkpoint of the tiny model does not."""
    from conftest import TINY

    args = ["fit", "--config", str(TINY), "--config", str(world / "overlay.yaml")]
    result = cli_under_file_size_limit(*args, limit=1_000_000, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result.stderr, only=False)
    assert line.startswith("error: runs/dpseg/version_0/checkpoints/step") and "(EFBIG)" in line
    assert "/tmp/tmp" not in line and "nothing partial is left" in line, line
    checkpoints = tmp_path / "runs" / "dpseg" / "version_0" / "checkpoints"
    assert checkpoints.is_dir() and list(checkpoints.iterdir()) == []  # nothing truncated


def test_a_full_disk_at_a_later_checkpoint_names_the_whole_one_to_resume_from(
    tmp_path, capsys, monkeypatch
):
    """Probe 8: "run the command again" after a full disk at a later checkpoint trained from
    step 0, although an earlier checkpoint was whole."""
    import errno
    import os

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "step10.ckpt").write_bytes(b"whole")
    os.utime(folder / "step10.ckpt", (1, 1))
    (folder / "step20.ckpt").write_bytes(b"whole too")
    failed = folder / "last.ckpt"

    def full_disk(argv):
        raise OSError(errno.ENOSPC, "No space left on device", str(failed))

    monkeypatch.setattr(cli, "lightning_main", full_disk)
    line = user_error(capsys, "fit", "--config", "x.yaml")
    assert line == (
        f"error: {failed}: No space left on device (ENOSPC); free some space or choose another "
        f"folder (nothing partial is left, and {folder / 'step20.ckpt'} is whole: resume from "
        f"it with the same command and --ckpt_path {folder / 'step20.ckpt'})"
    )


def test_prepare_beside_a_download_this_user_may_not_write_is_refused_before_converting(
    open_place,
):
    """It failed at the first write saying "finished work is kept" and "choose a folder on a
    writable one", which the outputs (beside the download) cannot."""
    from test_prepare import make_voc

    base = make_voc(open_place)
    for path in [open_place, *open_place.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    result = cli_where_mode_holds(
        base, 0o555, "data", "prepare", "voc20", "--root", str(open_place)
    )
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.splitlines()
    out = base / "annotations_detectron2" / "val"
    assert line == (
        f"error: the converted voc20 {str(out)!r}: this user may not write in {str(base)!r} "
        "(EACCES); the converted files go beside the download: make its folder writable, or copy "
        "the download to a folder you may write to and give that as --root (nothing was done)"
    )
    assert not (base / "annotations_detectron2").exists()


@pytest.mark.parametrize("kind", ["bank", "model"])
def test_an_empty_pull_target_is_refused(tmp_path, capsys, monkeypatch, kind):
    """`--to ''` pulled into the cache unasked (the probe); nothing is requested."""
    env_cache = tmp_path / "cache"
    monkeypatch.setenv("DPSEG_CACHE", str(env_cache))
    argv = [kind, "pull", f"file://{tmp_path / 'remote'}", "--to", ""]
    assert user_error(capsys, *argv) == (
        "error: --to '': give a folder, or leave --to out to pull into the cache"
    )
    assert not env_cache.exists()


def test_segment_racing_another_on_one_file_leaves_the_other_s_outputs(tmp_path, monkeypatch):
    """The probe: two segments on one --out; the one whose rename lost removed the image's
    three files, which the other had written and listed in its summary."""
    import common.io
    from common.io import ConcurrentWriteError
    from data.vocabulary import load_vocabulary
    from model.predictor import write_prediction

    vocabulary = load_vocabulary("red disc; green square")
    image, labels = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int64)
    theirs = write_prediction(tmp_path, "a", image, labels, vocabulary, {}, "a.png")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def lost_the_race(path, record):
        raise ConcurrentWriteError(f"{path}: another process was writing this file")

    monkeypatch.setattr(common.io, "write_json_atomic", lost_the_race)
    with pytest.raises(ConcurrentWriteError):
        write_prediction(tmp_path, "a", image, labels, vocabulary, {}, "a.png")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert theirs["label_map"] == "a.png"


@pytest.mark.parametrize("kind", ["prepare", "synthetic"])
def test_a_folder_where_a_dataset_file_goes_is_one_line(tmp_path, capsys, kind):
    """The probe: a rerun over a folder standing where a label map goes was a traceback."""
    if kind == "prepare":
        from test_prepare import make_voc

        base = make_voc(tmp_path)
        argv = ["data", "prepare", "voc20", "--root", str(tmp_path), "--quiet", "--workers", "1"]
        assert run_main(capsys, *argv)[0] == 0
        target = base / "annotations_detectron2" / "val" / "2007_000042.png"
    else:
        argv = ["data", "synthetic", "--root", str(tmp_path), "--train", "2", "--val", "1"]
        argv += ["--quiet"]
        assert run_main(capsys, *argv)[0] == 0
        target = next((tmp_path / "synthetic" / "annotations_detectron2" / "val").iterdir())
    target.unlink()
    target.mkdir()
    line = user_error(capsys, *argv)
    assert line.startswith(f"error: {target}: "), line
    assert line.endswith(
        "a folder of that name is in the way: remove it, then run the command again"
    )


def test_pipes_among_dataset_files_are_named_not_waited_on(tmp_path):
    """The probe: a pipe as a converted map, a source annotation or a ground-truth map hung
    data prepare and data stats forever, and eval-masks dropped such a pair silently."""
    import os

    from test_prepare import make_voc

    base = make_voc(tmp_path)
    prepare = ["data", "prepare", "voc20", "--root", str(tmp_path), "--quiet", "--workers", "1"]
    assert run_cli(*prepare, timeout=120).returncode == 0
    converted = base / "annotations_detectron2" / "val" / "2007_000042.png"
    whole = converted.read_bytes()
    converted.unlink()
    os.mkfifo(converted)  # a converted map: not whole, so converted again
    result = run_cli(*prepare, timeout=120)
    assert result.returncode == 0 and "1 damaged and converted again" in result.stdout
    assert converted.read_bytes() == whole

    (base / "JPEGImages").mkdir()
    Image.new("RGB", (4, 2)).save(base / "JPEGImages" / "2007_000042.jpg")
    converted.unlink()
    os.mkfifo(converted)
    stats = run_cli("data", "stats", "voc20", "--root", str(tmp_path), "--quiet", timeout=120)
    assert stats.returncode == 1, stats.stderr
    assert f"label {str(converted)!r} is a pipe, not a file" in stats.stdout

    gt = tmp_path / "gt"
    gt.mkdir()
    Image.fromarray(np.zeros((2, 4), np.uint8)).save(gt / "a.png")
    os.mkfifo(gt / "b.png")
    shutil.copytree(gt, tmp_path / "pred", ignore=shutil.ignore_patterns("b.png"))
    Image.fromarray(np.zeros((2, 4), np.uint8)).save(tmp_path / "pred" / "b.png")
    argv = ["eval-masks", "--pred", str(tmp_path / "pred"), "--gt", str(gt)]
    result = run_cli(*argv, "--num-classes", "2", "--ignore-index", "255", timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"label {str(gt / 'b.png')!r} is a pipe, not a file" in result.stderr

    source = base / "SegmentationClass" / "2007_000033.png"
    source.unlink()
    os.mkfifo(source)
    shutil.rmtree(base / "annotations_detectron2")
    result = run_cli(*prepare, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {str(source)!r} is a pipe, not a file; extract it again from the official download"
    )


def test_segment_lines_say_what_was_read_and_what_redo_does(trained, tmp_path, capsys, monkeypatch):
    """The probe: an interrupted --redo was told to run the same command (which starts over),
    and images over --max-pixels were "could not be read"."""
    import os

    import model.predictor

    for name in ("a", "b"):
        Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / f"{name}.png")
    argv = ["segment", "--ckpt", str(trained), "--vocab", "red disc", "--device", "cpu"]
    argv += ["--images", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--quiet"]
    from data.datasets import MAX_PIXELS

    # --max-pixels sets $DPSEG_MAX_PIXELS in this process: set here, so that it is undone after
    monkeypatch.setenv("DPSEG_MAX_PIXELS", str(MAX_PIXELS))
    line = user_error(capsys, *argv, "--out", str(tmp_path / "big"), "--max-pixels", "1")
    assert line.startswith("error: --images: none of the 2 images could be segmented ("), line
    assert (
        "32 x 32 = 1024 pixels, more than the limit of 1 ($DPSEG_MAX_PIXELS; segment: --max-pixels)"
        in line
    ), line
    monkeypatch.setenv("DPSEG_MAX_PIXELS", str(MAX_PIXELS))
    real = model.predictor.write_prediction

    def write_then_signal(*args, **kwargs):
        record = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return record

    monkeypatch.setattr(model.predictor, "write_prediction", write_then_signal)
    code, _, err = run_main(capsys, *argv, "--out", str(tmp_path / "o"), "--redo")
    assert code == 128 + signal.SIGINT, err
    assert one_error_line(err).endswith(
        "run it again without --redo to segment the rest (with --redo it starts over)"
    )


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["segment", "--method", "vip", "--vocab", "a", "--images", "x.png", "--out", ""],
            "--out '': empty; give the path of a folder",
        ),
        (
            ["segment", "--method", "vip", "--vocab", "a", "--images", "", "--out", "{tmp}/o"],
            "--images '': empty; give an image file, folder or glob",
        ),
        (
            ["bank", "gallery", "{tmp}/b.zarr", "--out", ""],
            "--out '': empty; give the path of a file",
        ),
    ],
    ids=["segment-out", "segment-images", "gallery-out"],
)
def test_an_empty_path_is_refused_not_read_as_the_working_folder(tmp_path, capsys, argv, expected):
    """The probe: segment --out '' wrote into the working folder, --images '' read it."""
    line = user_error(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert line == f"error: {expected}"
    assert list(tmp_path.iterdir()) == []


def test_inputs_nested_too_deeply_or_not_utf8_are_one_line(tmp_path, capsys):
    """The fifth probe: '[' * 1000 as --vocab, or as a --config, was a RecursionError
    traceback; a byte that is not UTF-8 in --vocab was a UnicodeEncodeError."""
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 1000 + "]" * 1000)
    line = user_error(capsys, "vocab", str(deep))
    assert line.startswith("error: an input of this command (a --config or --vocab file"), line
    config = tmp_path / "deep.yaml"
    config.write_text("a: " + "[" * 3000 + "]" * 3000 + "\n")
    line = user_error(capsys, "bank", "build", "--config", str(config), "--vocab", "a")
    assert line == (
        f"error: --config {str(config)!r}: nested too deeply to be read (a file made to exhaust "
        "the parser?); write the settings out at an ordinary depth"
    )
    line = user_error(capsys, "vocab", "red disc; \udcff cat")
    assert line == (
        "error: inline list: entry 2 (b' \\xff cat') holds the byte 0xff, which is not UTF-8 "
        "text; type class names in UTF-8"
    )


def test_an_output_that_is_a_link_to_nowhere_is_named_as_one(tiny_bank, tmp_path, capsys):
    """The fifth probe: subset, merge, pull --to and export named their temporary folder and
    said a file was in the way."""
    out = tmp_path / "dangle.zarr"
    out.symlink_to(tmp_path / "nowhere")
    line = user_error(
        capsys, "bank", "subset", str(tiny_bank), "--vocab", "red disc", "--out", str(out)
    )
    assert line == (
        f"error: --out {out}: a symbolic link to {tmp_path / 'nowhere'}, which does not exist; "
        "create that or remove the link"
    )


def test_a_png_with_huge_metadata_names_the_fix(tmp_path):
    """The fifth probe: PIL's guard against a 50 MB text chunk was named as a library constant."""
    from PIL import PngImagePlugin

    from data.datasets import UnreadableImageError, read_image

    info = PngImagePlugin.PngInfo()
    # compressed (zTXt): a few kB on disk, more than PIL's 1 MB once decompressed
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)
    path = tmp_path / "meta.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    with pytest.raises(UnreadableImageError) as error:
        read_image(path)
    assert "its PNG metadata (text chunks) is larger than PIL reads" in str(error.value)
    assert "save the picture again without its metadata" in str(error.value)


def test_a_push_to_a_file_url_that_is_a_file_says_so(tiny_bank, tmp_path, capsys):
    """Probe 10: 'holds objects () but no bank', an empty list and not the cause."""
    target = tmp_path / "afile.zarr"
    target.write_text("hi")
    line = user_error(capsys, "bank", "push", str(tiny_bank), f"file://{target}")
    assert line == (
        f"error: URL file://{target} is a file, not a bank folder; choose another URL (nothing "
        "was written)"
    )
    assert target.read_text() == "hi"


def test_a_newline_in_a_path_never_breaks_a_line(tiny_bank, tmp_path, capsys):
    """Probe 10: a path holding a newline split every one-line message (and the summary)."""
    odd = tmp_path / "b\u00e4nk \u2713\nx.zarr"
    odd.write_text("not a bank")
    line = user_error(capsys, "bank", "info", str(odd))
    assert "\\n" in line and "b\u00e4nk \u2713\\nx.zarr" in line
    built = tmp_path / "new\nbank.zarr"
    build = ["bank", "build", "--vocab", "red disc; green square", "--preset", "tiny"]
    build += ["--templates", "single", "--classes-per-shard", "2", "--batch-size", "4"]
    code, out, err = run_main(capsys, *build, "--cpu-threads", "1", "--out", str(built))
    assert code == 0, err
    (summary,) = [line for line in out.splitlines() if "items built" in line]
    assert summary.startswith(f"bank {tmp_path}/new\\nbank.zarr: ")
    remote = f"file://{tmp_path}/pushed\nhere.zarr"
    code, out, err = run_main(capsys, "bank", "push", str(tiny_bank), remote, "--quiet")
    assert code == 0, err
    assert out.splitlines() == [out.strip()] and "pushed\\nhere.zarr" in out  # probe 11
    code, out, err = run_main(capsys, "bank", "pull", remote, "--to", str(tmp_path / "p\nq"))
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith(f"{tmp_path}/p\\nq: ")
    subset, merged = tmp_path / "s\nt.zarr", tmp_path / "m\nn.zarr"  # probe 12: these too
    code, out, err = run_main(capsys, "bank", "subset", str(tiny_bank), "--vocab", "red disc",
                              "--out", str(subset))  # fmt: skip
    assert code == 0 and out.splitlines() == [out.strip()] and "s\\nt.zarr" in out, out + err
    code, out, err = run_main(capsys, "bank", "verify", str(subset))
    assert code == 0 and out.strip().splitlines()[-1] == f"bank {tmp_path}/s\\nt.zarr: verified"
    code, out, err = run_main(capsys, "bank", "merge", str(tiny_bank), str(subset), "--out",
                              str(merged))  # fmt: skip
    assert code == 0 and out.splitlines() == [out.strip()] and "m\\nn.zarr" in out, out + err


def test_a_full_disk_during_a_push_says_what_the_url_holds(tiny_bank, tmp_path):
    """Probe 11: a push stopped by a full disk said "nothing partial is left" while the URL held
    75 files of the upload (which no reader opens: the root goes last)."""
    biggest = max(p.stat().st_size for p in tiny_bank.rglob("*") if p.is_file())
    remote = tmp_path / "remote.zarr"
    cut = cli_under_file_size_limit(
        "bank", "push", str(tiny_bank), f"file://{remote}", "--quiet", limit=biggest // 2
    )
    line = one_error_line(cut.stderr)
    assert (
        cut.returncode == 2
        and "(the URL may hold part of the upload, which no reader opens" in line
    ), line
    assert "nothing partial is left" not in line, line
    again = run_cli("bank", "push", str(tiny_bank), f"file://{remote}", "--quiet")
    assert again.returncode == 0, again.stderr[-2000:]
    assert run_cli("bank", "verify", f"file://{remote}").returncode == 0


def test_a_codec_error_is_said_without_the_bytes_it_quotes():
    """Probe 13: a shard whose checksum failed was reported as "ValueError: Stored and computed
    checksum do not match. Stored: b'\\xdc\\x80\\xe3\\xf3'. Computed: b'\\xf3...'"."""
    from common.errors import without_bytes

    error = ValueError(
        "Stored and computed checksum do not match. Stored: b'\\xdc\\x80\\xe3\\xf3'. "
        "Computed: b'\\xf3\\xab\\xda\\xa9'."
    )
    assert without_bytes(error) == "ValueError: Stored and computed checksum do not match."
    assert without_bytes(ValueError("no bytes here")) == "ValueError: no bytes here"
    assert without_bytes(OSError(b"\x00raw")) == "OSError"
