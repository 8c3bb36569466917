"""Opening banks by path or fsspec URL, and reading them (read-only, validated first).

``memory://``, ``file://``, ``s3://``, ``gs://``, ``http(s)://``, ``hf://`` and other fsspec URLs
go through zarr's ``FsspecStore`` when the filesystem package is installed; anything else is a
local path. Credentials come from where each filesystem looks (``AWS_*`` variables and
``~/.aws`` for s3fs, ``HF_TOKEN`` for the hub, ...); ``storage_options`` (or the environment
variable ``DPSEG_STORAGE_OPTIONS``, a JSON object) are passed to the filesystem as they are.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
from dataclasses import dataclass

import numpy as np

from common.errors import UserError, file_in_the_way, not_json_answer, one_line, without_bytes
from prompt_bank.format import (
    REFETCH,
    BankFormatError,
    BankLayout,
    build_command_for,
    validate_group,
)
from prompt_bank.zarr_io import run_sync


def is_url(location: str) -> bool:
    return "://" in location


def parse_storage_options(raw: str, source: str) -> dict:
    """fsspec storage options from a JSON object; `source` names where it came from."""
    # the text itself is not echoed: storage options carry credentials (ours)
    try:
        options = json.loads(raw) if raw else {}
    except ValueError as e:
        raise BankFormatError(f"{source} is not JSON ({e})") from None
    if not isinstance(options, dict):
        raise BankFormatError(
            f"{source} is a JSON {type(options).__name__}; it must be a JSON object, e.g. "
            "'{\"anon\": true}'"
        )
    return options


def storage_options_from_env() -> dict:
    return parse_storage_options(
        os.environ.get("DPSEG_STORAGE_OPTIONS", ""), "$DPSEG_STORAGE_OPTIONS"
    )


def resolve_storage_options(storage_options: dict | None) -> dict:
    """The options given, or else those of $DPSEG_STORAGE_OPTIONS."""
    return storage_options_from_env() if storage_options is None else storage_options


def with_http_timeout(url: str, options: dict) -> dict:
    """``options`` for ``url``, with our read and connect timeout (``common.retry``:
    ``$DPSEG_HTTP_TIMEOUT``, default 60 s) for an http(s):// URL whose options set none: aiohttp's
    own allows 300 s per request and no limit per read, so a server that stops sending held a
    pull for minutes (a probe). A bad ``$DPSEG_HTTP_TIMEOUT`` is refused in one line."""
    if url.split("://", 1)[0].lower() not in ("http", "https"):
        return options
    client_kwargs = options.get("client_kwargs")
    if client_kwargs is not None and not isinstance(client_kwargs, dict):
        return options  # the client refuses it, and says so (_refused_options)
    if client_kwargs and "timeout" in client_kwargs:
        return options  # the user's own
    from common.retry import http_client_timeout

    return {**options, "client_kwargs": {**(client_kwargs or {}), "timeout": http_client_timeout()}}


def filesystem(url: str, storage_options: dict | None = None):
    """(fsspec filesystem, path inside it) of a URL."""
    import fsspec

    options = with_http_timeout(url, resolve_storage_options(storage_options))
    try:
        return fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as e:  # an unknown protocol, its package not installed
        raise BankFormatError(
            f"cannot open {url!r}: {e}. {_protocol_hint(url.split('://', 1)[0])}"
        ) from None


class RemoteError(UserError, OSError):
    """A store could not be reached or refused us (no network, no credentials, no permission)."""


def _remote_failures() -> tuple[type[BaseException], ...]:
    """The exception types a store's client raises for a failed request: OSError (requests,
    huggingface_hub, fsspec), and botocore's and aiohttp's own where they are installed."""
    return (OSError, *remote_client_errors())


def remote_client_errors() -> tuple[type[BaseException], ...]:
    """The store clients' own exception types for a failed request (botocore's, aiohttp's,
    httpx's, the hub's), where they are installed; OSError is not among them."""
    types: list[type[BaseException]] = []
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        types += [BotoCoreError, ClientError]
    except ImportError:
        pass
    try:
        from aiohttp import ClientError as HttpClientError

        types.append(HttpClientError)
    except ImportError:
        pass
    import importlib

    for module, name in (
        ("httpx", "HTTPError"),
        ("httpx2", "HTTPError"),
        ("huggingface_hub.errors", "HfHubHTTPError"),
        ("huggingface_hub.errors", "OfflineModeIsEnabled"),
    ):
        # the hub's client (huggingface_hub 1.x uses httpx; 2.x httpx2)
        with contextlib.suppress(ImportError, AttributeError):
            types.append(getattr(importlib.import_module(module), name))
    return tuple(types)


def _local_storage_error(error: OSError) -> bool:
    """A full disk or quota, a file size limit, a read-only or forbidden local path."""
    import errno

    if error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS):
        return True
    name = error.filename
    return (
        error.errno in (errno.EACCES, errno.EPERM)
        and bool(name)
        and not is_url(str(name))
        and (os.path.exists(os.path.dirname(str(name)) or "."))
    )


@contextlib.contextmanager
def remote_errors(url: str, what: str):
    """A failed request to ``url`` while doing ``what`` ends in one line (:class:`RemoteError`)
    naming both and the fix; our own user errors and a missing file pass through."""
    try:
        yield
    except (UserError, FileNotFoundError):
        raise
    except OSError as e:
        if _local_storage_error(e):
            raise  # this machine's disk (cli.py says so in one line), not the store
        if url.startswith("file://") and e.errno in (errno.ENOTDIR, errno.EEXIST):
            blocking = file_in_the_way(url.removeprefix("file://"))
            if blocking is not None:
                raise RemoteError(
                    f"{what} {url}: {str(blocking)!r} is a file, so no folder can be made "
                    "there; give a URL under a folder"
                ) from None
        from common.retry import failure_advice, failure_text, worded

        if worded(e):  # a timeout (fsspec's has no text at all): what happened, in words
            advice = failure_advice(e, "")
            raise RemoteError(f"{what} {url}: {failure_text(e)}; {advice}") from None
        raise RemoteError(
            f"{what} {url}: {type(e).__name__}: {one_line(e)[:300]}; check the URL, the network "
            "and the credentials (--storage-options, $DPSEG_STORAGE_OPTIONS, or huggingface-cli "
            "login for hf://)"
        ) from None
    except _remote_failures() as e:
        from common.retry import failure_advice, failure_text

        advice = failure_advice(
            e, "--storage-options, $DPSEG_STORAGE_OPTIONS, or huggingface-cli login for hf://"
        )
        raise RemoteError(f"{what} {url}: {failure_text(e)}; {advice}") from None


def _protocol_hint(protocol: str) -> str:
    return (
        f"Check the URL's protocol; {protocol}:// needs its fsspec package installed (s3fs for "
        "s3://, huggingface_hub for hf://, gcsfs for gs://)"
    )


def open_store(location: str | os.PathLike, read_only: bool, storage_options: dict | None = None):
    """A zarr store for a local path or an fsspec URL."""
    from zarr.storage import FsspecStore, LocalStore

    location = str(location)
    if is_url(location):
        protocol = location.split("://", 1)[0]
        options = resolve_storage_options(storage_options)
        if protocol in ("file", "local") and not read_only:
            options = {"auto_mkdir": True, **options}  # fsspec's local files make no folders
        options = with_http_timeout(location, options)
        try:
            return FsspecStore.from_url(
                location, read_only=read_only, storage_options=options or None
            )
        except (ImportError, ValueError) as e:
            raise BankFormatError(
                f"cannot open {location!r}: {e}. {_protocol_hint(protocol)}"
            ) from e
    if read_only and not os.path.exists(location):
        from common.errors import broken_link

        link = broken_link(location)  # a link that loops or points nowhere: said so (a probe)
        if link is not None:
            raise FileNotFoundError(f"no bank at {location!r}: {link}")
        raise FileNotFoundError(
            f"no bank at {location!r}; check the path, or build one there with `python cli.py "
            f"bank build --vocab VOCAB --out {location}` (or fetch one: `cli.py bank pull URL`)"
        )
    if os.path.lexists(os.path.join(location, "zarr.json")) or (
        not read_only and os.path.isdir(location)
    ):  # a bank (or meant as one); any other folder is refused as "not a prompt bank"
        refuse_irregular_files(location, writing=not read_only)
    return LocalStore(location, read_only=read_only)


def refuse_irregular_files(location: str, writing: bool = False) -> None:
    """A local bank holds folders and regular files only (ours): a FIFO there would block a read
    forever, a device (a link to /dev/zero) would be read without end, and a link that loops
    fails deep inside zarr. One stat per file, before anything is read. ``writing`` (a build,
    resume, repair or seal): no link to a folder either, since zarr would write through it into
    whatever it leads to (probe 12: `bank repair` rewrote another bank's shard through
    ``c/20 -> other.zarr/.../c/20``); readers follow such links."""
    from common.io import special_file_kind

    for folder, dirs, files in os.walk(location):  # links to folders are not followed
        for name in [*files, *(d for d in dirs if os.path.islink(os.path.join(folder, d)))]:
            path = os.path.join(folder, name)
            if writing and name in dirs and os.path.isdir(path):
                raise BankFormatError(
                    f"bank {location!r}: {os.path.relpath(path, location)} is a link to a folder "
                    f"({os.path.realpath(path)}); a build or repair writes only inside the bank, "
                    "never through a link: replace the link by a copy of what it leads to (cp -rL) "
                    "and run the command again"
                )
            kind = special_file_kind(path, folders=True)
            if kind is None:
                continue  # a file, a folder, or removed since it was listed (a temporary file)
            raise BankFormatError(
                f"bank {location!r}: {os.path.relpath(path, location)} is {kind}, not a file; a "
                f"bank holds folders and regular files only: {REFETCH}"
            )


def open_group(
    location: str | os.PathLike,
    mode: str,
    storage_options: dict | None = None,
    consolidated: bool | None = None,
):
    """The bank's root group. Consolidated metadata (one request for the whole hierarchy) is
    used for URLs; a local bank reads each array's own zarr.json, which is cheap and cannot be
    out of date (``consolidated`` overrides)."""
    import zarr

    from common.retry import with_retries

    store = open_store(location, read_only=mode == "r", storage_options=storage_options)
    if consolidated is None:
        consolidated = None if is_url(str(location)) else False
    try:  # the root zarr.json: a 503 or a cut connection is asked again, as objects are
        return with_retries(
            lambda: zarr.open_group(
                store=store, mode=mode, zarr_format=3, use_consolidated=consolidated
            )
        )
    except zarr.errors.ContainsArrayError:
        raise BankFormatError(f"{str(location)!r} is a zarr array, not a prompt bank") from None
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        bucket = missing_bucket(str(location), storage_options, e)
        if bucket is not None:  # not "no bank there": nothing can be there (a probe)
            raise BankFormatError(
                f"{str(location)!r}: the bucket {bucket!r} does not exist, so no bank is there; "
                "check the bucket's name in the URL (and the endpoint and the credentials: "
                "--storage-options or $DPSEG_STORAGE_OPTIONS, AWS_*)"
            ) from None
        raise _no_root_error(store, str(location)) from None
    except (ValueError, TypeError, UnicodeDecodeError, AttributeError) as e:
        # a root zarr.json zarr can't read (a JSON number: AttributeError), or storage options
        # the store's client refuses (found by a probe: an unknown option read as damage)
        refused = _refused_options(store, str(location), storage_options)
        if refused is not None:
            raise refused from None
        raise damaged_root_error(store, str(location), e) from None


BANK_PARTS = ("README.md", "text/zarr.json")
"""Objects a bank's build or push writes before its root zarr.json (which goes last)."""


