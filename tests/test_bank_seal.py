"""Banks cannot lie (issue 28): a sealed bank whose objects or attributes are not the sealed
ones is refused by readers and by push, rebuilt by repair (bit-identically) or refused by it;
and a push over a damaged copy of the same bank repairs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import test_bank_integrity
from conftest import cli_here, run_cli
from test_bank import arrays_of, small_config
from test_bank_integrity import copy_of, shard_object

from data.vocabulary import Vocabulary, load_vocabulary
from prompt_bank.build import build_bank, config_from_bank
from prompt_bank.format import BankFormatError, BankMismatchError
from prompt_bank.share import pull_bank, push_bank
from prompt_bank.store import Bank

reference = test_bank_integrity.reference  # 8 classes in 4 shards, sealed

ARRAYS = (
    "text/embeddings",
    "visual/embeddings",
    "visual/done",
    "visual/level_1",
    "visual/level_2",
    "visual/level_3",
    "visual/level_4",
    "visual/images",
)


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Path:
    """A bank of the same shape with other classes (the synthetic vocabulary reversed)."""
    entries = load_vocabulary("synthetic").entries
    location = tmp_path_factory.mktemp("other") / "bank.zarr"
    vocabulary = Vocabulary.from_entries(entries[::-1], name="reversed")
    build_bank(small_config(keep_images=True, vocabulary=vocabulary), location)
    return location


def transplanted(reference: Path, other: Path, tmp_path: Path) -> Path:
    """A copy of ``reference`` with shard 1's objects and manifest copied in from ``other``."""
    bank = copy_of(reference, tmp_path)
    for array in Bank.open(bank).layout.arrays():
        shutil.copyfile(shard_object(other, array, 1), shard_object(bank, array, 1))
    name = "manifest/shard-00001.json"
    shutil.copyfile(other / name, bank / name)
    return bank


def test_a_shard_copied_in_from_another_bank_is_refused_then_repaired(
    reference, other, tmp_path, cli_in_process
):
    bank = transplanted(reference, other, tmp_path)
    opened = Bank.open(bank)
    opened.read("text/embeddings", classes=slice(0, 2))  # shard 0 is the sealed one: readable
    with pytest.raises(BankFormatError, match="not the ones the bank was sealed with"):
        opened.read("text/embeddings", classes=slice(2, 4))
    with pytest.raises(BankMismatchError, match="not the ones the bank was sealed with"):
        push_bank(str(bank), f"file://{tmp_path / 'remote'}", progress=False)
    assert not (tmp_path / "remote").exists()
    verify = cli_in_process("bank", "verify", str(bank))
    assert verify.returncode == 1 and "objects differ from zarr.json's contents" in verify.stdout
    summary = build_bank(config_from_bank(Bank.open(bank).attrs, progress=False), bank)
    assert summary.items_done == 12  # shard 1: 2 classes x 3 templates x 2 images, rebuilt
    for name, values in arrays_of(reference).items():
        np.testing.assert_array_equal(arrays_of(bank)[name], values)  # bit-identical
    assert Bank.open(bank).seal == Bank.open(reference).seal


def test_class_names_edited_after_sealing_are_refused_by_readers_and_repair(
    reference, tmp_path, cli_in_process
):
    bank = copy_of(reference, tmp_path)
    root = json.loads((bank / "zarr.json").read_text())
    root["attributes"]["classes"][0] = "lion"
    (bank / "zarr.json").write_text(json.dumps(root))
    with pytest.raises(BankFormatError, match=r"root zarr\.json was changed after"):
        Bank.open(bank)
    info = cli_in_process("bank", "info", str(bank))
    assert info.returncode == 2 and len(info.stderr.strip().splitlines()) == 1
    assert "root zarr.json was changed after" in info.stderr
    verify = cli_in_process("bank", "verify", str(bank))
    assert verify.returncode == 1 and "FAIL  sealed contents" in verify.stdout
    repair = cli_in_process("bank", "repair", str(bank))
    assert repair.returncode == 2 and "root zarr.json was changed after" in repair.stderr
    assert json.loads((bank / "zarr.json").read_text())["attributes"]["classes"][0] == "lion"
    assert "contents" in json.loads((bank / "zarr.json").read_text())["attributes"]  # not resealed


