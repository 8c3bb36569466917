"""The toy world: a small open-vocabulary world in which our own tiny models can know something.

No pretrained weights or benchmark data can be downloaded here, and random models show nothing
about the method. This module defines a world (ours, see ``docs/toy_world.md``) that the
project's own code renders, learns and segments, offline, in minutes on 2 CPU cores:

- **Classes**: 6 colours x 5 shapes = 30 object classes, plus ``background`` (class 0). Each
  colour and shape has two synonyms, so every class has aliases ("crimson disc", "red circle"),
  which VIP can use.
- **Seen and unseen**: 6 classes (one per colour) are *unseen*: never in segmentation training,
  only tested, and each is made of a colour and a shape that occur in seen classes (train on
  "red disc" and "blue triangle", test on "red triangle"), open vocabulary in miniature.
- **Scenes** (:func:`render_scene`): the segmentation dataset ``toy`` (val, all 31 classes) and
  ``toy:train`` (seen classes only, labelled in the 25-class ``toy_seen`` vocabulary), 2-5
  objects per image on a textured background, in the detectron2 layout.
- **Photos of a prompt** (:func:`render_prompt`): an image of what a caption says ("a sketch of
  a crimson disc"), with the template's meaning where it has one (close-up, many, small, low
  resolution, sketch, black and white, dark, ...). The CLIP presets ``toy-*`` are pretrained on
  such captioned images (``pretrained.toy_pretrain``) and the generator preset ``toy-render`` (this
  world's Stable Diffusion) draws the bank's visual prompts with it, never copying a dataset
  image.

Everything is a pure function of its seed: numpy's PCG64 generator and float32/float64
arithmetic in numpy, no torch kernels.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import SettingError
from data.synthetic import SyntheticConfig, boundary, shape_mask, write_rendered_dataset

IGNORE_INDEX = 255
BACKGROUND = "background"

# colour: (RGB, synonyms). Hues far apart, so a colour is one attribute the pixels show.
COLOURS: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {
    "red": ((215, 40, 40), ("crimson", "scarlet")),
    "green": ((40, 165, 60), ("emerald", "leafy")),
    "blue": ((45, 75, 225), ("azure", "cobalt")),
    "yellow": ((235, 205, 35), ("golden", "lemon")),
    "purple": ((140, 55, 200), ("violet", "lilac")),
    "orange": ((245, 135, 30), ("amber", "tangerine")),
}
# shape: synonyms (the masks are data.synthetic's).
SHAPES: dict[str, tuple[str, ...]] = {
    "disc": ("circle", "dot"),
    "square": ("box", "tile"),
    "triangle": ("wedge", "trigon"),
    "ring": ("hoop", "donut"),
    "cross": ("plus sign", "saltire"),
}
# (ours) one unseen class per colour; every unseen colour and shape occurs in >= 3 seen classes.
UNSEEN = (
    ("red", "triangle"),
    ("green", "ring"),
    ("blue", "cross"),
    ("yellow", "disc"),
    ("purple", "square"),
    ("orange", "ring"),
)


@dataclass(frozen=True)
class ToyClass:
    colour: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def aliases(self) -> tuple[str, ...]:
        """Other names: each colour synonym with the shape, the colour with each shape synonym."""
        colours = COLOURS[self.colour][1]
        return tuple(f"{c} {self.shape}" for c in colours) + tuple(
            f"{self.colour} {s}" for s in SHAPES[self.shape]
        )

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLOURS[self.colour][0]

    @property
    def unseen(self) -> bool:
        return (self.colour, self.shape) in UNSEEN


OBJECTS: tuple[ToyClass, ...] = tuple(ToyClass(c, s) for c in COLOURS for s in SHAPES)


def class_names(seen_only: bool = False) -> list[str]:
    """``background`` then the object classes (all 30, or the 24 seen ones) in world order."""
    return [BACKGROUND] + [o.name for o in OBJECTS if not (seen_only and o.unseen)]


def unseen_names() -> list[str]:
    return [o.name for o in OBJECTS if o.unseen]


def alias_entries() -> list[str]:
    """VIP's alias list: one line per class, the canonical name then its aliases."""
    return [BACKGROUND] + [", ".join((o.name, *o.aliases)) for o in OBJECTS]


