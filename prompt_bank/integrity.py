"""Shard manifests: what a bank's objects must hash to, so damage is found without rebuilding.

A shard (``classes_per_shard`` classes of every array) is stored as one object per array. Each
flush encodes the shard's objects in memory, records their sha256 in ``manifest/shard-<i>.json``
and only then writes them, data first and ``visual/done`` last::

    1. manifest: every object -> [new hash, previous hash]   (a flush in progress)
    2. the data objects, then the done object                 (each an atomic put)
    3. manifest: every object -> [new hash]                   (the flush is over)

Whatever moment a build is killed at, every object then hashes to a hash its manifest lists, and
the done flags (written last) never claim an item whose data is not stored. Any other object -
missing, truncated, copied from another shard, left over from an older build - is damage: it is
named, and resuming (or ``cli.py bank repair``) drops the shard and builds it again. A ``null``
hash means the object is absent on purpose (zarr stores no object for a shard that holds only
fill values). The manifest layout and this protocol are ours (format v2, docs/bank_format.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from common.errors import without_bytes
from prompt_bank.format import REFETCH, BankFormatError, BankLayout, BankMismatchError
from prompt_bank.zarr_io import get_object, get_objects, put_object, run_sync

MANIFEST_PREFIX = "manifest"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def manifest_key(shard: int) -> str:
    return f"{MANIFEST_PREFIX}/shard-{shard:05d}.json"


def shard_key(array, shard: int) -> str:
    """The store key of shard `shard` (along K) of a zarr array sharded along K only."""
    coords = (shard,) + (0,) * (len(array.shape) - 1)
    return f"{array.path}/{array.metadata.encode_chunk_key(coords)}"


def sha256(raw: bytes | None) -> str | None:
    return None if raw is None else hashlib.sha256(raw).hexdigest()


def read_manifest_body(store, shard: int) -> dict | None:
    """The manifest as stored (None: absent; ``{"unreadable": why}``: garbled or edited, so
    every object is unexpected)."""
    raw = get_object(store, manifest_key(shard))
    if raw is None:
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        return {"unreadable": "not JSON"}
    if not isinstance(body, dict) or not isinstance(body.get("objects"), dict):
        return {"unreadable": "no objects table"}
    sizes = body.get("sizes", {})
    if not isinstance(sizes, dict) or not all(type(n) is int for n in sizes.values()):
        return {"unreadable": "sizes that are not whole numbers"}  # an edited manifest
    return body


def read_manifest(store, shard: int) -> dict[str, list[str | None]] | None:
    body = read_manifest_body(store, shard)
    return None if body is None else body.get("objects", {})


def manifest_hashes(group, layout, bodies: list | None = None):
    """Every shard object's sha256 and their total size, from the manifests (one request per
    shard; ``bodies``: the manifests already read); None unless every flush is finished."""
    if bodies is None:
        bodies = [read_manifest_body(group.store, i) for i in range(len(layout.shard_ranges()))]
    hashes: dict[str, str | None] = {}
    size = 0
    for body in bodies:
        entries = (body or {}).get("objects")
        if not entries or any(len(v) != 1 for v in entries.values()) or "sizes" not in body:
            return None
        hashes.update({key: v[0] for key, v in entries.items()})
        size += sum(int(n) for n in body["sizes"].values())
    return hashes, size


def write_manifest(
    store, shard: int, k0: int, k1: int, entries: dict, sizes: dict | None = None
) -> None:
    """``entries``: object key -> accepted hashes; ``sizes`` (settled manifests): bytes."""
    body = {"shard": shard, "classes": [k0, k1], "objects": entries}
    if sizes is not None:
        body["sizes"] = sizes
    put_object(store, manifest_key(shard), json.dumps(body, indent=1, sort_keys=True).encode())


def settle_manifest(store, state) -> None:
    """Rewrite a shard's manifest with the hashes its objects have (one per object)."""
    write_manifest(
        store,
        state.index,
        state.k0,
        state.k1,
        {key: [h] for key, h in state.hashes.items()},
        state.sizes,
    )


