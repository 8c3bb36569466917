"""The model card (README.md of an exported model) held to its config.json, as a bank's card is
held to its attributes; and a checkpoint whose pickle names code refused without torch's advice.

Fault probe D6: `model push` and `model pull` carried an edited card (its licence changed) or no
card under the same content key. Now a push refuses a folder whose card is missing, a link or
not the card its config.json gives (one line, nothing uploaded), and a pull writes the card from
config.json whatever the remote holds (ours, as `bank pull` does).

Fault probe N4: a checkpoint whose pickle names a class or function was refused, but the line
quoted PyTorch's advice to load it with weights_only=False, which would run that code.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import tiny_cli_here


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    from model.export import export_model

    return export_model(trained, tmp_path_factory.mktemp("export") / "model")


def _one_line_error(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


def _copy(exported: Path, where: Path) -> Path:
    shutil.copytree(exported, where)
    return where


def test_the_export_s_card_is_the_one_its_config_gives(exported):
    """One source of the card's text: what export wrote is ``card_bytes`` of config.json as it
    reads back, so a push can check it and a pull can write it."""
    from model.export import card_bytes, card_problem

    config = json.loads((exported / "config.json").read_bytes())
    assert (exported / "README.md").read_bytes() == card_bytes(config)
    assert b"license: other" in card_bytes(config)
    assert card_problem(exported, config) is None


@pytest.mark.parametrize("damage", ["edited", "missing", "link", "folder"])
def test_push_refuses_a_card_that_is_not_the_config_s(exported, tmp_path, cli_in_process, damage):
    folder = _copy(exported, tmp_path / "model")
    card = folder / "README.md"
    if damage == "edited":  # the probe: the licence changed
        card.write_text(card.read_text().replace("license: other", "license: mit"))
    elif damage == "missing":
        card.unlink()
    elif damage == "link":  # a push would send the file it points to
        elsewhere = tmp_path / "elsewhere.md"
        elsewhere.write_bytes((exported / "README.md").read_bytes())
        card.unlink()
        card.symlink_to(elsewhere)
    else:
        card.unlink()
        card.mkdir()
    remote = tmp_path / "remote"
    result = cli_in_process("model", "push", str(folder), f"file://{remote}", "--quiet")
    line = _one_line_error(result)
    reason = {
        "edited": "README.md (the card) is not the one its config.json gives (edited?)",
        "missing": "README.md (the card) is missing",
        "link": f"README.md (the card) is a link to {tmp_path / 'elsewhere.md'}, not the "
        "model's own file",
        "folder": "README.md (the card) is not a file",
    }[damage]
    assert line == (
        f"error: model push: MODEL {str(folder)!r}: {reason}; nothing was uploaded. Restore "
        "README.md as `cli.py model export` wrote it, or export the model again (`cli.py model "
        "export CKPT --out DIR`)"
    )
    assert not remote.exists()  # not even the empty folder the URL's lock would leave


def test_push_refuses_a_card_that_is_not_the_config_s_even_where_the_url_has_the_model(
    exported, tmp_path, cli_in_process
):
    """A URL that holds this very model already uploads nothing; an edited local card is still
    refused, not passed as "already holds this model"."""
    url = f"file://{tmp_path / 'remote'}"
    assert cli_in_process("model", "push", str(exported), url, "--quiet").returncode == 0
    folder = _copy(exported, tmp_path / "model")
    card = folder / "README.md"
    card.write_text(card.read_text().replace("license: other", "license: mit"))
    line = _one_line_error(cli_in_process("model", "push", str(folder), url, "--quiet"))
    assert "README.md (the card) is not the one its config.json gives" in line
    assert (tmp_path / "remote" / "README.md").read_bytes() == (exported / "README.md").read_bytes()


@pytest.mark.parametrize("damage", ["edited", "missing"])
def test_pull_writes_the_card_its_config_gives_whatever_the_remote_holds(
    exported, tmp_path, cli_in_process, damage
):
    remote = _copy(exported, tmp_path / "remote")  # a remote edited where it is (or an old push)
    card = remote / "README.md"
    if damage == "edited":
        card.write_text(card.read_text().replace("license: other", "license: mit"))
    else:
        card.unlink()
    to = tmp_path / "pulled"
    result = cli_in_process("model", "pull", f"file://{remote}", "--to", str(to), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (to / "README.md").read_bytes() == (exported / "README.md").read_bytes()
    assert b"license: mit" not in (to / "README.md").read_bytes()
    for name in ("config.json", "model.safetensors"):
        assert (to / name).read_bytes() == (exported / name).read_bytes()


def test_a_cached_copy_whose_card_was_edited_is_pulled_again(exported, tmp_path, cli_in_process):
    url = f"file://{exported}"
    env = {"DPSEG_CACHE": str(tmp_path / "cache")}
    first = cli_in_process("model", "pull", url, "--quiet", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    (cached,) = (tmp_path / "cache" / "models").iterdir()
    card = cached / "README.md"
    card.write_text(card.read_text().replace("license: other", "license: mit"))
    again = cli_in_process("model", "pull", url, "--quiet", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already here" not in again.stdout
    assert card.read_bytes() == (exported / "README.md").read_bytes()
    third = cli_in_process("model", "pull", url, "--quiet", env=env)
    assert third.returncode == 0 and "already here" in third.stdout


def test_a_push_over_a_remote_whose_card_was_edited_sends_the_card_again(
    exported, tmp_path, cli_in_process
):
    remote = tmp_path / "remote"
    url = f"file://{remote}"
    assert cli_in_process("model", "push", str(exported), url, "--quiet").returncode == 0
    card = remote / "README.md"
    card.write_text(card.read_text().replace("license: other", "license: mit"))
    weights = (remote / "model.safetensors").stat().st_mtime_ns
    repaired = cli_in_process("model", "push", str(exported), url, "--quiet")
    assert repaired.returncode == 0, repaired.stderr[-3000:]
    assert "repaired the damaged copy" in repaired.stdout
    assert card.read_bytes() == (exported / "README.md").read_bytes()
    assert (remote / "model.safetensors").stat().st_mtime_ns == weights  # the card alone
    again = cli_in_process("model", "push", str(exported), url, "--quiet")
    assert again.returncode == 0 and "already holds this model" in again.stdout


def test_pull_refuses_a_config_that_gives_no_card_and_keeps_nothing(exported, tmp_path):
    from model.export import ModelFileError
    from model.share import pull_model

    remote = _copy(exported, tmp_path / "remote")
    config = json.loads((remote / "config.json").read_text())
    del config["training"]
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="lacks what a model card shows"):
        pull_model(f"file://{remote}", tmp_path / "here", progress=False)
    assert not (tmp_path / "here").exists()


# ---------------------------------------------------------------------------------------------
# N4: a pickle that names code


class _Runs:
    """Unpickled, it would create ``marker`` (what a checkpoint's pickle may do: run code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def code_ckpt(tmp_path) -> tuple[Path, Path]:
    import torch

    marker = tmp_path / "ran"
    ckpt = tmp_path / "code.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.5.0", "x": _Runs(marker)}, ckpt)
    return ckpt, marker


