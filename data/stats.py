"""``cli.py data stats NAME``: trust a prepared dataset before trusting a number.

Counts images (against the official count), label values, pixels per class, images without a
label, labels without an image, labels outside the vocabulary, unreadable files and size
mismatches, reading only label maps and image headers (fast: no image is decoded).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from common.io import special_file_kind
from data.catalog import DatasetSpec, datasets_root, get_dataset_spec
from data.datasets import index_files, read_label


def dataset_stats(
    spec: str | DatasetSpec, root: str | os.PathLike | None = None, progress: bool = True
) -> dict:
    """Everything `data stats` reports, as plain JSON-able values."""
    from common.progress import ProgressBar
    from data.vocabulary import VocabularyError, load_vocabulary

    spec = get_dataset_spec(spec) if isinstance(spec, str) else spec
    root = datasets_root(root)
    files, unpaired = index_files(spec, root)
    try:
        names = load_vocabulary(spec.vocabulary).names
    except VocabularyError:
        names = [str(k) for k in range(spec.num_classes)]  # ade847/pc459 without a list file
    low = spec.label_offset  # on-disk value of class 0 (1 with mmseg's reduce_zero_label)
    counts: dict[int, int] = {}
    outside: list[dict] = []
    unreadable: list[str] = []
    mismatched: list[str] = []
    with ProgressBar(f"{spec.name} labels", len(files), unit="files", enabled=progress) as bar:
        for f in files:
            bar.advance()
            try:
                kind = special_file_kind(f.image)
                if kind is not None:  # a pipe would block the read forever
                    raise ValueError(f"the image is {kind}, not a file")
                with Image.open(f.image) as image:
                    width, height = image.size
                raw = read_label(f.label)
            except Exception as e:  # report every unreadable file, keep counting the rest
                unreadable.append(f"{f.name}: {e}")
                continue
            if raw.shape != (height, width):
                mismatched.append(
                    f"{f.name}: image {width}x{height}, label {raw.shape[1]}x{raw.shape[0]}"
                )
            values, n = np.unique(raw, return_counts=True)
            for v, c in zip(values.tolist(), n.tolist()):
                counts[v] = counts.get(v, 0) + c
            high = low + spec.num_classes
            bad = [
                v for v in values.tolist() if v not in spec.ignore_values and not low <= v < high
            ]
            if bad:
                outside.append({"file": str(f.label), "values": bad[:20]})
    total = sum(counts.values()) or 1
    ignored = sum(counts.get(v, 0) for v in spec.ignore_values)
    per_class = {names[k]: counts.get(k + low, 0) for k in range(spec.num_classes)}
    return {
        "dataset": spec.name,
        "root": str(root),
        "labels": str(spec.label_root(root)),
        "vocabulary": spec.vocabulary,
        "num_classes": spec.num_classes,
        "images": len(files),
        "expected_images": spec.expected_images,
        # a set with no pair at all cannot be evaluated (`test` refuses it): said as a problem,
        # not "problems none" (probe 12)
        "no_image_with_a_label": []
        if files
        else [
            f"images in {spec.image_root(root)}, labels *{spec.label_suffix} in "
            f"{spec.label_root(root)}"
        ],
        "images_without_label": unpaired["missing_labels"],
        "labels_without_image": unpaired["missing_images"],
        "label_values": sorted(counts),
        "ignore_values": list(spec.ignore_values),
        "reduce_zero_label": spec.reduce_zero_label,
        "ignore_fraction": ignored / total,
        "pixels_per_class": per_class,
        "classes_without_pixels": [n for n, c in per_class.items() if c == 0],
        "labels_outside_vocabulary": outside,
        "unreadable": unreadable,
        "size_mismatches": mismatched,
    }


def _values(values: list[int], ignore: list[int]) -> str:
    """Compress [0, 1, 2, 5, 255] to '0..2, 5, 255 (ignore)'."""
    parts, run = [], []
    for v in values:
        if run and v == run[-1] + 1:
            run.append(v)
            continue
        if run:
            parts.append(f"{run[0]}..{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)))
        run = [v]
    if run:
        parts.append(f"{run[0]}..{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)))
    text = ", ".join(parts)
    shown = [v for v in values if v in ignore]
    return text + (f" ({', '.join(map(str, shown))} = ignore)" if shown else "")


PROBLEMS = (
    ("no_image_with_a_label", "no image with a label"),
    ("images_without_label", "images without a label"),
    ("labels_without_image", "labels without an image"),
    ("labels_outside_vocabulary", "label files with values outside the vocabulary"),
    ("unreadable", "unreadable files"),
    ("size_mismatches", "image/label size mismatches"),
)
"""The keys of :func:`dataset_stats` that list what is wrong, with how ``format_stats`` names
them; ``cli.py data stats`` exits 1 when any is non-empty."""


def has_problems(stats: dict) -> bool:
    return any(stats[key] for key, _ in PROBLEMS)


def _linked_folder(folder: Path, root: Path) -> Path | None:
    """The first folder from ``root`` down to ``folder`` that is a symbolic link, if any."""
    try:
        parts = folder.relative_to(root).parts
    except ValueError:
        return None
    for k in range(1, len(parts) + 1):
        if (root.joinpath(*parts[:k])).is_symlink():
            return root.joinpath(*parts[:k])
    return None


def _prepare_converts(name: str, root: Path) -> bool:
    """Whether a ``data prepare`` rerun would write ``name``'s label maps: it has a download to
    convert from (a set it only checks, such as vdd, or tiles whose zips are gone, has none)."""
    from common.errors import UserError
    from data.prepare.run import plan_for

    try:
        plan = plan_for(name, root)
    except (UserError, OSError):  # the download is gone or damaged: nothing to convert from
        return False
    return bool(plan.jobs)


def problems_fix(stats: dict) -> str:
    """What to do about the problems (ours). A ``data prepare`` rerun converts a damaged or
    missing label map again but keeps a whole one, so a whole map with wrong values or a wrong
    size has to be moved away first; a label folder that is a link to elsewhere (to the raw
    maps, say) has to be removed, not converted into; a file prepare does not write (the images,
    the maps of a set it only checks) comes from the download."""
    from data.prepare import PREPARABLE

    name, root = stats["dataset"], stats["root"]
    labels = stats.get("labels")
    linked = _linked_folder(Path(labels), Path(root)) if labels else None
    if name in PREPARABLE and linked is not None:  # every problem may be the link's: only it
        return (
            f"{linked} is a link to {os.path.realpath(linked)}, where data prepare would write "
            "its converted maps: remove the link (not what it points to), then run `python "
            f"cli.py data prepare {name} --root {root}` again"
        )
    fixes = []
    if stats["labels_without_image"]:  # strays: nothing makes them whole
        fixes.append("remove the label maps without an image (or put their images back)")
    if not any(stats[key] for key, _ in PROBLEMS if key != "labels_without_image"):
        return "; ".join(fixes)
    if name.split(":")[0] in ("synthetic", "toy"):
        fixes.append(
            f"write the set again into a new folder (`python cli.py data "
            f"{name.split(':')[0]} --root NEW`): a rerun keeps the files it finds"
        )
    elif name in PREPARABLE and _prepare_converts(name, Path(root)):
        rerun = f"run `python cli.py data prepare {name} --root {root}` again"
        if stats["labels_outside_vocabulary"] or stats["size_mismatches"]:
            fixes.append(
                "move the label maps listed with wrong values or sizes out of "
                f"{labels or 'the label folder'} (a rerun keeps a whole map), then {rerun}: it "
                "converts every damaged or missing label map again; a file still listed after "
                "it comes from the download: unpack that again"
            )
        else:
            fixes.append(
                f"{rerun}: it converts every damaged or missing label map again; a file still "
                "listed after it comes from the download: unpack that again"
            )
    else:
        fixes.append(f"these files come from {name}'s download: unpack them again")
    return "; ".join(fixes)


def format_stats(stats: dict) -> str:
    expected = stats["expected_images"]
    count = f"{stats['images']} with labels"
    if expected is not None:
        count += f" (expected {expected}: {'ok' if stats['images'] == expected else 'MISMATCH'})"
    empty = stats["classes_without_pixels"]
    problems = []
    for key, label in PROBLEMS:
        items = stats[key]
        if items:
            first = (
                items[0]
                if isinstance(items[0], str)
                else f"{items[0]['file']} {items[0]['values']}"
            )
            problems.append(
                f"{label} ({first})"
                if key == "no_image_with_a_label"
                else f"{len(items)} {label} (first: {first})"
            )
    lines = [
        f"dataset    {stats['dataset']}: {stats['num_classes']} classes ({stats['vocabulary']}), "
        f"labels in {stats['labels']}",
        f"images     {count}",
        f"values     {_values(stats['label_values'], stats['ignore_values'])}"
        + (
            "; class k is stored as k + 1 (reduce_zero_label)"
            if stats.get("reduce_zero_label")
            else ""
        ),
        f"pixels     {100 * stats['ignore_fraction']:.1f}% ignore; "
        f"{stats['num_classes'] - len(empty)}/{stats['num_classes']} classes have pixels"
        + (
            f"; none for: {', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}"
            if empty
            else ""
        ),
        f"problems   {'; '.join(problems) if problems else 'none'}",
    ]
    if problems:
        lines.append(f"fix        {problems_fix(stats)}")
    return "\n".join(lines)
