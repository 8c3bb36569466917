"""Sharing banks between teams: ``cli.py bank push BANK URL`` and ``bank pull URL [--to DIR]``.

URLs: ``hf://datasets/ORG/NAME`` (the Hugging Face hub, through huggingface_hub; ``@REVISION``
pins a commit when pulling) and any fsspec store: ``s3://``, ``gs://``, ``file://``, and
``http(s)://`` for reading. Only sealed banks travel (complete, with ``contents`` in their root
``zarr.json``): the sealed object list is what a pull downloads, with no listing (plain HTTP
cannot list), and what it checks every downloaded object against. A push uploads the root
``zarr.json`` last, so a reader never sees a bank before its objects are all there.

Pulled banks go to a local cache keyed by content (``$DPSEG_CACHE``, else
``$XDG_CACHE_HOME/dpseg/banks``, else ``~/.cache/dpseg/banks``, then the content key): pulling a
bank that is already there downloads nothing but its root metadata, whatever URL it comes from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from pathlib import Path

from common.errors import SettingError, file_in_the_way, refuse_unwritable, staged_write
from common.io import move_into_place, remove_staging
from common.progress import ProgressBar
from common.retry import with_retries
from prompt_bank.card import card_bytes, card_problem
from prompt_bank.format import REFETCH, BankFormatError, BankMismatchError
from prompt_bank.integrity import (
    manifest_key,
    read_only_url,
    refuse_read_only_url,
    require_intact,
    shown_keys,
)
from prompt_bank.safety import LOCK_KEY, TAKEOVER_KEY, check_output
from prompt_bank.seal import (
    CARD_KEY,
    manifest_disagreement,
    seal_disagreements,
    sealed_contents,
)
from prompt_bank.store import Bank, filesystem, is_url, remote_errors, resolve_storage_options

TRANSFER_BATCH = 16  # requests at once (ours: bounded, a small server's listen backlog holds them)


class OutputTakenError(FileExistsError):
    """The output of a staged write was created by another process meanwhile."""


def cache_dir(kind: str = "banks") -> Path:
    """Where pulled ``kind`` (banks, models) go: ``$DPSEG_CACHE`` (banks; models in its
    ``models/``), else ``$XDG_CACHE_HOME/dpseg/KIND``, else ``~/.cache/dpseg/KIND``."""
    if os.environ.get("DPSEG_CACHE"):
        root = Path(os.environ["DPSEG_CACHE"])
        return root if kind == "banks" else root / kind
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dpseg" / kind


def checked_cache_dir(kind: str = "banks") -> Path:
    """:func:`cache_dir`, refused in one line (before any request) where a file stands in its
    way, naming ``$DPSEG_CACHE`` where that chose it."""
    folder = cache_dir(kind)
    label = f"the {kind} cache"
    if os.environ.get("DPSEG_CACHE"):
        label += " ($DPSEG_CACHE)" if kind == "banks" else f" ($DPSEG_CACHE/{kind})"
    in_the_way = file_in_the_way(folder)
    if in_the_way is not None:
        raise SettingError(
            f"{label} {str(folder)!r}: {str(in_the_way)!r} is a file, so the cache cannot be "
            "there; remove the file, or set $DPSEG_CACHE to another folder"
        )
    refuse_unwritable(  # a read-only or forbidden cache: how to choose another (a probe)
        folder, label, "set $DPSEG_CACHE to a folder you may write to, or pull with --to DIR"
    )
    return folder


def bank_keys(bank: Bank) -> list[str]:
    """Every key of a sealed bank, found without listing: metadata, manifests, card, objects;
    the root zarr.json last."""
    contents = sealed_contents(bank)
    arrays = list(bank.layout.arrays())
    groups = sorted({path.split("/")[0] for path in arrays})
    keys = [f"{g}/zarr.json" for g in groups] + [f"{p}/zarr.json" for p in arrays]
    keys += [manifest_key(i) for i in range(len(bank.layout.shard_ranges()))]
    keys += [CARD_KEY, *sorted(k for k, h in contents["objects"].items() if h is not None)]
    return [*keys, "zarr.json"]


def _require_sealed(bank: Bank, what: str) -> dict:
    contents = sealed_contents(bank)
    if contents is None:
        raise BankMismatchError(
            f"{bank.location} is not sealed (incomplete, or built before format v2): only "
            f"complete banks can be {what}; finish it with its bank build command (or rebuild a "
            "v1 bank) first"
        )
    return contents


def hub_repo(url: str) -> tuple[str, str, str | None]:
    """``hf://datasets/ORG/NAME[@REV]`` -> ("dataset", ORG/NAME, REV); ``hf://ORG/NAME[@REV]``
    (or ``hf://models/...``) -> ("model", ORG/NAME, REV)."""
    rest = url.removeprefix("hf://").rstrip("/")
    repo_type = "model"
    for prefix, kind in (("datasets/", "dataset"), ("models/", "model")):
        if rest.startswith(prefix):
            rest, repo_type = rest.removeprefix(prefix), kind
    repo, _, revision = rest.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise BankFormatError(
            f"{url!r}: a hub URL is hf://datasets/ORG/NAME (banks) or hf://ORG/NAME (models)"
        )
    return repo_type, repo, revision or None


def bank_hub_repo(url: str) -> tuple[str, str | None]:
    """``hf://datasets/ORG/NAME[@REV]`` -> (ORG/NAME, REV)."""
    if not url.removeprefix("hf://").startswith("datasets/"):
        raise BankFormatError(
            f"{url!r}: banks live in hub dataset repositories; write hf://datasets/ORG/NAME"
        )
    _, repo, revision = hub_repo(url)
    return repo, revision


def hub_upload_plan(local: str | os.PathLike) -> list[str]:
    """The files ``push`` sends from a local bank. A sealed bank sends its own keys
    (:func:`bank_keys`) and nothing else: a file the seal does not know (notes, a link to a file
    elsewhere) stays here. Otherwise every file but the build lock, hidden files and the
    temporary files a killed writer may leave (``*.partial``)."""
    root = Path(local)
    with contextlib.suppress(BankFormatError, FileNotFoundError):
        bank = Bank.open(root)
        if sealed_contents(bank) is not None:
            return sorted(bank_keys(bank))
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file()
        and p.name not in (LOCK_KEY, TAKEOVER_KEY)
        and not p.name.startswith(".")
        and not p.name.endswith(".partial")
    )