def test_pushing_again_over_a_damaged_remote_repairs_it(reference, tmp_path):
    url = f"file://{tmp_path / 'remote'}"
    first = push_bank(str(reference), url, progress=False)
    assert first["uploaded"] > 0 and first["repaired"] == []
    # the probe: push and pull reported different MB for one bank; both count the files sent
    pulled = pull_bank(url, to=str(tmp_path / "pulled"), progress=False)
    assert (
        first["uploaded"]
        == pulled["downloaded"]
        == sum(p.stat().st_size for p in (tmp_path / "pulled").rglob("*") if p.is_file())
    )
    again = push_bank(str(reference), url, progress=False)
    assert again["uploaded"] == 0 and again["repaired"] == []
    remote = tmp_path / "remote"
    damaged = shard_object(remote, "visual/level_2", 2)
    damaged.write_bytes(b"garbage")
    shard_object(remote, "visual/embeddings", 0).unlink()
    result = run_cli("bank", "push", str(reference), url, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "held this bank damaged: 2 files" in result.stdout
    for array in ARRAYS:
        for shard in range(4):
            assert (
                shard_object(remote, array, shard).read_bytes()
                == shard_object(reference, array, shard).read_bytes()
            )
    # the remote's root edited (its class names): this bank's key still, so repaired, not refused
    root = json.loads((remote / "zarr.json").read_text())
    root["attributes"]["classes"][0] = "lion"
    (remote / "zarr.json").write_text(json.dumps(root))
    fixed = run_cli("bank", "push", str(reference), url, "--quiet")
    assert fixed.returncode == 0, fixed.stderr
    assert "held this bank damaged: 1 files" in fixed.stdout
    assert (remote / "zarr.json").read_bytes() == (reference / "zarr.json").read_bytes()


def _closed_port() -> int:
    """A loopback port nobody listens on."""
    from app.page import check_port

    return check_port("127.0.0.1", 0)


@pytest.mark.parametrize("where", ["hf", "s3", "http"])
def test_a_push_that_cannot_reach_its_store_is_one_line(reference, where):
    import os

    port = _closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_"))}
    env.update(
        HF_ENDPOINT=f"http://127.0.0.1:{port}",
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )
    url = {
        "hf": "hf://datasets/me/bank",
        "s3": "s3://bucket/bank",
        "http": f"http://127.0.0.1:{port}/bank",
    }[where]
    result = run_cli("bank", "push", str(reference), url, "--quiet", env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    expected = (  # probe 7: http, which cannot be written, is refused before any request
        f"bank push: URL {url}: an http(s) URL can be read but not written"
        if where == "http"
        else f"bank push to {url}: "
    )
    assert len(lines) == 1 and expected in lines[0], lines


def test_a_repair_interrupted_after_its_first_shard_still_rebuilds_the_second(
    reference, other, tmp_path
):
    """Two shards copied in; the repair rebuilt the first and was killed (the bank is unsealed
    by then): the resume still knows the sealed objects and rebuilds the second."""
    import zarr

    from prompt_bank.seal import unseal

    bank = transplanted(reference, other, tmp_path)
    for array in Bank.open(bank, check_seal=False).layout.arrays():
        shutil.copyfile(shard_object(other, array, 2), shard_object(bank, array, 2))
    shutil.copyfile(other / "manifest/shard-00002.json", bank / "manifest/shard-00002.json")
    unseal(zarr.open_group(str(bank), mode="r+"))  # what the repair did before its first rebuild
    for array in Bank.open(bank).layout.arrays():  # ... and shard 1 rebuilt, then killed
        shutil.copyfile(shard_object(reference, array, 1), shard_object(bank, array, 1))
    shutil.copyfile(reference / "manifest/shard-00001.json", bank / "manifest/shard-00001.json")
    summary = build_bank(config_from_bank(Bank.open(bank).attrs, progress=False), bank)
    assert summary.items_done == 12  # shard 2 rebuilt, not sealed as it was
    for name, values in arrays_of(reference).items():
        np.testing.assert_array_equal(arrays_of(bank)[name], values)
    assert Bank.open(bank).seal == Bank.open(reference).seal
    assert "previous_contents" not in Bank.open(bank).attrs


def test_a_repair_interrupted_within_a_shard_keeps_the_items_it_finished(
    reference, other, tmp_path, monkeypatch
):
    """The repair of a copied-in shard is interrupted after its first batch (Ctrl-C): the resumed
    repair keeps that batch, the repair's own work and not the sealed objects, computes only the
    rest, and seals the bank as it was."""
    import signal

    import prompt_bank.build as build
    from common.signals import Interrupted
    from prompt_bank.inspect import bank_info, format_info

    bank = transplanted(reference, other, tmp_path)
    config = config_from_bank(Bank.open(bank, check_seal=False).attrs, progress=False)
    compute = build.compute_batch

    def compute_then_stop(*args, **kwargs):  # Ctrl-C while the second batch is computed
        compute_then_stop.calls += 1
        if compute_then_stop.calls == 2:
            raise Interrupted(signal.SIGINT)
        return compute(*args, **kwargs)

    compute_then_stop.calls = 0
    monkeypatch.setattr(build, "compute_batch", compute_then_stop)
    with pytest.raises(Interrupted) as stop:
        build_bank(config, bank)
    assert stop.value.saved == 4  # one batch of shard 1's 12 items
    info = format_info(bank_info(Bank.open(bank)))
    assert f"INCOMPLETE: resume with `python cli.py bank repair {bank}`" in info
    monkeypatch.setattr(build, "compute_batch", compute)
    summary = build_bank(config, bank)
    assert summary.items_done == 12 - 4
    for name, values in arrays_of(reference).items():
        np.testing.assert_array_equal(arrays_of(bank)[name], values)
    assert Bank.open(bank).seal == Bank.open(reference).seal


# ---------------------------------------------------------------------------------------------
# a fresh fault probe (2026-12-06): seals that are not seals, shards that subset and merge took,
# files push sent that the bank does not hold, attributes of the wrong type


@pytest.mark.parametrize("seal", [None, {"complete": False}, {"complete": True, "objects": "x"}])
def test_a_malformed_seal_is_refused_not_taken_for_a_bank_being_built(
    reference, tmp_path, seal, cli_in_process
):
    """A ``contents`` attribute that is not what the seal writes is an edit: readers refuse the
    bank in one line (it was read as "not sealed", and served)."""
    bank = copy_of(reference, tmp_path)
    root = json.loads((bank / "zarr.json").read_text())
    root["attributes"]["contents"] = seal
    root["attributes"]["classes"][1] = "EVIL"
    (bank / "zarr.json").write_text(json.dumps(root))
    with pytest.raises(BankFormatError, match=r"its seal .* is malformed"):
        Bank.open(bank)
    result = cli_in_process("bank", "info", str(bank))
    assert result.returncode == 2 and "is malformed" in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("edit", [{"items": 999}, {"bytes": 1.5}, {"bytes": None}])
def test_a_seal_whose_counts_were_edited_is_refused(reference, tmp_path, edit):
    """Found by a fault probe: items 999 and bytes 1 were shown, verified, served and pushed."""
    bank = copy_of(reference, tmp_path)
    root = json.loads((bank / "zarr.json").read_text())
    root["attributes"]["contents"].update(edit)
    (bank / "zarr.json").write_text(json.dumps(root))
    with pytest.raises(BankFormatError, match=r"its seal says .* make 48 items"):
        Bank.open(bank)


def test_subset_and_merge_refuse_a_shard_copied_in_from_another_bank(reference, other, tmp_path):
    """The shard and its manifest agree with each other, not with the seal: subset and merge
    judge shards as every reader does (they checked the manifest alone)."""
    from prompt_bank.compose import merge_banks, subset_bank

    bank = Bank.open(transplanted(reference, other, tmp_path))
    names = load_vocabulary("synthetic").names
    with pytest.raises(BankFormatError, match="not the ones the bank was sealed with"):
        subset_bank(bank, Vocabulary.from_entries([names[2]], name="one"), str(tmp_path / "s"))
    with pytest.raises(BankFormatError, match="not the ones the bank was sealed with"):
        merge_banks(bank, Bank.open(other), str(tmp_path / "m"))
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()


def test_push_sends_the_bank_s_own_files_only(reference, tmp_path):
    """Files the seal does not know (notes, a link to a file elsewhere) stay where they are."""
    bank = copy_of(reference, tmp_path)
    (bank / "notes.txt").symlink_to("/etc/hostname")
    (bank / "text" / "extra.bin").write_bytes(b"x")
    push_bank(str(bank), f"file://{tmp_path / 'remote'}", progress=False)
    sent = {str(p.relative_to(tmp_path / "remote")) for p in (tmp_path / "remote").rglob("*")}
    assert "notes.txt" not in sent and "text/extra.bin" not in sent
    assert "zarr.json" in sent and "manifest/shard-00000.json" in sent
    assert Bank.open(tmp_path / "remote").seal == Bank.open(reference).seal


@pytest.mark.parametrize(
    "attribute, value",
    [("encoder", []), ("encoder", "x"), ("build", {}), ("images_per_prompt", "x")],
)
def test_an_attribute_of_another_type_is_one_line(
    reference, tmp_path, attribute, value, cli_in_process
):
    bank = copy_of(reference, tmp_path)
    root = json.loads((bank / "zarr.json").read_text())
    root["attributes"][attribute] = value
    (bank / "zarr.json").write_text(json.dumps(root))
    result = cli_in_process("bank", "verify", str(bank))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_manifest_with_sizes_of_another_type_is_rebuilt(reference, tmp_path):
    """An edited manifest is judged unreadable: its shard is rebuilt (repair crashed on it)."""
    bank = copy_of(reference, tmp_path)
    manifest = bank / "manifest" / "shard-00000.json"
    body = json.loads(manifest.read_text())
    body["sizes"] = {k: "x" for k in body["sizes"]}
    manifest.write_text(json.dumps(body))
    group_attrs = json.loads((bank / "zarr.json").read_text())
    group_attrs["attributes"].pop("contents")  # as a build that is about to settle it
    (bank / "zarr.json").write_text(json.dumps(group_attrs))
    build_bank(config_from_bank(Bank.open(bank).attrs, progress=False), bank)
    assert Bank.open(bank).seal == Bank.open(reference).seal


def test_racing_writers_of_one_output_end_in_one_line_and_racing_pulls_share_it(
    reference, tmp_path, monkeypatch
):
    """Two commands staging the same --out: the one that finishes second is told so in one line
    (a rename onto a folder the first made); a pull that loses the race to the cache or to one
    --to uses the bank the winner put there (the same content key)."""
    import prompt_bank.share as share

    out = tmp_path / "out.zarr"
    taken = pytest.raises(share.OutputTakenError, match="another process wrote a bank there")
    with taken, share.staged_output(str(out)) as staging:
        shutil.copytree(reference, staging, dirs_exist_ok=True)
        shutil.copytree(reference, out)  # the other process, finished first
    assert not list(tmp_path.glob(".out.zarr.partial-*"))
    cache = tmp_path / "cache"
    monkeypatch.setenv("DPSEG_CACHE", str(cache))
    key = Bank.open(reference).seal["content_key"]
    download = share._download

    def racing(remote, url, staging, options, progress):  # the other pull finishes first
        done = download(remote, url, staging, options, progress)
        shutil.copytree(staging, cache / key)
        return done

    monkeypatch.setattr(share, "_download", racing)
    pulled = share.pull_bank(f"file://{reference}", progress=False)
    assert pulled["path"] == str(cache / key) and pulled["downloaded"] == 0
    assert not list(cache.glob(".*.partial-*"))
    mine = tmp_path / "mine.zarr"  # the same for two pulls into one --to (the probe: refused)

    def racing_to(remote, url, staging, options, progress):
        done = download(remote, url, staging, options, progress)
        shutil.copytree(staging, mine)
        return done

    monkeypatch.setattr(share, "_download", racing_to)
    pulled = share.pull_bank(f"file://{reference}", to=str(mine), progress=False)
    assert pulled["path"] == str(mine) and pulled["downloaded"] == 0
    other = tmp_path / "other.zarr"  # another bank there is still refused
    shutil.copytree(reference, other)
    (other / "zarr.json").write_text("{}")
    with pytest.raises(ValueError, match=f"--to {other} is a zarr group that is not a dpseg"):
        share.pull_bank(f"file://{reference}", to=str(other), progress=False)


def test_an_array_with_other_chunks_is_refused_before_repair_allocates_them(
    reference, tmp_path, cli_in_process
):
    """An array's zarr.json edited to a huge chunk shape: one line; repair used to allocate it
    (TiB), crash, and leave the bank unsealed with its card deleted."""
    bank = copy_of(reference, tmp_path)
    meta_path = bank / "visual" / "level_2" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["chunk_grid"]["configuration"]["chunk_shape"][0] = 10**12
    meta_path.write_text(json.dumps(meta))
    card = (bank / "README.md").read_bytes()
    for command in ("verify", "repair"):
        result = cli_in_process("bank", command, str(bank))
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "visual/level_2 has chunks" in lines[0], lines
    assert (bank / "README.md").read_bytes() == card


def test_an_edited_classes_per_shard_is_blamed_on_the_root(reference, tmp_path, capsys):
    """Found by the probe: the root's build.classes_per_shard edited was blamed on the first
    array's zarr.json. Every array sharded alike, by another number: the root is named."""
    import cli

    bank = copy_of(reference, tmp_path)
    root = json.loads((bank / "zarr.json").read_text())
    sharded = root["attributes"]["build"]["classes_per_shard"]
    root["attributes"]["build"]["classes_per_shard"] = sharded - 1
    (bank / "zarr.json").write_text(json.dumps(root))
    for command in ("verify", "info", "repair"):
        assert cli.main(["bank", command, str(bank)]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert f"the root zarr.json's build.classes_per_shard is {sharded - 1}, but every " in line
        assert f"array is sharded by {sharded} classes (the root zarr.json was edited" in line


@pytest.mark.parametrize("kind", ["pipe", "device", "loop"])
def test_a_pipe_a_device_or_a_looping_link_in_a_bank_is_refused_before_any_read(
    reference, tmp_path, kind
):
    """Found by a fault probe: a FIFO blocked subset and verify forever (and the first signal
    did not end them), a link to /dev/zero was read until memory ran out, and a looping link
    was a traceback. Every opening of a local bank, to read or to build, refuses them."""
    import os

    from prompt_bank.store import open_group

    bank = copy_of(reference, tmp_path)
    victim = shard_object(bank, "visual/level_1", 0)
    victim.unlink()
    {
        "pipe": os.mkfifo,
        "device": lambda p: p.symlink_to("/dev/zero"),
        "loop": lambda p: p.symlink_to(p.name),
    }[kind](victim)
    expected = {
        "pipe": "is a pipe",
        "device": "is a device",
        "loop": "is a link that cannot be followed",
    }[kind]
    for opening in (lambda: Bank.open(bank), lambda: open_group(bank, mode="r+")):
        with pytest.raises(BankFormatError, match=expected) as error:
            opening()
        assert str(victim.relative_to(bank)) in str(error.value)


@pytest.mark.parametrize("copy", ["array", "consolidated"])
def test_array_metadata_edited_after_sealing_is_refused_and_never_resealed(
    reference, tmp_path, capsys, monkeypatch, copy
):
    """A fault probe set one array's byte order to big-endian: in its own zarr.json, readers
    took the garbage for missing data and `repair` rebuilt and sealed the bank under a new
    content key; in the root zarr.json's consolidated copy (outside the seal), verify passed
    and push uploaded a bank no remote reader could read. Both are now refused in one line
    naming the array and the copy, by readers, repair and push, and nothing is re-sealed."""
    bank = copy_of(reference, tmp_path)
    root_path = bank / "zarr.json"
    if copy == "array":
        meta_path = bank / "visual" / "level_2" / "zarr.json"
        meta = json.loads(meta_path.read_text())
    else:
        root = json.loads(root_path.read_text())
        meta = root["consolidated_metadata"]["metadata"]["visual/level_2"]
    meta["codecs"][0]["configuration"]["codecs"][0]["configuration"]["endian"] = "big"
    if copy == "array":
        meta_path.write_text(json.dumps(meta))
    else:
        root_path.write_text(json.dumps(root))
    where = "its zarr.json" if copy == "array" else "the root zarr.json's copy of it"
    expected = f"array visual/level_2's metadata in {where} is not the format's (its codecs"
    with pytest.raises(BankFormatError) as refused:
        Bank.open(bank)
    assert expected in str(refused.value)
    sealed = json.loads(root_path.read_text())["attributes"]["contents"]
    for command in (["repair", str(bank)], ["push", str(bank), f"file://{tmp_path / 'remote'}"]):
        result = cli_here(capsys, monkeypatch, "bank", *command, "--quiet")
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], lines
    assert json.loads(root_path.read_text())["attributes"]["contents"] == sealed
    assert not (tmp_path / "remote").exists()


def test_the_repair_advice_for_a_bank_at_a_url_is_neither_a_repair_nor_a_push():
    """The probe: a damaged bank read over HTTP advised `bank repair http://...`, which cannot
    write there; then `bank push GOOD_COPY http://...`, which cannot either (the fifth probe).
    Readers of an http URL are told how its owner mends it."""
    from prompt_bank.integrity import disagreement_error, mend_advice

    url = "http://127.0.0.1:9/b.zarr"
    assert "bank repair" not in mend_advice(url) and "bank push" not in mend_advice(url)
    assert "dpseg reads plain HTTP but does not write to it" in mend_advice(url)
    assert "bank repair" not in disagreement_error(url, 0, ["visual/level_1/c/0/0/0/0"])
    for writable in ("b.zarr", "file:///tmp/b.zarr", "s3://bucket/b.zarr"):
        assert mend_advice(writable) == (
            f"rebuild the damaged shards with `python cli.py bank repair {writable}` (or build "
            "the bank again)"
        )


@pytest.mark.parametrize("edit", ["one array's entry", "the whole table", "attributes"])
def test_a_sealed_bank_whose_consolidated_metadata_was_edited_is_neither_served_nor_pushed(
    reference, tmp_path, capsys, monkeypatch, edit
):
    """Found by the probe: a root zarr.json without an array's entry verified and pushed, and the
    pushed copy could not be read by anyone."""
    bank = copy_of(reference, tmp_path)
    root = json.loads((bank / "zarr.json").read_text())
    if edit == "one array's entry":
        del root["consolidated_metadata"]["metadata"]["visual/level_1"]
    elif edit == "the whole table":
        root["consolidated_metadata"] = None
    else:
        root["consolidated_metadata"]["metadata"]["visual/level_1"]["attributes"] = {"a": 1}
    (bank / "zarr.json").write_text(json.dumps(root))
    remote = tmp_path / "remote.zarr"
    for command in (["info", str(bank)], ["push", str(bank), f"file://{remote}", "--quiet"]):
        result = cli_here(capsys, monkeypatch, "bank", *command)
        assert result.returncode == 2, result.stdout + result.stderr
        (line,) = result.stderr.splitlines()
        expected = "lacks the array" if edit != "attributes" else "(its attributes"
        assert line.startswith(f"error: {str(bank)!r}: ") and expected in line, line
    assert not remote.exists()


def test_a_remote_whose_manifest_disagrees_with_its_seal_is_not_pulled(
    reference, tmp_path, capsys, monkeypatch
):
    """Found by the probe: the objects matched the seal, so the pull said every object was
    checked; the copy then failed verify, and stayed in the cache under its content key."""
    remote = tmp_path / "remote.zarr"
    assert (
        cli_here(capsys, monkeypatch, "bank", "push", str(reference), f"file://{remote}").returncode
        == 0
    )
    manifest = remote / "manifest" / "shard-00001.json"
    body = json.loads(manifest.read_text())
    key = sorted(body["objects"])[0]
    body["objects"][key] = ["0" * 64]
    manifest.write_text(json.dumps(body))
    cache = tmp_path / "cache"
    monkeypatch.setenv("DPSEG_CACHE", str(cache))
    result = cli_here(capsys, monkeypatch, "bank", "pull", f"file://{remote}", "--quiet")
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert "its manifests (manifest/shard-*.json) disagree with the bank's sealed" in line, line
    assert not cache.exists() or [p for p in cache.rglob("*") if p.is_file()] == []


def test_an_edited_keep_images_is_refused_not_a_repair_traceback(
    reference, tmp_path, cli_in_process
):
    """Found by the probe: build.keep_images edited to true (of a bank without images) passed
    every reader, and repair then ended in KeyError 'visual/images'; here the other way round."""
    bank = copy_of(reference, tmp_path)
    root = json.loads((bank / "zarr.json").read_text())
    assert root["attributes"]["build"]["keep_images"] is True  # the reference keeps its images
    root["attributes"]["build"]["keep_images"] = False
    (bank / "zarr.json").write_text(json.dumps(root))
    for command in ("info", "repair"):
        result = cli_in_process("bank", command, str(bank))
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
        (line,) = result.stderr.splitlines()
        assert "attribute build.keep_images is False, but the bank has a visual/images" in line


def _drop(key):
    def edit(attrs):
        attrs.pop("contents", None)  # an unsealed bank, as a build in progress
        del attrs[key]

    return edit


def _set(key, value):
    def edit(attrs):
        attrs.pop("contents", None)
        attrs[key] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda attrs: attrs.pop("templates"), "lacks the attributes templates (its root"),
        (_drop("images_per_prompt"), "lacks the attributes images_per_prompt"),
        (_set("images_per_prompt", "two"), "do not have the format's types (ValueError"),
        (_set("images_per_prompt", -1), "template and image per prompt (it records 8, 3 and -1)"),
        (_set("classes", 5), "attribute classes must be a non-empty list of strings"),
        (_set("encoder", "tiny-convnext"), "do not have the format's types (AttributeError"),
    ],
)
def test_root_attributes_of_other_types_are_one_line_for_repair_as_for_readers(
    reference, tmp_path, cli_in_process, edit, expected
):
    """Probe 6: info and verify refused these banks in one line, but `bank repair` read the
    attributes as they were and ended in KeyError, ValueError or TypeError tracebacks (and one
    blamed --images-per-prompt, an option repair has not)."""
    bank = copy_of(reference, tmp_path)
    root = json.loads((bank / "zarr.json").read_text())
    edit(root["attributes"])
    (bank / "zarr.json").write_text(json.dumps(root))
    for command in ("info", "verify", "repair"):
        result = cli_in_process("bank", command, str(bank))
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"error: '{bank}'") and expected in line, (command, line)
        assert "--images-per-prompt" not in line


