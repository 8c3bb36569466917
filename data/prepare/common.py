"""What the converters of :mod:`data.prepare` share: the datasets and what to download for each,
the on-disk ignore values, path checks, the plan of jobs and the threaded runner."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from common.io import save_image_atomic, special_file_kind
from data.catalog import DatasetError
from data.datasets import refuse_special_file

RAW_SOURCES: dict[str, str] = {}
"""Dataset name -> what to download and where to put it under ``<root>``: registered with each
converter (:func:`converter`'s ``source``)."""

IGNORE_U8 = 255  # on-disk ignore of the 8-bit PNG label maps
IGNORE_U16 = 65535  # on-disk ignore of the 16-bit TIFF label maps (ade847, pc459)


def _default_workers() -> int:
    return min(8, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------
# small I/O helpers


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _download(name: str, root: Path) -> str:
    """What to download for ``name`` and where to put it, with the real root."""
    return RAW_SOURCES[name].replace("<root>", str(root))


def _require_dir(path: Path, root: Path, expected: str, name: str) -> None:
    if not path.is_dir():
        raise DatasetError(
            f"{name}: folder {str(path)!r} does not exist; expected {expected}. "
            f"Download {RAW_SOURCES[name].replace('<root>', str(root))}"
        )


def _require_file(path: Path, root: Path, expected: str, name: str) -> None:
    if not path.is_file():
        raise DatasetError(
            f"{name}: file {str(path)!r} does not exist; expected {expected}. "
            f"Download {RAW_SOURCES[name].replace('<root>', str(root))}"
        )


def _read_index_png(path: Path, what: str) -> np.ndarray:
    """An 8-bit label PNG as (H, W) uint8; palette ('P') images give indices, not colours."""
    refuse_special_file(path, "extract it again from the official download")
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise DatasetError(
                    f"{str(path)!r} is a {im.mode!r} image; expected {what} (one 8-bit index per "
                    "pixel, mode 'L' or 'P'). A colour rendering cannot be converted: use the "
                    "original file from the official download"
                )
            return np.asarray(im)
    except (OSError, SyntaxError) as e:
        raise DatasetError(
            f"cannot read {str(path)!r} ({e}); the file is damaged or truncated: extract it "
            "again from the official download"
        ) from e


def _read_ids(path: Path) -> list[str]:
    """One image id per line (blank lines ignored)."""
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise DatasetError(f"{str(path)!r} lists no image ids; expected one id per line")
    return ids


# ---------------------------------------------------------------------------------------------
# plans: what to write, checked before anything is written


Job = Callable[[], str]  # converts one output: "written", "skipped" or "replaced" (was damaged)


def whole_image(path: Path) -> bool:
    """True when ``path`` is an image file that reads to its end: a PNG by its chunk checksums
    (PIL's ``verify``, no decoding), any other format decoded. An earlier output that a full disk,
    a copy or an edit cut short is not whole, so a rerun converts it again (ours)."""
    if special_file_kind(path) is not None:  # a pipe would block the read: not whole
        return False
    try:
        with Image.open(path) as image:
            if image.format == "PNG":
                image.verify()
            else:
                image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False
    return True


def earlier_outputs(*paths: Path) -> str | None:
    """What an earlier run left of one job's outputs: "skipped" when every one is there and whole,
    "replaced" when one is there but damaged (the job writes it again), else None (to write)."""
    there = [p for p in paths if p.exists()]
    if not all(whole_image(p) for p in there):
        return "replaced"
    return "skipped" if len(there) == len(paths) else None


@dataclass
class _Plan:
    description: str  # progress bar label
    outputs: list[Path]  # output folders
    jobs: list[Job]
    missing: list[str] = field(default_factory=list)  # listed inputs absent from the download
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the user should know: nothing wrong


def _lut_png_job(src: Path, dst: Path, lut: np.ndarray, what: str) -> Job:
    def job() -> str:
        if (earlier := earlier_outputs(dst)) == "skipped":
            return earlier
        label = _read_index_png(src, what)
        save_image_atomic(Image.fromarray(lut[label]), dst, "PNG")
        return earlier or "written"

    return job


# ---------------------------------------------------------------------------------------------
# running


def _run_jobs(jobs: list[Job], description: str, progress: bool, workers: int) -> Counter:
    """Run jobs with a progress bar; threads overlap the PNG/TIFF codecs, which release the GIL."""
    from common.progress import ProgressBar

    counts: Counter = Counter()
    with ProgressBar(description, len(jobs), unit="files", enabled=progress) as bar:
        if workers <= 1:
            for job in jobs:
                counts[job()] += 1
                bar.advance()
            return counts
        pending: set[Future] = set()
        it = iter(jobs)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # A bounded window of futures: 118k COCO files do not all wait in memory.
            for job in it:
                pending.add(pool.submit(job))
                if len(pending) >= 4 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        counts[f.result()] += 1  # re-raises a job's DatasetError
                        bar.advance()
            for f in pending:
                counts[f.result()] += 1
                bar.advance()
    return counts


CONVERTERS: dict[str, Callable[..., _Plan]] = {}
"""Dataset name -> the function that plans its conversion (``data.prepare.run``): registered
where each is defined, with :func:`converter`."""


def converter(*names: str, source: str | dict[str, str]):
    """Decorator: ``plan(root, [name], [vocab_dir]) -> _Plan`` converts the datasets ``names``
    (each a ``DatasetSpec`` of ``data.catalog``), whose download ``source`` says what to fetch and
    where to put it under ``<root>`` (one text for all of them, or one per name). The plan takes
    ``name`` when it serves several datasets and ``vocab_dir`` when it reads a class list."""
    from data.catalog import DATASETS

    def register(plan: Callable[..., _Plan]) -> Callable[..., _Plan]:
        for name in names:
            if name not in DATASETS:
                raise ValueError(
                    f"converter for {name!r}: no DatasetSpec of that name in data.catalog.DATASETS"
                )
            text = source if isinstance(source, str) else source[name]
            CONVERTERS[name], RAW_SOURCES[name] = plan, text
        return plan

    return register


def preparable() -> tuple[str, ...]:
    """The datasets a converter is registered for, in data.catalog's order."""
    from data.catalog import DATASETS

    return tuple(name for name in DATASETS if name in CONVERTERS)
