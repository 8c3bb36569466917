"""Requests to a remote store that fail the way a busy server or a flaky network fails are asked
again, a few times, with a growing pause (ours: fsspec's HTTP filesystem retries nothing, and a
pull of thousands of objects should not die of one 503 or one cut connection).

Transient: an HTTP 5xx (but 501 and 505, which answer the same every time), 408 or 429, a body
cut short, a connection reset, refused or timed out.
Not transient (raised at once): a missing object (404, FileNotFoundError), a refusal (401/403),
a bad certificate, and every local error.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

RETRIES = 3
"""(ours) How many times a failed request is asked again before its error is raised."""
BACKOFF_S = 0.5
"""(ours) The pause before the first retry; each later pause doubles it (0.5, 1, 2 s)."""

_NETWORK_ERRNOS = frozenset(
    {errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE}
)


def transient(error: BaseException) -> bool:
    """Whether ``error`` is one a later try may not meet (see the module's docstring)."""
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - fsspec's HTTP filesystem needs it
        aiohttp = None
    if aiohttp is not None:
        if isinstance(error, aiohttp.ClientResponseError):
            # 501 (a method the server does not have) and 505 answer the same every time
            return error.status in (408, 429) or (
                error.status >= 500 and error.status not in (501, 505)
            )
        if isinstance(error, aiohttp.ClientSSLError):
            return False
        if isinstance(error, (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            return True
    if isinstance(error, TimeoutError):
        return True
    return isinstance(error, OSError) and error.errno in _NETWORK_ERRNOS


def with_retries(
    request: Callable[[], T],
    retries: int | None = None,
    backoff_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``request()``, asked again after a transient failure up to ``retries`` times (default
    :data:`RETRIES`), pausing ``backoff_s`` (default :data:`BACKOFF_S`), then twice as long each
    time; the last failure, or any other, is raised as it is."""
    retries = RETRIES if retries is None else retries
    pause = BACKOFF_S if backoff_s is None else backoff_s
    for attempt in range(retries + 1):
        try:
            return request()
        except Exception as e:
            if attempt == retries or not transient(e):
                raise
        sleep(pause)
        pause *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def request_failure(error: BaseException) -> str:
    """A failed request in words, on one line: aiohttp's own text says little for some (a
    redirect loop is "0, message=''"; found by a probe)."""
    from common.errors import one_line

    try:
        import aiohttp
    except ImportError:  # pragma: no cover - fsspec's HTTP filesystem needs it
        return one_line(error)
    if isinstance(error, aiohttp.TooManyRedirects):
        return f"too many redirects (the server redirects in a loop) at {error.request_info.url}"
    if isinstance(error, aiohttp.ClientResponseError):
        return f"HTTP {error.status} {error.message} at {error.request_info.url}"
    return one_line(error)


def failure_advice(error: BaseException, credentials: str) -> str:
    """What to do about a failed request: a transient failure that outlived the retries is the
    server's or the network's (try later), anything else may be the URL or the credentials
    (``credentials``: where they are given). A probe found "check the credentials" for a 5xx."""
    if transient(error):
        return "the server or the network kept failing; try again later, or check the URL"
    return f"check the URL, the network and the credentials ({credentials})"
