"""Prompt bank format v2: the contract between teams (docs/bank_format.md).

A Zarr v3 group; nothing in it is pickled or executed, everything is plain arrays and JSON.

=====================  ================  =============  =======================================
path                   shape             dtype          meaning
=====================  ================  =============  =======================================
text/embeddings        (K, P, D)         float32        normalised text embedding, class k,
                                                        template p (synonyms averaged)
visual/embeddings      (K, P, N, D)      float32        normalised image embedding of image n
visual/level_<j>       (K, P, N, C_j)    float16/32     spatially pooled level-j feature,
                                                        j = 1..L (the paper's F_v^j numbering)
visual/images          (K, P, N, H, W,3) uint8          optional (--keep-images)
visual/done            (K, P, N)         bool           set only after that item's data
=====================  ================  =============  =======================================

Group attributes: ``format``, ``format_version``, ``classes``, ``templates``,
``images_per_prompt``, ``generator``, ``encoder``, ``created``, ``builder``, and (ours)
``build``: the batch plan that makes items bit-identical across resumes and ranks; optionally
``command`` (how it was built), ``provenance`` (the source bank of each class, after a merge or
a subset) and ``contents`` (written when a bank is complete: its content key, item count, size
and every object's sha256; with it the metadata is consolidated into the root ``zarr.json``, so
opening a remote bank costs one request).

Beside the arrays (ours, v2): ``manifest/shard-<i>.json`` (each shard object's sha256, see
prompt_bank/integrity.py), ``README.md`` (the bank card) and, while a build runs, ``build.lock``.

v2 changed the batch plan (items are batched within their class, so an item's bits do not depend
on its neighbours: merged and subset banks equal direct builds) and added the manifests. v1 banks
are still read; they cannot be resumed or repaired (rebuild them).

Storage (ours): every array is sharded along K in blocks of ``build.classes_per_shard`` classes
(one shard = one object in the store), with one class (images: one item) per inner chunk,
compressed with zstd and checked with crc32c so a corrupted chunk is detected on read. A writer
owns whole shards: two writers on one shard would overwrite each other's data.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from common.errors import UserError
from prompt_bank.zarr_io import get_object, run_sync

FORMAT_NAME = "dpseg-prompt-bank"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
REQUIRED_ATTRS = (
    "format",
    "format_version",
    "classes",
    "templates",
    "images_per_prompt",
    "generator",
    "encoder",
    "created",
    "builder",
    "build",
)
LEVEL_DTYPES = ("float16", "float32")


REFETCH = "get the bank again from its source, or rebuild it"
CARD_KEY = "README.md"
"""The bank's card (``prompt_bank.card``), written by the seal beside the arrays."""
"""The fix for a bank whose metadata was edited after it was made (nothing of it can be trusted)."""


class BankFormatError(UserError, ValueError):
    """A store is not a valid bank; the message names the array or attribute and the fix."""


class BankMismatchError(UserError, ValueError):
    """A bank does not fit its use: resumed with other settings, merged with a bank of another
    encoder, or given to a model whose prompt encoder differs (fingerprints)."""


