"""Writing banks without harming anything: output checks, the build lock, staged outputs, and
signals that save finished work (all ours; docs/bank_format.md, "Safe outputs").

- ``check_output``: a bank is written only where nothing is, or where a dpseg bank is; anything
  else (a user's directory, a zarr array, another zarr group) is refused by name, untouched.
- ``build_lock``: one builder per bank. The lock is an object ``build.lock`` in the bank holding
  pid, host, start time and command, created exclusively; a lock whose process is gone from this
  host is stale and taken over. The ranks of one torchrun/accelerate launch share rank 0's lock.
- staged outputs (``prompt_bank.share.staged_output``, beside the uploads it ends in for a URL):
  merge, subset and pull write into a temporary sibling and rename it into place on success, so
  a failure leaves nothing that blocks the retry.
- ``interruptible``: SIGINT and SIGTERM raise :class:`Interrupted` at the next Python step, so
  the builder flushes the items it finished and the command ends with one line.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import socket
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from common.signals import Interrupted, interruptible  # noqa: F401 (their home before common.signals)
from prompt_bank.format import FORMAT_NAME, BankFormatError, BankMismatchError
from prompt_bank.integrity import get_object, put_object
from prompt_bank.store import is_url, open_store
from prompt_bank.zarr_io import run_sync

LOCK_KEY = "build.lock"


class BankLockError(BankMismatchError):
    """Another process is building the bank."""


def _describe_root(raw: bytes, location: str) -> str | None:
    """Why a root zarr.json is not a dpseg bank's (None when it is one)."""
    try:
        meta = json.loads(raw)
    except ValueError:
        return f"{location} holds a zarr.json that is not JSON"
    if meta.get("node_type") == "array":
        return f"{location} is a zarr array, not a prompt bank"
    if (meta.get("attributes") or {}).get("format") != FORMAT_NAME:
        return f"{location} is a zarr group that is not a dpseg prompt bank"
    return None


