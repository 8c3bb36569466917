"""A deterministic synthetic segmentation dataset, written in the detectron2 layout of docs/design.md §5.

It lets the demo and the tests run the real data path (files on disk, JPEG images, PNG labels
with an ignore value) without any download. Each image has a textured background and 2-5 objects
of the shape/colour/texture classes below, from small (about 6 px) to large (about 70% of the
side), later objects occluding earlier ones. As in VOC, a thin band along every object boundary
is labelled ``ignore`` (255), so ignore handling is exercised too.

Layout under ``root`` (``$DETECTRON2_DATASETS``, default ``./datasets``)::

    synthetic/images/{train,val}/000000.jpg
    synthetic/annotations_detectron2/{train,val}/000000.png   uint8, 0..K-1, 255 = ignore
    synthetic/vocabulary.json                                 the class list (CAT-Seg format)
    synthetic/meta.json                                       the config that generated it

Every image is a pure function of ``(seed, split, index)``: a subset or a resumed run writes the
same bytes as a full run.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import SettingError, check_output_folder
from common.io import save_image_atomic
from common.signals import Interrupted
from data.vocabulary import load_vocabulary

IGNORE_INDEX = 255
SPLITS = ("train", "val")
MIN_SIZE = 32  # px (ours: one cell of 32 px, the coarsest grid the models see)
MAX_SIZE = 2048  # px (ours: a 2048 px render peaks near 0.5 GB and takes about a second; its
# memory grows with the side squared, so 100000 px would need over a terabyte)

# (name, shape, base RGB, texture): class id = position + 1; 0 is the background.
# Names are what the prompts see; shape, colour and texture make each class learnable from pixels.
OBJECT_CLASSES = (
    ("red disc", "disc", (220, 40, 40), "flat"),
    ("green square", "square", (40, 180, 60), "flat"),
    ("blue triangle", "triangle", (40, 70, 220), "flat"),
    ("yellow stripes", "square", (235, 210, 40), "stripes"),
    ("magenta ring", "ring", (210, 50, 200), "flat"),
    ("cyan checkerboard", "square", (40, 210, 215), "checker"),
    ("orange cross", "cross", (245, 140, 30), "flat"),
)


@dataclass(frozen=True)
class SyntheticConfig:
    """What `write_synthetic_dataset` generates."""

    train_images: int = 400  # images in the train split
    val_images: int = 64  # images in the val split
    size: int = 128  # side of the square images, pixels
    seed: int = 0  # base seed; image i of a split uses SeedSequence((seed, split, i))
    min_objects: int = 2  # objects per image, drawn uniformly in [min, max]
    max_objects: int = 5
    ignore_border: int = 1  # width of the ignore band on object boundaries (0 = none)
    jpeg_quality: int = 95

    def split_sizes(self) -> dict[str, int]:
        """Images per split, in the order they are written."""
        return {"train": self.train_images, "val": self.val_images}

    def __post_init__(self) -> None:
        if self.train_images < 0 or self.val_images < 0:
            raise SettingError(
                f"train_images={self.train_images}, val_images={self.val_images}: counts must be >= 0"
            )
        if self.size < MIN_SIZE:
            raise SettingError(f"size={self.size}: images must be at least {MIN_SIZE} px")
        if self.size > MAX_SIZE:
            raise SettingError(f"size={self.size}: images must be at most {MAX_SIZE} px")
        if self.seed < 0:
            raise SettingError(f"seed={self.seed}: must be >= 0 (numpy seeds are non-negative)")
        if not 1 <= self.min_objects <= self.max_objects:
            raise SettingError(
                f"min_objects={self.min_objects}, max_objects={self.max_objects}: "
                "need 1 <= min_objects <= max_objects"
            )
        if self.ignore_border < 0:
            raise SettingError(f"ignore_border={self.ignore_border}: must be >= 0")


def synthetic_class_names() -> list[str]:
    """The synthetic vocabulary: ``background`` then the object classes."""
    return ["background"] + [c[0] for c in OBJECT_CLASSES]


def shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy, cx, r, angle) -> np.ndarray:
    """Boolean mask of a shape of "radius" r centred at (cy, cx), rotated by angle (radians)."""
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy  # rotated coordinates
    if shape == "disc":
        return dx**2 + dy**2 <= r**2
    if shape == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if shape == "square":
        return (np.abs(u) <= r * 0.85) & (np.abs(v) <= r * 0.85)
    if shape == "cross":
        arm = r * 0.33
        return ((np.abs(u) <= r) & (np.abs(v) <= arm)) | ((np.abs(v) <= r) & (np.abs(u) <= arm))
    if shape == "triangle":
        # Equilateral triangle: inside all three half-planes at 120 degrees.
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = angle + k * 2 * np.pi / 3
            inside &= (np.cos(a) * dx + np.sin(a) * dy) <= r * 0.5
        return inside
    raise AssertionError(f"unknown shape {shape}")


def _texture(kind: str, yy, xx, period: float, angle: float) -> np.ndarray:
    """A multiplicative brightness pattern in [0.35, 1]."""
    if kind == "flat":
        return np.ones_like(yy, dtype=np.float32)
    u = np.cos(angle) * xx + np.sin(angle) * yy
    if kind == "stripes":
        return np.where((u // period) % 2 == 0, 1.0, 0.35).astype(np.float32)
    if kind == "checker":
        v = -np.sin(angle) * xx + np.cos(angle) * yy
        return np.where(((u // period) + (v // period)) % 2 == 0, 1.0, 0.35).astype(np.float32)
    raise AssertionError(f"unknown texture {kind}")


def boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within `width` of the mask's edge (inside or outside), by max/min pooling."""
    padded = np.pad(mask, width, mode="edge")
    h, w = mask.shape
    dil = np.zeros_like(mask)
    ero = np.ones_like(mask)
    for oy in range(2 * width + 1):
        for ox in range(2 * width + 1):
            window = padded[oy : oy + h, ox : ox + w]
            dil |= window
            ero &= window
    return dil & ~ero


