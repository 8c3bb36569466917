"""New banks from the classes of existing ones: ``cli.py bank merge A B --out C`` (the union)
and ``cli.py bank subset BANK --vocab V --out OUT`` (the classes of V, by name or synonym).

Items are copied, not recomputed. Since format v2 batches items within their class, a copied
class is bit-identical to the same class built directly with the same settings, so the result
passes ``verify --regenerate`` at tolerance 0 on the machine kind that built its sources. Each
output records where every class came from (``provenance``). Outputs are written to a temporary
sibling and renamed into place (prompt_bank/safety.py): a failure leaves nothing behind.
"""

from __future__ import annotations

import numpy as np

from data.vocabulary import Vocabulary, match_entries
from prompt_bank.format import BankLayout, BankMismatchError, create_arrays
from prompt_bank.integrity import flush_shard
from prompt_bank.seal import seal_bank, sealed_contents
from prompt_bank.share import staged_output
from prompt_bank.store import Bank, open_group

# What must agree for two banks' items to be interchangeable, bit for bit.
SAME_GENERATOR = (
    "preset",
    "model_id",
    "revision",
    "scheduler",
    "steps",
    "guidance",
    "height",
    "width",
    "base_seed",
    "dtype",
    "device_type",
    "fingerprint",
)
SAME_ENCODER = (
    "preset",
    "arch",
    "pretrained",
    "image_size",
    "levels",
    "embed_dim",
    "level_dims",
    "autocast",
    "fingerprint",
)
SAME_BUILD = ("batch_size", "cpu_threads", "keep_images", "level_dtype")


def _differences(a: Bank, b: Bank) -> list[str]:
    out = []
    for section, keys in (
        ("generator", SAME_GENERATOR),
        ("encoder", SAME_ENCODER),
        ("build", SAME_BUILD),
    ):
        x, y = a.attrs[section], b.attrs[section]
        out += [
            f"{section}.{k}: {x.get(k)!r} vs {y.get(k)!r}" for k in keys if x.get(k) != y.get(k)
        ]
    if a.templates != b.templates:
        out.append(f"templates: {len(a.templates)} vs {len(b.templates)} (or different text)")
    for name, x, y in (
        ("images_per_prompt", a.layout.images_per_prompt, b.layout.images_per_prompt),
        ("level dtype", a.layout.level_dtype, b.layout.level_dtype),
        ("kept images", a.layout.image_size, b.layout.image_size),
    ):
        if x != y:
            out.append(f"{name}: {x!r} vs {y!r}")
    return out


def _check_source(bank: Bank) -> None:
    """A source must be format v2; its shards are checked when they are read (:class:`_Rows`)."""
    if bank.attrs["format_version"] < 2:
        raise BankMismatchError(
            f"{bank.location} is a format v1 bank, whose items depend on the classes batched "
            "with them; rebuild it with this dpseg (cli.py bank build) before merging or "
            "taking a subset"
        )


class _Rows:
    """The rows a new bank copies, each source shard read once and checked as it is read.

    Only the shards that hold a copied row are read (a subset of a remote bank fetches just
    those). A shard is judged (objects against its manifest, decoding, agreement of the done
    flags: ``check_shard``) and its rows that are still to be written are kept until then, so
    memory holds at most the rows read ahead of their turn.
    """

    def __init__(self, sources: list[tuple[Bank, int]]):
        self._left: dict[tuple[int, int], int] = {}
        for bank, row in sources:
            self._left[(id(bank), row)] = self._left.get((id(bank), row), 0) + 1
        self._rows: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def take(self, bank: Bank, row: int) -> dict[str, np.ndarray]:
        """Row ``row`` of ``bank``: every array's (1 class) slice, checked."""
        key = (id(bank), row)
        if key not in self._rows:
            self._read_shard(bank, row)
        data = self._rows[key]
        self._left[key] -= 1
        if not self._left[key]:
            del self._rows[key]
        return data

    def _read_shard(self, bank: Bank, row: int) -> None:
        shard = next(s for s, (k0, k1) in enumerate(bank.layout.shard_ranges()) if k0 <= row < k1)
        # judged as every reader judges it: damage, and objects other than the sealed ones
        # (a shard copied in from another bank with its manifest), end in one line
        state = bank.check_shard(shard, images=True)
        if state.status != "complete":
            raise BankMismatchError(
                f"{bank.location} is incomplete (shard {shard}); finish it (rerun its bank "
                "build command) first"
            )
        for i in range(state.k0, state.k1):
            if self._left.get((id(bank), i)) and (id(bank), i) not in self._rows:
                self._rows[(id(bank), i)] = {
                    path: np.array(values[i - state.k0]) for path, values in state.data.items()
                }