def check_output(location: str, option: str = "--out", storage_options: dict | None = None) -> bool:
    """Refuse to write a bank where something else is; True when a dpseg bank is already there.

    Raises:
        BankFormatError: naming the location, what it holds, and the fix.
    """
    fix = f"; choose another {option} (nothing was written)"
    if not is_url(location):
        path = Path(location)
        if not path.exists():
            return False
        if not path.is_dir():
            raise BankFormatError(f"{option} {location} is a file, not a bank directory{fix}")
        if (path / "zarr.json").is_file():
            reason = _describe_root((path / "zarr.json").read_bytes(), f"{option} {location}")
            if reason:
                raise BankFormatError(reason + fix)
            return True
        entries = sorted(p.name for p in path.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
            raise BankFormatError(
                f"{option} {location} is a directory that is not a dpseg bank (it holds "
                f"{shown}){fix}"
            )
        return False
    if location.startswith("file://") and Path(location.removeprefix("file://")).is_file():
        raise BankFormatError(f"{option} {location} is a file, not a bank folder{fix}")
    store = open_store(location, read_only=True, storage_options=storage_options)
    raw = get_object(store, "zarr.json")
    if raw is not None:
        reason = _describe_root(raw, f"{option} {location}")
        if reason:
            raise BankFormatError(reason + fix)
        return True

    async def first_key():
        async for key in store.list_dir(""):  # one level: a bucket may hold much else
            return key
        return None

    key = run_sync(first_key())
    if key is not None:
        raise BankFormatError(f"{option} {location} holds objects ({key!r}, ...) but no bank{fix}")
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


TAKEOVER_KEY = "build.lock.takeover"


def _claim(store, key: str, mine: dict) -> tuple[bytes | None, dict]:
    """Create ``key`` holding ``mine`` unless it exists (create-exclusive), then read it back:
    (its bytes, its record; {} when absent or unreadable). The record's ``token`` says who
    holds it."""
    from prompt_bank.zarr_io import default_buffer_prototype

    body = default_buffer_prototype().buffer.from_bytes(json.dumps(mine).encode())
    run_sync(store.set_if_not_exists(key, body))
    raw = get_object(store, key)
    try:
        record = json.loads(raw) if raw is not None else {}
    except ValueError:
        record = {}
    return raw, record if isinstance(record, dict) else {}


def _gone(record: dict, mine: dict) -> bool:
    """Whether the process that wrote ``record`` ran on this host and has ended."""
    return record.get("host") == mine["host"] and not _alive(int(record.get("pid") or 0))


def _take_over(store, stale: bytes | None, mine: dict, attempt: int = 0) -> None:
    """Delete the stale lock ``stale`` (its bytes as read) under ``build.lock.takeover``, which
    one process at a time creates (create-exclusive): the lock is deleted only while its bytes
    are still the stale ones, so a fresh lock another process took meanwhile is never deleted
    (checking, then deleting, let two processes both take one stale lock). A takeover file left
    by a dead process is removed, and one that cannot be read or comes from another host after
    100 attempts (a process killed while writing it, or a host that is gone)."""
    _, owner = _claim(store, TAKEOVER_KEY, mine)
    if owner.get("token") != mine["token"]:
        if _gone(owner, mine) or (owner.get("host") != mine["host"] and attempt >= 100):
            put_object(store, TAKEOVER_KEY, None)  # its owner died during a takeover
        return
    try:
        if stale is not None and get_object(store, LOCK_KEY) == stale:
            put_object(store, LOCK_KEY, None)  # an absent lock is never "deleted"
    finally:
        put_object(store, TAKEOVER_KEY, None)


SETTLE_S = 0.2
"""How long a lock claimed on a store without create-exclusive writes settles before it is read
back again (ours: far longer than the gap between another claim's check and its write)."""
TAKEOVER_SECONDS = 30
"""How long processes contending for one stale lock may take turns before giving up (ours: a
bound in time, not in attempts, so that a loaded machine that stalls the winner for seconds
does not make the others give up; 200 quick attempts, about 4 s, did once on a loaded machine)."""
UNREADABLE_TRIES = 20
"""How many reads in a row (0.05 s apart) a lock that is empty or unreadable gets before it counts
as left by a process that died while writing it (ours)."""


def _unwritable(store, location: str, error: OSError) -> BankLockError:
    """A bank in a folder this user may not write to: building, resuming or repairing takes
    its lock there. Said of the bank (not of the lock's temporary file), with what can be done
    read-only."""
    sealed = False
    with contextlib.suppress(ValueError, TypeError, AttributeError, OSError):
        root = json.loads(get_object(store, "zarr.json") or b"{}")
        sealed = bool(((root.get("attributes") or {}).get("contents") or {}).get("complete"))
    hint = (
        f"the bank is sealed as complete: check it read-only with `python cli.py bank verify "
        f"{location}`, and to repair it, copy it to a folder you may write to and repair the copy"
        if sealed
        else "fix its permissions, or build into a folder you may write to"
    )
    return BankLockError(
        f"{location}: this user may not write in the bank's folder "
        f"({errno.errorcode.get(error.errno, error.errno)}), and a build, resume or repair takes "
        f"its lock ({LOCK_KEY}) there; {hint}"
    )


@contextlib.contextmanager
def build_lock(store, location: str, command: str | None = None, doing: str = "built"):
    """Hold ``build.lock`` in the zarr ``store`` of the bank at ``location`` for the duration;
    refuse a live holder, take a stale one. ``doing``: what the holder does there, as the
    refusal says it ("built", "pushed to": a push takes the same lock at its URL, where no bank
    may be yet). A store without create-exclusive writes (fsspec's object stores check, then
    write) is read back again after SETTLE_S, so that of two claims made at once the one
    overwritten finds out (ours)."""
    from zarr.storage import LocalStore

    exclusive = isinstance(store, LocalStore)
    mine = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "token": uuid.uuid4().hex,
    }
    lock = Path(str(location)) / LOCK_KEY
    if not is_url(str(location)) and lock.is_dir():  # no process writes a folder there
        raise BankLockError(
            f"{lock} is a folder, not a build lock (a process holds a bank with a file there); "
            f"remove it (rm -r {lock}) and run the command again"
        )
    unreadable = 0  # consecutive reads of an empty or unreadable lock
    deadline = time.monotonic() + TAKEOVER_SECONDS
    for attempt in itertools.count():
        if time.monotonic() > deadline:
            raise BankLockError(
                f"could not take the lock {location}/{LOCK_KEY} (another process kept taking "
                f"it over for {TAKEOVER_SECONDS} s); try again, and if this repeats delete "
                f"{location.rstrip('/')}/{TAKEOVER_KEY}"
            )
        try:
            raw, holder = _claim(store, LOCK_KEY, mine)
        except OSError as e:  # the lock's temporary file named nothing the user knows
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise _unwritable(store, location, e) from None
        if holder.get("token") == mine["token"]:
            if exclusive:
                break
            time.sleep(SETTLE_S)
            if get_object(store, LOCK_KEY) == raw:
                break
            continue
        unreadable = unreadable + 1 if not holder else 0
        if not holder and unreadable < UNREADABLE_TRIES:
            # absent when read back (another process's takeover had just deleted it) or not
            # readable: claim it again. Taking over a lock read as absent deleted the lock the
            # other process created a moment later (check absent, then delete), and let both
            # in (a fresh-clone CI run, 2026-12-07: 1 overlap in 30 trials).
            time.sleep(0.05)
            continue
        if _gone(holder, mine) or not holder:  # its builder is gone (or died mid-write)
            _take_over(store, raw, mine, attempt)  # one process at a time
            time.sleep(0.005 * (attempt % 10))
            continue
        raise BankLockError(
            f"{location} is being {doing} by pid {holder.get('pid')} on {holder.get('host')} "
            f"since {holder.get('started')} ({holder.get('command')}); wait for it to finish"
            + (  # a push's loser: the torchrun clause is a build's (probe 12)
                " (several processes build one bank only as ranks of one torchrun/accelerate "
                "launch)"
                if doing == "built"
                else ""
            )
            + f". If that process is gone, delete {location.rstrip('/')}/{LOCK_KEY}"
        )
    try:
        yield
    finally:
        raw = get_object(store, LOCK_KEY)
        with contextlib.suppress(ValueError, TypeError):
            if raw is not None and json.loads(raw).get("token") == mine["token"]:
                put_object(store, LOCK_KEY, None)
