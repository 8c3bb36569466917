"""Training augmentation and the three test protocols of the field (docs/design.md §5).

Training (:class:`TrainTransform`): random resize of the short side, random crop (padded with
ignore where the image is smaller), horizontal flip. Test protocols wrap a model callable
``logits_fn(images (B, 3, h, w) float in [0, 1]) -> (B, K, h', w')`` and return logits at the
label's original size, where predictions are scored:

- :class:`ResizeSquare` (SED): resize to S x S (768), one forward.
- :class:`SlidingWindow` with ``global_view=True`` (CAT-Seg: short side 640, crop 384, stride
  256): windows averaged where they overlap, then averaged with the whole image seen at crop size.
- :class:`SlidingWindow` with ``global_view=False`` (VIP: short side 336, crop 336, stride 112).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from data.catalog import IGNORE_INDEX

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def rgb_uint8(image, argument: str = "image") -> np.ndarray:
    """An image as the models read it, (H, W, 3) uint8 RGB, from what users hand over: (H, W)
    grey and (H, W, 4) RGBA uint8 (alpha dropped), or a float array in [0, 1] (scaled by 255 and
    rounded). Anything else raises a ``SettingError`` in one line naming ``argument``, its shape
    and dtype, and what is taken: nothing is silently misread."""
    from common.errors import SettingError

    array = np.asarray(image)
    shape, dtype = tuple(array.shape), array.dtype
    if array.ndim == 2:
        array = array[..., None].repeat(3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim != 3 or array.shape[-1] != 3 or 0 in array.shape:
        raise SettingError(
            f"{argument}: shape {shape} is not an image; pass (H, W), (H, W, 3) or (H, W, 4) "
            "(grey, RGB, RGBA)"
        )
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array).all()
        if finite and array.size and array.min() >= 0 and array.max() <= 1:
            return np.round(array * 255).astype(np.uint8)
        low, high = (float(np.nanmin(array)), float(np.nanmax(array))) if array.size else (0, 0)
        raise SettingError(
            f"{argument}: a {dtype} image with values in [{low:g}, {high:g}]; floats must lie in "
            "[0, 1] (they are scaled by 255), or pass uint8"
        )
    raise SettingError(f"{argument}: dtype {dtype} is not taken; pass uint8, or floats in [0, 1]")


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float in [0, 1] (a copy: read-only arrays are fine)."""
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div_(255)


def to_tensors(sample: dict) -> dict:
    """image (H, W, 3) uint8 -> (3, H, W) float in [0, 1]; label (H, W) int64 -> long tensor."""
    out = dict(sample)
    out["image"] = image_tensor(sample["image"])
    out["label"] = torch.from_numpy(np.array(sample["label"], copy=True)).long()
    return out