def upload_folder(
    local: str | os.PathLike,
    url: str,
    storage_options: dict | None = None,
    progress=False,
    files: list[str] | None = None,
    last: str = "zarr.json",
) -> int:
    """Copy `files` of a local folder (default: a bank's, :func:`hub_upload_plan`) to `url`,
    the file `last` (what makes readers see it) after all the others. To the hub: one commit.
    Returns the bytes of the files sent."""
    root = Path(local)
    files = hub_upload_plan(root) if files is None else list(files)
    total = sum((root / f).stat().st_size for f in files)
    if url.startswith("hf://"):
        from huggingface_hub import HfApi

        repo_type, repo, _ = hub_repo(url)
        api = HfApi()
        api.create_repo(repo, repo_type=repo_type, exist_ok=True)
        api.upload_folder(
            repo_id=repo,
            repo_type=repo_type,
            folder_path=str(root),
            allow_patterns=files,
            commit_message=f"dpseg {'prompt bank' if repo_type == 'dataset' else 'model'}",
        )
        return total
    fs, base = filesystem(url, storage_options)
    files.sort(key=lambda f: f == last)
    with ProgressBar("push", total, unit="bytes", enabled=progress) as bar:
        local_fs = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        for name in files:
            target = f"{base.rstrip('/')}/{name}"
            if local_fs:  # object stores have no folders to make
                fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            try:
                with_retries(lambda name=name, target=target: fs.put_file(str(root / name), target))
            except OSError as e:  # a full disk, a file size limit: no half-written file, and
                # the message names what was being written (fsspec's local copy names the source)
                if not local_fs or e.errno is None:
                    raise
                if fs.exists(target):
                    fs.rm_file(target)
                raise OSError(e.errno, e.strerror, target) from None
            bar.advance((root / name).stat().st_size)
    return total