def _says_code_not_loaded(line: str, option: str, ckpt: Path) -> None:
    """The line torch's error gives, without its advice: what the pickle names (open, which
    pickles as io.open or builtins.open), that it is not loaded, and the fix."""
    import re

    named = re.search(r"such as (io|builtins)\.open, ", line)
    assert named, line
    assert line == (
        f"error: {option} {str(ckpt)!r}: not a checkpoint of cli.py fit (it holds objects other "
        f"than tensors and plain data, such as {named.group(1)}.open, so it is not loaded: "
        "loading it could run code); pass a .ckpt file that cli.py fit wrote "
        "(runs/dpseg/version_N/checkpoints/last.ckpt)"
    )
    assert "weights_only" not in line


def test_a_checkpoint_whose_pickle_names_code_is_refused_without_torch_s_advice(
    code_ckpt, tmp_path, cli_in_process
):
    ckpt, marker = code_ckpt
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 24), (200, 30, 30)).save(image)
    segment = cli_in_process(
        "segment", "--ckpt", str(ckpt), "--images", str(image), "--vocab", "a; b",
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    _says_code_not_loaded(_one_line_error(segment), "--ckpt", ckpt)
    export = cli_in_process("model", "export", str(ckpt), "--out", str(tmp_path / "m"))
    _says_code_not_loaded(_one_line_error(export), "CKPT", ckpt)
    assert not marker.exists() and not (tmp_path / "m").exists()


def test_lightning_test_refuses_a_checkpoint_naming_code_without_torch_s_advice(
    world, code_ckpt, capsys, monkeypatch
):
    ckpt, marker = code_ckpt
    result = tiny_cli_here(world, capsys, monkeypatch, "test", "--ckpt_path", str(ckpt))
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    _says_code_not_loaded(errors[0], "--ckpt_path", ckpt)
    assert not marker.exists()


def test_a_checkpoint_path_with_braces_is_named(tmp_path):
    """The message template was filled with str.format after the path was put in: a file named
    a{b}.ckpt was a KeyError traceback."""
    from model.checkpoint import CheckpointError, check_checkpoint

    ckpt = tmp_path / "a{b}.ckpt"
    ckpt.write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError) as raised:
        check_checkpoint(ckpt, "--ckpt_path")
    assert str(raised.value).startswith(
        f"--ckpt_path {str(ckpt)!r}: not a checkpoint of cli.py fit (not a torch zip archive)"
    )


