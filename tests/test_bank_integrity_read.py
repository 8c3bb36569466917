"""Readers of prompts check the shards they read: a bank with an object overwritten or deleted
is a one-line BankFormatError naming the object and ``bank verify`` / ``bank repair``, never a
zarr traceback and never zeros (the zarr fill value of a missing object); an intact bank reads as
before. Also the one-line messages of ``bank repair`` / ``gallery`` / ``push`` / ``merge`` and a
resumed ``build``."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import test_bank_integrity
import torch
import torch.nn.functional as F
import zarr
from conftest import run_cli
from test_bank import arrays_of, small_config
from test_bank_integrity import copy_of, shard_object

from data.vocabulary import Vocabulary, load_vocabulary
from model.prompts import load_prompts
from prompt_bank.build import build_bank
from prompt_bank.compose import merge_banks
from prompt_bank.format import BankFormatError, BankMismatchError
from prompt_bank.inspect import prompt_agreement, write_gallery
from prompt_bank.store import Bank

reference = test_bank_integrity.reference  # its bank (a module fixture), built for this module

FIX = r"python cli\.py bank verify .*python cli\.py bank repair "


def damage(bank: Path, how: str, array: str = "visual/level_2", shard: int = 1) -> None:
    path = shard_object(bank, array, shard)
    if how == "overwritten":
        path.write_bytes(b"garbage")
    else:
        path.unlink()


def encoder_of(bank: Path) -> dict:
    encoder = Bank.open(bank).attrs["encoder"]
    return {"encoder_preset": encoder["preset"], "encoder_fingerprint": encoder["fingerprint"]}


def vocabulary(rows: list[int]) -> Vocabulary:
    entries = load_vocabulary("synthetic").entries
    return Vocabulary.from_entries([entries[i] for i in rows], name="picked")


def expected_prompts(bank: Path, rows: list[int]):
    """The prompts of bank rows `rows` computed from the raw zarr arrays."""
    raw = arrays_of(bank)
    text = torch.from_numpy(raw["text/embeddings"][rows]).float()
    v = torch.from_numpy(raw["visual/embeddings"][rows]).float()
    levels = [
        torch.from_numpy(raw[f"visual/level_{j}"][rows].astype(np.float32)).mean(dim=(1, 2))
        for j in range(1, len(Bank.open(bank).level_names()) + 1)
    ]
    return text, F.normalize(v.mean(dim=2), dim=-1), levels


# ---------------------------------------------------------------------------------------------
# an intact bank reads as before


def test_an_intact_bank_reads_identically(reference):
    bank, raw = Bank.open(reference), arrays_of(reference)
    every = bank.read_rows(paths=list(raw))
    for path, values in raw.items():
        assert every[path].dtype == values.dtype, path
        assert np.array_equal(every[path], values), path
        assert np.array_equal(bank.read(path), values), path
    rows = np.array([6, 1, 0, 7])  # any order, across shards
    part = bank.read_rows(rows)
    assert "visual/images" not in part  # not read unless asked
    for path, values in part.items():
        assert np.array_equal(values, raw[path][rows]), path
    assert np.array_equal(bank.read("visual/level_2", rows), raw["visual/level_2"][rows])
    assert np.array_equal(bank.done(), raw["visual/done"])

    picked = [5, 0, 3]
    prompts = load_prompts(reference, vocabulary(picked), **encoder_of(reference))
    text, visual, levels = expected_prompts(reference, picked)
    assert torch.equal(prompts.text, text) and torch.equal(prompts.visual, visual)
    assert all(torch.equal(a, b) for a, b in zip(prompts.visual_levels, levels, strict=True))
    assert prompt_agreement(bank)["retrieved"] >= 0


def test_prompts_read_each_needed_shard_once_and_no_other(reference, tmp_path, monkeypatch):
    import prompt_bank.integrity as integrity

    bank = copy_of(reference, tmp_path)
    damage(bank, "deleted", shard=1)  # classes 2-3: not needed below
    read, check = [], integrity.check_shard

    def counted(group, layout, shard, legacy=False):  # the real check, counted
        read.append(shard)
        assert "visual/images" not in layout.arrays()  # prompts need no images
        return check(group, layout, shard, legacy=legacy)

    monkeypatch.setattr(integrity, "check_shard", counted)
    picked = [7, 0, 6, 1, 5]
    prompts = load_prompts(bank, vocabulary(picked), **encoder_of(bank))
    assert read == [0, 2, 3]
    text, visual, _ = expected_prompts(reference, picked)
    assert torch.equal(prompts.text, text) and torch.equal(prompts.visual, visual)


# ---------------------------------------------------------------------------------------------
# a damaged bank is an error that names the damage and the fix


@pytest.mark.parametrize("how", ["overwritten", "deleted"])
@pytest.mark.parametrize("reader", ["load_prompts", "prompt_agreement", "read"])
def test_a_damaged_shard_is_named_with_its_fix(reference, tmp_path, how, reader):
    bank = copy_of(reference, tmp_path)
    damage(bank, how, "visual/level_2", shard=1)
    opened = Bank.open(bank)  # the metadata is intact: the damage shows when data is read
    expected = (
        rf"bank '{bank}' is damaged in shard 1 \(classes 2-3\): object visual/level_2/c/1/0/0/0 "
        rf"{'has sha256' if how == 'overwritten' else 'is missing'}.*{FIX}{bank}"
    )
    with pytest.raises(BankFormatError, match=expected) as error:
        if reader == "load_prompts":
            load_prompts(opened, vocabulary([0, 2]), **encoder_of(bank))
        elif reader == "prompt_agreement":
            prompt_agreement(opened)
        else:
            opened.read("text/embeddings", np.array([3]))  # another array of the shard
    assert "\n" not in str(error.value)


def test_a_damaged_image_is_named_by_the_gallery(reference, tmp_path):
    bank = copy_of(reference, tmp_path)
    damage(bank, "deleted", "visual/images", shard=3)  # classes 6-7: not shown below
    assert write_gallery(Bank.open(bank), tmp_path / "ok.png", max_classes=2).is_file()
    damage(bank, "overwritten", "visual/images", shard=0)
    with pytest.raises(BankFormatError, match=rf"object visual/images/c/0/.*{FIX}"):
        write_gallery(Bank.open(bank), tmp_path / "g.png", max_classes=2)
    assert not (tmp_path / "g.png").exists()


def test_a_damaged_done_object_is_an_error_not_a_traceback(reference, tmp_path):
    bank = copy_of(reference, tmp_path)
    damage(bank, "overwritten", "visual/done", shard=2)
    expected = rf"shard 2 \(classes 4-5\): object visual/done/c/2/0/0 does not decode.*{FIX}"
    with pytest.raises(BankFormatError, match=expected):
        Bank.open(bank).done()


# ---------------------------------------------------------------------------------------------
# the command line: one line, exit status 2


def assert_one_line_error(result, *expected: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("how", ["overwritten", "deleted"])
def test_bank_info_prompts_of_a_damaged_bank_ends_in_one_line(reference, tmp_path, how):
    bank = copy_of(reference, tmp_path)
    damage(bank, how, "visual/embeddings", shard=3)
    result = run_cli("bank", "info", "--prompts", str(bank))
    assert_one_line_error(
        result,
        "object visual/embeddings/c/3/0/0/0",
        f"python cli.py bank verify {bank}",
        f"python cli.py bank repair {bank}",
    )
    assert result.stdout == ""  # nothing printed before the error: no half answer


def test_command_line_user_errors_are_one_line(reference, tmp_path):
    bank = copy_of(reference, tmp_path)
    root = tmp_path / "root.zarr"
    shutil.copytree(reference, root)
    (root / "zarr.json").write_text("{\n garbage")
    unsealed = tmp_path / "unsealed.zarr"  # bank info reads the done flags of an unsealed bank
    shutil.copytree(reference, unsealed)
    group = zarr.open_group(str(unsealed), mode="r+")
    group.attrs.put({k: v for k, v in group.attrs.items() if k != "contents"})
    damage(unsealed, "overwritten", "visual/done", shard=1)
    for args, expected in [
        (("bank", "info", str(unsealed)), ("object visual/done/c/1/0/0 does not decode",)),
        (("bank", "repair", "--quiet", str(root)), ("root zarr.json is damaged", "bank build")),
        (("bank", "info", str(root)), ("root zarr.json is damaged", "delete the bank")),
        (
            ("bank", "gallery", str(bank), "--out", str(tmp_path / "g.png"), "--max-classes", "0"),
            ("--max-classes 0: must be >= 1",),
        ),
        (
            ("bank", "gallery", str(bank), "--out", str(tmp_path / "g.xyz")),
            ("--out", "'.xyz'", ".png"),
        ),
        (
            ("bank", "push", str(bank), "nosuchproto://x/y", "--quiet"),
            ("nosuchproto://x/y", "Protocol not known"),
        ),
    ]:
        assert_one_line_error(run_cli(*args), *expected)
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "g.xyz").exists()


def test_a_damaged_root_points_its_build_command_at_the_bank_at_hand(reference, tmp_path):
    """The card records the command with the --out it was first built in; the fix names this
    copy (found by a fault probe: it named the original)."""
    from prompt_bank.format import BankFormatError
    from prompt_bank.store import Bank

    bank = copy_of(reference, tmp_path)
    card = (bank / "README.md").read_text()
    recorded = "cli.py bank build --vocab 'cat; dog' --out /elsewhere/b.zarr"
    (bank / "README.md").write_text(
        re.sub(r"^- command: .*$", f"- command: `{recorded}`", card, count=1, flags=re.M)
    )
    (bank / "zarr.json").write_text("{\n garbage")
    with pytest.raises(BankFormatError, match=r"root zarr\.json is damaged") as error:
        Bank.open(bank)
    assert f"(cli.py bank build --vocab 'cat; dog' --out {bank})" in str(error.value)


# ---------------------------------------------------------------------------------------------
# messages that were several lines


def test_merge_and_resume_mismatches_are_one_line(reference, tmp_path):
    other = copy_of(reference, tmp_path)
    attrs = zarr.open_group(str(other), mode="r+").attrs
    attrs["build"] = {**attrs["build"], "batch_size": 3}
    with pytest.raises(BankMismatchError, match=r"not made alike \(build.batch_size: 4 vs 3\)"):
        merge_banks(Bank.open(reference), Bank.open(other), str(tmp_path / "m.zarr"))
    with pytest.raises(BankMismatchError) as error:
        build_bank(small_config(keep_images=True, batch_size=2), other)
    message = str(error.value)
    assert "\n" not in message
    assert "build.batch_size: stored 3, now 2" in message and "another --out" in message


def test_missing_classes_name_the_text_only_option_of_each_command(reference):
    wanted = Vocabulary.from_entries(["zebra", *load_vocabulary("synthetic").entries[:1]], "z")
    with pytest.raises(BankMismatchError) as error:
        load_prompts(reference, wanted, **encoder_of(reference))
    assert "--model.allow_text_only true" in str(error.value)
    assert "segment/explain: --text-only" in str(error.value)