def _memory_array(array, store_dict: dict):
    """An empty copy of `array` (same metadata, so the same encoding) in a memory store."""
    import zarr
    from zarr.storage import MemoryStore

    from prompt_bank.zarr_io import default_buffer_prototype

    store = MemoryStore(store_dict=store_dict)
    for name, buffer in array.metadata.to_buffer_dict(default_buffer_prototype()).items():
        run_sync(store.set(f"{array.path}/{name}", buffer))
    return zarr.open_array(store=store, path=array.path, mode="r+")


def encode_shard(array, shard: int, k0: int, k1: int, values: np.ndarray) -> bytes | None:
    """The bytes zarr would store for rows [k0, k1) of `array` (None: no object, all fill)."""
    store_dict: dict = {}
    _memory_array(array, store_dict)[k0:k1] = values
    buffer = store_dict.get(shard_key(array, shard))
    return None if buffer is None else buffer.to_bytes()


def decode_shard(array, shard: int, k0: int, k1: int, raw: bytes | None) -> np.ndarray:
    """Rows [k0, k1) of `array` from its shard object's bytes (fill values when None)."""
    from prompt_bank.zarr_io import default_buffer_prototype

    store_dict: dict = {}
    memory = _memory_array(array, store_dict)
    if raw is not None:
        store_dict[shard_key(array, shard)] = default_buffer_prototype().buffer.from_bytes(raw)
    return np.asarray(memory[k0:k1])


def flush_shard(group, layout: BankLayout, shard: int, buffers: dict[str, np.ndarray]) -> None:
    """Write shard `shard` from `buffers` (array path -> rows [k0, k1)) by the protocol above."""
    k0, k1 = layout.shard_ranges()[shard]
    store = group.store
    encoded = {
        shard_key(group[path], shard): encode_shard(group[path], shard, k0, k1, values)
        for path, values in buffers.items()
    }
    previous = read_manifest(store, shard) or {}
    intent = {}
    for key, raw in encoded.items():
        # Every hash the object may have now (an earlier flush may itself have been cut short)
        accepted = [sha256(raw), *(previous.get(key) or [None])]
        intent[key] = list(dict.fromkeys(accepted))
    write_manifest(store, shard, k0, k1, intent)
    done_key = shard_key(group["visual/done"], shard)
    for key in sorted(encoded, key=lambda k: k == done_key):  # the done flags last
        put_object(store, key, encoded[key])
    write_manifest(
        store,
        shard,
        k0,
        k1,
        {key: [sha256(raw)] for key, raw in encoded.items()},
        {key: len(raw or b"") for key, raw in encoded.items()},
    )


@dataclass
class ShardState:
    """What a shard holds, judged against its manifest."""

    index: int
    k0: int
    k1: int
    problems: list[str] = field(default_factory=list)
    data: dict[str, np.ndarray] | None = None  # decoded rows [k0, k1) when not damaged
    hashes: dict[str, str | None] = field(default_factory=dict)  # object key -> sha256
    sizes: dict[str, int] = field(default_factory=dict)  # object key -> bytes (0: absent)
    settled: bool = False  # the manifest lists one hash per object (no flush cut short)

    @property
    def damaged(self) -> bool:
        return bool(self.problems)

    @property
    def done(self) -> np.ndarray | None:
        return None if self.data is None else self.data["visual/done"]

    @property
    def status(self) -> str:
        if self.damaged:
            return "damaged"
        if not self.done.any():
            return "empty"
        return "complete" if self.done.all() else "partial"


