"""Exported models shared like banks: cli.py model push / pull, segment --model URL
(model.share), over file://, plain HTTP and S3 (moto) on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import race, run_cli
from PIL import Image
from servers import MotoS3Server, RangeHTTPServer
from test_bank_sharing import s3_options

from prompt_bank.safety import BankLockError

VOCAB = "red disc; green square; blue triangle; background"


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    from model.export import export_model

    return export_model(trained, tmp_path_factory.mktemp("export") / "model")


def _labels(out, images) -> list[np.ndarray]:
    return [np.asarray(Image.open(out / f"{p.stem}.png")) for p in images]


def _one_line_error(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def test_push_to_a_file_url_then_segment_from_it_gives_the_checkpoint_s_labels(
    trained, exported, world, tmp_path, cli_in_process
):
    run_cli = cli_in_process  # the same commands, without a fresh process's imports each
    url = f"file://{tmp_path / 'remote' / 'toy'}"
    env = {"DPSEG_CACHE": str(tmp_path / "cache")}
    pushed = run_cli("model", "push", str(exported), url, "--quiet", cwd=world)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert "pushed" in pushed.stdout
    remote = tmp_path / "remote" / "toy"
    assert sorted(p.name for p in remote.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    images = sorted((world / "datasets" / "synthetic" / "images" / "val").glob("*.jpg"))[:2]
    labels = {}
    for option, value in (("--ckpt", str(trained)), ("--model", url)):
        out = tmp_path / option.strip("-")
        result = run_cli(
            "segment",
            option,
            value,
            "--images",
            *map(str, images),
            "--vocab",
            VOCAB,
            "--out",
            str(out),
            "--quiet",
            env=env,
            cwd=world,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        labels[option] = _labels(out, images)
    for a, b in zip(labels["--ckpt"], labels["--model"]):
        np.testing.assert_array_equal(a, b)
    key = json.loads(
        (tmp_path / "cache" / "models").iterdir().__next__().joinpath("config.json").read_text()
    )
    assert (
        key["weights"]["sha256"]
        == json.loads((exported / "config.json").read_text())["weights"]["sha256"]
    )
    # pushing again uploads nothing
    again = run_cli("model", "push", str(exported), url, "--quiet", cwd=world)
    assert again.returncode == 0 and "already holds this model" in again.stdout
    # a tampered remote: the pull refuses it in one line and keeps nothing
    weights = remote / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    pulled = run_cli("model", "pull", url, "--to", str(tmp_path / "pulled"), "--quiet", cwd=world)
    assert "the remote copy is damaged" in _one_line_error(pulled)
    assert not (tmp_path / "pulled").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    # a push over the damaged copy repairs it; then the pull succeeds
    repaired = run_cli("model", "push", str(exported), url, "--quiet", cwd=world)
    assert repaired.returncode == 0 and "repaired the damaged copy" in repaired.stdout
    assert weights.read_bytes() == (exported / "model.safetensors").read_bytes()
    pulled = run_cli("model", "pull", url, "--to", str(tmp_path / "pulled"), "--quiet", cwd=world)
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    assert (tmp_path / "pulled" / "model.safetensors").read_bytes() == weights.read_bytes()


def test_push_refuses_another_model_s_url_and_a_changed_folder(exported, world, tmp_path):
    from model.export import ModelFileError
    from model.share import push_model

    url = f"file://{tmp_path / 'remote'}"
    push_model(exported, url, progress=False)
    other = tmp_path / "other"
    shutil.copytree(exported, other)
    config = json.loads((other / "config.json").read_text())
    config["training"]["checkpoint"] = "another.ckpt"
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="holds another model"):
        push_model(other, url, progress=False)
    (other / "model.safetensors").write_bytes(b"not the weights")
    result = run_cli("model", "push", str(other), f"file://{tmp_path / 'new'}", cwd=world)
    assert "the file was changed or damaged" in _one_line_error(result)
    assert not (tmp_path / "new").exists()


def test_pull_over_http_caches_by_content_and_downloads_only_the_config_again(
    exported, tmp_path, monkeypatch
):
    from model.share import pull_model

    monkeypatch.setenv("DPSEG_CACHE", str(tmp_path / "cache"))
    with RangeHTTPServer(exported.parent) as server:
        url = f"{server.url}/{exported.name}"
        first = pull_model(url, progress=False)
        assert first["downloaded"] > 0
        folder = tmp_path / "cache" / "models" / first["key"]
        assert first["path"] == str(folder)
        assert (folder / "model.safetensors").read_bytes() == (
            exported / "model.safetensors"
        ).read_bytes()
        server.reset()
        second = pull_model(url, progress=False)
        assert second == {"path": str(folder), "downloaded": 0, "key": first["key"]}
        assert [path for _, path in server.requests] == [f"/{exported.name}/config.json"]
        # a damaged cached copy is replaced by a whole one
        (folder / "model.safetensors").write_bytes(b"damaged")
        third = pull_model(url, progress=False)
        assert third["downloaded"] > 0
        assert (folder / "model.safetensors").read_bytes() == (
            exported / "model.safetensors"
        ).read_bytes()


@pytest.mark.parametrize(
    ("fault", "name"),
    [("500", "model.safetensors"), ("short", "model.safetensors"), ("503", "config.json")],
)
def test_pull_over_http_asks_again_after_a_transient_fault(
    exported, tmp_path, monkeypatch, fault, name
):
    """A 5xx or a body cut short once does not end a model pull: the file is asked again. For
    config.json (the model's root file) one 503 failed the pull after a single request, with
    "the server or the network kept failing" (probe 12)."""
    import common.retry
    from model.share import pull_model

    monkeypatch.setattr(common.retry, "BACKOFF_S", 0.001)
    with RangeHTTPServer(exported.parent) as server:
        server.fail(fault, match=name, times=1)
        pulled = pull_model(f"{server.url}/{exported.name}", tmp_path / "m", progress=False)
        asked = [p for m, p in server.requests if m == "GET" and p.endswith(name)]
    assert len(asked) == 2  # failed once, then whole
    for file in ("model.safetensors", "config.json"):
        assert (Path(pulled["path"]) / file).read_bytes() == (exported / file).read_bytes()


def test_push_and_pull_through_s3(exported, tmp_path):
    from model.share import pull_model, push_model

    with MotoS3Server() as server:
        server.make_bucket("models")
        options = s3_options(server)
        pushed = push_model(exported, "s3://models/toy", options, progress=False)
        assert pushed["uploaded"] == sum(p.stat().st_size for p in exported.iterdir())
        assert push_model(exported, "s3://models/toy", options, progress=False)["uploaded"] == 0
        pulled = pull_model("s3://models/toy", tmp_path / "here", options, progress=False)
        assert pulled["key"] == pushed["key"]
        for name in ("config.json", "model.safetensors", "README.md"):
            assert (tmp_path / "here" / name).read_bytes() == (exported / name).read_bytes()


def _closed_port() -> int:
    """A loopback port nobody listens on."""
    from app.page import check_port

    return check_port("127.0.0.1", 0)


def test_missing_and_unreachable_models_end_in_one_line(exported, world, tmp_path):
    result = run_cli("model", "pull", f"file://{tmp_path / 'nothing'}", cwd=world)
    assert "no config.json there, so no model" in _one_line_error(result)
    url = f"http://127.0.0.1:{_closed_port()}/model"
    image = next((world / "datasets" / "synthetic" / "images" / "val").glob("*.jpg"))
    result = run_cli(
        "segment",
        "--model",
        url,
        "--images",
        str(image),
        "--vocab",
        "a",
        "--out",
        str(tmp_path / "o"),
        cwd=world,
    )
    line = _one_line_error(result)
    assert url in line and "check the URL, the network" in line
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{_closed_port()}",
    )
    result = run_cli(
        "model", "push", str(exported), "s3://bucket/model", "--quiet", env=env, cwd=world
    )
    assert "model push to s3://bucket/model" in _one_line_error(result)


def test_a_config_naming_another_weights_path_is_refused_and_writes_nothing(exported, tmp_path):
    """A remote config.json is untrusted: a weights "file" outside the folder (or any name but
    model.safetensors) is refused before anything is downloaded."""
    from model.export import ModelFileError
    from model.share import pull_model

    remote = tmp_path / "remote"
    shutil.copytree(exported, remote)
    config = json.loads((remote / "config.json").read_text())
    config["weights"]["file"] = "../escaped.bin"
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="lacks a valid weights entry"):
        pull_model(f"file://{remote}", tmp_path / "here", progress=False)
    assert not (tmp_path / "escaped.bin").exists() and not (tmp_path / "here").exists()


def test_pull_to_a_file_is_refused_before_any_request(exported, tmp_path):
    from conftest import run_cli

    afile = tmp_path / "afile"
    afile.write_text("x")
    result = run_cli("model", "pull", f"file://{exported}", "--to", str(afile))
    assert result.returncode == 2 and "--to" in result.stderr and "is a file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and afile.read_text() == "x"


def test_pull_from_a_plain_http_server_that_ignores_range(exported, tmp_path, monkeypatch):
    """Found by the probe: Python's own http.server (no Range support) gave fsspec's "doesn't
    appear to support range requests" traceback; bank pulls from it worked. The weights are
    streamed now."""
    import functools
    import http.server
    import threading

    from model.share import pull_model

    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(exported.parent)
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{exported.name}"
        pulled = pull_model(url, to=tmp_path / "pulled", progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert pulled["downloaded"] > 0
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "pulled" / name).read_bytes() == (exported / name).read_bytes()


def test_push_refuses_a_config_json_the_weights_do_not_fit(exported, tmp_path):
    """Found by the probe: config.json edited (cost_channels 32 -> 64), the weights unchanged:
    the push succeeded, and every segment --model of the pushed copy failed. The push loads the
    model first and uploads nothing."""
    from model.export import ModelFileError
    from model.share import push_model

    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["dpseg"]["cost_channels"] *= 2
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match=r"model\.safetensors does not fit the model"):
        push_model(folder, f"file://{tmp_path / 'remote'}", progress=False)
    assert not (tmp_path / "remote").exists()


def test_a_model_folder_is_named_as_what_records_its_banks(exported, monkeypatch):
    """Probe 8: `segment --model DIR` with a moved bank said "the checkpoint records"."""
    from model.predictor import Predictor

    predictor = Predictor.from_pretrained(exported)
    monkeypatch.setattr(predictor, "recorded_banks", lambda: ["/gone/bank.zarr"])
    assert predictor.missing_bank_note() == (
        "the training bank '/gone/bank.zarr' that the model folder's config.json records is not "
        "here"
    )


def test_a_server_answering_a_page_instead_of_the_config_is_named_so(tmp_path):
    """Probe 8: an HTML page for config.json was "edited or damaged; export the model again"."""
    from model.export import ModelFileError
    from model.share import pull_model

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("<html>login</html>")
    with RangeHTTPServer(tmp_path) as server:
        url = f"{server.url}/m"
        with pytest.raises(ModelFileError) as raised:
            pull_model(url, tmp_path / "to", progress=False)
    assert str(raised.value) == (
        f"{url}: the server answered config.json with something that is not JSON (it begins "
        "b'<html>login</html>'): a login or error page, or a wrong URL; check the URL and the "
        "credentials (--storage-options, $DPSEG_STORAGE_OPTIONS)"
    )


@pytest.mark.parametrize("where", ["file", "s3"])
def test_two_pushes_of_different_models_to_one_url_never_both_succeed(exported, tmp_path, where):
    """Probe 12: two pushes of different models to one S3 URL both said "pushed" in 3 of 15
    trials, and the URL held one of them. A push holds the URL's lock (build.lock, as a bank
    push does) while it checks and writes: one wins, the other is refused in one line."""
    from model.export import ModelFileError, card_bytes
    from model.share import pull_model, push_model

    other = tmp_path / "other"
    shutil.copytree(exported, other)
    config = json.loads((other / "config.json").read_text())
    config["training"]["checkpoint"] = "another.ckpt"
    (other / "config.json").write_text(json.dumps(config))
    (other / "README.md").write_bytes(card_bytes(config))  # a whole export of another model
    with contextlib.ExitStack() as held:
        options = None
        if where == "s3":
            server = held.enter_context(MotoS3Server())
            server.make_bucket("models")
            options = s3_options(server)
        for trial in range(3):
            url = (
                f"file://{tmp_path / f'race{trial}'}"
                if where == "file"
                else f"s3://models/r{trial}"
            )
            _, pushed, lost = race(
                lambda folder, url=url: push_model(folder, url, options, progress=False),
                exported,
                other,
                (ModelFileError, BankLockError),
            )
            assert "being pushed to" in str(lost) or "holds another model" in str(lost), lost
            assert "torchrun" not in str(lost), lost  # a build's advice, not a push's
            pulled = pull_model(url, tmp_path / f"pulled{trial}", options, progress=False)
            assert pulled["key"] == pushed["key"]
