"""``cli.py bank merge A B --out C``: the union of the classes of two compatible banks."""

from __future__ import annotations

import numpy as np

from prompt_bank.format import BankLayout, BankMismatchError, create_arrays
from prompt_bank.store import Bank, open_group

# What must agree for two banks' prompts to be interchangeable.
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
    "fingerprint",
)


def _differences(a: Bank, b: Bank) -> list[str]:
    out = []
    for key in SAME_GENERATOR:
        if a.attrs["generator"].get(key) != b.attrs["generator"].get(key):
            out.append(
                f"generator.{key}: {a.attrs['generator'].get(key)!r} vs {b.attrs['generator'].get(key)!r}"
            )
    for key in SAME_ENCODER:
        if a.attrs["encoder"].get(key) != b.attrs["encoder"].get(key):
            out.append(
                f"encoder.{key}: {a.attrs['encoder'].get(key)!r} vs {b.attrs['encoder'].get(key)!r}"
            )
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


def merge_banks(a: Bank, b: Bank, out: str) -> dict:
    """Write a bank with A's classes then B's classes that A lacks; returns a summary."""
    differences = _differences(a, b)
    if differences:
        raise BankMismatchError(
            f"cannot merge {a.location} and {b.location}: their prompts are not comparable:\n  "
            + "\n  ".join(differences)
        )
    for bank in (a, b):
        if not bank.done().all():
            raise BankMismatchError(
                f"{bank.location} is incomplete; finish it (rerun its bank build command) first"
            )
    a_classes = a.classes
    extra = [i for i, c in enumerate(b.classes) if c not in set(a_classes)]
    sources = [(a, i) for i in range(len(a_classes))] + [(b, i) for i in extra]
    layout = BankLayout(**{**a.layout.__dict__, "num_classes": len(sources)})
    group = open_group(out, mode="w-")
    create_arrays(group, layout)
    for k0, k1 in layout.shard_ranges():  # one write per shard
        for path in layout.arrays():
            rows = [np.asarray(bank.array(path)[i]) for bank, i in sources[k0:k1]]
            group[path][k0:k1] = np.stack(rows)
    attrs = a.attrs
    attrs["classes"] = a_classes + [b.classes[i] for i in extra]
    attrs["merged_from"] = [
        {
            "location": bank.location,
            "classes": len(bank.classes),
            "build": bank.attrs["build"],
            "created": bank.attrs["created"],
        }
        for bank in (a, b)
    ]
    group.attrs.update(attrs)
    return {
        "out": out,
        "classes": len(sources),
        "from_a": len(a_classes),
        "from_b": len(extra),
        "shared": len(b.classes) - len(extra),
    }
