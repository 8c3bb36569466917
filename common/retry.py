"""Requests to a remote store that fail the way a busy server or a flaky network fails are asked
again, a few times, with a growing pause (ours: fsspec's HTTP filesystem retries nothing, and a
pull of thousands of objects should not die of one 503 or one cut connection).

Transient: an HTTP 5xx (but 501 and 505, which answer the same every time), 408 or 429, a body
cut short, a malformed reply (one a proxy or a wrong Content-Length garbled), a connection reset,
refused or timed out.
Not transient (raised at once): a missing object (404, FileNotFoundError), a refusal (401/403),
a bad certificate, and every local error.

HTTP(S) requests wait :func:`http_timeout_s` seconds for data (``$DPSEG_HTTP_TIMEOUT``, default
60): aiohttp's own limit is 300 s for a whole request and none per read, so a server that stops
sending held a pull for minutes (found by a probe).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

RETRIES = 3
"""(ours) How many times a failed request is asked again before its error is raised."""
BACKOFF_S = 0.5
"""(ours) The pause before the first retry; each later pause doubles it (0.5, 1, 2 s)."""

HTTP_TIMEOUT_ENV = "DPSEG_HTTP_TIMEOUT"
HTTP_TIMEOUT_S = 60.0
"""(ours) The longest an HTTP(S) request waits for each read of its reply (aiohttp's
``sock_read``), and to connect, unless ``$DPSEG_HTTP_TIMEOUT`` says otherwise."""
CONNECT_TIMEOUT_MIN_S = 10.0
"""(ours) Connecting waits at least this long, whatever ``$DPSEG_HTTP_TIMEOUT`` says: a connection
attempt that a busy server's full listen backlog drops is sent again by the system after 1 and
3 s (a test with a 0.5 s timeout met it)."""


def http_timeout_s() -> float:
    """Seconds an HTTP(S) request waits for data: ``$DPSEG_HTTP_TIMEOUT``, else
    :data:`HTTP_TIMEOUT_S`. A value that is not a number of seconds above 0 is refused in one
    line naming the variable."""
    raw = os.environ.get(HTTP_TIMEOUT_ENV, "").strip()
    if not raw:
        return HTTP_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        from common.errors import SettingError

        raise SettingError(
            f"${HTTP_TIMEOUT_ENV} is {raw[:40]!r}: it must be a number of seconds above 0 (how "
            f"long an HTTP(S) request waits for data; default {HTTP_TIMEOUT_S:g}), e.g. "
            f"{HTTP_TIMEOUT_ENV}=120; fix or unset it"
        )
    return seconds


def http_client_timeout():
    """The ``aiohttp.ClientTimeout`` of our HTTP(S) requests: :func:`http_timeout_s` per read and
    to connect (at least :data:`CONNECT_TIMEOUT_MIN_S`); no limit on a whole request, so a large
    download that keeps arriving is not cut."""
    import aiohttp

    seconds = http_timeout_s()
    return aiohttp.ClientTimeout(
        total=None, sock_connect=max(seconds, CONNECT_TIMEOUT_MIN_S), sock_read=seconds
    )


def _malformed_reply(error: BaseException) -> bool:
    """An HTTP reply aiohttp could not parse (a bad status line, a header it refuses: a wrong
    Content-Length over keep-alive leaves body bytes where the next status line should be);
    aiohttp reports it as a ClientResponseError (status 400) caused by its parser's error."""
    try:
        import aiohttp
        from aiohttp.http_exceptions import HttpProcessingError
    except ImportError:  # pragma: no cover - fsspec's HTTP filesystem needs it
        return False
    return isinstance(error, aiohttp.ClientResponseError) and isinstance(
        error.__cause__, HttpProcessingError
    )


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
        if _malformed_reply(error):
            return True
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
            if not transient(e):
                raise
            if attempt == retries:
                tried(e, attempt + 1)
                raise
        sleep(pause)
        pause *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def tried(error: BaseException, times: int) -> None:
    """Record on ``error`` that it ended ``times`` tries (:func:`request_failure` says so)."""
    with contextlib.suppress(AttributeError):  # an exception type with __slots__
        error.dpseg_tries = times  # type: ignore[attr-defined]


def _tries(error: BaseException) -> str:
    times = getattr(error, "dpseg_tries", None)
    return f"tried {times} times" if times and times > 1 else ""


def _brackets(*parts: str) -> str:
    said = ", ".join(p for p in parts if p)
    return f" ({said})" if said else ""


def _timeout(error: BaseException) -> BaseException | None:
    """The timeout ``error`` is: aiohttp's own where it is in its chain (fsspec raises its own
    FSTimeoutError from aiohttp's), else ``error`` itself; None when it is no timeout."""
    if not isinstance(error, TimeoutError):
        return None
    try:
        from aiohttp import ServerTimeoutError
    except ImportError:  # pragma: no cover - fsspec's HTTP filesystem needs it
        return error
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, ServerTimeoutError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return error


