"""Local stand-ins for remote storage, so remote-read tests run offline.

``RangeHTTPServer`` serves a directory like a static object store: byte ranges
(zarr reads shard indexes with suffix ranges, fsspec reads blocks with ``a-b``),
``HEAD`` with sizes, no directory listings. It records every request, so a test
can assert how much a reader fetched (say, that opening an array does not
download whole shards), and it can fail requests the way a busy server or a
flaky network does (``fail``: an HTTP 500 or 503, a reset, a short body), or the
way a hostile or broken one does (no answer, a body that stops half way over a
connection kept open, a Content-Length shorter than the body).
``MotoS3Server`` runs moto's S3 server on a free port and says which environment
variables make a subprocess (a CLI under test) talk to it without any code change
on the subprocess' side.

Both bind 127.0.0.1 on port 0 and are context managers; on exit the listening
socket is closed, so nothing is left on the port.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import struct
import sys
import threading
import urllib.parse
import urllib.request
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import s3fs

Fault = Literal["500", "503", "reset", "short", "redirect", "stall", "stall-body", "overlong"]
"""What :meth:`RangeHTTPServer.fail` makes a request meet: an HTTP 500 or 503 (busy), a TCP reset,
half the body and a closed connection (``short``), a redirect to itself, no answer at all
(``stall``), half the body with the full Content-Length over a connection kept open
(``stall-body``), or a Content-Length half the body's size, the rest of the body sent anyway
(``overlong``: a keep-alive client reads those bytes as the next reply's status line)."""

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _byte_range(header: str | None, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """Resolve a ``Range`` header to an inclusive ``(first, last)``.

    Returns ``None`` to serve the whole file (no header, or one we may ignore
    under RFC 9110: not a single byte range, or ``a-b`` with ``b < a``), and
    ``"unsatisfiable"`` for a range that lies wholly past the end (416).
    """
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":  # suffix range: the last n bytes
        n = int(last)
        return (max(size - n, 0), size - 1) if n > 0 and size > 0 else "unsatisfiable"
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if last != "" and int(last) < start:
        return None
    return (start, end) if start < size else "unsatisfiable"


class _RangeHandler(BaseHTTPRequestHandler):
    """GET/HEAD for regular files under the server's root, honouring ``Range``."""

    protocol_version = "HTTP/1.1"  # keep-alive, as aiohttp's pool expects
    server: _Server

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok:
            self.server.record(self.command, self.path)
        return ok

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: pytest output should show test failures, not access logs

    def _serve(self, body: bool) -> None:
        fault = self.server.take_fault(self.path) if body else None
        if fault in ("500", "503"):
            self._empty(HTTPStatus(int(fault)))
            return
        if fault == "stall":  # the request is read, and never answered
            self._stall()
            return
        if fault == "redirect":  # to itself: a loop
            self._empty(HTTPStatus.FOUND, {"Location": self.path})
            return
        if fault == "reset":  # a TCP reset (RST) instead of an answer
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        path = self._resolve()
        if isinstance(path, HTTPStatus):
            self._empty(path)
            return
        size = path.stat().st_size
        span = _byte_range(self.headers.get("Range"), size)
        if span == "unsatisfiable":
            self._empty(
                HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, {"Content-Range": f"bytes */{size}"}
            )
            return
        first, last = span or (0, size - 1)
        self.send_response(HTTPStatus.OK if span is None else HTTPStatus.PARTIAL_CONTENT)
        if span is not None:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Type", "application/octet-stream")
        length = last - first + 1
        self.send_header("Content-Length", str(length // 2 if fault == "overlong" else length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", formatdate(path.stat().st_mtime, usegmt=True))
        self.end_headers()
        if body:
            with path.open("rb") as f:
                f.seek(first)
                data = f.read(last - first + 1)
            if fault == "short":  # half the promised body, then the connection closes
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault == "stall-body":  # half the promised body, then nothing, the connection open
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self._stall()
                return
            self.wfile.write(data)

    def _stall(self) -> None:
        """Send nothing more until the server stops or lets stalled requests go
        (:meth:`RangeHTTPServer.release_stalled`, or a new :meth:`RangeHTTPServer.fail`), then
        hang up."""
        with self.server.lock:
            released = self.server.released
        released.wait()
        self.close_connection = True

    def _resolve(self) -> Path | HTTPStatus:
        """The file a request path names, 404 if none (directories included), 403 outside the root."""
        root = self.server.root
        relative = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        if "\0" in relative:
            return HTTPStatus.NOT_FOUND
        path = (root / relative).resolve()  # resolves ``..`` and symlinks before the check
        if not path.is_relative_to(root):
            return HTTPStatus.FORBIDDEN
        return path if path.is_file() else HTTPStatus.NOT_FOUND

    def _empty(self, status: HTTPStatus, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    """Holds the root and the request log; tracks open connections to cut them on close."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str]] = []
        self.fault: tuple[Fault, str, int | None] | None = None
        self.faults_met: dict[str, int] = {}
        self.lock = threading.Lock()
        self.released = threading.Event()  # ends the handlers that stall (``fail("stall")``)
        self._open: set[socket.socket] = set()
        super().__init__(("127.0.0.1", 0), _RangeHandler)

    def record(self, method: str, path: str) -> None:
        with self.lock:
            self.requests.append((method, path))

    def take_fault(self, path: str) -> Fault | None:
        """The fault a GET of ``path`` meets, counting it against the path's allowance."""
        with self.lock:
            if self.fault is None:
                return None
            kind, match, times = self.fault
            if match not in path:
                return None
            met = self.faults_met.get(path, 0)
            if times is not None and met >= times:
                return None
            self.faults_met[path] = met + 1
            return kind

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        with self.lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        with self.lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        # A client hanging up mid-response (or our own close) is not a server bug.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    def close_connections(self) -> None:
        """Hang up on keep-alive clients so their handler threads end now."""
        with self.lock:
            for sock in self._open:
                with contextlib.suppress(OSError):  # already closed by the client
                    sock.shutdown(socket.SHUT_RDWR)


class RangeHTTPServer:
    """Serve ``root`` read-only over HTTP/1.1 with byte ranges, in a background thread.

    ``with RangeHTTPServer(tmp_path) as server: fs.cat_file(f"{server.url}/a.bin")``.
    ``server.requests`` lists ``(method, path)`` received, in order; ``reset()`` clears it.
    """

    def __init__(self, root: str | Path) -> None:
        self._server = _Server(Path(root).resolve())
        self._thread: threading.Thread | None = None
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        """A snapshot of the requests received so far."""
        with self._server.lock:
            return list(self._server.requests)

    def reset(self) -> None:
        with self._server.lock:
            self._server.requests.clear()

    def fail(self, kind: Fault | None, match: str = "/c/", times: int | None = None) -> None:
        """Answer GETs whose path holds ``match`` (default: shard objects) with a fault
        (:data:`Fault`): an HTTP 500 or 503, a TCP reset, a body cut short, a redirect to itself,
        no answer, a body that stalls half way, or a Content-Length shorter than the body;
        ``times`` times per path (None: every time).
        ``fail(None)`` serves everything again. Requests stalled by an earlier fault hang up."""
        with self._server.lock:
            self._server.fault = None if kind is None else (kind, match, times)
            self._server.faults_met.clear()
            self._server.released.set()
            self._server.released = threading.Event()

    def release_stalled(self) -> None:
        """Hang up on the requests stalled so far (a test's watchdog: a client without a read
        timeout then fails at once rather than waiting for ever)."""
        with self._server.lock:
            self._server.released.set()

    def __enter__(self) -> RangeHTTPServer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release_stalled()
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()


class MotoS3Server:
    """moto's S3 server on 127.0.0.1 and a free port.

    moto keeps its state in module globals shared by every server in the process,
    so buckets are wiped on entry and on exit: each ``with`` block starts empty.
    """

    access_key = "testing"
    secret_key = "testing"
    region = "us-east-1"

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint_url = ""

    def env(self) -> dict[str, str]:
        """Variables that point botocore and s3fs in a subprocess at this server.

        botocore (hence aiobotocore and s3fs) reads ``AWS_ENDPOINT_URL`` itself, so
        ``s3fs.S3FileSystem()`` and ``FsspecStore.from_url("s3://...")`` need no
        arguments. ``AWS_ENDPOINT_URL_S3`` is set too because botocore prefers it
        and a developer's shell may have one. The config-file and metadata settings
        keep ``~/.aws`` and the EC2 metadata probe (a slow timeout off EC2) out of it;
        an inherited ``AWS_PROFILE`` would still fail, so drop it from the parent env.
        """
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        }

    def client(self):
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def _reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def __enter__(self) -> MotoS3Server:
        # moto's werkzeug handler logs every request at INFO to stderr; keep warnings.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        self._reset()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._reset()
        finally:
            self._moto.stop()  # werkzeug closes the listening socket when serve_forever ends


def s3fs_filesystem(server: MotoS3Server) -> s3fs.S3FileSystem:
    """An ``S3FileSystem`` for ``server``, uncached so it never reuses another test's client."""
    import s3fs

    return s3fs.S3FileSystem(
        key=server.access_key,
        secret=server.secret_key,
        client_kwargs={"endpoint_url": server.endpoint_url, "region_name": server.region},
        skip_instance_cache=True,
    )