def _holds_a_bank(location: str, url: str, storage_options: dict | None) -> bool:
    """Whether `url` holds a bank; objects without a root are accepted only when they are all
    files of this bank (an upload that was cut short: the push then resumes)."""
    try:
        return check_output(url, "URL", storage_options)
    except BankFormatError as refused:
        try:
            fs, base = filesystem(url, storage_options)
        except BankFormatError:  # no filesystem for the URL: the first error says why
            raise refused from None
        prefix = base.rstrip("/") + "/"
        there = {p for p in (p.removeprefix(prefix) for p in fs.find(base)) if not is_lock_file(p)}
        if not there <= set(hub_upload_plan(location)):
            raise
        return False


def is_lock_file(name: str) -> bool:
    """Whether ``name`` (relative to a push's URL) is a push's lock, or its claim being written
    (zarr writes ``build.<hex>.partial`` first): no part of what was pushed."""
    return name in (LOCK_KEY, TAKEOVER_KEY) or bool(
        re.fullmatch(r"build\.(lock\.)?[0-9a-f]{32}\.partial", name)
    )


@contextlib.contextmanager
def push_lock(url: str, storage_options: dict | None, command: str):
    """The lock a build takes (``build.lock``), held at `url` while a push (``command``) writes
    there: two pushes of different banks (probe 11) or models (probe 12) to one URL both
    reported success, and the URL held one of them. A local folder's lock is created
    exclusively; the hub's commits need none."""
    path = url.removeprefix("file://")
    if url.startswith("hf://") or (url.startswith("file://") and os.path.isfile(path)):
        yield  # (a file at the URL: the push refuses it, saying so)
        return
    from zarr.storage import LocalStore

    from prompt_bank.safety import build_lock
    from prompt_bank.store import open_store

    store = (
        LocalStore(path)
        if url.startswith("file://")
        else open_store(url, read_only=False, storage_options=storage_options)
    )
    made = url.startswith("file://") and not os.path.lexists(path)
    try:
        with build_lock(store, url, command, "pushed to"):
            yield
    finally:  # a push refused under the lock leaves no empty folder that its lock made
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(path)


@contextlib.contextmanager
def pushing_to(url: str, storage_options: dict | None, command: str):
    """What a push (``command``: "bank push", "model push") holds while it checks and writes
    at ``url``: store errors in one line, a bucket that must exist, the URL's lock."""
    from prompt_bank.store import bucket_must_exist

    with (
        remote_errors(url, f"{command} to"),
        bucket_must_exist(url, storage_options, f"{command} to"),
        push_lock(url, storage_options, command),
    ):
        yield