def _agreement(data: dict[str, np.ndarray]) -> list[str]:
    """Done flags against the data: every item marked done holds values. (Items not marked done
    may hold data: a flush interrupted between the data and the flags; they are rebuilt. Kept
    images are not checked: a generated image may be black.)"""
    done, out = data["visual/done"], []
    for path, values in data.items():
        if path in ("visual/done", "text/embeddings", "visual/images"):
            continue
        held = np.abs(values.reshape(*done.shape, -1).astype(np.float32)).sum(axis=-1) > 0
        if (done & ~held).any():
            out.append(f"{path} holds no data for {int((done & ~held).sum())} items marked done")
    if done.any() and not (np.abs(data["text/embeddings"]).sum(axis=-1) > 0).all():
        out.append("text/embeddings is empty for classes with items done")
    return out


def _absent(store, key: str) -> str:
    """How an object that reads as absent is absent: "is missing", or, in a local bank, "is a
    folder, not a file" (a folder where the object belongs reads as no object)."""
    import os

    root = getattr(store, "root", None)
    if root is not None and os.path.isdir(os.path.join(str(root), key)):
        return "is a folder, not a file"
    return "is missing"


def _manifest_fields(body: dict, state: ShardState, keys: set[str]) -> list[str]:
    """What a shard's manifest says beyond its hashes, against the shard as found: its number
    and classes, no object that is not one of the shard's ``keys`` (kept images included, read
    or not), and (settled) the size of each object read.
    Readers, verify, push and pull all judge a shard here, so none serves or sends a manifest
    that the shard contradicts (a probe found each field edited and carried)."""
    key = manifest_key(state.index)
    out = []
    if body.get("shard") != state.index or body.get("classes") != [state.k0, state.k1]:
        out.append(
            f"{key} names shard {body.get('shard')!r}, classes {body.get('classes')!r}; "
            + manifest_should_say(state.index, state.k0, state.k1)
        )
    stray = sorted(set(body["objects"]) - keys)
    if stray:
        out.append(
            f"{key} lists objects that are no part of shard {state.index} ({shown_keys(stray)})"
        )
    sizes = body.get("sizes")
    if sizes is not None:
        vouched = [k for k in state.sizes if state.hashes[k] in body["objects"].get(k, [])]
        wrong = sorted(k for k in vouched if sizes.get(k) != state.sizes[k])
        wrong += sorted(set(sizes) - keys)
        if wrong:
            pairs = [
                f"{k}: {sizes.get(k)!r} bytes listed, {state.sizes.get(k, 0)} found" for k in wrong
            ]
            more = f"; and {len(wrong) - 3} more" if len(wrong) > 3 else ""
            out.append(
                f"{key} gives sizes that are not the objects' ({'; '.join(pairs[:3])}{more})"
            )
    return out


def manifest_should_say(shard: int, k0: int, k1: int) -> str:
    """What a shard's manifest must say, in its own notation (``classes`` is ``[first, end)``;
    the messages' "classes 0-0" is inclusive, so the two are not mixed in one line)."""
    return f'it should say "shard": {shard}, "classes": [{k0}, {k1}] (classes {k0}-{k1 - 1})'


def shown_keys(keys: list[str], first: int = 3) -> str:
    """Up to ``first`` keys, and how many more: what a one-line message names."""
    more = len(keys) - first
    return ", ".join(keys[:first]) + (f" and {more} more" if more > 0 else "")


