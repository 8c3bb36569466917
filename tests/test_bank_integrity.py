"""Banks that can be trusted: damage found by `verify` and repaired by a resume, items whose bits
do not depend on their neighbours (merge, subset), outputs that never harm anything, one builder
per bank, and SIGINT/SIGTERM that save finished work."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import ROOT, run_cli
from test_bank import SMALL, arrays_of, assert_same_bank, small_config

from data.templates import load_templates
from data.vocabulary import Vocabulary, load_vocabulary, match_entries
from prompt_bank.build import build_bank, config_from_bank
from prompt_bank.compose import merge_banks, subset_bank
from prompt_bank.format import BankFormatError, BankMismatchError
from prompt_bank.integrity import flush_shard
from prompt_bank.safety import BankLockError
from prompt_bank.share import hub_upload_plan, pull_bank
from prompt_bank.store import Bank
from prompt_bank.verify import verify_bank


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The bank of test_bank.py's SMALL command (8 classes, 4 shards), built once here."""
    location = tmp_path_factory.mktemp("integrity") / "bank.zarr"
    build_bank(small_config(keep_images=True), location)
    return location


def copy_of(reference: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(reference, copy)
    return copy


def shard_object(bank: Path, array: str, shard: int) -> Path:
    zeros = {"text/embeddings": 2, "visual/done": 2, "visual/images": 5}.get(array, 3)
    return bank / array / "c" / str(shard) / Path(*["0"] * zeros)


def resume(bank: Path, *extra: str):
    result = run_cli("bank", "build", *SMALL, "--keep-images", "--out", str(bank), *extra)
    assert result.returncode == 0, result.stderr
    return result


# ---------------------------------------------------------------------------------------------
# integrity and repair


def _damage(bank: Path, damage: str) -> None:
    if damage == "delete level":
        shard_object(bank, "visual/level_2", 1).unlink()
    elif damage == "empty level":
        shard_object(bank, "visual/level_3", 2).write_bytes(b"")
    elif damage == "delete embeddings":
        shard_object(bank, "visual/embeddings", 3).unlink()
    elif damage == "swap shards":  # a valid shard, in the wrong place: decodes fine
        shutil.copy(
            shard_object(bank, "visual/embeddings", 0), shard_object(bank, "visual/embeddings", 3)
        )
    elif damage == "truncate":
        path = shard_object(bank, "visual/level_4", 0)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "shard index":  # zarr keeps a shard's index at its end
        path = shard_object(bank, "text/embeddings", 2)
        raw = bytearray(path.read_bytes())
        raw[-10] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "manifest":
        (bank / "manifest" / "shard-00001.json").write_text("{not json")


DAMAGE = {
    "delete level": r"shard 1: object visual/level_2/c/1/0/0/0 is missing",
    "empty level": r"shard 2: object visual/level_3/c/2/0/0/0 is empty \(0 bytes\)",
    "swap shards": r"shard 3: object visual/embeddings/c/3/0/0/0 has sha256 [0-9a-f]{12}",
    "truncate": r"shard 0: object visual/level_4/c/0/0/0/0 has sha256",
    "manifest": r"shard 1: manifest/shard-00001.json is garbled \(not JSON\), so none of the",
    "shard index": r"shard 2: object text/embeddings/c/2/0/0 has sha256",
    "delete embeddings": r"shard 3: object visual/embeddings/c/3/0/0/0 is missing",
}


@pytest.mark.parametrize(
    ("damages", "complete"),
    [
        (("delete level", "empty level", "swap shards"), 1),
        (("truncate", "manifest", "shard index", "delete embeddings"), 0),
    ],
)
def test_damage_is_named_and_a_resume_repairs_it(
    reference, tmp_path, damages, complete, cli_in_process
):
    bank = copy_of(reference, tmp_path)
    for damage in damages:
        _damage(bank, damage)
    if complete:  # as a user runs it
        verify = cli_in_process("bank", "verify", str(bank))
        assert verify.returncode == 1
        lines = verify.stdout
    else:
        report = verify_bank(Bank.open(bank))
        assert not report.ok
        lines = "\n".join(report.lines())
    for damage in damages:
        assert re.search(DAMAGE[damage], lines), (damage, lines)
    assert f"rebuild the damaged shards with `python cli.py bank repair {bank}`" in lines
    # The same build command repairs it: each damaged shard (12 items) is built again.
    built = 12 * (4 - complete)
    if complete:
        resumed = resume(bank)
        assert f"{built} items built (48 in the bank, {complete} shards already" in resumed.stdout
        assert "is damaged, rebuilding it" in resumed.stderr
    else:
        summary = build_bank(small_config(keep_images=True), bank)
        assert summary.items_done == built and summary.skipped_shards == complete
    assert_same_bank(reference, bank)


def test_bank_repair_uses_the_recorded_settings(reference, tmp_path, cli_in_process):
    bank = copy_of(reference, tmp_path)
    shard_object(bank, "visual/images", 2).unlink()
    result = cli_in_process("bank", "repair", str(bank), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "12 items built" in result.stdout
    assert_same_bank(reference, bank)
    sealed = Bank.open(bank).attrs["contents"]
    assert sealed["content_key"] == Bank.open(reference).attrs["contents"]["content_key"]
    assert cli_in_process("bank", "verify", str(bank)).returncode == 0


def test_done_flags_must_agree_with_the_data(reference, tmp_path, cli_in_process):
    """Flags that claim an item whose data is zero are caught even with a valid manifest."""
    bank = copy_of(reference, tmp_path)
    group = zarr.open_group(str(bank), mode="r+")
    b = Bank.open(bank)
    buffers = {path: np.asarray(group[path][0:2]) for path in b.layout.arrays()}
    buffers["visual/level_1"][1, 2, 0] = 0  # the data of item (1, 2, 0) lost, its flag kept
    flush_shard(group, b.layout, 0, buffers)
    result = cli_in_process("bank", "verify", str(bank))
    assert result.returncode == 1
    assert "visual/level_1 holds no data for 1 items marked done" in result.stdout


def test_sealed_bank_says_what_it_holds(reference):
    attrs = Bank.open(reference).attrs
    contents = attrs["contents"]
    assert contents["complete"] and contents["items"] == 48
    assert len(contents["objects"]) == 4 * 8  # 4 shards of 8 arrays
    for key, digest in contents["objects"].items():
        import hashlib

        assert hashlib.sha256((reference / key).read_bytes()).hexdigest() == digest, key
    root = json.loads((reference / "zarr.json").read_text())
    assert "visual/level_4" in root["consolidated_metadata"]["metadata"]  # one request opens it
    card = (reference / "README.md").read_text()
    assert contents["content_key"] in card and "tiny-sd" in card


# ---------------------------------------------------------------------------------------------
# items independent of the bank around them


def test_merge_equals_a_direct_build_and_regenerates_exactly(reference, tmp_path, cli_in_process):
    vocab = load_vocabulary("synthetic")
    a = Vocabulary.from_entries(vocab.entries[:5], name="a")
    b = Vocabulary.from_entries(vocab.entries[3:], name="b")
    build_bank(small_config(vocabulary=a, keep_images=True), tmp_path / "a.zarr")
    # Other shards than the reference's: items do not care.
    build_bank(
        small_config(vocabulary=b, keep_images=True, classes_per_shard=3), tmp_path / "b.zarr"
    )
    merged = cli_in_process(
        "bank",
        "merge",
        str(tmp_path / "a.zarr"),
        str(tmp_path / "b.zarr"),
        "--out",
        str(tmp_path / "c.zarr"),
    )
    assert merged.returncode == 0, merged.stderr
    direct, combined = arrays_of(reference), arrays_of(tmp_path / "c.zarr")
    for path in direct:
        assert np.array_equal(direct[path], combined[path]), path
    report = verify_bank(Bank.open(tmp_path / "c.zarr"), regenerate=6)
    assert report.ok, report.lines()
    assert "6 items rebuilt, max abs diff 0.00e+00 (tolerance 0)" in report.checks[-1].detail
    provenance = Bank.open(tmp_path / "c.zarr").attrs["provenance"]
    assert [(p["location"], p["rows"]) for p in provenance] == [
        (str(tmp_path / "a.zarr"), [0, 1, 2, 3, 4]),
        (str(tmp_path / "b.zarr"), [5, 6, 7]),
    ]
    assert all(len(p["content_key"]) == 64 for p in provenance)
    # Another batch size gives other bits: refused, naming it.
    build_bank(small_config(vocabulary=b, batch_size=2), tmp_path / "d.zarr")
    with pytest.raises(BankMismatchError, match=r"build\.batch_size: 4 vs 2"):
        merge_banks(Bank.open(tmp_path / "a.zarr"), Bank.open(tmp_path / "d.zarr"), "e.zarr")
    build_bank(small_config(vocabulary=b, templates=load_templates("single")), tmp_path / "f.zarr")
    with pytest.raises(BankMismatchError, match="templates: 3 vs 1"):
        merge_banks(Bank.open(tmp_path / "a.zarr"), Bank.open(tmp_path / "f.zarr"), "e.zarr")
    assert not (tmp_path / "e.zarr").exists()


def test_subset_equals_the_rows_of_the_big_bank(reference, tmp_path, cli_in_process):
    vocab = load_vocabulary("synthetic")
    picked = [vocab.entries[6], vocab.entries[1], vocab.entries[4]]
    result = cli_in_process(
        "bank",
        "subset",
        str(reference),
        "--vocab",
        "; ".join(picked),
        "--out",
        str(tmp_path / "s.zarr"),
    )
    assert result.returncode == 0, result.stderr
    assert "3 of the 8 classes" in result.stdout
    big, small = arrays_of(reference), arrays_of(tmp_path / "s.zarr")
    for path in big:
        assert np.array_equal(big[path][[6, 1, 4]], small[path]), path
    sub = Bank.open(tmp_path / "s.zarr")
    assert sub.classes == picked
    assert sub.attrs["provenance"][0]["rows"] == [0, 1, 2]
    report = verify_bank(sub, regenerate=2)
    assert report.ok, report.lines()
    with pytest.raises(BankMismatchError, match=r"lacks 2 of the 3 classes.*'zebra', 'okapi'"):
        vocab = Vocabulary.from_entries(["red disc", "zebra", "okapi"])
        subset_bank(Bank.open(reference), vocab, str(tmp_path / "t.zarr"))
    assert not (tmp_path / "t.zarr").exists()


def test_a_subset_reads_each_shard_it_copies_from_once_and_no_other(
    reference, tmp_path, monkeypatch
):
    bank = copy_of(reference, tmp_path)  # 8 classes, shards of 2
    path = shard_object(bank, "visual/level_1", 1)  # classes 2-3: not copied below
    path.write_bytes(path.read_bytes()[:40])
    read, check = [], Bank.check_shard

    def counted(self, shard, images=False):  # the real check (every reader's), counted
        read.append(shard)
        return check(self, shard, images)

    monkeypatch.setattr(Bank, "check_shard", counted)
    entries = load_vocabulary("synthetic").entries
    vocab = Vocabulary.from_entries([entries[i] for i in (7, 0, 6, 1, 5)], name="picked")
    subset_bank(Bank.open(bank), vocab, str(tmp_path / "s.zarr"))
    assert read == [3, 0, 2]  # each once, when its first row is needed; shard 1 never read
    big, small = arrays_of(reference), arrays_of(tmp_path / "s.zarr")
    for name in big:
        assert np.array_equal(big[name][[7, 0, 6, 1, 5]], small[name]), name
    vocab = Vocabulary.from_entries([entries[2]], name="damaged")  # a row of the damaged shard
    with pytest.raises(BankFormatError, match=r"shard 1 .*visual/level_1/c/1.*bank repair"):
        subset_bank(Bank.open(bank), vocab, str(tmp_path / "t.zarr"))
    assert not (tmp_path / "t.zarr").exists() and not list(tmp_path.glob(".t.zarr*"))


def test_classes_match_by_name_or_synonym():
    entries = [
        "wall",
        "pot, flowerpot",
        "pot, cooking pot",
        "person, individual, someone",
        "tv, television receiver",
    ]
    vocab = Vocabulary.from_entries(
        ["wall, brick wall", "flowerpot", "someone", "television receiver, tv", "pot", "zebra"]
    )
    assert match_entries(entries, vocab) == [0, 1, 3, 4, 1, None]


def test_failed_merge_leaves_nothing_and_the_retry_works(reference, tmp_path, cli_in_process):
    vocab = load_vocabulary("synthetic")
    a = Vocabulary.from_entries(vocab.entries[:4], name="a")
    build_bank(small_config(vocabulary=a, keep_images=True), tmp_path / "a.zarr")
    b = copy_of(reference, tmp_path)
    path = shard_object(b, "visual/level_1", 3)
    path.write_bytes(path.read_bytes()[:40])
    out = tmp_path / "c.zarr"
    failed = cli_in_process("bank", "merge", str(tmp_path / "a.zarr"), str(b), "--out", str(out))
    assert failed.returncode == 2, failed.stderr
    assert "visual/level_1/c/3/0/0/0" in failed.stderr and "bank repair" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".c.zarr*"))
    build_bank(config_from_bank(Bank.open(b).attrs, progress=False), b)  # = bank repair
    merge_banks(Bank.open(tmp_path / "a.zarr"), Bank.open(b), str(out))  # the retry
    assert arrays_of(out)["visual/embeddings"].shape[0] == 8
    with pytest.raises(FileExistsError, match="already holds a bank"):
        merge_banks(Bank.open(tmp_path / "a.zarr"), Bank.open(b), str(out))


