"""The web app (cli.py app, app.page) served by a real process on loopback and used through the
system's Chromium (app.browser): upload, vocabulary, overlays, legend, errors in one line."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

VOCAB = "red disc; green square; blue triangle; background"


@pytest.fixture(scope="module")
def app_url(trained, world, tmp_path_factory):
    """``cli.py app --model FOLDER`` (the fixture's model, exported) on a free port."""
    from app.page import check_port
    from model.export import export_model

    folder = export_model(trained, tmp_path_factory.mktemp("app") / "model")
    port = check_port("127.0.0.1", 0)  # a free port
    log = tmp_path_factory.mktemp("app_log") / "app.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "cli.py"),
                "app",
                "--model",
                str(folder),
                "--port",
                str(port),
                "--vocab",
                VOCAB,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=world,
        )
    try:
        deadline = time.monotonic() + 180
        while "serving on http://127.0.0.1:" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the app did not start: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        process.send_signal(signal.SIGPIPE)  # what a browser hanging up mid-reply raises
        time.sleep(1)
        assert process.poll() is None, f"a SIGPIPE killed the app: {log.read_text()[-3000:]}"
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C stops the app cleanly: exit 0, one line
        process.wait(timeout=60)
    assert process.returncode == 0, log.read_text()[-3000:]
    assert log.read_text().rstrip().endswith("app stopped"), log.read_text()[-3000:]


@pytest.fixture(scope="module")
def chromium():
    from app.browser import chromium_path

    path = chromium_path()
    if path is None:
        pytest.skip("no system Chromium: apt-get install chromium (.ci/run installs it)")
    return path


def test_the_page_segments_an_uploaded_image_and_lists_the_classes_it_found(
    chromium, app_url, world, tmp_path
):
    from app.browser import segment_in_browser

    images = sorted((world / "datasets" / "synthetic" / "images" / "val").glob("*.jpg"))[:2]
    result = segment_in_browser(
        app_url, images, VOCAB, explain="red disc", screenshot=tmp_path / "page.png"
    )
    assert result["status"].startswith("DPSeg, one round: 2 image(s)"), result
    names = [n.strip() for n in VOCAB.split(";")]
    assert result["names"] and set(result["names"]) <= set(names), result["names"]
    assert result["sizes"] == [Image.open(p).size for p in images]
    page = np.asarray(Image.open(tmp_path / "page.png"))
    assert page.shape[1] == 1280 and page.shape[0] > 600


def test_the_page_shows_a_bad_vocabulary_as_one_line(chromium, app_url, world):
    from app.browser import segment_in_browser

    image = sorted((world / "datasets" / "synthetic" / "images" / "val").glob("*.jpg"))[0]
    result = segment_in_browser(app_url, [image], "   ")
    assert result["status"].startswith("error: vocabulary:"), result
    assert "\n" not in result["status"] and result["names"] == []


def test_a_class_the_bank_lacks_is_built_from_the_page(chromium, app_url, world):
    from app.browser import segment_in_browser

    image = sorted((world / "datasets" / "synthetic" / "images" / "val").glob("*.jpg"))[0]
    result = segment_in_browser(app_url, [image], "red disc; okapi; background")
    assert "1 class(es) not in the bank, built for this vocabulary" in result["status"], result


def test_a_port_in_use_is_one_line_before_any_model_loads(tmp_path):
    import socket

    from conftest import run_cli

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("app", "--model", str(tmp_path / "none"), "--port", str(port))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (
        f"error: --port {port}: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "give another port, or --port 0 for a free one"
    )


@pytest.mark.parametrize("host", ["999.1.1.1", "no-such-host.invalid"])
def test_a_host_that_is_not_here_is_blamed_on_host(tmp_path, cli_in_process, host):
    """Found by the re-probe: it was blamed on --port 0, the value already given."""
    result = cli_in_process("app", "--model", str(tmp_path / "none"), "--host", host, "--port", "0")
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: --host {host!r}: cannot listen there ("), line
    assert line.endswith(
        "give an address of this machine: 127.0.0.1 (this machine only, the default) or "
        "0.0.0.0 (every interface)"
    )


def test_a_vip_config_error_names_vip_config(tmp_path, cli_in_process):
    """Found by the re-probe: the app's --vip-config was reported as --config."""
    config = tmp_path / "unknown.yaml"
    config.write_text("model:\n  no_such_setting: 1\n")
    result = cli_in_process("app", "--vip-config", str(config), "--port", "0", "--device", "cpu")
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        f"error: --vip-config {str(config)!r}: model keys no_such_setting are not VIP's (a DPSeg "
    ), line


def test_a_vip_config_that_is_a_pipe_is_named_as_one(tmp_path, cli_in_process):
    """The probe: a pipe given as --vip-config was said not to exist."""
    import os

    os.mkfifo(tmp_path / "vip.yaml")
    result = cli_in_process("app", "--vip-config", str(tmp_path / "vip.yaml"), "--port", "0")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (
        f"error: --vip-config {str(tmp_path / 'vip.yaml')!r} is a pipe, not a file; give a VIP "
        "config such as configs/vip_toy.yaml"
    )