def push_bank(location: str, url: str, storage_options: dict | None = None, progress=True) -> dict:
    """Upload a sealed local bank to `url` after checking every object against its manifest.

    Raises:
        BankMismatchError: the bank is not sealed, is damaged, or `url` holds another bank.
    """
    if is_url(location):
        raise BankFormatError(f"bank push: BANK {location!r} must be a local bank folder")
    refuse_read_only_url(url, "bank push: URL")  # before any request (a probe: HTTP 501)
    if url.startswith("hf://"):
        bank_hub_repo(url)  # a dataset repository, refused before anything is read
    bank = Bank.open(location)
    contents = _require_sealed(bank, "pushed")
    states = require_intact(bank)
    differ = seal_disagreements(contents, {k: v for s in states for k, v in s.hashes.items()})
    if differ:
        raise BankMismatchError(
            f"bank push: {location}: objects {shown_keys(differ)} are not the ones the bank "
            "was sealed with (copied in from another bank?); nothing was uploaded. Rebuild them "
            f"with: python cli.py bank repair {location}"
        )
    manifests = manifest_disagreement(bank.group, bank.layout, contents)
    if manifests is not None:  # a pull would refuse the copy (a probe)
        raise BankMismatchError(
            f"bank push: {location}: {manifests} (edited or damaged); nothing was uploaded: "
            f"{REFETCH}"
        )
    wrong = card_problem(location, dict(bank.attrs))
    if wrong is not None:  # never a file from elsewhere, never a card that lies (a probe)
        raise BankMismatchError(
            f"bank push: {location}: {wrong}; nothing was uploaded. Write it again with: python "
            f"cli.py bank repair {location}"
        )
    start = time.perf_counter()
    with pushing_to(url, storage_options, "bank push"):
        if not url.startswith("hf://") and _holds_a_bank(location, url, storage_options):
            if _remote_content_key(url, storage_options) != contents["content_key"]:
                raise BankMismatchError(
                    f"URL {url} holds another bank; push to a new URL (a push never replaces "
                    "a bank)"
                )
            damaged = _remote_differences(location, url, storage_options)
            if damaged:  # the same bank, damaged there: send what differs, root last
                upload_folder(location, url, storage_options, progress, files=damaged)
            return {
                "url": url,
                "uploaded": sum((Path(location) / f).stat().st_size for f in damaged),
                "repaired": damaged,
                "content_key": contents["content_key"],
                "seconds": time.perf_counter() - start,
            }
        uploaded = upload_folder(location, url, storage_options, progress)
        if not url.startswith("hf://") and (
            _remote_content_key(url, storage_options) != contents["content_key"]
        ):  # a writer that took no lock (an older dpseg, a copy by hand) wrote there too
            raise BankMismatchError(
                f"bank push to {url}: another writer changed the URL while this push ran (its "
                "root is not this bank's); push again to a URL no one else writes to"
            )
    return {
        "url": url,
        "uploaded": uploaded,  # every file sent, as a pull counts what it receives
        "repaired": [],
        "content_key": contents["content_key"],
        "seconds": time.perf_counter() - start,
    }