def render_sample(config: SyntheticConfig, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image and its label map.

    Returns:
        image: (H, W, 3) uint8 RGB.
        label: (H, W) uint8, class ids in [0, K), ``IGNORE_INDEX`` on object boundaries.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: must be one of {SPLITS}")
    rng = np.random.default_rng(np.random.SeedSequence((config.seed, SPLITS.index(split), index)))
    n = config.size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)

    # Background: a greyish two-colour gradient with fine noise, never as saturated as an object.
    c0, c1 = rng.uniform(70, 170, size=(2, 3)).astype(np.float32)
    t = np.clip((np.cos(rng.uniform(0, np.pi)) * xx + np.sin(rng.uniform(0, np.pi)) * yy) / n, 0, 1)
    image = c0 * (1 - t[..., None]) + c1 * t[..., None]
    image += rng.normal(0, 6, size=image.shape).astype(np.float32)
    label = np.zeros((n, n), dtype=np.uint8)
    ignore = np.zeros((n, n), dtype=bool)

    for _ in range(int(rng.integers(config.min_objects, config.max_objects + 1))):
        class_id = int(rng.integers(1, len(OBJECT_CLASSES) + 1))
        _, shape, rgb, texture = OBJECT_CLASSES[class_id - 1]
        # Log-uniform radius: many small objects, some large ones.
        r = float(np.exp(rng.uniform(np.log(3.0), np.log(0.36 * n))))
        cy, cx = rng.uniform(0, n, size=2)
        angle = float(rng.uniform(0, 2 * np.pi))
        mask = shape_mask(shape, yy, xx, cy, cx, r, angle)
        if not mask.any():
            continue
        colour = np.clip(np.array(rgb, np.float32) + rng.normal(0, 12, size=3), 0, 255)
        pattern = _texture(texture, yy, xx, period=max(2.0, r / 3), angle=angle)
        shade = (colour[None, None, :] * pattern[..., None]).astype(np.float32)
        image[mask] = shade[mask] + rng.normal(0, 4, size=(int(mask.sum()), 3))
        label[mask] = class_id
        ignore[mask] = False  # an occluder's interior is labelled, not ignored
        if config.ignore_border:
            ignore |= boundary(mask, config.ignore_border)

    label[ignore] = IGNORE_INDEX
    return np.clip(image, 0, 255).astype(np.uint8), label


def dataset_dir(root: str | Path) -> Path:
    return Path(root) / "synthetic"


def write_synthetic_dataset(
    root: str | Path, config: SyntheticConfig = SyntheticConfig(), progress: bool = True
) -> dict:
    """Write the dataset under ``root/synthetic`` and return a summary dict.

    Files that already exist with the same config are kept (a rerun is a no-op); a folder made
    with a different config is refused rather than mixed.
    """
    files = {"vocabulary.json": load_vocabulary("synthetic").to_json()}
    return write_rendered_dataset(
        dataset_dir(root), "dpseg.synthetic", config, render_sample, files, progress
    )