# ---------------------------------------------------------------------------------------------
# what a phrase names


def _lookup() -> tuple[dict[str, str], dict[str, str]]:
    colours = {n: n for n in COLOURS} | {s: n for n, (_, syn) in COLOURS.items() for s in syn}
    shapes = {n: n for n in SHAPES} | {s: n for n, syn in SHAPES.items() for s in syn}
    return colours, shapes


def parse_class(text: str) -> ToyClass | str | None:
    """The world class a phrase names: a :class:`ToyClass`, ``"background"``, or None.

    The first colour word (a colour or one of its synonyms) and the first shape word name the
    class: "a sketch of a crimson circle." -> red disc.
    """
    text = text.lower()
    colours, shapes = _lookup()
    colour = shape = None
    for word in re.findall(r"[a-z]+", text):
        colour = colour or colours.get(word)
        shape = shape or shapes.get(word)
    if shape is None and "plus sign" in text:
        shape = "cross"
    if colour and shape:
        return ToyClass(colour, shape)
    if BACKGROUND in text or "backdrop" in text:
        return BACKGROUND
    return None


# ---------------------------------------------------------------------------------------------
# drawing


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def photo_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A greyish two-colour gradient with fine noise, never as saturated as an object."""
    yy, xx = _grid(size)
    c0, c1 = rng.uniform(70, 170, size=(2, 3)).astype(np.float32)
    a = rng.uniform(0, math.pi)
    t = np.clip((math.cos(a) * xx + math.sin(a) * yy) / size, 0, 1)
    image = c0 * (1 - t[..., None]) + c1 * t[..., None]
    return image + rng.normal(0, 6, size=image.shape).astype(np.float32)


def draw_object(
    image: np.ndarray,
    cls: ToyClass,
    rng: np.random.Generator,
    cy: float,
    cx: float,
    r: float,
    outline: float = 0.0,
) -> np.ndarray:
    """Paint one object in place; returns its mask. ``outline`` > 0 draws only a band that wide
    along the object's edge (a sketch)."""
    size = image.shape[0]
    yy, xx = _grid(size)
    mask = shape_mask(cls.shape, yy, xx, cy, cx, r, float(rng.uniform(0, 2 * math.pi)))
    if outline > 0 and mask.any():
        mask = mask & boundary(mask, max(1, round(outline)))
    colour = np.clip(np.array(cls.rgb, np.float32) + rng.normal(0, 12, size=3), 0, 255)
    n = int(mask.sum())
    image[mask] = colour + rng.normal(0, 4, size=(n, 3)).astype(np.float32)
    return mask


@dataclass(frozen=True)
class ToySceneConfig(SyntheticConfig):
    """What :func:`render_scene` draws; the fields are :class:`data.synthetic.SyntheticConfig`'s
    and ``test_images`` (the toy world's defaults, ours: 6000 train, 300 val and 2000 test
    images of 128 px: a model has enough to learn shapes from, settings are chosen on val and
    figures reported on test, whose mIoU varies by about 0.2 point between test sets)."""

    train_images: int = 6000
    val_images: int = 300
    test_images: int = 2000
    min_radius: float = 6.0  # px: an object spans at least 12 px (a 128 px image's cost volume
    # is 4 x 4 cells of 32 px: smaller objects are left to the decoder's finer levels)
    max_radius: float = 0.4  # of the side

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.train_images, "val": self.val_images, "test": self.test_images}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.test_images < 0:
            raise SettingError(f"test_images={self.test_images}: counts must be >= 0")