@dataclass(frozen=True)
class BankLayout:
    """The shapes and dtypes of a bank, from which every array's metadata follows."""

    num_classes: int  # K
    num_templates: int  # P
    images_per_prompt: int  # N
    embed_dim: int  # D
    level_dims: tuple[int, ...]  # C_j for j = 1..L
    level_dtype: str  # "float16" or "float32"
    image_size: tuple[int, int] | None  # (H, W) of kept images, None = images not kept
    classes_per_shard: int

    def __post_init__(self) -> None:
        if self.level_dtype not in LEVEL_DTYPES:
            raise BankFormatError(
                f"level dtype {self.level_dtype!r} is not one of {', '.join(LEVEL_DTYPES)}"
            )
        if min(self.num_classes, self.num_templates, self.images_per_prompt) < 1:
            raise BankFormatError(
                f"a bank needs at least one class, template and image per prompt (it records "
                f"{self.num_classes}, {self.num_templates} and {self.images_per_prompt})"
            )
        if self.classes_per_shard < 1:
            raise BankFormatError(f"classes_per_shard={self.classes_per_shard} must be >= 1")

    def arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Every array path with its (shape, dtype)."""
        k, p, n = self.num_classes, self.num_templates, self.images_per_prompt
        arrays = {
            "text/embeddings": ((k, p, self.embed_dim), "float32"),
            "visual/embeddings": ((k, p, n, self.embed_dim), "float32"),
            **{
                f"visual/level_{j}": ((k, p, n, c), self.level_dtype)
                for j, c in enumerate(self.level_dims, start=1)
            },
            "visual/done": ((k, p, n), "bool"),
        }
        if self.image_size is not None:
            arrays["visual/images"] = ((k, p, n, *self.image_size, 3), "uint8")
        return arrays

    def shard_ranges(self) -> list[tuple[int, int]]:
        """[start, stop) class ranges of the shards, in order."""
        s = self.classes_per_shard
        return [(k0, min(k0 + s, self.num_classes)) for k0 in range(0, self.num_classes, s)]


def chunk_shapes(layout: BankLayout, path: str, shape: tuple[int, ...]) -> tuple[tuple, tuple]:
    """(inner chunk, shard) shapes of array `path` (v2): one class per chunk (one image per chunk
    for the kept images), ``classes_per_shard`` classes per shard object."""
    inner = (1,) * 3 + shape[3:] if path == "visual/images" else (1, *shape[1:])
    return inner, (min(layout.classes_per_shard, shape[0]), *shape[1:])


def create_arrays(group, layout: BankLayout, overwrite: bool = False) -> None:
    """Create every array of `layout` in a zarr group (replacing half-created ones if asked)."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    for path, (shape, dtype) in layout.arrays().items():
        inner, outer = chunk_shapes(layout, path, shape)
        group.create_array(
            path,
            shape=shape,
            dtype=dtype,
            chunks=inner,
            shards=outer,
            compressors=[ZstdCodec(level=3), Crc32cCodec()],
            fill_value=False if dtype == "bool" else 0,
            dimension_names=("K", "P", "N", "H", "W", "RGB")[: len(shape)]
            if path != "text/embeddings"
            else ("K", "P", "D"),
            overwrite=overwrite,
        )


def _layout_from_attrs(attrs: dict, arrays: dict) -> BankLayout:
    classes, templates = attrs["classes"], attrs["templates"]
    encoder, build = attrs["encoder"], attrs["build"]
    images = arrays.get("visual/images")
    levels = encoder.get("level_dims")
    if not isinstance(levels, list) or not all(isinstance(c, int) for c in levels):
        raise BankFormatError(
            f"attribute encoder.level_dims is {levels!r}; expected a list of ints"
        )
    keep = build.get("keep_images", False)
    if bool(keep) != (images is not None):  # repair would rebuild what the attribute says
        raise BankFormatError(
            f"attribute build.keep_images is {keep!r}, but the bank "
            f"{'has no' if images is None else 'has a'} visual/images array (its zarr.json was "
            f"edited or damaged); {REFETCH}"
        )
    level_array = arrays.get("visual/level_1")
    return BankLayout(
        num_classes=len(classes),
        num_templates=len(templates),
        images_per_prompt=int(attrs["images_per_prompt"]),
        embed_dim=int(encoder["embed_dim"]),
        level_dims=tuple(levels),
        level_dtype=str(level_array.dtype) if level_array is not None else "float16",
        image_size=tuple(images.shape[3:5]) if images is not None else None,
        classes_per_shard=int(build["classes_per_shard"]),
    )


