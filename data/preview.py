"""Pictures of label maps: a fixed palette, colourised masks, and a dataset preview sheet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from common.io import save_image_atomic

IGNORE_COLOUR = (255, 255, 255)


# Names that mean "no object" (ours): the only classes drawn grey.
BACKGROUND_NAMES = frozenset({"background", "unlabeled", "unlabelled", "void", "others", "other"})
BACKGROUND_COLOUR = (90, 90, 90)
LEGEND_ENTRIES = 24  # (ours) at most this many legend entries, then "+N more"


def palette(num_classes: int, seed: int = 3) -> np.ndarray:
    """(K, 3) uint8 colours by class id, the same for a given K on every run; class 0 is dark
    grey (dataset previews, whose class 0 is the datasets' background)."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 256, size=(max(num_classes, 1), 3), dtype=np.uint8)
    colours[0] = (60, 60, 60)
    return colours[:num_classes]


def name_colour(name: str) -> tuple[int, int, int]:
    """A class's colour from its name alone (sha256 -> hue, saturation and value kept vivid): the
    same in every vocabulary and picture; grey only for a background name."""
    import colorsys
    import hashlib

    canonical = name.split(",")[0].strip().lower()
    if canonical in BACKGROUND_NAMES:
        return BACKGROUND_COLOUR
    digest = hashlib.sha256(canonical.encode()).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536
    saturation = 0.55 + 0.4 * digest[2] / 255
    value = 0.7 + 0.3 * digest[3] / 255
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def class_colours(names: list[str]) -> np.ndarray:
    """(K, 3) uint8: :func:`name_colour` of each class."""
    return np.array([name_colour(n) for n in names], dtype=np.uint8).reshape(-1, 3)


def colorize(
    label: np.ndarray, num_classes: int, ignore_index: int = 255, colours: np.ndarray | None = None
) -> np.ndarray:
    """(H, W) class ids to (H, W, 3) uint8 RGB (``colours``, default :func:`palette`); ignore
    (and out-of-range ids) in white."""
    colours = palette(num_classes) if colours is None else colours
    out = np.full((*label.shape, 3), IGNORE_COLOUR, dtype=np.uint8)
    valid = (label != ignore_index) & (label >= 0) & (label < num_classes)
    out[valid] = colours[label[valid]]
    return out


def legend_font(size: int = 11):
    """DejaVu Sans (matplotlib ships it: it draws accents, Greek, Cyrillic), else PIL's own."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def legend(
    names: list[str],
    num_classes: int,
    width: int,
    ids: list[int] | None = None,
    colours: np.ndarray | None = None,
    max_entries: int = LEGEND_ENTRIES,
) -> Image.Image:
    """A strip with one colour swatch and "id name" per class (only ``ids`` when given), at most
    ``max_entries`` of them, then "+N more"."""
    ids = list(range(len(names))) if ids is None else ids
    shown, hidden = ids[:max_entries], len(ids) - min(len(ids), max_entries)
    font = legend_font()
    row, columns = 15, max(1, width // 150)
    entries = len(shown) + (1 if hidden else 0)
    rows = (entries + columns - 1) // columns
    strip = Image.new("RGB", (width, rows * row + 4), "white")
    draw = ImageDraw.Draw(strip)
    colours = palette(num_classes) if colours is None else colours
    for n, i in enumerate(shown):
        x, y = (n % columns) * (width // columns) + 4, (n // columns) * row + 2
        draw.rectangle([x, y + 1, x + 10, y + 11], fill=tuple(int(c) for c in colours[i]))
        draw.text((x + 14, y), f"{i} {names[i]}"[:24], fill="black", font=font)
    if hidden:
        n = len(shown)
        x, y = (n % columns) * (width // columns) + 4, (n // columns) * row + 2
        draw.text((x + 14, y), f"+{hidden} more", fill="black", font=font)
    return strip


def write_dataset_preview(base: Path, names: list[str], out: str | Path, count: int = 8) -> Path:
    """A sheet of ``count`` val images (top) over their colourised labels (bottom), with a
    legend, for a dataset written in the detectron2 layout under ``base``."""
    images = sorted((base / "images" / "val").glob("*.jpg"))[:count]
    if not images:
        raise FileNotFoundError(f"no val images under {str(base)!r}; write the dataset first")
    tiles = []
    for path in images:
        image = np.asarray(Image.open(path).convert("RGB"))
        label = np.asarray(Image.open(base / "annotations_detectron2" / "val" / f"{path.stem}.png"))
        tiles.append(np.concatenate([image, colorize(label, len(names))], axis=0))
    sheet = Image.fromarray(np.concatenate(tiles, axis=1))
    key = legend(names, len(names), sheet.width)
    canvas = Image.new("RGB", (sheet.width, sheet.height + key.height), "white")
    canvas.paste(sheet, (0, 0))
    canvas.paste(key, (0, sheet.height))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image_atomic(canvas, out)
    return out


def overlay(image: np.ndarray, labels: np.ndarray, names: list[str], alpha: float = 0.5):
    """The image with its label map blended in, over a legend of the classes present.

    image (H, W, 3) uint8, labels (H, W) ids into ``names``; each class's colour comes from its
    name (:func:`name_colour`), so it is the same in every picture and vocabulary.
    """
    k = len(names)
    named = class_colours(names)
    colours = colorize(labels, k, ignore_index=-1, colours=named)
    blend = image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha
    picture = Image.fromarray(blend.round().astype(np.uint8))
    ids, counts = np.unique(labels, return_counts=True)
    present = [int(i) for i, _ in sorted(zip(ids, counts), key=lambda t: -t[1]) if 0 <= i < k]
    width = max(picture.width, 300)
    key = legend(names, k, width, ids=present, colours=named)
    canvas = Image.new("RGB", (width, picture.height + key.height), "white")
    canvas.paste(picture, (0, 0))
    canvas.paste(key, (0, picture.height))
    return canvas
