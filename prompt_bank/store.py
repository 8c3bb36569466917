"""Opening banks by path or fsspec URL, and reading them (read-only, validated first).

``memory://``, ``file://``, ``s3://``, ``hf://`` and other fsspec URLs go through zarr's
``FsspecStore`` when the filesystem package is installed; anything else is a local path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from prompt_bank.format import BankFormatError, BankLayout, validate_group


def is_url(location: str) -> bool:
    return "://" in location


def open_store(location: str | os.PathLike, read_only: bool):
    """A zarr store for a local path or an fsspec URL."""
    from zarr.storage import FsspecStore, LocalStore

    location = str(location)
    if is_url(location):
        protocol = location.split("://", 1)[0]
        try:
            return FsspecStore.from_url(location, read_only=read_only)
        except (ImportError, ValueError) as e:
            raise BankFormatError(
                f"cannot open {location!r}: {e}. The {protocol}:// filesystem needs its fsspec "
                f"package (s3fs for s3://, huggingface_hub for hf://, gcsfs for gs://)"
            ) from e
    if read_only and not os.path.exists(location):
        raise FileNotFoundError(f"no bank at {location!r}")
    return LocalStore(location, read_only=read_only)


def open_group(location: str | os.PathLike, mode: str):
    import zarr

    store = open_store(location, read_only=mode == "r")
    try:
        return zarr.open_group(store=store, mode=mode, zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise BankFormatError(f"{str(location)!r} is not a zarr v3 group ({e})") from e


@dataclass
class Bank:
    """A validated, read-only prompt bank."""

    location: str
    group: object  # zarr.Group
    layout: BankLayout

    @classmethod
    def open(cls, location: str | os.PathLike) -> Bank:
        """Open and validate; raises BankFormatError before any array data is read."""
        try:
            group = open_group(location, mode="r")
        except (BankFormatError, FileNotFoundError):
            raise
        except Exception as e:
            raise BankFormatError(f"cannot open a bank at {str(location)!r}: {e}") from e
        return cls(str(location), group, validate_group(group, repr(str(location))))

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
        return self.group[path]

    def read(self, path: str, classes: slice | np.ndarray = slice(None)) -> np.ndarray:
        return np.asarray(self.group[path][classes])

    def done(self) -> np.ndarray:
        """(K, P, N) bool: which items are complete."""
        return self.read("visual/done")

    def level_names(self) -> list[str]:
        return [f"visual/level_{j}" for j in range(1, len(self.layout.level_dims) + 1)]

    def nbytes_stored(self) -> int:
        """Bytes the bank takes in its store (0 where the store cannot list sizes)."""
        from zarr.core.sync import sync

        store = self.group.store

        async def total() -> int:
            size = 0
            async for key in store.list():
                size += await store.getsize(key)
            return size

        try:
            return sync(total())
        except Exception:
            return 0