def check_shard(group, layout: BankLayout, shard: int, legacy: bool = False) -> ShardState:
    """Read shard `shard` once and judge it: objects against the manifest (skipped for a
    ``legacy`` v1 bank, which has none), decoding and checksums, done flags against data."""
    k0, k1 = layout.shard_ranges()[shard]
    state = ShardState(shard, k0, k1)
    store = group.store
    arrays = list(layout.arrays())
    raws = dict(zip(arrays, get_objects(store, [shard_key(group[p], shard) for p in arrays])))
    state.hashes = {shard_key(group[p], shard): sha256(r) for p, r in raws.items()}
    state.sizes = {shard_key(group[p], shard): len(r or b"") for p, r in raws.items()}
    body = None if legacy else read_manifest_body(store, shard)
    manifest = None if body is None else body.get("objects", {})
    state.settled = bool(manifest) and all(len(v) == 1 for v in manifest.values())
    if manifest is None and not legacy and any(r is not None for r in raws.values()):
        state.problems.append(
            f"{manifest_key(shard)} is a folder, not a file, so none of the shard's objects can "
            "be checked"
            if _absent(store, manifest_key(shard)) != "is missing"
            else f"{manifest_key(shard)} is missing although the shard holds objects (copied "
            "in, or written by a build killed before its first manifest)"
        )
    if body is not None and "unreadable" in body:
        state.problems.append(
            f"{manifest_key(shard)} is garbled ({body['unreadable']}), so none of the shard's "
            "objects can be checked"
        )
        manifest = None
    for key, found in state.hashes.items():
        if manifest is None:
            break
        allowed = manifest.get(key, [])
        if found not in allowed:
            what = (
                _absent(store, key)
                if found is None
                else "is empty (0 bytes)"
                if found == EMPTY_SHA256
                else f"has sha256 {found[:12]}"
            )
            expected = " or ".join("absent" if h is None else h[:12] for h in allowed) or "none"
            state.problems.append(f"object {key} {what}, the manifest expects {expected}")
    if manifest is not None:  # the rest of what the manifest says, of the objects it vouches for
        paths = [*layout.arrays(), *(["visual/images"] if "visual/images" in group else [])]
        keys = {shard_key(group[p], shard) for p in paths}
        state.problems.extend(_manifest_fields(body, state, keys))
    data = {}
    for path, raw in raws.items():
        try:
            data[path] = decode_shard(group[path], shard, k0, k1, raw)
        except Exception as e:  # truncated, bit flips (crc32c), damaged shard index
            key = shard_key(group[path], shard)
            state.problems.append(f"object {key} does not decode: {without_bytes(e)}")
    if not state.problems:
        state.problems.extend(f"classes {k0}-{k1 - 1}: {p}" for p in _agreement(data))
    if not state.problems:
        state.data = data
    return state


def read_only_url(location: str) -> bool:
    """Whether ``location`` is an http(s) URL, which dpseg reads but cannot write."""
    return str(location).startswith(("http://", "https://"))


def refuse_read_only_url(location: str, option: str) -> None:
    """One line, before any work, for an output that is an http(s) URL (ours: dpseg writes
    banks to paths and to stores with a write API, and only reads over plain HTTP), or empty
    (which would mean the working folder)."""
    if not str(location).strip():
        raise BankFormatError(
            f"{option} {str(location)!r}: empty; give the path or URL of the bank to write "
            "(e.g. banks/mine.zarr)"
        )
    if read_only_url(location):
        raise BankFormatError(
            f"{option} {location}: an http(s) URL can be read but not written; write the bank to "
            "a path or a writable URL (file://, s3://, gs://, hf://datasets/ORG/NAME), then serve "
            "that"
        )


def repair_command(location: str) -> str:
    """``bank repair`` of a bank that can be written (a path, file://, s3://, gs://)."""
    return f"python cli.py bank repair {location}"


def mend_advice(location: str, what: str = "the damaged shards") -> str:
    """How to mend a damaged bank at ``location``, as a clause: rebuild ``what`` with ``bank
    repair`` where it can be written; for an http(s) URL, which readers cannot write, a good
    copy put in its place on that server by its owner (dpseg does not write over plain HTTP)."""
    if read_only_url(location):
        return (
            "a bank at an http(s) URL is mended by the owner of that server, who puts a good "
            "copy in its place (dpseg reads plain HTTP but does not write to it: push to the "
            "store behind it, s3:// or hf://, or copy the files there); or pull the bank from "
            "another source"
        )
    return f"rebuild {what} with `{repair_command(location)}` (or build the bank again)"


