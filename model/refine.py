"""Two-round inference: semantic-guided prompt refinement (DESIGN §2.3).

    round I   logits_1 = DPSeg(image, bank prompts)                 (backbone runs once)
    detect    classes whose argmax area >= min_area of the image
    crop      each detected class's region of the input image -> frozen prompt encoder
    round II  logits_2 = DPSeg(image, prompts with those visual prompts replaced,
                               features = round I's)               (no second backbone pass)

Crop policies: ``box`` (the bounding box of the class's pixels), ``masked`` (the same box with
the pixels of other classes set to the image mean, so the crop shows the class alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.backbone import BackboneFeatures, ClipEncoder
from model.cost_volume import Prompts, class_mean
from model.dpseg import DPSeg, DPSegOutput

CROP_POLICIES = ("box", "masked")


@dataclass
class RefineConfig:
    """Settings of inference."""

    rounds: int = 1  # 1: bank prompts only; 2: + semantic-guided refinement (DESIGN §2.3)
    min_area: float = 0.01  # a class is "detected" when its argmax covers this image fraction
    crop_policy: str = "box"  # "box" or "masked"
    crop_margin: float = 0.1  # the box grown by this fraction of its size on each side
    max_classes: int | None = None  # refine at most this many classes (largest areas first)
    crop_size: int | None = None  # crops encoded at this size (ConvNeXt); None: the preset's

    def __post_init__(self) -> None:
        if self.rounds not in (1, 2):
            raise ValueError(f"rounds={self.rounds}: use 1 or 2")
        if not 0 <= self.min_area < 1:
            raise ValueError(f"min_area={self.min_area}: a fraction of the image in [0, 1)")
        if self.crop_policy not in CROP_POLICIES:
            raise ValueError(
                f"crop_policy={self.crop_policy!r}: use one of {', '.join(CROP_POLICIES)}"
            )
        if self.crop_margin < 0:
            raise ValueError(f"crop_margin={self.crop_margin} must be >= 0")
        if self.crop_size is not None and self.crop_size < 32:
            raise ValueError(f"crop_size={self.crop_size}: use None (the preset's) or >= 32")
        if self.max_classes is not None and self.max_classes < 1:
            raise ValueError(f"max_classes={self.max_classes}: use None (all) or >= 1")


def detected_classes(
    labels: torch.Tensor, num_classes: int, min_area: float, max_classes: int | None = None
) -> torch.Tensor:
    """labels (H, W) argmax ids -> ids (ascending) of the classes covering >= min_area of the
    image; with ``max_classes``, only the largest that many."""
    counts = torch.bincount(labels.flatten(), minlength=num_classes)
    found = torch.nonzero(counts >= max(1.0, min_area * labels.numel())).flatten()
    if max_classes is not None and len(found) > max_classes:
        found = found[counts[found].argsort(descending=True, stable=True)[:max_classes]].sort()[0]
    return found


def crop_regions(
    image: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor, config: RefineConfig
) -> list[torch.Tensor]:
    """image (3, H, W), labels (H, W) -> one crop (3, h_c, w_c) per class in ``classes``."""
    h, w = labels.shape
    crops = []
    for c in classes.tolist():
        mask = labels == c
        ys = torch.nonzero(mask.any(dim=1)).flatten()
        xs = torch.nonzero(mask.any(dim=0)).flatten()
        y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        my, mx = round((y1 - y0) * config.crop_margin), round((x1 - x0) * config.crop_margin)
        y0, y1, x0, x1 = max(0, y0 - my), min(h, y1 + my), max(0, x0 - mx), min(w, x1 + mx)
        crop = image[:, y0:y1, x0:x1]
        if config.crop_policy == "masked":
            keep = mask[y0:y1, x0:x1]
            fill = image.mean(dim=(1, 2), keepdim=True)
            crop = torch.where(keep, crop, fill)
        crops.append(crop)
    return crops


class TwoRoundSegmenter(nn.Module):
    """DPSeg with the frozen prompt encoder for round II. Parts come in the constructor.

    ``forward(images, prompts)`` -> logits (B, K, H, W): round I's, or round II's when
    ``config.rounds == 2``. The prompt encoder is held outside the module's parameters (it is
    the frozen original CLIP, rebuilt from its preset, never trained nor checkpointed).
    """

    def __init__(self, model: DPSeg, prompt_encoder: ClipEncoder | None, config: RefineConfig):
        super().__init__()
        self.model = model
        self.config = config
        self._encoder = [prompt_encoder]  # a list: not a submodule, not in the state dict
        if config.rounds == 2 and prompt_encoder is None:
            raise ValueError("rounds=2 needs the frozen prompt encoder to encode the crops")

    @property
    def prompt_encoder(self) -> ClipEncoder | None:
        return self._encoder[0]

    def forward(self, images: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        first = self.model(images, prompts)
        if self.config.rounds == 1:
            return first.logits
        return self.second_round(images, prompts, first)

    @torch.no_grad()
    def refined_prompts(self, image: torch.Tensor, labels: torch.Tensor, prompts: Prompts):
        """One image's prompts after round I, detected classes with their crop's embedding;
        returns (prompts, the refined class ids)."""
        classes = detected_classes(
            labels, prompts.num_classes, self.config.min_area, self.config.max_classes
        )
        if len(classes) == 0:
            return prompts, classes
        crops = crop_regions(image, labels, classes, self.config)
        encoder = self.prompt_encoder
        size = (self.config.crop_size or encoder.preset.image_size,) * 2
        if encoder.preset.family == "vit" and size[0] != encoder.preset.image_size:
            raise ValueError(
                f"crop_size={size[0]}: the ViT prompt encoder ({encoder.preset.name}) takes "
                f"{encoder.preset.image_size} px only; leave crop_size unset"
            )
        # The resize ClipEncoder.preprocess gives the bank's images: bicubic, antialiased.
        batch = torch.cat(
            [F.interpolate(c[None].float(), size, mode="bicubic", antialias=True) for c in crops]
        ).clamp(0, 1)
        encoding = encoder.encode_images(batch.to(encoder.mean.device), size=size[0])
        device = prompts.visual.device
        refined = prompts.with_visual(
            classes.to(device),
            encoding.embedding.to(device),
            [lv.to(device) for lv in encoding.pooled_levels()],
        )
        return refined, classes

    def second_round(self, images: torch.Tensor, prompts: Prompts, first: DPSegOutput):
        """Round II for each image of the batch, reusing round I's features.

        Only the refined classes are decoded again; the others keep round I's logits, which
        are what a full second decode would give them (the decoder treats classes alone).
        """
        labels = first.logits.argmax(dim=1)  # (B, H, W)
        out = first.logits.clone()
        mean = class_mean(prompts, self.model.config.prompt_mode)  # round I's centre, kept
        for b in range(images.shape[0]):
            refined, classes = self.refined_prompts(images[b], labels[b], prompts)
            if len(classes) == 0:
                continue
            features = BackboneFeatures(
                first.features.dense[b : b + 1], [lv[b : b + 1] for lv in first.features.levels]
            )
            logits = self.model(
                images[b : b + 1], refined, features=features, classes=classes, center_mean=mean
            ).logits
            out[b, classes.to(out.device)] = logits[0]
        return out
