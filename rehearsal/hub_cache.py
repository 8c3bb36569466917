"""A local Hugging Face hub cache, written the way ``huggingface_hub`` writes one.

    HF_HOME/hub/models--ORG--NAME/
        blobs/<sha256>                  each file's bytes, named by their hash
        snapshots/<revision>/<path>     relative symlinks into blobs/
        refs/main                       the revision ``main`` resolves to

With ``HF_HOME`` pointing there and ``HF_HUB_OFFLINE=1``, ``hf_hub_download``,
``try_to_load_from_cache``, ``snapshot_download`` and the libraries built on them (open_clip,
diffusers, transformers) find the files as if they had downloaded them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from common.io import file_sha256


def repo_folder(hf_home: str | os.PathLike, repo_id: str, repo_type: str = "model") -> Path:
    """``HF_HOME/hub/<type>s--ORG--NAME``."""
    return Path(hf_home) / "hub" / f"{repo_type}s--{repo_id.replace('/', '--')}"


def content_revision(files: dict[str, Path]) -> str:
    """A 40-hex revision from the files' names and bytes (stands in for the commit hash)."""
    digest = hashlib.sha1()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + file_sha256(files[name]).encode())
    return digest.hexdigest()


def write_snapshot(
    hf_home: str | os.PathLike,
    repo_id: str,
    source: str | os.PathLike,
    revision: str | None = None,
    move: bool = False,
) -> Path:
    """Put every file under ``source`` (a model folder) into the cache as ``repo_id`` at
    ``revision`` (default: :func:`content_revision`), and point ``refs/main`` at it. ``move``
    moves the files (large weights) instead of copying them. Returns the snapshot folder."""
    source = Path(source)
    files = {p.relative_to(source).as_posix(): p for p in sorted(source.rglob("*")) if p.is_file()}
    if not files:
        raise ValueError(f"{source} holds no files")
    revision = revision or content_revision(files)
    repo = repo_folder(hf_home, repo_id)
    snapshot = repo / "snapshots" / revision
    for name, path in files.items():
        blob = repo / "blobs" / file_sha256(path)
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            (shutil.move if move else shutil.copyfile)(path, blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
