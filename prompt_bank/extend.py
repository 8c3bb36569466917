"""Prompts for classes a bank lacks: built on the fly with the bank's own settings, cached.

    extra = build_missing_classes("banks/coco171.zarr", "cat, kitty; dog; zebra crossing")
    predictor.set_vocabulary(vocabulary, bank="banks/coco171.zarr", extra_banks=extra)

The classes of a vocabulary that ``bank`` has (by entry, canonical name or an unambiguous
synonym: ``data.vocabulary.match_entries``) are left to it; the others are generated and encoded
with the bank's generator, encoder, templates, images per prompt and seed into a bank of their
own next to it (``<bank>.cache/<hash of the classes>.zarr``; a remote bank's cache, or a read-only
local bank's, is local, under ``banks/cache/<its content key>/``), and an interrupted one resumes. The cache is read class by
class: a class that any complete bank of the cache holds is taken from there, whatever set it
was built with, and only the others are generated (with Stable Diffusion, each class is real
time).
``cli.py segment`` and ``cli.py explain`` call this before the predictor reads the prompts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path

import torch

from common.signals import Interrupted
from data.vocabulary import Vocabulary, load_vocabulary, match_entries
from prompt_bank.build import build_bank, config_from_bank
from prompt_bank.store import Bank, is_url, open_group

log = logging.getLogger(__name__)


def cache_dirs(bank: Bank) -> list[Path]:
    """Where ``bank``'s generated classes are looked for: beside a local bank
    (``<bank>.cache``), then ``banks/cache/<content key>`` (a remote bank's, or that of a local
    bank whose folder is read-only; keyed, so that two banks never share one)."""
    key = (bank.seal or {}).get("content_key") or hashlib.sha256(
        str(bank.location).encode()
    ).hexdigest()
    keyed = Path("banks") / "cache" / key[:16]
    if is_url(bank.location):  # a remote bank: the cache is local
        return [keyed]
    return [Path(str(bank.location).rstrip("/")).with_suffix(".cache"), keyed]


def cache_dir(bank: Bank) -> Path:
    """Where classes generated for ``bank`` are written: beside a local bank when its folder may
    be written, else the keyed local cache (a team's bank on a read-only share; ours)."""
    dirs = cache_dirs(bank)
    if len(dirs) == 2 and not _may_write(dirs[0]):
        log.info("%s cannot be written: classes generated for it are cached in %s", *dirs)
        return dirs[1]
    return dirs[0]


def _may_write(folder: Path) -> bool:
    """Whether ``folder``, or the nearest folder above it that exists, may be written (a file
    where the folder should be may not)."""
    if folder.exists() and not folder.is_dir():
        return False
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return os.access(folder, os.W_OK | os.X_OK)


def cache_location(bank: Bank, vocabulary: Vocabulary) -> str:
    """Where the classes of ``vocabulary`` that are built together for ``bank`` are cached."""
    digest = hashlib.sha256("\n".join(vocabulary.entries).encode()).hexdigest()[:16]
    return str(cache_dir(bank) / f"{digest}.zarr")


def _settings(attrs: dict) -> tuple:
    """What makes two banks' prompts comparable: templates, images per prompt, the generator's
    settings (preset, fingerprint, steps, guidance, size, seed) and the encoder's."""
    g, e = attrs.get("generator") or {}, attrs.get("encoder") or {}
    generator = tuple(
        g.get(k)
        for k in (
            "preset",
            "fingerprint",
            "scheduler",
            "steps",
            "guidance",
            "height",
            "width",
            "base_seed",
        )
    )
    return (
        tuple(attrs.get("templates") or ()),
        attrs.get("images_per_prompt"),
        generator,
        e.get("preset"),
        e.get("fingerprint"),
    )


def cached_banks(bank: Bank) -> list[Bank]:
    """The complete (sealed) banks in ``bank``'s cache made with ``bank``'s settings (a cache
    left by an earlier bank at the same path, built otherwise, is not mixed in); an incomplete
    or unreadable one is left to the build that resumes it."""
    wanted = _settings(bank.attrs)
    found = []
    folders = [f for f in cache_dirs(bank) if f.is_dir()]
    for location in [loc for f in folders for loc in sorted(f.glob("*.zarr"))]:
        try:
            cached = Bank.open(location)
        except (ValueError, OSError):
            continue
        if cached.seal is not None and _settings(cached.attrs) == wanted:
            found.append(cached)
    return found


def missing_classes(bank: Bank, vocabulary: Vocabulary) -> Vocabulary | None:
    """The classes of ``vocabulary`` that ``bank`` lacks, as a vocabulary (None: it has all)."""
    rows = match_entries(bank.classes, vocabulary)
    missing = tuple(c for c, r in zip(vocabulary, rows) if r is None)
    if not missing:
        return None
    return Vocabulary(f"{vocabulary.name}-extra", missing, "generated")


WAIT_SECONDS = 3600
"""How long a segment waits for another process generating the same classes into the cache
(ours: it then reads them; a process that died is taken over at once by the lock)."""


def _build_or_wait(config, location: str) -> None:
    """Build (or resume) the cached bank at ``location``; where another process holds its lock
    (a second segment asking for the same classes), wait for it, then read what it made."""
    import time

    from prompt_bank.safety import BankLockError

    deadline = time.monotonic() + WAIT_SECONDS
    said = False
    while True:
        try:
            build_bank(config, location)
            return
        except BankLockError as e:
            if "is being built by" not in str(e) or time.monotonic() > deadline:
                raise
            if not said:
                log.warning(
                    "another process is generating these classes into %s; waiting for it",
                    location,
                )
                said = True
            time.sleep(1.0)


def _items_done(location: str, fallback: int) -> int:
    """Items finished in the cached bank at ``location`` (every run's, not only the last one's);
    ``fallback`` where its done flags cannot be read."""
    try:
        return int(open_group(location, mode="r")["visual/done"][:].sum())
    except Exception:  # not created yet, or cut short before its arrays: the run's own count
        return fallback


def build_missing_classes(
    bank: str | Bank,
    vocabulary: str | Vocabulary,
    generator_weights: str | None = None,
    progress: bool = True,
) -> list[str]:
    """The cached banks that hold the classes ``bank`` lacks, after building (or resuming) one
    for those no cached bank holds; empty when ``bank`` has every class. For
    ``Predictor.set_vocabulary(extra_banks=...)``."""
    opened = bank if isinstance(bank, Bank) else Bank.open(bank)
    missing = missing_classes(opened, load_vocabulary(vocabulary))
    if missing is None:
        return []
    reused = []
    for cached in cached_banks(opened):  # class by class, whatever set each was built with
        if missing is None:
            break
        still = missing_classes(cached, missing)
        if still is None or len(still) < len(missing):
            reused.append(cached.location)
            missing = still
    if missing is None:
        return reused
    log.info(
        "generating prompts for %d classes not in %s: %s",
        len(missing),
        opened.location,
        ", ".join(c.name for c in list(missing)[:10]),
    )
    location = cache_location(opened, missing)
    config = dataclasses.replace(  # the bank's own settings, for other classes
        config_from_bank(opened.attrs, generator_weights, progress=progress),
        vocabulary=missing,
        keep_images=False,
        device=None,
        command=None,
    )
    threads = torch.get_num_threads()
    try:
        _build_or_wait(config, location)
    except Interrupted as e:  # said of the generation, not of a bank the user did not name
        done = _items_done(location, e.saved)
        saved = (
            f"the {done} items finished are cached in {location}, and the same command goes "
            "on from them"
            if done
            else "no item was finished yet; the same command starts them again"
        )
        raise Interrupted(
            e.signum,
            f"interrupted by {e} while generating prompts for {len(missing)} classes the bank "
            f"lacks, before segmenting: {saved}",
        ) from None
    finally:
        torch.set_num_threads(threads)  # the build sets the bank's recorded thread count
    return [*reused, location]