def _origin(bank: Bank, row: int) -> dict:
    """Where row `row` of `bank` was built: the bank itself, or what its provenance says."""
    for source in bank.attrs.get("provenance") or []:
        if row in source["rows"]:
            return {k: v for k, v in source.items() if k != "rows"}
    contents = sealed_contents(bank)
    return {
        "location": bank.location,
        "content_key": contents["content_key"] if contents else None,
        "created": bank.attrs["created"],
        "command": bank.attrs.get("command"),
    }


def write_bank(
    sources: list[tuple[Bank, int]],
    out: str,
    option: str = "--out",
    storage_options: dict | None = None,
) -> None:
    """A bank at `out` holding, in order, row `i` of bank `b` for each (b, i) of `sources`
    (all compatible: checked by the callers); written in a staging folder, renamed on success.
    Each source shard that holds a copied row is read once and checked (:class:`_Rows`)."""
    first = sources[0][0]
    layout = BankLayout(**{**first.layout.__dict__, "num_classes": len(sources)})
    provenance: list[dict] = []
    for row, (bank, i) in enumerate(sources):
        origin = _origin(bank, i)
        entry = next(
            (p for p in provenance if {**p, "rows": None} == {**origin, "rows": None}), None
        )
        if entry is None:
            provenance.append(entry := {**origin, "rows": []})
        entry["rows"].append(row)
    attrs = first.attrs
    attrs.pop("contents", None)
    attrs["classes"] = [bank.classes[i] for bank, i in sources]
    attrs["provenance"] = provenance
    rows = _Rows(sources)
    with staged_output(out, option, storage_options) as staging:
        group = open_group(staging, mode="w-")
        create_arrays(group, layout)
        for shard, (k0, k1) in enumerate(layout.shard_ranges()):
            taken = [rows.take(bank, i) for bank, i in sources[k0:k1]]
            buffers = {path: np.stack([t[path] for t in taken]) for path in layout.arrays()}
            flush_shard(group, layout, shard, buffers)
        group.attrs.update(attrs)
        seal_bank(staging)


def merge_banks(a: Bank, b: Bank, out: str, storage_options: dict | None = None) -> dict:
    """Write a bank with A's classes then B's classes that A lacks; returns a summary."""
    differences = _differences(a, b)
    if differences:
        raise BankMismatchError(
            f"cannot merge {a.location} and {b.location}: their items were not made alike ("
            + "; ".join(differences)
            + "); merge banks built with the same settings, or rebuild one of them (cli.py bank "
            "build) with the other's"
        )
    for bank in (a, b):
        _check_source(bank)
    a_classes = set(a.classes)
    extra = [i for i, c in enumerate(b.classes) if c not in a_classes]
    sources = [(a, i) for i in range(len(a.classes))] + [(b, i) for i in extra]
    write_bank(sources, out, storage_options=storage_options)
    return {
        "out": out,
        "classes": len(sources),
        "from_a": len(a.classes),
        "from_b": len(extra),
        "shared": len(b.classes) - len(extra),
    }


def subset_bank(
    bank: Bank, vocabulary: Vocabulary, out: str, storage_options: dict | None = None
) -> dict:
    """Write the classes of `vocabulary`, in its order, taken from `bank` by name or synonym.

    Raises:
        BankMismatchError: classes the bank lacks (all listed), or two classes served by the
            same bank class.
    """
    _check_source(bank)
    rows = match_entries(bank.classes, vocabulary)
    missing = [str(c) for c, r in zip(vocabulary, rows) if r is None]
    if missing:
        raise BankMismatchError(
            f"bank {bank.location} lacks {len(missing)} of the {len(vocabulary)} classes of "
            f"--vocab {vocabulary.name}: {', '.join(map(repr, missing))}. Build them (cli.py bank "
            "build --vocab ...) and merge them in, or leave them out of the vocabulary"
        )
    seen: dict[int, str] = {}
    for c, r in zip(vocabulary, rows):
        if r in seen:
            raise BankMismatchError(
                f"--vocab {vocabulary.name}: {str(c)!r} and {seen[r]!r} both match the bank's "
                f"class {bank.classes[r]!r}; give them names that tell them apart"
            )
        seen[r] = str(c)
    write_bank([(bank, r) for r in rows], out, storage_options=storage_options)
    renamed = sum(bank.classes[r] != str(c) for c, r in zip(vocabulary, rows))
    return {"out": out, "classes": len(rows), "of": len(bank.classes), "by_synonym": renamed}