# ---------------------------------------------------------------------------------------------
# safe outputs and the lock


def test_out_that_is_not_a_bank_is_refused_untouched(tmp_path, cli_in_process):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    (mine / "notes.txt").write_text("my work")
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    with pytest.raises(BankFormatError, match=f"--out {mine} is a zarr group that is not a dpseg"):
        build_bank(small_config(), mine)
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before
    (mine / "zarr.json").unlink()
    with pytest.raises(
        BankFormatError, match=r"is a directory that is not a dpseg bank \(it holds"
    ):
        build_bank(small_config(), mine)
    afile = tmp_path / "file.zarr"
    afile.write_text("x")
    with pytest.raises(BankFormatError, match="is a file, not a bank directory"):
        build_bank(small_config(), afile)
    array = tmp_path / "array.zarr"
    zarr.create_array(str(array), shape=(4,), dtype="i4")
    result = cli_in_process("bank", "build", *SMALL, "--out", str(array))
    assert result.returncode == 2 and "is a zarr array, not a prompt bank" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _write_lock(bank: Path, pid: int, host: str) -> None:
    lock = {"pid": pid, "host": host, "started": "2026-11-30T00:00:00+00:00", "token": "x"}
    (bank / "build.lock").write_text(json.dumps(lock))


def test_a_second_builder_is_refused_and_a_stale_lock_taken_over(reference, tmp_path):
    bank = copy_of(reference, tmp_path)
    shard_object(bank, "visual/done", 1).unlink()  # work left to do
    _write_lock(bank, os.getpid(), socket.gethostname())  # a live process on this host
    result = run_cli("bank", "build", *SMALL, "--keep-images", "--out", str(bank))
    assert result.returncode == 2
    assert f"is being built by pid {os.getpid()} on {socket.gethostname()}" in result.stderr
    assert "delete" in result.stderr and "build.lock" in result.stderr
    _write_lock(bank, 1, "another-host")  # elsewhere: cannot tell, so refused
    with pytest.raises(BankLockError, match="is being built by pid 1 on another-host"):
        build_bank(small_config(keep_images=True), bank)
    gone = subprocess.Popen(["true"])
    gone.wait()
    _write_lock(bank, gone.pid, socket.gethostname())  # its process has ended: stale
    build_bank(small_config(keep_images=True), bank)
    assert not (bank / "build.lock").exists()
    assert_same_bank(reference, bank)