@pytest.mark.parametrize("raw", ["42", '"hello"', "null"])
def test_a_root_zarr_json_that_is_not_an_object_is_named_damaged(
    reference, tmp_path, cli_in_process, raw
):
    """Probe 6: a JSON number, string or null as the root zarr.json was "'int' object has no
    attribute 'pop'; check the credentials" for info and verify, and a traceback for repair."""
    bank = copy_of(reference, tmp_path)
    (bank / "zarr.json").write_text(raw)
    for command in ("info", "verify", "repair"):
        result = cli_in_process("bank", command, str(bank))
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
        (line,) = result.stderr.splitlines()
        assert f"'{bank}': its root zarr.json is damaged" in line, (command, line)
        assert "credentials" not in line


@pytest.mark.parametrize("damage", ["missing manifest", "edited array metadata"])
def test_a_damaged_remote_is_named_by_its_url_when_pulled(
    reference, tmp_path, capsys, monkeypatch, damage
):
    """Found by the probe: a raw "[Errno 2] No such file" for a file missing at the remote, and
    the temporary .partial- folder named for an array zarr.json edited there."""
    remote = tmp_path / "remote.zarr"
    push = cli_here(capsys, monkeypatch, "bank", "push", str(reference), f"file://{remote}")
    assert push.returncode == 0, push.stderr
    if damage == "missing manifest":
        (remote / "manifest" / "shard-00002.json").unlink()
        expected = "manifest/shard-00002.json is missing there; the remote copy is incomplete"
    else:
        meta = json.loads((remote / "visual" / "level_1" / "zarr.json").read_text())
        meta["fill_value"] = 1
        (remote / "visual" / "level_1" / "zarr.json").write_text(json.dumps(meta))
        expected = "the downloaded copy is not a whole bank (array visual/level_1's metadata"
    monkeypatch.setenv("DPSEG_CACHE", str(tmp_path / "cache"))
    result = cli_here(capsys, monkeypatch, "bank", "pull", f"file://{remote}", "--quiet")
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: file://{remote}: ") and expected in line, line
    assert ".partial-" not in line and "Errno" not in line
    cache = tmp_path / "cache"
    assert not cache.exists() or [p for p in cache.rglob("*") if p.is_file()] == []


