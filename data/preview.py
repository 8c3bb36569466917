"""Pictures of label maps: a fixed palette, colourised masks, and a dataset preview sheet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IGNORE_COLOUR = (255, 255, 255)


def palette(num_classes: int, seed: int = 3) -> np.ndarray:
    """(K, 3) uint8 colours, the same for a given K on every run; class 0 is dark grey."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 256, size=(max(num_classes, 1), 3), dtype=np.uint8)
    colours[0] = (60, 60, 60)
    return colours[:num_classes]


def colorize(label: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids to (H, W, 3) uint8 RGB; ignore (and out-of-range ids) in white."""
    colours = palette(num_classes)
    out = np.full((*label.shape, 3), IGNORE_COLOUR, dtype=np.uint8)
    valid = (label != ignore_index) & (label < num_classes)
    out[valid] = colours[label[valid]]
    return out


def legend(
    names: list[str], num_classes: int, width: int, ids: list[int] | None = None
) -> Image.Image:
    """A strip with one colour swatch and "id name" per class (only ``ids`` when given)."""
    ids = list(range(len(names))) if ids is None else ids
    font = ImageFont.load_default()
    row, columns = 14, max(1, width // 150)
    rows = (len(ids) + columns - 1) // columns
    strip = Image.new("RGB", (width, rows * row + 4), "white")
    draw = ImageDraw.Draw(strip)
    colours = palette(num_classes)
    for n, i in enumerate(ids):
        x, y = (n % columns) * (width // columns) + 4, (n // columns) * row + 2
        draw.rectangle([x, y + 1, x + 10, y + 11], fill=tuple(int(c) for c in colours[i]))
        draw.text((x + 14, y), f"{i} {names[i]}"[:24], fill="black", font=font)
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
    canvas.save(out)
    return out


def overlay(image: np.ndarray, labels: np.ndarray, names: list[str], alpha: float = 0.5):
    """The image with its label map blended in, over a legend of the classes present.

    image (H, W, 3) uint8, labels (H, W) ids into ``names``; colours are ``palette(len(names))``
    so a class has the same colour in every picture of one vocabulary.
    """
    k = len(names)
    colours = colorize(labels, k, ignore_index=-1)
    blend = image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha
    picture = Image.fromarray(blend.round().astype(np.uint8))
    ids, counts = np.unique(labels, return_counts=True)
    present = [int(i) for i, _ in sorted(zip(ids, counts), key=lambda t: -t[1]) if 0 <= i < k]
    width = max(picture.width, 300)
    key = legend(names, k, width, ids=present)
    canvas = Image.new("RGB", (width, picture.height + key.height), "white")
    canvas.paste(picture, (0, 0))
    canvas.paste(key, (0, picture.height))
    return canvas