def test_model_push_to_a_bucket_that_does_not_exist_names_the_url_and_the_fix(
    exported, cli_in_process, monkeypatch
):
    """Probe 11: `model push` to a missing S3 bucket said only "The specified bucket does not
    exist" (`bank push` names the URL and the fix)."""
    import os

    from servers import MotoS3Server

    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    url = "s3://nosuchbucket/m"
    with MotoS3Server() as s3:
        env = {**s3.env(), "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
        result = cli_in_process("model", "push", str(exported), url, env=env)
    line = _one_line_error(result)
    assert line.startswith(
        f"error: model push to {url}: the bucket 'nosuchbucket' does not exist; create it"
    ), line


@pytest.mark.parametrize("fault", ["missing", "500"])
def test_model_pull_names_weights_that_are_missing_or_failing(
    exported, tmp_path, cli_in_process, monkeypatch, fault
):
    """Probe 11: a pull whose model.safetensors was missing, or answered 500, printed only the
    bare URL (fsspec's "not found"); a 500 was not asked again."""
    from servers import RangeHTTPServer

    import common.retry

    monkeypatch.setattr(common.retry, "BACKOFF_S", 0.001)
    root = tmp_path / "served"
    remote = _copy(exported, root / "m")
    if fault == "missing":
        (remote / "model.safetensors").unlink()
    with RangeHTTPServer(root) as server:
        if fault == "500":
            server.fail("500", match="model.safetensors")
        url = f"{server.url}/{remote.name}"
        result = cli_in_process("model", "pull", url, "--to", str(tmp_path / "got"), "--quiet")
        asked = [p for m, p in server.requests if "model.safetensors" in p]
    line = _one_line_error(result)
    if fault == "missing":
        assert line == (
            f"error: {url}: its model.safetensors is missing there, so the copy is incomplete; "
            "push it again from a good export to the store this URL serves"
        )  # an http URL is read only (probe 12: "model push MODEL http://..." is refused)
    else:
        assert "500" in line and url in line, line
        assert len(asked) > 2, asked  # asked again
    assert not (tmp_path / "got").exists()