def test_a_folder_where_the_build_lock_belongs_is_named_with_its_fix(
    reference, tmp_path, capsys, monkeypatch
):
    """The probe: 16 s of retries, then "delete build.lock.takeover", a file that is not there."""
    bank = copy_of(reference, tmp_path)
    (bank / "build.lock").mkdir()
    result = cli_here(capsys, monkeypatch, "bank", "repair", str(bank))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == (
        f"error: {bank}/build.lock is a folder, not a build lock (a process holds a bank with a "
        f"file there); remove it (rm -r {bank}/build.lock) and run the command again\n"
    )


@pytest.mark.parametrize("which", ["object", "manifest"])
def test_a_folder_where_an_object_belongs_is_named_so_and_repaired(
    reference, tmp_path, which, cli_in_process
):
    """Found by the probe: a folder in place of a shard object or a manifest was "missing"."""
    bank = copy_of(reference, tmp_path)
    key = "visual/level_1/c/0/0/0/0" if which == "object" else "manifest/shard-00000.json"
    (bank / key).unlink()
    (bank / key).mkdir()
    verify = cli_in_process("bank", "verify", str(bank))
    assert verify.returncode == 1, verify.stdout[-2000:]
    assert f"{key} is a folder, not a file" in verify.stdout, verify.stdout[-2000:]
    assert cli_in_process("bank", "repair", str(bank), "--quiet").returncode == 0
    assert (bank / key).is_file()
    assert cli_in_process("bank", "verify", str(bank)).returncode == 0


