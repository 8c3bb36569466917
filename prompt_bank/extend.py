"""Prompts for classes a bank lacks: built on the fly with the bank's own settings, cached.

    extra = build_missing_classes("banks/coco171.zarr", "cat, kitty; dog; zebra crossing")
    predictor.set_vocabulary(vocabulary, bank="banks/coco171.zarr", extra_banks=extra)

The classes of a vocabulary that ``bank`` has (by entry, canonical name or an unambiguous
synonym: ``data.vocabulary.match_entries``) are left to it; the others are generated and encoded
with the bank's generator, encoder, templates, images per prompt and seed into a bank of their
own next to it (``<bank>.cache/<hash of the classes>.zarr``; a remote bank's cache is local, under
``banks/cache/``), so the next run with the same classes reuses it, and an interrupted one resumes.
``cli.py segment`` and ``cli.py explain`` call this before the predictor reads the prompts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import torch

from data.vocabulary import Vocabulary, load_vocabulary, match_entries
from prompt_bank.build import build_bank, config_from_bank
from prompt_bank.store import Bank, is_url

log = logging.getLogger(__name__)


def cache_location(bank: str, vocabulary: Vocabulary) -> str:
    """Where the extra classes of ``vocabulary`` for ``bank`` are cached."""
    digest = hashlib.sha256("\n".join(vocabulary.entries).encode()).hexdigest()[:16]
    if is_url(bank):  # a remote bank: the cache is local
        return str(Path("banks") / "cache" / f"{digest}.zarr")
    return str(Path(str(bank).rstrip("/")).with_suffix(".cache") / f"{digest}.zarr")


def missing_classes(bank: Bank, vocabulary: Vocabulary) -> Vocabulary | None:
    """The classes of ``vocabulary`` that ``bank`` lacks, as a vocabulary (None: it has all)."""
    rows = match_entries(bank.classes, vocabulary)
    missing = tuple(c for c, r in zip(vocabulary, rows) if r is None)
    if not missing:
        return None
    return Vocabulary(f"{vocabulary.name}-extra", missing, "generated")


def build_missing_classes(
    bank: str | Bank,
    vocabulary: str | Vocabulary,
    generator_weights: str | None = None,
    progress: bool = True,
) -> list[str]:
    """Build (or resume, or reuse) a bank of the classes ``bank`` lacks; its location in a list
    (empty when the bank has every class), for ``Predictor.set_vocabulary(extra_banks=...)``."""
    opened = bank if isinstance(bank, Bank) else Bank.open(bank)
    missing = missing_classes(opened, load_vocabulary(vocabulary))
    if missing is None:
        return []
    log.info(
        "generating prompts for %d classes not in %s: %s",
        len(missing),
        opened.location,
        ", ".join(c.name for c in list(missing)[:10]),
    )
    location = cache_location(opened.location, missing)
    config = dataclasses.replace(  # the bank's own settings, for other classes
        config_from_bank(opened.attrs, generator_weights, progress=progress),
        vocabulary=missing,
        keep_images=False,
        device=None,
        command=None,
    )
    threads = torch.get_num_threads()
    try:
        build_bank(config, location)
    finally:
        torch.set_num_threads(threads)  # the build sets the bank's recorded thread count
    return [location]