def _arrays_of(group, attrs: dict, where: str) -> dict:
    """Every array of the bank's text/ and visual/ groups, by path (reads their metadata)."""
    import zarr

    arrays = {}
    for sub in ("text", "visual"):
        if sub not in group or not isinstance(group[sub], zarr.Group):
            raise BankFormatError(
                f"{where} lacks the group {sub}/ (removed or damaged since it was made); {REFETCH}"
            )
        for name, node in group[sub].members():
            if isinstance(node, zarr.Array):
                arrays[f"{sub}/{name}"] = node
    # The arrays the layout needs, each read by its path: a group's listing may come from
    # consolidated metadata, which a writer that bypassed dpseg can leave out of date.
    levels = attrs["encoder"].get("level_dims") if isinstance(attrs["encoder"], dict) else None
    needed = ["text/embeddings", "visual/embeddings", "visual/done", "visual/images"]
    needed += [f"visual/level_{j}" for j in range(1, len(levels or []) + 1)]
    for path in needed:
        arrays.pop(path, None)
        try:
            node = group[path]
        except KeyError:
            continue
        if isinstance(node, zarr.Array):
            arrays[path] = node
    return arrays


def _damaged_metadata_key(group) -> str | None:
    """The first ``zarr.json`` under ``group``'s store that is not a JSON object, or None."""
    import json

    from prompt_bank.zarr_io import default_buffer_prototype

    store = group.store

    async def first_bad() -> str | None:
        keys = sorted([k async for k in store.list() if k.rsplit("/", 1)[-1] == "zarr.json"])
        for key in keys:
            buffer = await store.get(key, prototype=default_buffer_prototype())
            try:
                meta = json.loads(buffer.to_bytes()) if buffer is not None else None
            except ValueError:
                return key
            if not isinstance(meta, dict):
                return key
        return None

    try:
        return run_sync(first_bad())
    except Exception:  # a store that cannot list: the message goes without the file's name
        return None


def build_command_for(command: object, location: str) -> str | None:
    """A bank's recorded ``bank build`` command with its ``--out`` pointed at ``location`` (the
    copy being diagnosed, not the folder it was first built in); None when none is recorded."""
    import shlex

    if not isinstance(command, str) or not command:
        return None
    try:
        words = shlex.split(command)
    except ValueError:  # unbalanced quotes: shown as recorded
        return command
    for i, word in enumerate(words):
        if word == "--out" and i + 1 < len(words):
            words[i + 1] = location
        elif word.startswith("--out="):
            words[i] = f"--out={location}"
    return shlex.join(words)


def damaged_metadata_error(group, location: str, attrs: dict, error: BaseException):
    """The one-line :class:`BankFormatError` for an array or group ``zarr.json`` zarr could not
    read: it names the file and how to get a good bank again."""
    key = _damaged_metadata_key(group)
    what = f"its metadata file {key}" if key else "an array's metadata (zarr.json)"
    reason = " ".join(str(error).split()) or type(error).__name__
    command = build_command_for(attrs.get("command"), location)
    again = f" ({command})" if command else ""
    return BankFormatError(
        f"{location!r}: {what} is damaged ({type(error).__name__}: {reason}); the bank cannot be "
        f"read, and cli.py bank repair rebuilds data, not metadata: delete the bank and run its "
        f"bank build command again{again}, or pull it again"
    )


@functools.lru_cache(maxsize=32)
def canonical_metadata(layout: BankLayout) -> dict[str, dict]:
    """Each array's metadata exactly as :func:`create_arrays` writes it for ``layout`` (zarr's
    ``to_dict``, JSON types): the format fixes every field, the byte order and codecs too.
    Built once per layout in a process (cached: callers must not change the result)."""
    import json

    import zarr
    from zarr.storage import MemoryStore

    group = zarr.open_group(MemoryStore(), mode="w", zarr_format=3)
    create_arrays(group, layout)
    return {
        path: json.loads(get_object(group.store, f"{path}/zarr.json")) for path in layout.arrays()
    }


GROUP_METADATA = {"text": {}, "visual": {}}
"""The subgroups and their attributes (none): the format's, held like the arrays' metadata."""


