"""Remote transfers against hostile or broken servers (a fault probe's findings D7-D10).

Real servers on 127.0.0.1 (tests/servers.py): the HTTP server stalls, stalls half way through a
body, sends a Content-Length shorter than its body, or answers 503; moto's S3 server has no such
bucket. The CLI runs in this process; each failure must be one line naming the URL and the fix,
exit status 2, with nothing partial left beside the output.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from servers import MotoS3Server, RangeHTTPServer
from test_bank_sharing import arrays_of, assert_same_arrays, build
from test_user_errors import one_error_line

from common.retry import RETRIES

NAME = "b4.zarr"
TIMEOUT = "2"  # $DPSEG_HTTP_TIMEOUT of the stall tests: a stall costs 4 x 2 s, not minutes
WATCHDOG_S = 60.0  # a client with no read timeout is hung up on after this (it then fails)


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Path:
    """A small sealed bank (8 classes, 2 shards)."""
    return build(tmp_path_factory.mktemp("bank") / NAME)


@pytest.fixture(scope="module")
def server(bank, tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    shutil.copytree(bank, root / NAME)
    with RangeHTTPServer(root) as served:
        yield served


@pytest.fixture
def hostile(server, monkeypatch):
    """`server`, its faults cleared after the test; retries pause 1 ms, not 0.5 s; a watchdog
    lets stalled requests go after WATCHDOG_S. Requests wait 30 s for data (a loaded machine
    stays clear of it); the stall tests set TIMEOUT."""
    import common.retry

    monkeypatch.setattr(common.retry, "BACKOFF_S", 0.001)
    monkeypatch.setenv("DPSEG_HTTP_TIMEOUT", "30")
    monkeypatch.delenv("DPSEG_STORAGE_OPTIONS", raising=False)
    server.reset()
    watchdog = threading.Timer(WATCHDOG_S, server.release_stalled)
    watchdog.start()
    yield server
    watchdog.cancel()
    server.fail(None)


def nothing_partial(parent: Path) -> None:
    """No staging folder, no half bank beside the output."""
    assert list(parent.glob("*.partial*")) == [] and list(parent.glob(".*")) == []
    assert not (parent / "p.zarr").exists()


def gets(server: RangeHTTPServer, part: str) -> list[str]:
    return [p for m, p in server.requests if m == "GET" and part in p]


# ---------------------------------------------------------------------------------------------
# D7: a server that stops answering is a timeout, asked again, then one line


def refused(result, start: str) -> str:
    """The one error line of a command that ended with exit 2; it starts ``error: {start}``."""
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert line.startswith(f"error: {start}"), line
    return line


def timed_out_line(result, what: str) -> str:
    """The line of a command whose requests all timed out."""
    return refused(
        result, f"{what}: no data for {TIMEOUT} s (timed out, tried {RETRIES + 1} times); "
    )


@pytest.mark.parametrize("fault", ["stall", "stall-body"])
def test_a_stalled_object_times_out_is_asked_again_and_ends_in_one_line(
    hostile, tmp_path, cli_in_process, fault
):
    """The probe: a server that never answered an object request (or sent half a body with the
    full Content-Length over keep-alive) held `bank pull` for 337 s+ without a word."""
    url = f"{hostile.url}/{NAME}"
    hostile.fail(fault)  # every shard object
    start = time.monotonic()
    result = cli_in_process(
        "bank", "pull", url, "--to", str(tmp_path / "p.zarr"), "--quiet",
        env={"DPSEG_HTTP_TIMEOUT": TIMEOUT},
    )  # fmt: skip
    took = time.monotonic() - start
    line = timed_out_line(result, f"bank pull from {url}")
    assert "$DPSEG_HTTP_TIMEOUT" in line and "credentials" not in line, line
    assert took < WATCHDOG_S, took
    stalled = gets(hostile, "/c/")
    assert max(stalled.count(p) for p in stalled) == RETRIES + 1  # asked again, then given up
    nothing_partial(tmp_path)


def test_a_stalled_root_times_out_for_every_command_that_opens_a_bank(hostile, cli_in_process):
    url = f"{hostile.url}/{NAME}"
    hostile.fail("stall", match=f"/{NAME}/zarr.json")
    result = cli_in_process("bank", "info", url, env={"DPSEG_HTTP_TIMEOUT": TIMEOUT})
    timed_out_line(result, f"cannot open a bank at {url!r}")
    assert len(gets(hostile, f"/{NAME}/zarr.json")) == RETRIES + 1


@pytest.mark.parametrize("value", ["abc", "0", "-3", "nan", "inf", ""])
def test_a_bad_http_timeout_setting_is_one_line_naming_it(hostile, cli_in_process, value):
    """ "" is unset (the default); anything else must be a number of seconds above 0."""
    url = f"{hostile.url}/{NAME}"
    result = cli_in_process("bank", "info", url, env={"DPSEG_HTTP_TIMEOUT": value})
    if value == "":
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert line.startswith(f"error: $DPSEG_HTTP_TIMEOUT is {value!r}: it must be a number"), line
    assert hostile.requests == []  # refused before any request


# ---------------------------------------------------------------------------------------------
# D8: a reply whose Content-Length is shorter than its body


def test_a_malformed_reply_is_one_line_without_raw_bytes(hostile, tmp_path, cli_in_process):
    """The probe: 4 lines quoting aiohttp's "Bad status line ... b'(\\xb5/\\xfd..." and telling
    the user to check the credentials."""
    url = f"{hostile.url}/{NAME}"
    hostile.fail("overlong")
    result = cli_in_process("bank", "pull", url, "--to", str(tmp_path / "p.zarr"), "--quiet")
    line = refused(result, f"bank pull from {url}: the server sent a malformed reply for {url}/")
    assert "try again, or check the server" in line, line
    assert "\\x" not in line and "b'" not in line and "credentials" not in line, line
    assert len(line) < 500, line
    nothing_partial(tmp_path)


# ---------------------------------------------------------------------------------------------
# D9: a 503 on the root zarr.json


def test_a_503_on_the_root_is_asked_again_like_objects(bank, hostile, tmp_path, cli_in_process):
    """The probe: two 503s on the root zarr.json, then success, failed `bank pull` ("check that
    the path names a bank ... credentials"), while objects were asked again."""
    url = f"{hostile.url}/{NAME}"
    hostile.fail("503", match=f"/{NAME}/zarr.json", times=2)
    result = cli_in_process("bank", "pull", url, "--to", str(tmp_path / "p.zarr"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert_same_arrays(arrays_of(str(tmp_path / "p.zarr")), arrays_of(str(bank)))
    assert len(gets(hostile, f"/{NAME}/zarr.json")) >= 3  # twice refused, then read


@pytest.mark.parametrize("command", ["pull", "info"])
def test_a_root_that_stays_503_says_the_server_is_busy(hostile, tmp_path, cli_in_process, command):
    url = f"{hostile.url}/{NAME}"
    hostile.fail("503", match=f"/{NAME}/zarr.json")
    args = ["--to", str(tmp_path / "p.zarr"), "--quiet"] if command == "pull" else []
    result = cli_in_process("bank", command, url, *args)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert line.startswith(f"error: cannot open a bank at {url!r}: "), line
    assert line.endswith("the server is busy or failing (HTTP 503); try again later"), line
    assert "credentials" not in line and "check that the path" not in line, line
    assert len(gets(hostile, f"/{NAME}/zarr.json")) == RETRIES + 1
    nothing_partial(tmp_path)


# ---------------------------------------------------------------------------------------------
# D10: a bucket that does not exist


@pytest.fixture(scope="module")
def s3():
    with MotoS3Server() as server:
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch, tmp_path) -> dict[str, str]:
    """The probe's environment: any credentials, the endpoint given in $DPSEG_STORAGE_OPTIONS."""
    import os

    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    return {
        **s3.env(),
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "DPSEG_STORAGE_OPTIONS": f'{{"client_kwargs": {{"endpoint_url": "{s3.endpoint_url}"}}}}',
        "DPSEG_CACHE": str(tmp_path / "cache"),
    }


def test_push_to_a_bucket_that_does_not_exist_names_the_url_and_the_fix(
    bank, s3_env, cli_in_process
):
    """The probe: only "error: The specified bucket does not exist"."""
    url = "s3://nosuchbucket/b"
    result = cli_in_process("bank", "push", str(bank), url, "--quiet", env=s3_env)
    line = refused(
        result, f"bank push to {url}: the bucket 'nosuchbucket' does not exist; create it"
    )
    assert "check its name in the URL" in line, line


@pytest.mark.parametrize("command", ["pull", "info"])
def test_pull_and_info_of_a_bucket_that_does_not_exist_say_so(
    s3_env, tmp_path, cli_in_process, command
):
    """The probe: "is not a prompt bank (no zarr v3 group there ...)" hid the missing bucket."""
    url = "s3://nosuchbucket/b"
    args = ["--to", str(tmp_path / "p.zarr"), "--quiet"] if command == "pull" else []
    result = cli_in_process("bank", command, url, *args, env=s3_env)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert line.startswith(f"error: {url!r}: the bucket 'nosuchbucket' does not exist"), line
    assert "not a prompt bank" not in line and "check the bucket's name" in line, line
    nothing_partial(tmp_path)


def test_a_missing_bank_in_a_bucket_that_exists_is_still_no_bank(s3, s3_env, cli_in_process):
    s3.make_bucket("there")
    result = cli_in_process("bank", "info", "s3://there/b", env=s3_env)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "is not a prompt bank (no zarr.json there)" in line, line
    assert "does not exist" not in line and "<" not in line, line  # no store repr


@pytest.mark.parametrize("command", ["pull", "info"])
def test_an_upload_cut_before_its_root_is_said_to_be_one(
    bank, s3, s3_env, tmp_path, cli_in_process, command
):
    """The probe: pulling a push cut short (no root zarr.json yet: it goes last) said "not a
    prompt bank (no zarr v3 group there: No group found in store <FsspecStore(...)>...)"."""
    s3.make_bucket("cut")
    url = "s3://cut/b"
    assert cli_in_process("bank", "push", str(bank), url, "--quiet", env=s3_env).returncode == 0
    s3.client().delete_object(Bucket="cut", Key="b/zarr.json")
    args = ["--to", str(tmp_path / "p.zarr"), "--quiet"] if command == "pull" else []
    result = cli_in_process("bank", command, url, *args, env=s3_env)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert line.endswith(
        f"{url!r} holds part of a bank (README.md, text/zarr.json) but no "
        "root zarr.json, which is written last: a push or build that did not finish; run that "
        "push or build again to complete it (or give the URL or folder of a whole bank)"
    ), line
    nothing_partial(tmp_path)
    again = cli_in_process("bank", "push", str(bank), url, "--quiet", env=s3_env)
    assert again.returncode == 0, again.stderr  # the same push completes it
    assert cli_in_process("bank", "verify", url, env=s3_env).returncode == 0


# ---------------------------------------------------------------------------------------------
# the words, without a server


def test_a_malformed_reply_in_words_is_transient_and_quotes_no_bytes():
    import aiohttp
    from aiohttp.http_exceptions import BadStatusLine
    from yarl import URL

    from common.retry import failure_advice, request_failure, transient

    info = aiohttp.RequestInfo(URL("http://h/b.zarr/c/0"), "GET", {}, URL("http://h/b.zarr/c/0"))
    try:
        try:
            raise BadStatusLine(b"(\xb5/\xfd\x00X\x9c".decode("latin-1") + "\n" * 3)
        except BadStatusLine as parsed:
            raise aiohttp.ClientResponseError(
                info, (), status=400, message=f"Bad status line:\n  b'{parsed.message}'\n  ^"
            ) from parsed
    except aiohttp.ClientResponseError as e:
        error = e
    said = request_failure(error)
    assert said == "the server sent a malformed reply for http://h/b.zarr/c/0 (Bad status line)"
    assert transient(error) and "check the server" in failure_advice(error, "")


# ---------------------------------------------------------------------------------------------
# N3: a remote shard's objects are asked for together


def test_a_remote_shard_s_objects_are_asked_for_at_once(hostile):
    """Probe 10: `bank subset URL` read a remote bank's objects one at a time (70 objects at 2 s
    each took over 120 s). Here shard 0's objects get no answer until every one of them has been
    asked for: a reader that asks one by one never gets past the first."""
    from prompt_bank.integrity import shard_key
    from prompt_bank.store import Bank

    bank = Bank.open(f"{hostile.url}/{NAME}")
    keys = {f"/{NAME}/{shard_key(bank.group[p], 0)}" for p in bank.layout.arrays()}
    hostile.fail("stall", match="/c/0/")
    read = {}
    reader = threading.Thread(target=lambda: read.update(state=bank.check_shard(0)))
    reader.start()
    deadline = time.monotonic() + 20
    while set(gets(hostile, "/c/0/")) != keys and time.monotonic() < deadline:
        time.sleep(0.05)
    asked = set(gets(hostile, "/c/0/"))
    hostile.fail(None)  # the stalled requests hang up; asked again, they are served
    reader.join(timeout=60)
    assert asked == keys, sorted(keys - asked)
    assert read["state"].status == "complete"


@pytest.mark.parametrize("command", ["pull", "info"])
def test_an_html_page_for_the_root_is_the_server_s_answer_not_a_damaged_bank(
    bank, tmp_path, cli_in_process, command
):
    """The probe: a login page for a URL's root zarr.json was called a damaged bank, with a
    local bank's advice (delete it and build it again)."""
    shutil.copytree(bank, tmp_path / "served" / NAME)
    (tmp_path / "served" / NAME / "zarr.json").write_bytes(b"<html>login</html>")
    with RangeHTTPServer(tmp_path / "served") as server:
        url = f"{server.url}/{NAME}"
        args = ["--to", str(tmp_path / "p.zarr"), "--quiet"] if command == "pull" else []
        result = cli_in_process("bank", command, url, *args)
    line = one_error_line(result.stderr)
    assert result.returncode == 2, result.stderr
    assert line.endswith(
        f"{url}: the server answered zarr.json with something that is not JSON (it begins "
        "b'<html>login</html>'): a login or error page, or a wrong URL; check the URL and the "
        "credentials (--storage-options, $DPSEG_STORAGE_OPTIONS)"
    ), line
    assert "bank build" not in line and not (tmp_path / "p.zarr").exists()