def test_a_folder_that_is_no_bank_is_called_so_whatever_it_holds(tmp_path, capsys):
    """Found by the probe: a folder of other files holding a pipe was called a damaged bank
    ("fifo.png is a pipe ... get the bank again from its source"). Without a root zarr.json it
    is no bank, and is refused as such (without opening the pipe)."""
    import os

    import cli

    folder = tmp_path / "photos"
    folder.mkdir()
    os.mkfifo(folder / "fifo.png")
    assert cli.main(["bank", "info", str(folder)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {str(folder)!r} is not a prompt bank"), line


@pytest.mark.parametrize("damage", ["edited", "link", "missing"])
def test_a_card_that_is_not_the_attributes_is_failed_refused_and_rewritten(
    reference, tmp_path, cli_in_process, damage
):
    """Probe 7: the seal hashes no card, so a card edited to another licence and class count
    was verified, pushed and pulled as it was, a card that was a link sent the file it points
    to (from outside the bank), and a missing card was a bare errno line. Now verify fails it,
    push refuses it naming the repair, repair writes it again, and pull writes the right one."""
    bank = copy_of(reference, tmp_path)
    card = bank / "README.md"
    good = card.read_bytes()
    if damage == "edited":
        card.write_bytes(good.replace(b"license: ", b"license: mit-not-"))
        expected = "README.md (the card) is not the one its attributes give (edited?)"
    elif damage == "link":
        secret = tmp_path / "secret.txt"
        secret.write_text("SECRET-TOKEN")
        card.unlink()
        card.symlink_to(secret)
        expected = f"README.md (the card) is a link to {secret}, not the bank's own file"
    else:
        card.unlink()
        expected = "README.md (the card) is missing"
    verified = cli_in_process("bank", "verify", str(bank))
    assert verified.returncode == 1, verified.stdout[-2000:] + verified.stderr[-2000:]
    assert f"FAIL  card: {expected} (python cli.py bank repair {bank} writes it again)" in (
        verified.stdout
    )
    remote = tmp_path / "remote.zarr"
    pushed = cli_in_process("bank", "push", str(bank), f"file://{remote}")
    assert pushed.returncode == 2
    (line,) = pushed.stderr.splitlines()
    assert line == (
        f"error: bank push: {bank}: {expected}; nothing was uploaded. Write it again with: "
        f"python cli.py bank repair {bank}"
    )
    assert not remote.exists()
    repaired = cli_in_process("bank", "repair", str(bank), "--quiet")
    assert repaired.returncode == 0, repaired.stderr[-2000:]
    assert not card.is_symlink() and card.read_bytes() == good
    assert cli_in_process("bank", "verify", str(bank)).returncode == 0


def test_a_pull_writes_the_card_its_sealed_attributes_give(reference, tmp_path):
    """A remote card edited there (another licence) does not travel: the pulled bank's card is
    the one the sealed attributes give."""
    remote = tmp_path / "remote.zarr"
    push_bank(str(reference), f"file://{remote}", progress=False)
    (remote / "README.md").write_text("---\nlicense: mit\n---\n200 classes\n")
    pulled = pull_bank(f"file://{remote}", str(tmp_path / "pulled.zarr"), progress=False)
    assert (Path(pulled["path"]) / "README.md").read_bytes() == (
        reference / "README.md"
    ).read_bytes()


MANIFEST_EDITS = {
    "extra object": "lists objects that are no part of shard 1 (visual/level_9/c/1/0/0)",
    "shard number": 'names shard 0, classes [2, 4]; it should say "shard": 1, "classes": [2, 4] '
    "(classes 2-3)",
    "classes": 'names shard 1, classes [0, 1]; it should say "shard": 1, "classes": [2, 4] '
    "(classes 2-3)",
    "sizes": "gives sizes that are not the objects' (",
    "sizes swapped, same total": "gives sizes that are not the objects' (",
}


@pytest.mark.parametrize("edit", list(MANIFEST_EDITS))
def test_a_manifest_that_disagrees_with_its_shard_is_failed_refused_and_rebuilt(
    reference, tmp_path, cli_in_process, edit
):
    """Probes 9 and 10: a manifest edited to list an object the bank has not, or another shard
    number, classes or object sizes (even sizes swapped between objects, their total kept), was
    verified, pushed, served and sealed in by repair. Each shard's manifest is now judged with
    the shard wherever it is read: verify fails, push and readers refuse, repair rebuilds it."""
    bank = copy_of(reference, tmp_path)
    path = bank / "manifest" / "shard-00001.json"
    good = path.read_bytes()
    body = json.loads(good)
    if edit == "extra object":
        body["objects"]["visual/level_9/c/1/0/0"] = ["ab" * 32]
    elif edit == "shard number":
        body["shard"] = 0
    elif edit == "classes":
        body["classes"] = [0, 1]
    elif edit == "sizes":
        body["sizes"] = {k: 1 for k in body["sizes"]}
    else:
        first, second = sorted(body["sizes"])[:2]
        body["sizes"][first] += 5
        body["sizes"][second] -= 5
    path.write_text(json.dumps(body))
    expected = f"manifest/shard-00001.json {MANIFEST_EDITS[edit]}"
    verified = cli_in_process("bank", "verify", str(bank))
    assert verified.returncode == 1 and "FAIL  objects: shard 1: " + expected in verified.stdout
    assert "ok    objects" not in verified.stdout
    if edit.startswith("sizes swapped"):  # both objects named with their sizes, not one
        assert verified.stdout.count("bytes listed") == 2, verified.stdout
    pushed = cli_in_process("bank", "push", str(bank), f"file://{tmp_path / 'remote.zarr'}")
    assert pushed.returncode == 2 and expected in pushed.stderr
    assert not (tmp_path / "remote.zarr").exists()
    text = cli_in_process("bank", "info", str(bank), "--prompts")
    assert text.returncode == 2 and expected in text.stderr
    assert len(text.stderr.splitlines()) == 1
    repaired = cli_in_process("bank", "repair", str(bank), "--quiet")
    assert repaired.returncode == 0, repaired.stderr[-2000:]
    assert json.loads(path.read_bytes()) == json.loads(good)  # rebuilt, never sealed in
    assert cli_in_process("bank", "verify", str(bank)).returncode == 0


@pytest.mark.parametrize("edit", ["classes", "sizes swapped", "seal bytes"])
def test_a_pull_refuses_a_remote_whose_manifests_or_seal_size_were_edited(
    reference, tmp_path, edit
):
    """Probe 10: a pull took a remote whose manifests' classes or object sizes, or whose seal's
    size, had been edited there; the pulled copy then failed verify but was served."""
    remote = tmp_path / "remote.zarr"
    push_bank(str(reference), f"file://{remote}", progress=False)
    if edit == "seal bytes":
        root = json.loads((remote / "zarr.json").read_text())
        root["attributes"]["contents"]["bytes"] = 10**30
        (remote / "zarr.json").write_text(json.dumps(root))
    else:
        path = remote / "manifest" / "shard-00001.json"
        body = json.loads(path.read_text())
        if edit == "classes":
            body["classes"] = [0, 1]
        else:
            first, second = sorted(body["sizes"])[:2]
            body["sizes"][first] += 5
            body["sizes"][second] -= 5
        path.write_text(json.dumps(body))
    with pytest.raises((BankMismatchError, BankFormatError), match="remote copy is damaged"):
        pull_bank(f"file://{remote}", str(tmp_path / "pulled.zarr"), progress=False)
    assert not (tmp_path / "pulled.zarr").exists()
    assert not list(tmp_path.glob("*partial*"))


@pytest.mark.parametrize("edit", ["array named", "group attributes", "own group attributes"])
def test_consolidated_metadata_naming_what_the_bank_has_not_is_failed_and_refused(
    reference, tmp_path, cli_in_process, edit
):
    """Probe 10: the root's consolidated metadata naming an array the bank has not (or a
    group's attributes edited in that copy alone) was verified and pushed, and the pushed copy
    was refused by every reader (or carried the edit)."""
    bank = copy_of(reference, tmp_path)
    root = json.loads((bank / "zarr.json").read_text())
    copies = root["consolidated_metadata"]["metadata"]
    if edit == "array named":
        copies["visual/level_9"] = dict(copies["visual/level_2"])
        expected = "consolidated metadata names visual/level_9, which is no array of the bank"
    elif edit == "group attributes":
        copies["visual"]["attributes"] = {"evil": 1}
        expected = "group visual's metadata in the root zarr.json's copy of it is not the format's"
    else:
        own = json.loads((bank / "text" / "zarr.json").read_text())
        own["attributes"] = {"evil": 1}
        (bank / "text" / "zarr.json").write_text(json.dumps(own))
        expected = "group text's metadata in its zarr.json is not the format's"
    (bank / "zarr.json").write_text(json.dumps(root))
    verified = cli_in_process("bank", "verify", str(bank))
    assert verified.returncode == 2 and expected in verified.stderr
    remote = tmp_path / "remote.zarr"
    pushed = cli_in_process("bank", "push", str(bank), f"file://{remote}")
    assert pushed.returncode == 2 and expected in pushed.stderr
    assert not remote.exists()
    assert len(pushed.stderr.splitlines()) == 1


def test_a_seal_size_edited_in_a_local_bank_is_refused_by_readers(
    reference, tmp_path, cli_in_process
):
    """Probe 10: a seal's ``bytes`` (outside the content key) edited to 10**30 was read, and
    `bank info` showed 10^24 MB; verify failed it."""
    bank = copy_of(reference, tmp_path)
    root = json.loads((bank / "zarr.json").read_text())
    size = root["attributes"]["contents"]["bytes"]
    root["attributes"]["contents"]["bytes"] = 10**30
    (bank / "zarr.json").write_text(json.dumps(root))
    info = cli_in_process("bank", "info", str(bank))
    assert info.returncode == 2 and len(info.stderr.splitlines()) == 1
    assert f"its seal says {10**30} bytes, its manifests {size} (the root zarr.json" in info.stderr
    verified = cli_in_process("bank", "verify", str(bank))
    assert verified.returncode == 1
    assert f"FAIL  manifests: the manifests' sizes add up to {size} bytes" in verified.stdout


@pytest.mark.parametrize("linked", ["visual/level_1/c/1", "manifest"])
def test_a_writer_refuses_a_link_to_a_folder_and_writes_nothing_through_it(
    reference, tmp_path, cli_in_process, linked
):
    """Probe 12: with X's `visual/level_1/c/20` a link into bank Y, `bank repair X` rewrote Y's
    shard (Y then failed verify), and with `manifest/` linked it wrote X's manifests into Y.
    Writers (build, resume, repair, seal) now refuse a link to a folder in one line; readers
    still follow it."""
    import os

    mine, other = tmp_path / "x.zarr", tmp_path / "y.zarr"
    shutil.copytree(reference, mine)
    shutil.copytree(reference, other)
    shutil.rmtree(mine / linked)
    (mine / linked).symlink_to(other / linked)
    shard_object(mine, "visual/level_2", 1).write_bytes(b"damaged")  # repair has work to do
    before = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    result = cli_in_process("bank", "repair", str(mine), "--quiet")
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line == (
        f"error: bank {str(mine)!r}: {linked} is a link to a folder ({os.path.realpath(other / linked)}); "
        "a build or repair writes only inside the bank, never through a link: replace the link "
        "by a copy of what it leads to (cp -rL) and run the command again"
    ), line
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before
    assert cli_in_process("bank", "verify", str(other)).returncode == 0
    assert Bank.open(mine).classes  # a reader follows it