def test_a_v1_bank_is_read_but_not_resumed(reference, tmp_path):
    bank = copy_of(reference, tmp_path)
    group = zarr.open_group(str(bank), mode="r+")
    attrs = {k: v for k, v in group.attrs.items() if k != "contents"}  # v1 banks have no seal
    group.attrs.put({**attrs, "format_version": 1})
    assert Bank.open(bank).done().all()  # still read
    with pytest.raises(BankFormatError, match="is a format v1 bank, which this dpseg reads but"):
        build_bank(small_config(keep_images=True), bank)


def test_hub_presets_pin_their_revisions():
    from pretrained.presets import ENCODERS, GENERATORS

    for preset in [*GENERATORS.values(), *ENCODERS.values()]:
        on_hub = getattr(preset, "model_id", None) or getattr(preset, "hub_id", None)
        if on_hub:  # dinotxt-l16 is two local files: no hub, no revision
            assert re.fullmatch(r"[0-9a-f]{40}", preset.revision or ""), preset.name
        assert preset.license, preset.name


# ---------------------------------------------------------------------------------------------
# signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_finished_items_and_ends_in_one_line(tmp_path, signum):
    args = [
        "--vocab",
        "synthetic",
        "--preset",
        "tiny",
        "--templates",
        "imagenet80:6",
        "--images-per-prompt",
        "2",
        "--classes-per-shard",
        "4",
        "--batch-size",
        "2",
        "--cpu-threads",
        "1",
        "--quiet",
    ]
    bank = tmp_path / "bank.zarr"
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "cli.py"),
            "bank",
            "build",
            *args,
            "--flush-seconds",
            "1000",
            "--out",
            str(bank),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (bank / "manifest").exists():  # the first batches are being computed
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline
        time.sleep(0.01)
    time.sleep(0.3)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr  # the shell's status for a signal
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    name = signal.Signals(signum).name
    saved = int(re.search(rf"interrupted by {name}: the (\d+) items this run finished", stderr)[1])
    done = zarr.open_group(str(bank), mode="r")["visual/done"][:]
    assert saved == int(done.sum()) and 0 < saved < done.size
    assert not (bank / "build.lock").exists()
    if signum == signal.SIGTERM:
        return  # resuming is the same after either signal: checked once, below
    config = small_config(
        templates=load_templates("imagenet80:6"), classes_per_shard=4, batch_size=2
    )
    assert build_bank(config, bank).items_done == done.size - saved  # the same command
    build_bank(config, tmp_path / "direct.zarr")
    assert_same_bank(tmp_path / "direct.zarr", bank)