def require_intact(bank) -> list[ShardState]:
    """Every shard of a (``prompt_bank.store.Bank``) checked; the first damage is an error that
    names the object and the repair."""
    states = []
    for shard in range(len(bank.layout.shard_ranges())):
        state = check_shard(bank.group, bank.layout, shard)
        if state.damaged:
            raise BankMismatchError(
                f"{bank.location} shard {shard}: {state.problems[0]}; "
                f"{mend_advice(bank.location, 'it')}"
            )
        states.append(state)
    return states


def drop_shard(group, layout: BankLayout, shard: int) -> None:
    """Delete a damaged shard's objects and its manifest (it is then built again)."""
    store = group.store
    for path in layout.arrays():
        put_object(store, shard_key(group[path], shard), None)
    put_object(store, manifest_key(shard), None)


def content_key(attrs: dict, hashes: dict[str, str | None]) -> str:
    """A bank's identity by content: what it holds and how it was made, not when or where."""
    identity = {
        key: attrs.get(key)
        for key in (
            "format_version",
            "classes",
            "templates",
            "images_per_prompt",
            "generator",
            "encoder",
        )
    }
    identity["objects"] = dict(sorted(hashes.items()))
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


# ---------------------------------------------------------------------------------------------
# the seal, read (prompt_bank.seal writes it)


def sealed_contents(bank) -> dict | None:
    """The sealed contents of ``bank`` (a ``prompt_bank.store.Bank``: its ``attrs`` and
    ``location``), or None (building, or older than format v2). The reading side of the seal
    (``prompt_bank.seal`` writes it), here below the store that checks it on every open.

    Raises:
        BankFormatError: the seal is malformed, or its content key does not follow from the
            attributes and object hashes (the root zarr.json was edited after sealing): nothing
            of it can be trusted.
    """
    attrs = bank.attrs
    if "contents" not in attrs:
        return None
    contents = attrs["contents"]
    if not (
        isinstance(contents, dict)
        and contents.get("complete") is True
        and isinstance(contents.get("objects"), dict)
        and isinstance(contents.get("content_key"), str)
    ):  # the seal writes all three: anything else is an edit, never "not sealed"
        raise BankFormatError(
            f"{bank.location}: its seal (the contents attribute of zarr.json) is malformed (the "
            f"root zarr.json was changed after the bank was sealed); {REFETCH}"
        )
    items = len(attrs.get("classes") or []) * len(attrs.get("templates") or [])
    items *= (
        attrs.get("images_per_prompt") if isinstance(attrs.get("images_per_prompt"), int) else 0
    )
    size = contents.get("bytes")
    if contents.get("items") != items or not (isinstance(size, int) and size > 0):
        raise BankFormatError(
            f"{bank.location}: its seal says {contents.get('items')!r} items and {size!r} bytes, "
            f"where the bank's classes, templates and images per prompt make {items} items (the "
            f"root zarr.json was changed after the bank was sealed); {REFETCH}"
        )
    if content_key(attrs, contents["objects"]) != contents["content_key"]:
        raise BankFormatError(
            f"{bank.location}: its sealed content key does not match its attributes and "
            f"objects (the root zarr.json was changed after the bank was sealed); {REFETCH}"
        )
    return contents


def seal_disagreements(contents: dict | None, hashes: dict[str, str | None]) -> list[str]:
    """The objects of ``hashes`` (key -> sha256 as stored now) whose sha256 is not the one the
    sealed ``contents`` record (none when the bank is not sealed)."""
    if contents is None:
        return []
    sealed = contents["objects"]
    return sorted(k for k, h in hashes.items() if k not in sealed or sealed[k] != h)


def disagreement_error(location: str, shard: int, keys: list[str]) -> str:
    """The one line for a shard whose objects are not the ones its bank was sealed with."""
    return (
        f"bank {location!r}: shard {shard}'s objects {shown_keys(keys)} are not the ones the bank was sealed "
        "with (its root zarr.json's contents; copied in from another bank, or changed "
        f"together with their manifest); {mend_advice(location, 'them')}"
    )