def resize_short_side(image: torch.Tensor, short: int, antialias: bool = True) -> torch.Tensor:
    """(..., 3, H, W) -> the same with min(H, W) == short, aspect kept."""
    h, w = image.shape[-2:]
    scale = short / min(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return resize(image, size, antialias)


def resize_keep_ratio(
    image: torch.Tensor, short: int, long: int, antialias: bool = True
) -> torch.Tensor:
    """(..., 3, H, W) scaled by min(short / min(H, W), long / max(H, W)), aspect kept: mmcv's
    ``Resize(scale=(long, short), keep_ratio=True)`` (VIP: (2048, 336); (448, 448) fits the
    image inside a 448 x 448 square)."""
    h, w = image.shape[-2:]
    scale = min(short / min(h, w), long / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return resize(image, size, antialias)


def resize(image: torch.Tensor, size: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Bilinear resize of (3, H, W) or (B, 3, H, W) images, antialiased when shrinking unless
    ``antialias`` is False (VIP's reference resizes with cv2's bilinear, which is not)."""
    batched = image.ndim == 4
    x = image if batched else image[None]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    return x if batched else x[0]


@dataclass
class TrainTransform:
    """Random resize (short side = crop x scale), random crop, horizontal flip.

    Applied to a sample dict with numpy ``image``/``label``; returns tensors: image
    (3, crop, crop) float in [0, 1], label (crop, crop) long with IGNORE_INDEX padding.
    """

    crop: int = 384
    scale: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    seed: int | None = None  # for reproducible tests; None draws from torch's global RNG

    def __post_init__(self) -> None:
        if self.crop < 8 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"crop={self.crop}, scale={self.scale}: need crop >= 8, 0 < lo <= hi")
        self._generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)

    def _rand(self) -> float:
        return float(torch.rand((), generator=self._generator))

    def __call__(self, sample: dict) -> dict:
        sample = to_tensors(sample)
        image, label = sample["image"], sample["label"]
        lo, hi = self.scale
        short = max(8, round(self.crop * (lo + (hi - lo) * self._rand())))
        image = resize_short_side(image, short)
        label = F.interpolate(label[None, None].float(), size=image.shape[-2:], mode="nearest")
        label = label[0, 0].long()
        # Pad to at least crop x crop (image with 0, label with ignore), then crop.
        h, w = image.shape[-2:]
        ph, pw = max(0, self.crop - h), max(0, self.crop - w)
        if ph or pw:
            image = F.pad(image, (0, pw, 0, ph), value=0.0)
            label = F.pad(label, (0, pw, 0, ph), value=IGNORE_INDEX)
        h, w = image.shape[-2:]
        top = int(self._rand() * (h - self.crop + 1))
        left = int(self._rand() * (w - self.crop + 1))
        image = image[:, top : top + self.crop, left : left + self.crop]
        label = label[top : top + self.crop, left : left + self.crop]
        if self.flip and self._rand() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        sample.update(image=image.contiguous(), label=label.contiguous())
        return sample


def _upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@dataclass
class ResizeSquare:
    """SED's protocol: the image resized to size x size, one forward, logits back to (H, W)."""

    size: int = 768

    def __call__(self, logits_fn: LogitsFn, image: torch.Tensor) -> torch.Tensor:
        """image (3, H, W) in [0, 1] -> logits (K, H, W)."""
        h, w = image.shape[-2:]
        logits = logits_fn(resize(image, (self.size, self.size))[None])
        return _upsample(logits, (h, w))[0]


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window offsets covering [0, length): every stride, the last one flush with the end."""
    if length <= crop:
        return [0]
    starts = list(range(0, length - crop + 1, stride))
    if starts[-1] != length - crop:
        starts.append(length - crop)
    return starts


@dataclass
class SlidingWindow:
    """Short side resized, crop x crop windows every stride, logits averaged where they overlap.

    With ``global_view`` (CAT-Seg) the whole resized image is also seen at crop x crop, and the
    final logits are the mean of the window average and that global view. With ``long_side``,
    the long side is capped too (:func:`resize_keep_ratio`; VIP's protocols); an image smaller
    than the crop is one window of its own size.
    """

    short_side: int = 640
    crop: int = 384
    stride: int = 256
    global_view: bool = True
    batch_size: int = 8  # windows per forward
    long_side: int | None = None
    antialias: bool = True  # False: VIP's protocols, as its reference's cv2 resize

    def __post_init__(self) -> None:
        if not 0 < self.stride <= self.crop <= self.short_side:
            raise ValueError(
                f"stride={self.stride}, crop={self.crop}, short_side={self.short_side}: "
                "need 0 < stride <= crop <= short_side"
            )

    def __call__(self, logits_fn: LogitsFn, image: torch.Tensor) -> torch.Tensor:
        """image (3, H, W) in [0, 1] -> logits (K, H, W)."""
        h0, w0 = image.shape[-2:]
        if self.long_side is None:
            x = resize_short_side(image, self.short_side, self.antialias)
        else:
            x = resize_keep_ratio(image, self.short_side, self.long_side, self.antialias)
        h, w = x.shape[-2:]
        boxes = [
            (top, left)
            for top in window_starts(h, self.crop, self.stride)
            for left in window_starts(w, self.crop, self.stride)
        ]
        total = count = None
        for i in range(0, len(boxes), self.batch_size):
            chunk = boxes[i : i + self.batch_size]
            windows = torch.stack([x[:, t : t + self.crop, c : c + self.crop] for t, c in chunk])
            logits = _upsample(logits_fn(windows), windows.shape[-2:])
            if total is None:
                k = logits.shape[1]
                total = logits.new_zeros(k, h, w)
                count = logits.new_zeros(1, h, w)
            for (t, c), window_logits in zip(chunk, logits):
                total[:, t : t + self.crop, c : c + self.crop] += window_logits
                count[:, t : t + self.crop, c : c + self.crop] += 1
        logits = total / count
        if self.global_view:
            whole = logits_fn(resize(x, (self.crop, self.crop))[None])
            logits = (logits + _upsample(whole, (h, w))[0]) / 2
        return _upsample(logits[None], (h0, w0))[0]


TEST_PROTOCOLS = {
    "sed": lambda: ResizeSquare(768),
    "catseg": lambda: SlidingWindow(640, 384, 256, global_view=True),
    "vip": lambda: SlidingWindow(336, 336, 112, global_view=False, long_side=2048, antialias=False),
}


def get_test_protocol(name: str):
    """A test protocol by name: ``sed``, ``catseg``, ``vip`` (= ``vip:336``), ``vip:N`` (VIP's
    336 px windows every 112 px, short side N and long side at most 2048: 448 COCO-Stuff, 560
    Cityscapes), ``vip-fit:N`` (the same windows over the image fitted inside N x N: 448 on the
    remote-sensing sets), or ``resize:N`` (N x N, one pass). VIP's protocols resize without
    antialiasing, as its reference's cv2 bilinear resize (up to 18/255 apart on VDD's 4000 px
    images otherwise)."""
    if name.startswith("resize:") and name.removeprefix("resize:").isdigit():
        return ResizeSquare(int(name.removeprefix("resize:")))
    if name.startswith("vip:") and name.removeprefix("vip:").isdigit():
        short = int(name.removeprefix("vip:"))
        if short < 336:
            raise ValueError(f"test protocol {name!r}: the short side must be >= the 336 crop")
        return SlidingWindow(short, 336, 112, global_view=False, long_side=2048, antialias=False)
    if name.startswith("vip-fit:") and name.removeprefix("vip-fit:").isdigit():
        side = int(name.removeprefix("vip-fit:"))
        if side < 336:
            raise ValueError(f"test protocol {name!r}: the square must be >= the 336 crop")
        return SlidingWindow(side, 336, 112, global_view=False, long_side=side, antialias=False)
    if name not in TEST_PROTOCOLS:
        raise ValueError(
            f"unknown test protocol {name!r}; use one of {', '.join(TEST_PROTOCOLS)}, vip:N, "
            "vip-fit:N or resize:N"
        )
    return TEST_PROTOCOLS[name]()