@pytest.mark.e2e  # 40-50 s of three torchrun launches: make test-all (CI) runs it
def test_a_signal_to_torchrun_stops_every_rank_in_one_line_each_and_the_bank_resumes(tmp_path):
    """Ctrl-C on ``torchrun ... bank build``: torchrun passes SIGINT on to its two ranks, each
    saves what it finished and says so in one line naming its rank; the same build in one
    process then completes the bank exactly as an uninterrupted build."""
    args = [
        "--vocab",
        "synthetic",
        "--preset",
        "tiny",
        "--templates",
        "imagenet80:10",
        "--images-per-prompt",
        "4",
        "--classes-per-shard",
        "2",
        "--batch-size",
        "2",
        "--cpu-threads",
        "1",
        "--quiet",
        "--flush-seconds",
        "1000",
    ]
    bank = tmp_path / "bank.zarr"
    env = {
        **os.environ,
        "MASTER_PORT": str(29500 + (os.getpid() + 7) % 1000),
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            str(ROOT / "cli.py"),
            "bank",
            "build",
            *args,
            "--out",
            str(bank),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 180
    while not (bank / "manifest").exists():  # a first shard is finished: work is under way
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline
        time.sleep(0.01)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)  # torchrun's agent sends it to every rank
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    lines = sorted(ln for ln in stderr.splitlines() if ln.startswith("error: "))
    assert len(lines) == 2, stderr[-3000:]
    saved = 0
    for rank, line in enumerate(lines):
        found = re.fullmatch(
            rf"error: rank {rank} of 2: interrupted by SIGINT: the (\d+) items this rank "
            rf"finished are saved in {re.escape(str(bank))}; run the same command again to resume",
            line,
        )
        assert found, line
        saved += int(found[1])
    done = zarr.open_group(str(bank), mode="r")["visual/done"][:]
    assert saved == int(done.sum()) and 0 < saved < done.size
    assert not (bank / "build.lock").exists()
    resumed = run_cli("bank", "build", *args, "--out", str(bank))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{done.size - saved} items built" in resumed.stdout
    config = small_config(
        templates=load_templates("imagenet80:10"), images_per_prompt=4, batch_size=2
    )
    build_bank(config, tmp_path / "direct.zarr")
    assert_same_bank(tmp_path / "direct.zarr", bank)


