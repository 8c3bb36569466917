"""Small file helpers shared by the dataset writers."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image


def save_image_atomic(image: Image.Image, path: Path, fmt: str, **kwargs) -> None:
    """Write a whole file or nothing (temp file + rename): a killed run leaves no truncated file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        image.save(tmp, format=fmt, **kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