def _remote_content_key(url: str, storage_options: dict | None) -> str | None:
    """The content key the remote root records, read as it stands (not checked against its
    attributes: a root edited there is this bank's damage, which the push repairs, as long as
    the key is this bank's); None when the root records none."""
    fs, base = filesystem(url, storage_options)
    try:
        attrs = json.loads(fs.cat_file(f"{base.rstrip('/')}/zarr.json"))["attributes"]
        return attrs["contents"]["content_key"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def _same_bytes_by_etag(info: dict, here: bytes) -> bool | None:
    """Whether an object store's ETag shows the remote object holds ``here``: True or False where
    the ETag is the object's MD5 (a single-part upload, as ours are), None where it says nothing
    (a multipart ETag, or no ETag: file://)."""
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    if len(etag) != 32 or "-" in etag:
        return None
    return hashlib.md5(here, usedforsecurity=False).hexdigest() == etag


def judge_by_etags(verdicts: dict[str, bool | None]) -> tuple[list[str], list[str]]:
    """The objects that differ by their ETag, and those to read and hash: from each object's
    ETag verdict (``_same_bytes_by_etag``). A store whose ETags are 32 hex digits but not MD5s
    (S3 with SSE-KMS) matches none; where none matches, a mismatch proves nothing and those
    objects are read too (ours), rather than uploaded again on every push."""
    md5s = any(v is True for v in verdicts.values())
    differ = [n for n, v in verdicts.items() if v is False and md5s]
    to_read = [n for n, v in verdicts.items() if v is None or (v is False and not md5s)]
    return differ, to_read


def _remote_differences(location: str, url: str, storage_options: dict | None) -> list[str]:
    """The files of the local bank that ``url`` lacks or holds with other bytes. A bank pushed
    again is checked whole, never trusted by its key: each remote object's ETag where the store
    gives its MD5 (S3: nothing is downloaded), else the object itself, read and hashed (ours)."""
    fs, base = filesystem(url, storage_options)
    files = hub_upload_plan(location)
    prefix = base.rstrip("/")
    listed = {p.removeprefix(prefix + "/"): info for p, info in fs.find(base, detail=True).items()}
    differ, by_etag, sha = set(), {}, {}  # sha: name -> sha256 of the local bytes
    for name in files:
        here = (Path(location) / name).read_bytes()
        info = listed.get(name)
        if info is None or info.get("size") != len(here):
            differ.add(name)
            continue
        by_etag[name] = _same_bytes_by_etag(info, here)
        sha[name] = hashlib.sha256(here).digest()
    differ_by_etag, to_read = judge_by_etags(by_etag)
    differ.update(differ_by_etag)
    unknown = {name: sha[name] for name in to_read}
    names = list(unknown)
    for i in range(0, len(names), TRANSFER_BATCH):
        batch = names[i : i + TRANSFER_BATCH]
        blobs = fs.cat([f"{prefix}/{f}" for f in batch], on_error="return")
        for name in batch:
            there = blobs.get(f"{prefix}/{name}")
            if not isinstance(there, bytes) or hashlib.sha256(there).digest() != unknown[name]:
                differ.add(name)
    return [f for f in files if f in differ]  # the upload plan's order: the root last


def _download(remote: Bank, url: str, staging: Path, options: dict, progress: bool) -> int:
    """Every object of a sealed remote bank into `staging`, each checked; returns bytes."""
    contents = sealed_contents(remote)
    keys = bank_keys(remote)
    if url.startswith("hf://"):
        from huggingface_hub import snapshot_download

        repo, revision = bank_hub_repo(url)
        snapshot_download(
            repo,
            repo_type="dataset",
            revision=revision,
            local_dir=str(staging),
            allow_patterns=keys,
        )
    else:
        fs, base = filesystem(url, options)
        with ProgressBar("pull", contents["bytes"], unit="bytes", enabled=progress) as bar:
            for i in range(0, len(keys), TRANSFER_BATCH):  # bounded concurrent requests
                batch = keys[i : i + TRANSFER_BATCH]
                paths = [f"{base.rstrip('/')}/{k}" for k in batch]
                try:  # a 5xx, a short body or a cut connection: asked again (common.retry)
                    blobs = with_retries(lambda paths=paths: fs.cat(paths))
                except FileNotFoundError as e:  # an object the seal lists is not there
                    raise BankMismatchError(
                        f"{url}: {e.filename or e} is missing there; the remote copy is "
                        "incomplete: "
                        + (
                            "its owner puts a good copy in its place on that server"
                            if read_only_url(url)
                            else "its owner can push a good copy over it (python cli.py bank "
                            f"push GOOD_COPY {url}, which uploads what differs)"
                        )
                    ) from None
                for key in batch:
                    data = blobs[f"{base.rstrip('/')}/{key}"]
                    target = staging / key
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                    bar.advance(len(data))
    # the card is no sealed object: the one the sealed attributes give is written (ours)
    (staging / CARD_KEY).unlink(missing_ok=True)
    (staging / CARD_KEY).write_bytes(card_bytes(dict(remote.attrs)))
    for key, expected in contents["objects"].items():
        path = staging / key
        found = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        if found != expected:
            raise BankMismatchError(
                f"{url}: object {key} arrived with sha256 {found and found[:12]}, the bank's "
                f"contents say {expected and expected[:12]}; the remote copy is damaged (its "
                f"owner can check it with: python cli.py bank verify {url})"
            )
    try:
        local = Bank.open(staging)
    except (BankFormatError, BankMismatchError) as e:  # named by the URL, not the staging folder
        reason = str(e).replace(f"; {REFETCH}", "")
        reason = reason.replace(repr(str(staging)) + ": ", "").replace(str(staging), "the copy")
        raise BankMismatchError(
            f"{url}: the downloaded copy is not a whole bank ({reason}); the remote copy is "
            f"damaged (its owner can check it with: python cli.py bank verify {url})"
        ) from None
    lengths = {
        key: (staging / key).stat().st_size if (staging / key).is_file() else 0
        for key in contents["objects"]
    }
    wrong = manifest_disagreement(local.group, remote.layout, contents, lengths)
    if wrong is not None:  # what repair and readers use (a probe: shard and classes, sizes)
        raise BankMismatchError(
            f"{url}: its manifests (manifest/shard-*.json) disagree with the bank's sealed "
            f"contents ({wrong}); the remote copy is damaged (its owner can check it with: "
            f"python cli.py bank verify {url})"
        )
    return sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())


