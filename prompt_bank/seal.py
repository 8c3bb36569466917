"""Sealing a complete bank: its ``contents`` attribute (content key, items, size, every object's
sha256), its card (README.md) and consolidated metadata, so that a remote reader learns what a
bank is, how big, and whether it is whole from the root ``zarr.json`` alone (ours, format v2).

A bank is sealed at the end of every build that leaves it complete, and by merge, subset and
pull; any build step that changes a shard unseals it first.
"""

from __future__ import annotations

import json
import warnings

import numpy as np

from prompt_bank.format import CARD_KEY, REFETCH, BankFormatError, validate_group
from prompt_bank.integrity import (  # noqa: F401  (the reading side, re-exported)
    content_key,
    disagreement_error,
    manifest_hashes,
    manifest_should_say,
    put_object,
    read_manifest_body,
    seal_disagreements,
    sealed_contents,
    shard_key,
    shown_keys,
)
from prompt_bank.store import Bank, open_group

# zarr's warnings about what consolidation meets in a bank are expected (the manifests, card and
# lock beside the arrays are not zarr nodes; consolidated metadata is zarr-python's extension to
# v3). Filtered for the process, not only inside consolidate(): a signal there left zarr's IO
# thread finishing the write after the filter was restored, and its warnings around the one
# error line (found by a probe).
warnings.filterwarnings("ignore", r"Object at .* is not recognized as a component", UserWarning)
warnings.filterwarnings("ignore", r"Consolidated metadata is currently not part", UserWarning)


def unseal(group) -> None:
    """Forget the sealed contents (the bank is about to change); their object hashes stay as
    ``previous_contents`` until the bank is sealed again, so that a repair that is interrupted
    and resumed still knows which objects the bank was sealed with."""
    if "contents" in group.attrs:
        attrs = dict(group.attrs)
        contents = attrs.pop("contents")
        attrs.setdefault("previous_contents", {"objects": contents.get("objects", {})})
        group.attrs.put(attrs)
        put_object(group.store, CARD_KEY, None)


def manifest_disagreement(
    group, layout, contents: dict, lengths: dict[str, int] | None = None
) -> str | None:
    """How a sealed bank's manifests disagree with its seal (an object listed that the seal
    does not hold, a total size, a shard's number or classes) or, given ``lengths`` (object key
    -> bytes found), with the objects' sizes; None where they agree. What readers and repair
    use must be what the seal vouches for (a probe found an edited manifest verified and pushed,
    then refused by every pull)."""
    bodies = [read_manifest_body(group.store, i) for i in range(len(layout.shard_ranges()))]
    found = manifest_hashes(group, layout, bodies)
    if found is None:
        return "a manifest is missing, garbled or unsettled"
    hashes, size = found
    if hashes != contents["objects"]:
        odd = sorted(set(hashes) ^ set(contents["objects"])) or sorted(
            k for k in hashes if hashes[k] != contents["objects"].get(k)
        )
        return f"the manifests list objects the seal does not ({shown_keys(odd)})"
    if size != contents["bytes"]:
        return f"the manifests' sizes add up to {size} bytes, the seal says {contents['bytes']}"
    for shard, ((k0, k1), body) in enumerate(zip(layout.shard_ranges(), bodies, strict=True)):
        if body.get("shard") != shard or body.get("classes") != [k0, k1]:
            return (
                f"manifest/shard-{shard:05d}.json names shard {body.get('shard')!r}, classes "
                + f"{body.get('classes')!r}; "
                + manifest_should_say(shard, k0, k1)
            )
        wrong = sorted(
            k for k, n in body["sizes"].items() if lengths is not None and lengths.get(k, 0) != n
        )
        if wrong:
            return (
                f"manifest/shard-{shard:05d}.json gives sizes that are not the objects' "
                f"({shown_keys(wrong)})"
            )
    return None


def consolidate(location: str) -> None:
    """Put every array's metadata into the root zarr.json (one request opens the bank).

    Only the root keeps it: zarr also writes a copy into each subgroup, which a local reader
    (who reads each array's own zarr.json) would otherwise take for the truth.
    """
    import zarr

    from prompt_bank.integrity import get_object
    from prompt_bank.store import open_store

    store = open_store(location, read_only=False)
    with warnings.catch_warnings():
        # Consolidated metadata is zarr-python's extension to v3; the manifests, card and
        # lock beside the arrays are not zarr nodes. Both are expected here.
        warnings.simplefilter("ignore", category=UserWarning)
        zarr.consolidate_metadata(store, zarr_format=3)
    for sub in ("text", "visual"):
        key = f"{sub}/zarr.json"
        meta = json.loads(get_object(store, key))
        if meta.pop("consolidated_metadata", None) is not None:
            put_object(store, key, json.dumps(meta, indent=2).encode())


def seal_bank(location: str) -> int:
    """Seal the bank at `location` if it is complete; returns the bytes it takes."""
    group = open_group(location, mode="r+")
    layout = validate_group(group, location)
    found = manifest_hashes(group, layout)
    done = np.asarray(group["visual/done"][:])
    if found is None or not done.all():
        return Bank(location, group, layout).nbytes_stored()
    hashes, size = found
    objects = {
        shard_key(group[path], shard)
        for path in layout.arrays()
        for shard in range(len(layout.shard_ranges()))
    }
    stray = sorted(set(hashes) - objects)
    if stray:  # never sealed in (a probe: repair sealed an edited manifest's extra entry)
        raise BankFormatError(
            f"{location}: its manifests list objects that are no part of the bank "
            f"({', '.join(stray[:3])}; edited or damaged), so it is not sealed: {REFETCH}"
        )
    attrs = dict(group.attrs)
    attrs.pop("previous_contents", None)
    attrs["contents"] = {
        "complete": True,
        "items": int(done.size),
        "bytes": size,
        "content_key": content_key(attrs, hashes),
        "objects": dict(sorted(hashes.items())),
    }
    from prompt_bank.card import card_bytes

    refuse_folder_at_card(location)
    # The order makes a cut anywhere resumable (ours; a probe found a full disk between the seal
    # and the consolidation leaving a bank every reader refused): the card, then the arrays'
    # metadata consolidated into the root, then the seal, in the root's last write, which keeps
    # the consolidated metadata. Before that write the bank is unsealed, and a rerun seals it.
    put_object(group.store, CARD_KEY, card_bytes(attrs))
    consolidate(location)
    open_group(location, mode="r+", consolidated=True).attrs.put(attrs)
    return attrs["contents"]["bytes"]


def refuse_folder_at_card(location: str) -> None:
    """A folder where a local bank's card (README.md) goes is named, before the seal writes
    anything (zarr's error named its own temporary file, which does not exist)."""
    import os

    from prompt_bank.store import is_url

    path = os.path.join(str(location), CARD_KEY)
    if not is_url(str(location)) and os.path.isdir(path):
        raise BankFormatError(
            f"{path} is a folder where the bank's card goes; remove it (rm -r {path}), then run "
            f"`python cli.py bank repair {location}`, which writes the card"
        )