def _no_root_error(store, location: str) -> BankFormatError:
    """No root zarr.json at ``location``: the end of a build or push that was cut short when
    other parts of a bank are there (a probe: pulling a cut upload quoted zarr's store repr
    and did not say so), else no bank."""
    from prompt_bank.zarr_io import get_object

    found = []
    with contextlib.suppress(Exception):  # a store that cannot list: "not a bank" stands
        found = [key for key in BANK_PARTS if get_object(store, key) is not None]
    if found:
        return BankFormatError(
            f"{location!r} holds part of a bank ({', '.join(found)}) but no root zarr.json, "
            "which is written last: a push or build that did not finish; run that push or build "
            "again to complete it (or give the URL or folder of a whole bank)"
        )
    return BankFormatError(
        f"{location!r} is not a prompt bank (no zarr.json there); give the folder or URL of a "
        "bank (cli.py bank build --out, or bank pull --to)"
    )


BUCKET_PROTOCOLS = ("s3", "s3a", "gs", "gcs")
"""Object stores whose URLs begin with a bucket that may not exist."""


def _says_no_such_bucket(error: BaseException | None) -> bool:
    """Whether ``error`` (or what it was raised from) is a store's "NoSuchBucket"."""
    for _ in range(5):
        if error is None:
            return False
        response = getattr(error, "response", None)
        code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
        if code == "NoSuchBucket" or "bucket does not exist" in str(error).lower():
            return True
        error = error.__cause__ or error.__context__
    return False