def _check_group_metadata(group, copies: dict, local: bool, where: str) -> None:
    """Each subgroup is a group without attributes, in its own zarr.json and in the root's
    consolidated copy (``copies``, read beside a ``local`` group; opened from that copy, its
    entries are what zarr reads): a probe found attributes edited into the copy alone
    verified, pushed and pulled."""
    import json

    for name, want in GROUP_METADATA.items():
        sources = [("the root zarr.json's copy of it", copies[name])] if name in copies else []
        if local:
            own = json.loads(get_object(group.store, f"{name}/zarr.json") or b"{}")
            sources.insert(0, ("its zarr.json", own))
        else:
            sources.append(("the root zarr.json's copy of it", group[name].metadata.to_dict()))
        for source, meta in sources:
            if meta.get("node_type") != "group" or meta.get("attributes", {}) != want:
                raise BankFormatError(
                    f"{where}: group {name}'s metadata in {source} is not the format's (a group "
                    f"without attributes: edited or damaged after the bank was made); {REFETCH}"
                )


def _check_array_metadata(group, arrays: dict, layout: BankLayout, where: str) -> None:
    """Every array's metadata is the format's to the last field (an edited byte order read
    garbage as "missing data" before, and a repair then sealed it), and the root zarr.json's
    consolidated copy of it (what remote readers use, and what push uploads) is the same as the
    array's own zarr.json (what a local reader uses), when the group was opened from the latter.
    """
    import json

    canonical = canonical_metadata(layout)
    local = group.metadata.consolidated_metadata is None
    copies: dict = {}
    if local:  # the consolidated copy beside the arrays' own files
        root = json.loads(get_object(group.store, "zarr.json") or b"{}")
        copies = ((root.get("consolidated_metadata") or {}).get("metadata")) or {}
        sealed = bool((dict(group.attrs).get("contents") or {}).get("complete"))
        lacking = sorted(set(canonical) - set(copies)) if sealed else []
        if lacking:  # what push uploads and every remote reader reads
            raise BankFormatError(
                f"{where}: the root zarr.json's consolidated metadata lacks the "
                f"array{'s' if len(lacking) > 1 else ''} {', '.join(lacking)} (edited or damaged after the bank was sealed; a copy "
                f"pushed from it could not be read); {REFETCH}"
            )
        stray = sorted(set(copies) - set(canonical) - set(GROUP_METADATA)) if sealed else []
        if stray:  # a copy pushed from it names arrays no reader finds (a probe)
            raise BankFormatError(
                f"{where}: the root zarr.json's consolidated metadata names "
                f"{', '.join(stray)}, which {'are no arrays' if len(stray) > 1 else 'is no array'} "
                f"of the bank (edited or damaged after the bank was sealed); {REFETCH}"
            )
    _check_group_metadata(group, copies, local, where)
    for path, want in canonical.items():
        got = json.loads(json.dumps(arrays[path].metadata.to_dict()))
        sources = [("its zarr.json" if local else "the root zarr.json's copy of it", got)]
        if path in copies:
            sources.append(("the root zarr.json's copy of it", copies[path]))
        for source, meta in sources:
            fields = (set(want) | set(meta)) - {"attributes"}
            differ = sorted(k for k in fields if meta.get(k) != want.get(k))
            if meta.get("attributes", {}) != want.get("attributes", {}):  # each against the
                differ.append("attributes")  # format's, so the file edited is the one named
            if differ:
                raise BankFormatError(
                    f"{where}: array {path}'s metadata in {source} is not the format's (its "
                    f"{', '.join(differ)}: edited or damaged after the bank was made); {REFETCH}"
                )


def _blame_the_shard_attribute(arrays: dict, layout: BankLayout, where: str) -> None:
    """Where every array is sharded alike, by another number of classes than the root's
    ``build.classes_per_shard``, the root attribute is what was edited: say so (not the
    first array's zarr.json)."""
    sharded = {int((array.shards or array.chunks)[0]) for array in arrays.values()}
    if len(sharded) == 1 and sharded != {min(layout.classes_per_shard, layout.num_classes)}:
        raise BankFormatError(
            f"{where}: the root zarr.json's build.classes_per_shard is "
            f"{layout.classes_per_shard}, but every array is sharded by {sharded.pop()} classes "
            f"(the root zarr.json was edited or damaged); {REFETCH}"
        )