def render_scene(config: ToySceneConfig, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One segmentation image of the toy world and its label map.

    ``train`` images hold seen classes only, labelled in ``toy_seen`` ids; ``val`` and ``test``
    images hold all 30 classes, labelled in ``toy`` ids. Objects have log-uniform radii (``min_radius`` px
    to ``max_radius`` of the side); later objects occlude earlier ones; a band of ``ignore_border`` px along every
    object boundary is 255 (ignore), as in VOC.

    Returns:
        image: (H, W, 3) uint8 RGB. label: (H, W) uint8.
    """
    split_id = {"train": 0, "val": 1, "test": 2}.get(split)
    if split_id is None:
        raise ValueError(f"split={split!r}: must be train, val or test")
    rng = np.random.default_rng(np.random.SeedSequence((config.seed, 7, split_id, index)))
    n = config.size
    names = class_names(seen_only=split == "train")
    allowed = [o for o in OBJECTS if split != "train" or not o.unseen]
    image = photo_background(rng, n)
    label = np.zeros((n, n), dtype=np.uint8)
    ignore = np.zeros((n, n), dtype=bool)
    for _ in range(int(rng.integers(config.min_objects, config.max_objects + 1))):
        cls = allowed[int(rng.integers(len(allowed)))]
        low, high = math.log(config.min_radius), math.log(config.max_radius * n)
        r = float(np.exp(rng.uniform(low, high)))
        cy, cx = rng.uniform(0, n, size=2)
        mask = draw_object(image, cls, rng, cy, cx, r)
        if not mask.any():
            continue
        label[mask] = names.index(cls.name)
        ignore[mask] = False
        if config.ignore_border:
            ignore |= boundary(mask, config.ignore_border)
    label[ignore] = IGNORE_INDEX
    return np.clip(image, 0, 255).astype(np.uint8), label


# ---------------------------------------------------------------------------------------------
# a photo of a prompt


@dataclass(frozen=True)
class Style:
    """What a template's words ask of the picture (ours: the words SD would also follow)."""

    radius: tuple[float, float] = (0.2, 0.4)  # object radius as a fraction of the side
    count: tuple[int, int] = (1, 1)  # instances
    outline: bool = False  # sketch, drawing, doodle, tattoo, graffiti
    paper: tuple[float, float] = (0.0, 0.0)  # >0: a flat background of this grey range
    grey: bool = False  # black and white
    brightness: float = 1.0  # dark < 1 < bright
    pixelate: int = 1  # low resolution, pixelated: blocks of this many pixels
    blur: int = 0  # blurry, painting: box blur radius
    noise: float = 0.0  # bad, hard to see, jpeg corrupted, dirty: extra noise std
    contrast: float = 1.0  # hard to see: < 1
    cropped: bool = False  # the object's centre near an edge


_STYLE_WORDS: tuple[tuple[tuple[str, ...], dict], ...] = (
    (("close-up", "close up"), {"radius": (0.42, 0.58)}),
    (("large", "big"), {"radius": (0.36, 0.46)}),
    (("small", "tiny", "little"), {"radius": (0.1, 0.17)}),
    (("many",), {"radius": (0.1, 0.2), "count": (3, 6)}),
    (("cropped",), {"cropped": True}),
    (("sketch", "drawing", "doodle"), {"outline": True, "paper": (225.0, 250.0)}),
    (("tattoo",), {"outline": True, "paper": (175.0, 205.0)}),
    (("graffiti",), {"outline": True}),
    (("black and white",), {"grey": True}),
    (("dark",), {"brightness": 0.45}),
    (("bright",), {"brightness": 1.35}),
    (("low resolution", "pixelated"), {"pixelate": 4}),
    (("blurry",), {"blur": 2}),
    (("painting", "art of"), {"blur": 1, "paper": (150.0, 230.0)}),
    (
        (
            "rendering",
            "rendition",
            "cartoon",
            "video game",
            "plastic",
            "toy",
            "plushie",
            "origami",
            "sculpture",
            "embroidered",
        ),
        {"paper": (60.0, 230.0)},
    ),
    (("jpeg corrupted",), {"pixelate": 2, "noise": 18.0}),
    (("bad photo", "dirty"), {"noise": 14.0}),
    (("hard to see",), {"contrast": 0.45, "noise": 8.0}),
)


def prompt_style(prompt: str) -> Style:
    """The :class:`Style` a prompt's words ask for (later words override earlier ones)."""
    text = prompt.lower()
    changes: dict = {}
    for words, change in _STYLE_WORDS:
        if any(re.search(rf"\b{re.escape(w)}\b", text) for w in words):
            changes.update(change)
    return Style(**changes)


def render_group(classes: list[ToyClass], seed: int, size: int = 64) -> np.ndarray:
    """A photo of several objects (one per class given, in order, later ones on top): what a
    caption like "a photo of a red disc and a blue square." shows. (H, W, 3) uint8."""
    rng = np.random.default_rng(np.random.SeedSequence((seed, len(classes), size, 11)))
    image = photo_background(rng, size)
    for cls in classes:
        r = float(rng.uniform(0.12, 0.26)) * size
        cy, cx = rng.uniform(0.15, 0.85, size=2) * size
        draw_object(image, cls, rng, cy, cx, r)
    return np.clip(image, 0, 255).astype(np.uint8)


def _box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    h, w = image.shape[:2]
    out = np.zeros_like(image)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out += padded[dy : dy + h, dx : dx + w]
    return out / float((2 * radius + 1) ** 2)


def render_prompt(
    prompt: str, seed: int, size: int = 64, distractors: int = 0
) -> tuple[np.ndarray, ToyClass | str | None]:
    """A picture of what ``prompt`` names, in the style its words ask for.

    Args:
        prompt: a template filled with a class name or alias ("a sketch of a crimson disc.");
            a phrase naming no world class draws the background alone.
        seed: the picture is a pure function of (prompt, seed, size, distractors).
        size: side in pixels.
        distractors: at most this many smaller objects of other classes (CLIP pretraining
            photos have some; the generator's have none, as SD draws what it is asked).

    Returns:
        (H, W, 3) uint8 RGB and the class drawn (a ToyClass, ``"background"`` or None).
    """
    import hashlib

    key = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
    rng = np.random.default_rng(np.random.SeedSequence((seed, key, size)))
    cls = parse_class(prompt)
    style = prompt_style(prompt)
    if style.paper != (0.0, 0.0):
        tone = rng.uniform(*style.paper, size=3 if not style.outline else 1).astype(np.float32)
        image = np.broadcast_to(tone, (size, size, 3)).astype(np.float32).copy()
    else:
        image = photo_background(rng, size)
    others = [o for o in OBJECTS if o != cls]
    for _ in range(int(rng.integers(0, distractors + 1)) if distractors else 0):
        r = float(rng.uniform(0.08, 0.15)) * size
        cy, cx = rng.uniform(0, size, size=2)
        draw_object(image, others[int(rng.integers(len(others)))], rng, cy, cx, r)
    if isinstance(cls, ToyClass):
        for _ in range(int(rng.integers(style.count[0], style.count[1] + 1))):
            r = float(rng.uniform(*style.radius)) * size
            if style.cropped:
                edge = rng.integers(4)
                along, across = rng.uniform(0.2, 0.8) * size, rng.uniform(0.0, 0.12) * size
                cy, cx = [
                    (across, along),
                    (size - across, along),
                    (along, across),
                    (along, size - across),
                ][edge]
            elif style.count[1] > 1:
                cy, cx = rng.uniform(0.1, 0.9, size=2) * size
            else:
                cy, cx = (0.5 + rng.uniform(-0.15, 0.15, size=2)) * size
            draw_object(image, cls, rng, cy, cx, r, outline=max(1.0, r / 6) * style.outline)
    if style.grey:
        image = np.repeat(image @ np.float32([0.299, 0.587, 0.114])[:, None], 3, axis=2)
    image = (image - 128.0) * style.contrast + 128.0
    image *= style.brightness
    if style.blur:
        image = _box_blur(image, style.blur)
    if style.pixelate > 1:
        p = style.pixelate
        small = image[: size // p * p, : size // p * p].reshape(size // p, p, size // p, p, 3)
        image = np.repeat(np.repeat(small.mean(axis=(1, 3)), p, axis=0), p, axis=1)
        image = np.pad(
            image, ((0, size - image.shape[0]), (0, size - image.shape[1]), (0, 0)), mode="edge"
        )
    if style.noise:
        image = image + rng.normal(0, style.noise, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), cls


def write_toy_dataset(
    root: str | Path, config: ToySceneConfig = ToySceneConfig(), progress: bool = True
) -> dict:
    """Write ``toy:train``, ``toy:val`` and ``toy`` (the test split) under ``root/toy`` in the
    detectron2 layout."""
    from data.vocabulary import load_vocabulary

    files = {
        "vocabulary.json": load_vocabulary("toy").to_json(),
        "vocabulary_seen.json": load_vocabulary("toy_seen").to_json(),
    }
    return write_rendered_dataset(
        Path(root) / "toy", "dpseg.toy_world", config, render_scene, files, progress
    )