def missing_bucket(
    url: str, storage_options: dict | None = None, error: BaseException | None = None
) -> str | None:
    """The bucket of an object store URL (``s3://BUCKET/...``) when it does not exist, else None:
    ``error`` says so (S3's NoSuchBucket), or else the store is asked (HEAD of the bucket: only
    "not found" counts; a refusal or a failure says nothing)."""
    protocol, _, rest = url.partition("://")
    if protocol.lower() not in BUCKET_PROTOCOLS or not rest.split("/")[0]:
        return None
    bucket = rest.split("/")[0]
    if _says_no_such_bucket(error):
        return bucket
    try:
        fs, _ = filesystem(url, storage_options)
        fs.info(bucket)
    except FileNotFoundError:
        return bucket
    except Exception:  # no answer: nothing is known
        return None
    return None


@contextlib.contextmanager
def bucket_must_exist(url: str, storage_options: dict | None, what: str):
    """A write to ``url`` that fails because its bucket does not exist ends in one line naming
    the URL and the fix (s3fs says only "The specified bucket does not exist"; a probe)."""
    try:
        yield
    except FileNotFoundError as e:
        bucket = missing_bucket(url, storage_options, e)
        if bucket is None:
            raise
        protocol = url.split("://", 1)[0].lower()
        create = (
            f"gcloud storage buckets create gs://{bucket}"
            if protocol in ("gs", "gcs")
            else f"aws s3 mb s3://{bucket}, with the same endpoint"
        )
        raise RemoteError(
            f"{what} {url}: the bucket {bucket!r} does not exist; create it (e.g. {create}) or "
            "check its name in the URL; nothing was uploaded"
        ) from None


