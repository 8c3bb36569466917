"""common.retry: which failures are asked again, how often, and with what pauses."""

from __future__ import annotations

import errno

import aiohttp
import pytest

from common.retry import RETRIES, transient, with_retries


def _status(code: int) -> aiohttp.ClientResponseError:
    return aiohttp.ClientResponseError(None, (), status=code)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_status(500), True),
        (_status(503), True),
        (_status(501), False),
        (_status(429), True),
        (_status(408), True),
        (_status(403), False),
        (_status(404), False),
        (aiohttp.ClientPayloadError("short body"), True),
        (aiohttp.ServerDisconnectedError(), True),
        (ConnectionResetError(errno.ECONNRESET, "reset"), True),
        (TimeoutError(), True),
        (FileNotFoundError(errno.ENOENT, "gone"), False),
        (OSError(errno.ENOSPC, "full"), False),
        (ValueError("not JSON"), False),
    ],
)
def test_transient(error, expected):
    assert transient(error) is expected


def test_with_retries_pauses_double_and_then_raise_the_last_error():
    pauses, calls = [], []

    def failing():
        calls.append(1)
        raise _status(503)

    with pytest.raises(aiohttp.ClientResponseError):
        with_retries(failing, backoff_s=0.5, sleep=pauses.append)
    assert len(calls) == RETRIES + 1 and pauses == [0.5, 1.0, 2.0][:RETRIES]


def test_with_retries_returns_once_a_try_succeeds_and_never_retries_the_rest():
    answers = iter([_status(502), "bytes"])

    def flaky():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert with_retries(flaky, sleep=lambda s: None) == "bytes"
    calls = []

    def missing():
        calls.append(1)
        raise FileNotFoundError("no such object")

    with pytest.raises(FileNotFoundError):
        with_retries(missing, sleep=lambda s: None)
    assert len(calls) == 1