def _http_timeout_words(connecting: bool = False) -> str:
    """``N s``: the configured HTTP timeout (to read, or to connect), in words ("" if its setting
    is broken)."""
    try:
        seconds = http_timeout_s()
    except ValueError:
        return ""
    return f"{max(seconds, CONNECT_TIMEOUT_MIN_S) if connecting else seconds:g} s"


def _printable(text: str, limit: int = 80) -> str:
    """A parser's message without the raw bytes it quotes (``b'(\\xb5/...'``), on one line,
    at most ``limit`` characters."""
    from common.errors import before_bytes, one_line

    text = before_bytes(text)
    text = one_line("".join(c if c.isprintable() else " " for c in text)).strip(" :^")
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _cut_body(error: BaseException) -> bool:
    """A reply whose body ended before its Content-Length (the connection closed under it)."""
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - fsspec's HTTP filesystem needs it
        return False
    return isinstance(error, aiohttp.ClientPayloadError)


def worded(error: BaseException) -> bool:
    """Whether :func:`request_failure` says what happened without the error's type (a timeout,
    a malformed reply, a body cut short): callers then leave the type out."""
    return _timeout(error) is not None or _malformed_reply(error) or _cut_body(error)


def failure_text(error: BaseException, limit: int = 300) -> str:
    """``TYPE: what failed`` (:func:`request_failure`), or only the words where they say it all
    (:func:`worded`)."""
    if worded(error):
        return request_failure(error)[:limit]
    return f"{type(error).__name__}: {request_failure(error)[:limit]}"


def request_failure(error: BaseException) -> str:
    """A failed request in words, on one line: aiohttp's own text says little for some (a
    redirect loop is "0, message=''"; found by a probe), and nothing for a timeout; a malformed
    reply quoted raw bytes, over several lines (a probe)."""
    from common.errors import one_line

    timeout = _timeout(error)
    if timeout is not None:
        try:
            import aiohttp

            connecting = isinstance(timeout, aiohttp.ConnectionTimeoutError)
            ours = isinstance(timeout, aiohttp.ServerTimeoutError)
        except ImportError:  # pragma: no cover - fsspec's HTTP filesystem needs it
            connecting = ours = False
        span = _http_timeout_words(connecting) if ours else ""
        if connecting:
            said = f"no connection in {span}" if span else "no connection"
        else:
            said = f"no data for {span}" if span else "no answer"
        return said + _brackets("timed out", _tries(error))
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - fsspec's HTTP filesystem needs it
        return one_line(error)
    if _malformed_reply(error):
        url = getattr(error.request_info, "url", None)  # type: ignore[attr-defined]
        reason = _printable(getattr(error, "message", "") or "")
        where = f" for {url}" if url else ""
        return f"the server sent a malformed reply{where}" + _brackets(reason, _tries(error))
    if _cut_body(error):  # aiohttp's text is the repr of its parser's error (a probe)
        return "a reply's body ended before the length the server announced" + _brackets(
            "the connection was cut", _tries(error)
        )
    if isinstance(error, aiohttp.TooManyRedirects):
        return f"too many redirects (the server redirects in a loop) at {error.request_info.url}"
    if isinstance(error, aiohttp.ClientResponseError):
        url = getattr(error.request_info, "url", None)
        where = f" at {url}" if url else ""
        return f"HTTP {error.status} {error.message}{where}" + _brackets(_tries(error))
    return one_line(error)


def busy_status(error: BaseException) -> int | None:
    """The HTTP status of a server that is busy or failing (5xx but 501/505, 429), or None."""
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - fsspec's HTTP filesystem needs it
        return None
    busy = isinstance(error, aiohttp.ClientResponseError) and (
        error.status == 429 or (error.status >= 500 and error.status not in (501, 505))
    )
    return error.status if busy and not _malformed_reply(error) else None


def failure_advice(error: BaseException, credentials: str) -> str:
    """What to do about a failed request: a transient failure that outlived the retries is the
    server's or the network's (try later), anything else may be the URL or the credentials
    (``credentials``: where they are given). A probe found "check the credentials" for a 5xx."""
    if _timeout(error) is not None:
        return (
            "the server or the network stalled; try again later, or give slow servers longer "
            f"with ${HTTP_TIMEOUT_ENV} (seconds)"
        )
    if _malformed_reply(error):
        return "its replies do not follow HTTP; try again, or check the server (or its proxy)"
    if transient(error):
        return "the server or the network kept failing; try again later, or check the URL"
    return f"check the URL, the network and the credentials ({credentials})"