# ---------------------------------------------------------------------------------------------
# kills between two writes of a flush (found by review)


def test_a_kill_after_the_last_flags_still_ends_sealed(reference, tmp_path):
    """Killed after a shard's last done flags but before its final manifest: the resume
    settles that manifest and seals the bank (else it could never be pushed)."""
    bank = copy_of(reference, tmp_path)
    group = zarr.open_group(str(bank), mode="r+")
    attrs = dict(group.attrs)
    attrs.pop("contents")
    group.attrs.put(attrs)
    manifest = bank / "manifest" / "shard-00002.json"
    body = json.loads(manifest.read_text())
    body["objects"] = {k: [v[0], "0" * 64] for k, v in body["objects"].items()}
    del body["sizes"]
    manifest.write_text(json.dumps(body))
    summary = build_bank(small_config(keep_images=True), bank)
    assert summary.items_done == 0 and summary.skipped_shards == 4
    assert Bank.open(bank).attrs["contents"] == Bank.open(reference).attrs["contents"]


def test_two_cut_flushes_in_a_row_keep_the_shard(reference, tmp_path, monkeypatch):
    """A flush cut short leaves [new, old] with the old object stored; a second flush cut right
    after its intent must still accept that object (it lists every hash the object may have)."""
    import prompt_bank.integrity as integrity

    bank = copy_of(reference, tmp_path)
    manifest = bank / "manifest" / "shard-00000.json"
    body = json.loads(manifest.read_text())
    body["objects"] = {k: ["f" * 64, v[0]] for k, v in body["objects"].items()}
    manifest.write_text(json.dumps(body))
    group = zarr.open_group(str(bank), mode="r+")
    layout = Bank.open(bank).layout
    buffers = {path: np.asarray(group[path][0:2]) for path in layout.arrays()}
    buffers["visual/level_1"][0, 0, 0] += 1  # new bytes for the flush to write
    real_put = integrity.put_object

    def killed_after_the_manifest(store, key, raw):
        if not key.startswith("manifest/"):
            raise KeyboardInterrupt("killed")
        real_put(store, key, raw)

    monkeypatch.setattr(integrity, "put_object", killed_after_the_manifest)
    with pytest.raises(KeyboardInterrupt):
        flush_shard(group, layout, 0, buffers)
    monkeypatch.setattr(integrity, "put_object", real_put)
    state = integrity.check_shard(group, layout, 0)
    assert not state.damaged, state.problems
    assert state.status == "complete"