def write_rendered_dataset(
    out: Path,
    generator: str,
    config: SyntheticConfig,
    render,
    files: dict[str, str],
    progress: bool = True,
) -> dict:
    """Write ``render(config, split, index) -> (image, label)`` for every image of both splits
    under ``out`` in the detectron2 layout, with ``meta.json`` and the text ``files`` given.

    Files that already exist with the same generator and config are kept (a rerun is a no-op);
    a folder made otherwise is refused rather than mixed.
    """
    check_output_folder(out, "--root")  # a file in the way: one line, before any writing
    meta_path = out / "meta.json"
    meta = {"generator": generator, "version": 1, "config": asdict(config)}
    if meta_path.exists() and not meta_path.is_file():
        raise FileExistsError(
            f"{str(meta_path)!r} is not a file (a folder or a special file); remove it, or "
            "choose another --root"
        )
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(old, dict):
                raise ValueError("not a mapping")
        except (ValueError, UnicodeDecodeError) as e:
            raise FileExistsError(
                f"{str(meta_path)!r} is damaged ({type(e).__name__}), so what made this dataset "
                "is unknown; remove the folder and run the command again, or choose another "
                "--root"
            ) from None
        old.pop("complete", None)  # a run that was cut short: this one finishes it
        if old != meta:
            raise FileExistsError(
                f"{str(out)!r} holds a dataset made with another config "
                f"({old.get('generator')}, {old.get('config')}); remove the folder or choose "
                "another --root"
            )
    sizes = config.split_sizes()
    # What this run creates, undone if it fails before its first image (a render out of memory,
    # a bad setting): a meta.json left without images would refuse the corrected rerun.
    fresh = not meta_path.exists()
    created = _missing_parents(out) if fresh else []
    try:
        for split in sizes:
            for folder in (out / "images" / split, out / "annotations_detectron2" / split):
                if fresh:
                    created += [p for p in _missing_parents(folder) if p not in created]
                folder.mkdir(parents=True, exist_ok=True)
        # "complete": false until every image is written: a dataset cut short is refused when
        # read (data.datasets.index_files), and the same command finishes it
        if fresh:
            created += [out / name for name in ("meta.json", *files) if not (out / name).exists()]
        meta_path.write_text(json.dumps({**meta, "complete": False}, indent=2) + "\n")
        for name, text in files.items():
            (out / name).write_text(text + "\n")
        return _write_images(out, config, render, meta, sizes, progress)
    except Exception:
        if fresh and not _has_images(out, sizes):
            _remove_created(created)
        raise


def _missing_parents(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, outermost first."""
    missing = []
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing.append(p)
    return missing[::-1]


def _has_images(out: Path, sizes: dict[str, int]) -> bool:
    """Whether any image or label file is under ``out``'s split folders."""
    return any(
        any((out / kind / split).glob("*")) if (out / kind / split).is_dir() else False
        for kind in ("images", "annotations_detectron2")
        for split in sizes
    )


def _remove_created(created: list[Path]) -> None:
    """Remove the files, then the (now empty) folders, that a failed run created; leave anything
    else (a folder someone wrote into meanwhile stays)."""
    for p in created:
        if p.is_file():
            p.unlink(missing_ok=True)
    for p in sorted((p for p in created if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: someone else's files stay
            p.rmdir()


def _write_images(out: Path, config, render, meta: dict, sizes: dict[str, int], progress: bool):
    """Render and write every image of ``sizes`` not already there, then mark ``meta.json``
    complete; the summary of :func:`write_rendered_dataset`."""
    meta_path = out / "meta.json"
    jobs = [(s, i) for s, count in sizes.items() for i in range(count)]
    start, written = time.perf_counter(), 0
    from common.progress import ProgressBar

    done = 0
    with ProgressBar(f"{out.name} images", len(jobs), unit="images", enabled=progress) as bar:
        try:
            for split, i in jobs:
                image_path = out / "images" / split / f"{i:06d}.jpg"
                label_path = out / "annotations_detectron2" / split / f"{i:06d}.png"
                if not (image_path.is_file() and label_path.is_file()):
                    image, label = render(config, split, i)
                    # Label first, image last, each written whole (temp file + rename): a killed
                    # run leaves no truncated file and no image without its label.
                    save_image_atomic(Image.fromarray(label), label_path, "PNG")
                    try:
                        save_image_atomic(
                            Image.fromarray(image), image_path, "JPEG", quality=config.jpeg_quality
                        )
                    except OSError:  # a full disk: the pair or nothing (the run stops here)
                        label_path.unlink(missing_ok=True)
                        raise
                    written += 1
                done += 1
                bar.advance()
        except (KeyboardInterrupt, Interrupted) as e:
            signum = getattr(e, "signum", signal.SIGINT)
            raise Interrupted(
                signum,
                f"data interrupted by {signal.Signals(signum).name} after {done} of "
                f"{len(jobs)} images; those are kept in {str(out)!r}: run the same command again "
                "to finish the dataset",
            ) from None
    meta_path.write_text(json.dumps({**meta, "complete": True}, indent=2) + "\n")
    return {
        "root": str(out),
        **sizes,
        "written": written,
        "seconds": round(time.perf_counter() - start, 2),
    }