def _refused_options(store, location: str, storage_options: dict | None) -> BankFormatError | None:
    """The error for storage options the store's client refuses, when reading the root's bytes
    fails (rather than zarr failing to parse them); None when the bytes read."""
    options = resolve_storage_options(storage_options)
    if not is_url(location) or not options:
        return None
    from prompt_bank.zarr_io import get_object

    try:
        get_object(store, "zarr.json")
    except (TypeError, ValueError, AttributeError) as e:
        source = "$DPSEG_STORAGE_OPTIONS" if storage_options is None else "--storage-options"
        keys = ", ".join(map(str, options))  # the keys only: values may be credentials
        return BankFormatError(
            f"{source} (keys {keys}): the store's client refuses them for {location} "
            f"({type(e).__name__}: {one_line(e)[:200]}); fix or remove them (they are passed to "
            "fsspec as they are)"
        )
    return None


def damaged_root_error(store, location: str, error: BaseException) -> BankFormatError:
    """The one-line error for a bank whose root ``zarr.json`` (which holds its settings) zarr
    cannot read: neither ``bank repair`` nor a resume can use it, so the fix is a new build (the
    command its card README.md records, when it is there) or a new copy."""
    import re

    from common.errors import one_line
    from prompt_bank.integrity import get_object

    if is_url(location):  # an HTML page for the root: the server's answer, not a damaged bank
        with contextlib.suppress(Exception):
            raw = get_object(store, "zarr.json") or b""
            if raw and not raw.lstrip().startswith(b"{"):
                return BankFormatError(not_json_answer(location, "zarr.json", raw))
    command = None
    try:
        card = (get_object(store, "README.md") or b"").decode("utf-8", "replace")
        found = re.search(r"^- command: `(.+)`$", card, flags=re.M)
        command = found.group(1) if found and found.group(1) != "not recorded" else None
    except Exception:  # no card, or a store that cannot read it: the message goes without
        pass
    command = build_command_for(command, location)
    again = f" ({command})" if command else ""
    return BankFormatError(
        f"{location!r}: its root zarr.json is damaged ({type(error).__name__}: "
        f"{one_line(error) or type(error).__name__}); it holds the bank's settings, so cli.py "
        f"bank repair cannot use it: delete the bank and run its bank build command again{again}"
        ", or pull or copy it again from where it came from"
    )