def test_an_edited_sealed_bank_is_not_trusted(reference, tmp_path):
    bank = copy_of(reference, tmp_path)
    root = json.loads((bank / "zarr.json").read_text())
    root["attributes"]["classes"][0] = "tiger"  # relabelled after sealing
    (bank / "zarr.json").write_text(json.dumps(root))
    with pytest.raises(BankFormatError, match="content key does not match its attributes"):
        pull_bank(f"file://{bank}", to=str(tmp_path / "pulled"), progress=False)
    assert not (tmp_path / "pulled").exists()


def test_file_urls_and_user_errors_in_process(reference, tmp_path, capsys):
    import cli

    build_bank(small_config(), f"file://{tmp_path}/nested/bank.zarr")  # folders are made
    assert Bank.open(tmp_path / "nested" / "bank.zarr").done().all()
    array = tmp_path / "array.zarr"
    zarr.create_array(str(array), shape=(4,), dtype="i4")
    assert cli.main(["bank", "repair", str(array)]) == 2
    assert "is a zarr array, not a prompt bank" in capsys.readouterr().err
    (tmp_path / "leftover.partial").write_text("x")
    shutil.copy(tmp_path / "leftover.partial", reference / "text" / "x.1234.partial")
    try:
        assert not any(f.endswith(".partial") for f in hub_upload_plan(reference))
    finally:
        (reference / "text" / "x.1234.partial").unlink()


def _hold_the_lock(location: str, barrier, held, overlaps, taken) -> None:
    """A process: wait for the others, take the bank's lock, note any overlap, let go."""
    import time

    from prompt_bank.safety import BankLockError, build_lock

    group = zarr.open_group(location, mode="r+")
    barrier.wait()
    try:
        with build_lock(group.store, location):
            with held.get_lock():
                held.value += 1
                taken.value += 1
                if held.value > 1:
                    overlaps.value += 1
            time.sleep(0.05)
            with held.get_lock():
                held.value -= 1
    except BankLockError:
        pass


def test_two_processes_never_both_take_a_stale_lock(reference, tmp_path):
    """Many trials of two processes taking over the same stale lock at once: at most one holds
    it at any time (a check-then-delete takeover let both in 3 of 30 trials)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    bank = copy_of(reference, tmp_path)
    gone = subprocess.Popen(["true"])
    gone.wait()
    overlaps, taken = context.Value("i", 0), context.Value("i", 0)
    for trial in range(30):
        _write_lock(bank, gone.pid, socket.gethostname())  # stale: its process has ended
        barrier, held = context.Barrier(2), context.Value("i", 0)
        workers = [
            context.Process(target=_hold_the_lock, args=(str(bank), barrier, held, overlaps, taken))
            for _ in range(2)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
            assert w.exitcode == 0
        assert taken.value >= trial + 1  # somebody took the stale lock in every trial
    assert overlaps.value == 0
    assert not (bank / "build.lock").exists() and not (bank / "build.lock.takeover").exists()