def pull_bank(
    url: str, to: str | None = None, storage_options: dict | None = None, progress=True
) -> dict:
    """Download a sealed bank (checked object by object) into `to` or the content cache."""
    options = resolve_storage_options(storage_options)
    remote = Bank.open(url, storage_options)  # None: $DPSEG_STORAGE_OPTIONS, named so
    contents = _require_sealed(remote, "pulled")
    target = Path(to) if to else checked_cache_dir() / contents["content_key"]
    if _content_key(target) == contents["content_key"]:
        return {"path": str(target), "downloaded": 0, "content_key": contents["content_key"]}
    start = time.perf_counter()
    try:
        with staged_output(str(target), "--to" if to else "the bank cache") as staging:
            with remote_errors(url, "bank pull from"):  # what the retries did not mend
                downloaded = _download(remote, url, Path(staging), options, progress)
            local = sealed_contents(Bank.open(staging))
            if local is None or local["content_key"] != contents["content_key"]:
                raise BankMismatchError(f"{url} changed while it was pulled; pull it again")
    except (OutputTakenError, FileExistsError):  # a pull beside this one got there first: the
        # same bank is there, so this pull is done too
        if _content_key(target) != contents["content_key"]:
            raise
        downloaded = 0
    return {
        "path": str(target),
        "downloaded": downloaded,
        "content_key": contents["content_key"],
        "seconds": time.perf_counter() - start,
    }


def _content_key(folder: Path) -> str | None:
    """The content key of the sealed bank in a local ``folder``; None if it holds none."""
    if not (folder / "zarr.json").is_file():
        return None
    try:
        here = sealed_contents(Bank.open(folder))
    except (ValueError, OSError):  # garbled: not the bank pulled
        return None
    return here and here["content_key"]


@contextlib.contextmanager
def staged_output(out: str, option: str = "--out", storage_options: dict | None = None):
    """Yield a fresh local directory to write a bank in; on success it becomes `out` (renamed
    for a local `out`, uploaded with its root metadata last for a URL), on failure it goes."""
    refuse_read_only_url(out, option)
    if not is_url(out):
        from common.errors import check_output_folder

        check_output_folder(out, option)  # a file or a broken link in the way: one line
    if check_output(out, option, storage_options):
        raise FileExistsError(
            f"{option} {out} already holds a bank; choose a new location (this command never "
            "writes into an existing bank)"
        )
    if is_url(out):
        if out.startswith("hf://"):
            bank_hub_repo(out)  # banks go to dataset repositories: refused before any work
        staging = Path(tempfile.mkdtemp(prefix="dpseg-bank-"))
    else:
        target = Path(out)
        staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        with staged_write(staging, f"writing {option} {out}"):
            staging.parent.mkdir(parents=True, exist_ok=True)
            yield str(staging)
            if is_url(out):
                upload_folder(staging, out, storage_options)
            else:
                taken = OutputTakenError(
                    f"{option} {out}: another process wrote a bank there while this one "
                    "worked; choose a new location (nothing of this run was kept)"
                )
                move_into_place(staging, out, taken)
    finally:
        remove_staging(staging)
