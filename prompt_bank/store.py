"""Opening banks by path or fsspec URL, and reading them (read-only, validated first).

``memory://``, ``file://``, ``s3://``, ``gs://``, ``http(s)://``, ``hf://`` and other fsspec URLs
go through zarr's ``FsspecStore`` when the filesystem package is installed; anything else is a
local path. Credentials come from where each filesystem looks (``AWS_*`` variables and
``~/.aws`` for s3fs, ``HF_TOKEN`` for the hub, ...); ``storage_options`` (or the environment
variable ``DPSEG_STORAGE_OPTIONS``, a JSON object) are passed to the filesystem as they are.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from prompt_bank.format import BankFormatError, BankLayout, validate_group


def is_url(location: str) -> bool:
    return "://" in location


def parse_storage_options(raw: str, source: str) -> dict:
    """fsspec storage options from a JSON object; `source` names where it came from."""
    try:
        options = json.loads(raw) if raw else {}
    except ValueError as e:
        raise BankFormatError(f"{source} {raw!r} is not JSON ({e})") from None
    if not isinstance(options, dict):
        raise BankFormatError(f"{source} {raw!r} must be a JSON object, e.g. '{{\"anon\": true}}'")
    return options


def storage_options_from_env() -> dict:
    return parse_storage_options(
        os.environ.get("DPSEG_STORAGE_OPTIONS", ""), "$DPSEG_STORAGE_OPTIONS"
    )


def resolve_storage_options(storage_options: dict | None) -> dict:
    """The options given, or else those of $DPSEG_STORAGE_OPTIONS."""
    return storage_options_from_env() if storage_options is None else storage_options


def filesystem(url: str, storage_options: dict | None = None):
    """(fsspec filesystem, path inside it) of a URL."""
    import fsspec

    return fsspec.core.url_to_fs(url, **resolve_storage_options(storage_options))


def open_store(location: str | os.PathLike, read_only: bool, storage_options: dict | None = None):
    """A zarr store for a local path or an fsspec URL."""
    from zarr.storage import FsspecStore, LocalStore

    location = str(location)
    if is_url(location):
        protocol = location.split("://", 1)[0]
        options = resolve_storage_options(storage_options)
        if protocol in ("file", "local") and not read_only:
            options = {"auto_mkdir": True, **options}  # fsspec's local files make no folders
        try:
            return FsspecStore.from_url(
                location, read_only=read_only, storage_options=options or None
            )
        except (ImportError, ValueError) as e:
            raise BankFormatError(
                f"cannot open {location!r}: {e}. The {protocol}:// filesystem needs its fsspec "
                f"package (s3fs for s3://, huggingface_hub for hf://, gcsfs for gs://)"
            ) from e
    if read_only and not os.path.exists(location):
        raise FileNotFoundError(f"no bank at {location!r}")
    return LocalStore(location, read_only=read_only)


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

    store = open_store(location, read_only=mode == "r", storage_options=storage_options)
    if consolidated is None:
        consolidated = None if is_url(str(location)) else False
    try:
        return zarr.open_group(store=store, mode=mode, zarr_format=3, use_consolidated=consolidated)
    except zarr.errors.ContainsArrayError:
        raise BankFormatError(f"{str(location)!r} is a zarr array, not a prompt bank") from None
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise BankFormatError(f"{str(location)!r} is not a zarr v3 group ({e})") from e


@dataclass
class Bank:
    """A validated, read-only prompt bank."""

    location: str
    group: object  # zarr.Group
    layout: BankLayout

    @classmethod
    def open(cls, location: str | os.PathLike, storage_options: dict | None = None) -> Bank:
        """Open and validate; raises BankFormatError before any array data is read. A sealed
        bank's metadata is consolidated: a remote open costs one request."""
        try:
            group = open_group(location, mode="r", storage_options=storage_options)
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
        """Bytes the bank's arrays (data and metadata) and manifests take in its store: all but
        the root zarr.json (which grows when sealed), the card and the build lock (0 where the
        store cannot list sizes)."""
        from zarr.core.sync import sync

        store = self.group.store

        async def total() -> int:
            size = 0
            async for key in store.list():
                if key not in ("zarr.json", "README.md", "build.lock"):
                    size += await store.getsize(key)
            return size

        try:
            return sync(total())
        except Exception:
            return 0