def validate_group(group, location: str | os.PathLike) -> BankLayout:
    """Check the zarr group of the bank at ``location`` against the format before any array
    data is read.

    Raises:
        BankFormatError: naming the bank, the attribute or array and the expected value.
    """
    where = repr(str(location))
    attrs = dict(group.attrs)
    if attrs.get("format") != FORMAT_NAME:
        raise BankFormatError(
            f"{where} is not a dpseg prompt bank: attribute format is {attrs.get('format')!r}, "
            f"expected {FORMAT_NAME!r}"
        )
    if attrs.get("format_version") not in READABLE_VERSIONS:
        raise BankFormatError(
            f"{where} has format_version {attrs.get('format_version')!r}; this dpseg reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}: upgrade dpseg or rebuild the bank"
        )
    missing = [a for a in REQUIRED_ATTRS if a not in attrs]
    if missing:
        raise BankFormatError(
            f"{where} lacks the attributes {', '.join(missing)} (its root zarr.json was edited "
            f"or damaged); {REFETCH}"
        )
    for name, kind in (("classes", str), ("templates", str)):
        value = attrs[name]
        if not isinstance(value, list) or not value or not all(isinstance(v, kind) for v in value):
            raise BankFormatError(
                f"{where}: attribute {name} must be a non-empty list of strings (its root "
                f"zarr.json was edited or damaged); {REFETCH}"
            )

    try:
        arrays = _arrays_of(group, attrs, where)
    except BankFormatError:
        raise
    except (ValueError, TypeError) as e:  # zarr reading a damaged zarr.json (JSON, UTF-8, schema)
        raise damaged_metadata_error(group, str(location), attrs, e) from None
    try:
        layout = _layout_from_attrs(attrs, arrays)
    except BankFormatError as e:
        raise BankFormatError(f"{where}: {e}") from None
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # an attribute of another type
        raise BankFormatError(
            f"{where}: its attributes encoder, build or images_per_prompt do not have the "
            f"format's types ({type(e).__name__}: {e}); the root zarr.json was edited or "
            f"damaged: {REFETCH}"
        ) from None
    expected = layout.arrays()
    for path, (shape, dtype) in expected.items():
        if path not in arrays:
            raise BankFormatError(
                f"{where} lacks the array {path} (expected {shape} {dtype}); {REFETCH}"
            )
        array = arrays[path]
        if tuple(array.shape) != shape:
            raise BankFormatError(
                f"{where}: array {path} has shape {tuple(array.shape)}, expected {shape} "
                "(from the classes, templates, images_per_prompt and encoder attributes: one of "
                f"their zarr.json files was edited or damaged); {REFETCH}"
            )
        if np.dtype(array.dtype) != np.dtype(dtype) or (
            path.startswith("visual/level_") and str(array.dtype) not in LEVEL_DTYPES
        ):
            raise BankFormatError(
                f"{where}: array {path} has dtype {array.dtype}, expected {dtype} (its "
                f"zarr.json was edited or damaged); {REFETCH}"
            )
        chunks = (tuple(array.chunks), tuple(array.shards or array.chunks))
        if attrs["format_version"] >= 2 and chunks != chunk_shapes(layout, path, shape):
            _blame_the_shard_attribute(arrays, layout, where)
            raise BankFormatError(
                f"{where}: array {path} has chunks {chunks[0]} in shards {chunks[1]}, expected "
                f"{chunk_shapes(layout, path, shape)} (its zarr.json was edited or damaged); "
                f"{REFETCH}"
            )
    if attrs["format_version"] >= 2:
        _check_array_metadata(group, arrays, layout, where)
    extra = sorted(set(arrays) - set(expected))
    if extra:
        raise BankFormatError(
            f"{where} has arrays the attributes do not explain: {', '.join(extra)} "
            f"(encoder.level_dims lists {len(layout.level_dims)} levels)"
        )
    return layout