@dataclass
class Bank:
    """A validated, read-only prompt bank."""

    location: str
    group: object  # zarr.Group
    layout: BankLayout

    @classmethod
    def open(
        cls, location: str | os.PathLike, storage_options: dict | None = None, check_seal=True
    ) -> Bank:
        """Open and validate; raises BankFormatError before any array data is read. A sealed
        bank's metadata is consolidated: a remote open costs one request. ``check_seal``: a
        sealed bank whose attributes no longer give its content key (the root zarr.json was
        edited: class names, settings) is refused here (``bank verify`` opens without it, to
        report it)."""
        try:
            group = open_group(location, mode="r", storage_options=storage_options)
        except (UserError, FileNotFoundError):  # ours: a bad $DPSEG_HTTP_TIMEOUT, say
            raise
        except Exception as e:
            from common.retry import busy_status, failure_advice, failure_text, transient

            status = busy_status(e)
            if status is not None:  # not the path nor the credentials (a probe)
                raise BankFormatError(
                    f"cannot open a bank at {str(location)!r}: {failure_text(e)}; the server is "
                    f"busy or failing (HTTP {status}); try again later"
                ) from e
            if transient(e):  # a timeout, a malformed reply, a cut connection
                raise BankFormatError(
                    f"cannot open a bank at {str(location)!r}: {failure_text(e)}; "
                    f"{failure_advice(e, '--storage-options or $DPSEG_STORAGE_OPTIONS')}"
                ) from e
            from common.retry import request_failure

            raise BankFormatError(
                f"cannot open a bank at {str(location)!r}: {request_failure(e)}; check that the "
                "path or URL names a bank that can be reached (credentials: --storage-options or "
                "$DPSEG_STORAGE_OPTIONS)"
            ) from e
        bank = cls(str(location), group, validate_group(group, location))
        if check_seal and bank.seal is not None and not is_url(str(location)):
            bank._check_sealed_size()  # local: the manifests cost no request
        return bank

    def _check_sealed_size(self) -> None:
        """A local sealed bank whose manifests list its sealed objects but add up to another
        size than the seal's ``bytes`` (outside the content key: an edit of the root zarr.json,
        which `bank info` showed as 10^24 MB; probe 10) is refused, where the objects' files
        add up to what the manifests say (else a manifest was edited: its shard's damage, which
        ``check_shard`` finds and repair mends). A pull checks the remote's manifests whole."""
        from prompt_bank.integrity import manifest_hashes

        found = manifest_hashes(self.group, self.layout)
        if found is None or found[0] != self.seal["objects"] or found[1] == self.seal["bytes"]:
            return
        files = (os.path.join(self.location, key) for key in self.seal["objects"])
        stored = sum(os.path.getsize(path) for path in files if os.path.isfile(path))
        if found[1] == stored:  # the manifests tell the truth: the seal's size was edited
            raise BankFormatError(
                f"{self.location}: its seal says {self.seal['bytes']} bytes, its manifests "
                f"{found[1]} (the root zarr.json was changed after the bank was sealed); "
                f"{REFETCH}"
            )

    @functools.cached_property
    def seal(self) -> dict | None:
        """The sealed contents (``prompt_bank.seal``), their content key checked against the
        attributes; None for a bank that is not sealed (being built, or format v1)."""
        from prompt_bank.integrity import sealed_contents

        return sealed_contents(self)

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    @property
    def classes(self) -> list[str]:
        return list(self.group.attrs["classes"])

    @property
    def templates(self) -> list[str]:
        return list(self.group.attrs["templates"])

    def array(self, path: str):
        """The zarr array at `path`, unchecked (:meth:`read_rows` checks what it reads)."""
        return self.group[path]

    def repair_hint(self) -> str:
        """How to see and fix a damaged shard of this bank (the commands that exist)."""
        from prompt_bank.integrity import mend_advice

        if self.attrs.get("format_version", 2) < 2:  # v1: no manifests, no resume
            return (
                f"see every problem with `python cli.py bank verify {self.location}`, then build "
                "the bank again with its bank build command into another --out (a format v1 "
                "bank cannot be repaired)"
            )
        return (
            f"see every problem with `python cli.py bank verify {self.location}`; "
            f"{mend_advice(self.location)}"
        )

    def check_shard(self, shard: int, images: bool = False):
        """Shard `shard` read once and judged (``prompt_bank.integrity.check_shard``: objects
        against its manifest, decoding and checksums, done flags against the data; for a sealed
        bank, the objects' sha256 against the sealed ones, at no extra cost: the check hashes them
        anyway); its kept images only when `images`. Damage, or objects other than the sealed
        ones, is a BankFormatError naming the objects and the fix."""
        from dataclasses import replace

        from common.errors import one_line
        from prompt_bank.integrity import check_shard, disagreement_error, seal_disagreements

        layout = self.layout if images else replace(self.layout, image_size=None)
        state = check_shard(self.group, layout, shard, legacy=self.attrs["format_version"] < 2)
        differ = [] if state.damaged else seal_disagreements(self.seal, state.hashes)
        if differ:  # intact by its manifest, but not what the bank was sealed with
            raise BankFormatError(disagreement_error(self.location, shard, differ))
        if state.damaged:
            more = len(state.problems) - 1
            raise BankFormatError(
                f"bank {self.location!r} is damaged in shard {shard} (classes {state.k0}-"
                f"{state.k1 - 1}): {one_line(state.problems[0])}"
                + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")
                + f"; {self.repair_hint()}"
            )
        return state

    def read_rows(
        self,
        rows: slice | np.ndarray | list[int] = slice(None),
        paths: tuple[str, ...] | list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Rows `rows` (bank classes, in the order given) of the arrays `paths` (default: all
        but the kept images), checked: each shard holding a needed row is read once and judged
        (:meth:`check_shard`), no other shard is read. A damaged shard (an object changed,
        missing or undecodable) is a BankFormatError naming it and the fix, never zeros."""
        paths = (
            [p for p in self.layout.arrays() if p != "visual/images"] if paths is None else paths
        )
        unknown = [p for p in paths if p not in self.layout.arrays()]
        if unknown:
            raise KeyError(f"bank {self.location!r} has no array {unknown[0]!r}")
        index = np.arange(self.layout.num_classes)[rows] if isinstance(rows, slice) else rows
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        out = {
            p: np.empty((len(index), *shape[1:]), dtype=dtype)
            for p, (shape, dtype) in self.layout.arrays().items()
            if p in paths
        }
        for shard, (k0, k1) in enumerate(self.layout.shard_ranges()):
            here = np.flatnonzero((index >= k0) & (index < k1))
            if not len(here):
                continue
            state = self.check_shard(shard, images="visual/images" in paths)
            for p in out:
                out[p][here] = state.data[p][index[here] - k0]
        return out

    def read(self, path: str, classes: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Rows `classes` of one array, checked (:meth:`read_rows`; read several arrays with
        one :meth:`read_rows` call, which reads each shard once)."""
        return self.read_rows(classes, [path])[path]

    def done(self) -> np.ndarray:
        """(K, P, N) bool: which items are complete, as the done flags say. Cheap: only the
        flags' objects are read (one per shard), not checked against the manifests
        (:meth:`read_rows` checks); one that does not decode is a BankFormatError naming it and
        the fix."""
        from prompt_bank.integrity import decode_shard, get_object, shard_key

        array, out = self.group["visual/done"], []
        for shard, (k0, k1) in enumerate(self.layout.shard_ranges()):
            key = shard_key(array, shard)
            try:  # decoded in memory, as check_shard does: no zarr tasks left behind
                out.append(decode_shard(array, shard, k0, k1, get_object(self.group.store, key)))
            except Exception as e:
                raise BankFormatError(
                    f"bank {self.location!r} is damaged in shard {shard} (classes {k0}-{k1 - 1}): "
                    f"object {key} does not decode ({without_bytes(e)}); "
                    f"{self.repair_hint()}"
                ) from None
        return np.concatenate(out)

    def level_names(self) -> list[str]:
        return [f"visual/level_{j}" for j in range(1, len(self.layout.level_dims) + 1)]

    def nbytes_stored(self) -> int:
        """Bytes the bank's arrays (data and metadata) and manifests take in its store: all but
        the root zarr.json (which grows when sealed), the card and the build lock (0 where the
        store cannot list sizes)."""

        store = self.group.store

        async def total() -> int:
            size = 0
            async for key in store.list():
                if key not in ("zarr.json", "README.md", "build.lock", "build.lock.takeover"):
                    size += await store.getsize(key)
            return size

        try:
            return run_sync(total())
        except Exception:
            return 0
