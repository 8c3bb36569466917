"""Two-round inference: semantic-guided prompt refinement (docs/design.md §2.3).

    round I   logits_1 = DPSeg(image, bank prompts)                 (backbone runs once)
    detect    classes whose argmax area >= min_area of the image
    crop      each detected class's region of the input image -> frozen prompt encoder
    round II  logits_2 = DPSeg(image, prompts with those visual prompts replaced,
                               features = round I's)               (no second backbone pass)

Policies (``crop_policy``) for a detected class's new visual prompt:

- ``box`` (the paper's: the region cropped): the bounding box of the class's pixels;
- ``masked`` (ours): the same box with the pixels of other classes set to the image mean, so
  the crop shows the class alone;
- ``pooled`` (ours): no crops: the frozen encoder sees the whole image once (at its own input
  size, as it saw the bank's images) and each class's prompt is its dense features (and level
  features) averaged inside the class's mask (area-weighted on the feature grid). One frozen
  pass over the batch's images instead of one encoding per crop;
- ``pooled-own`` (ours): the same pooling over round I's own image features (the trained
  backbone's, already computed): no extra pass at all. The prompts then come from the
  fine-tuned encoder rather than the frozen one the bank used; they are in the space of the
  features E they are compared with.

Every crop of every image of a batch goes through the frozen encoder in one forward, at one size
(``crop_size``, default the encoder's own), and only the refined classes are decoded again, those
of every image of the batch in one decoder call (``DPSeg.decode_per_image``).

Which classes are refined, and from which regions (both ours; the caller passes the dataset's
facts, the module stays unaware of datasets):

- ``refine_background`` false: the class named "background" (``background_class`` of the
  vocabulary; the caller passes its id as ``background``) is never refined, it keeps round I's
  prompt and logits;
- ``regions`` true (an oracle, for diagnosis): the classes round I detected are cut from the
  true label map (the caller passes it as ``regions``) instead of round I's; a detected class
  absent from it is not refined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import SettingError
from common.settings import check_fields
from model.cost_volume import Prompts, class_mean
from model.dpseg import DPSeg, DPSegOutput
from model.labels import class_labels
from model.rejection import RejectionOrder
from pretrained.backbone import BackboneFeatures, ClipEncoder
from pretrained.families import family_of

CropPolicy = Literal["box", "masked", "pooled", "pooled-own"]
CROP_POLICIES: tuple[str, ...] = get_args(CropPolicy)


@dataclass
class RefineConfig:
    """Settings of inference."""

    rounds: int = 1  # 1: bank prompts only; 2: + semantic-guided refinement (docs/design.md §2.3)
    min_area: float = 0.01  # a class is "detected" when its argmax covers this image fraction
    crop_policy: str = "box"  # "box" (the paper's), "masked", "pooled", "pooled-own" (ours)
    crop_margin: float = 0.1  # the box grown by this fraction of its size on each side
    max_classes: int | None = None  # refine at most this many classes (largest areas first)
    crop_size: int | None = None  # crops encoded at this size (ConvNeXt); None: the preset's
    refine_background: bool = True  # (ours) false: round II never refines the class named
    # "background" (it keeps round I's prompt and logits; its box is often the whole image)
    regions: bool = False  # (ours) an oracle for diagnosis: round I's detected classes are cut
    # from the true label map (test only; whole-image protocols sed / resize:N)
    rejection_threshold: float | None = None  # (ours, after SED's category early rejection)
    # round I decodes past its first stage only the classes whose coarse-head probability
    # reaches this somewhere (model.rejection; None and no top_k: every class)
    rejection_top_k: int | None = None  # and (if set) that some position ranks among its k
    rejection_max_classes: int | None = None  # at most this many per image, in
    # rejection_order: bounds round I's decode whatever K is (None: no bound)
    rejection_order: RejectionOrder = "standout"  # (ours) which classes the bound keeps:
    # "standout", those whose logit stands out most of the vocabulary's somewhere; "rank", the
    # best rank at any position, then peak (model.rejection.kept_classes)

    @property
    def rejects(self) -> bool:
        """Whether round I rejects classes early (a threshold, a top-k or a bound)."""
        return any(
            v is not None
            for v in (self.rejection_threshold, self.rejection_top_k, self.rejection_max_classes)
        )

    def __post_init__(self) -> None:
        check_fields(
            self,
            "model.inference",
            rounds=Literal[1, 2],
            crop_policy=CropPolicy,
            min_area="in [0, 1)",
            crop_margin=">= 0",
            crop_size=">= 32",
            max_classes=">= 1",
            rejection_threshold="in (0, 1)",
            rejection_top_k=">= 1",
            rejection_max_classes=">= 1",
            rejection_order=RejectionOrder,
        )


def background_class(names: list[str]) -> int | None:
    """The id of the class whose canonical name is "background" (any case), or None: the class
    ``refine_background: false`` leaves alone (``clutter, background`` is a class of its own)."""
    found = [i for i, name in enumerate(names) if name.strip().lower() == "background"]
    return found[0] if found else None


def detected_classes(
    labels: torch.Tensor,
    num_classes: int,
    min_area: float,
    max_classes: int | None = None,
    exclude: int | None = None,
) -> torch.Tensor:
    """labels (H, W) argmax ids -> ids (ascending) of the classes covering >= min_area of the
    image, ``exclude`` (a class id) never among them; with ``max_classes``, only the largest
    that many."""
    counts = torch.bincount(labels.flatten(), minlength=num_classes)
    if exclude is not None:
        counts[exclude] = 0
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


def _pool_masks(
    labels: torch.Tensor, classes: torch.Tensor, dense: torch.Tensor, levels: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """labels (H, W); dense (1, D, h, w) and level maps (1, C_j, h_j, w_j) of one image ->
    per class of ``classes`` (n,) its features averaged over its mask, the mask's share of each
    grid cell as weights: (n, D) and per level (n, C_j)."""
    masks = (labels[None] == classes.to(labels.device)[:, None, None]).float()  # (n, H, W)

    def pool(grid: torch.Tensor) -> torch.Tensor:  # (1, C, h, w) -> (n, C)
        weights = F.adaptive_avg_pool2d(masks[None], grid.shape[-2:])[0].to(grid.device)
        total = weights.flatten(1).sum(dim=1, keepdim=True).clamp(min=1e-12)
        return torch.einsum("nhw,chw->nc", weights, grid[0].float()) / total

    return pool(dense), [pool(level) for level in levels]


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
        self._dense = None  # the pooled policy's dense view of the frozen encoder, built once
        self.kept: torch.Tensor | None = None  # with rejection: (K,) the classes round I kept in
        # any image since the caller last set it to None (the evaluation's recall)
        self.detector_trained = True  # false for a checkpoint saved before the coarse head
        if config.rounds == 2 and prompt_encoder is None:
            raise ValueError("rounds=2 needs the frozen prompt encoder to encode the crops")

    @property
    def prompt_encoder(self) -> ClipEncoder | None:
        return self._encoder[0]

    def forward(
        self,
        images: torch.Tensor,
        prompts: Prompts,
        background: int | None = None,
        regions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``background``: the id of the vocabulary's background class (``background_class``)
        or None; ``regions``: the true label map (B, H, W) of the images, only with
        ``config.regions`` (see :meth:`refined_classes`)."""
        first = self.round_one(images, prompts)
        if self.config.rounds == 1:
            return first.logits
        return self.second_round(images, prompts, first, True, background, regions)

    def round_one(self, images: torch.Tensor, prompts: Prompts) -> DPSegOutput:
        """Round I: every class decoded, or with rejection (``config.rejects``) only those the
        coarse head finds (``DPSeg.forward_kept``); records the kept classes in ``kept``."""
        config = self.config
        if not config.rejects:
            return self.model(images, prompts)
        if not self.detector_trained:
            raise SettingError(
                "model.inference.rejection_threshold / rejection_top_k / rejection_max_classes: "
                "this checkpoint was saved before class early rejection's coarse head existed, "
                "so nothing has taught it where classes are; set them to null, or fine-tune it "
                "first"
            )
        first, kept = self.model.forward_kept(
            images,
            prompts,
            config.rejection_threshold,
            config.rejection_top_k,
            config.rejection_max_classes,
            order=config.rejection_order,
        )
        mask = torch.zeros(prompts.num_classes, dtype=torch.bool)
        for ids in kept:
            mask[ids.cpu()] = True
        self.kept = mask if self.kept is None else self.kept | mask
        return first

    def refined_classes(
        self,
        labels: torch.Tensor,
        num_classes: int,
        background: int | None = None,
        regions: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The classes round II refines in each image, and the label maps to cut them from.

        Args:
            labels: (B, H, W) round I's argmax.
            background: the background class's id (or None): never refined when
                ``config.refine_background`` is false.
            regions: (B, H, W) the true label maps (IGNORE_INDEX allowed), given exactly when
                ``config.regions``: the detected classes are cut from them, and a detected class
                absent from an image's map is not refined.
        Returns:
            per image the (n_b,) ascending class ids, and the (B, H, W) maps their regions are
            cut from (``labels`` or ``regions``).
        """
        if self.config.regions != (regions is not None):
            if regions is None:
                raise SettingError(
                    "--model.inference.regions true cuts round I's classes from the true label "
                    "map, which only the test loop has; set it false to predict or segment"
                )
            raise ValueError("a true label map is given but config.regions is false")
        exclude = None if self.config.refine_background else background
        classes = [
            detected_classes(
                lb, num_classes, self.config.min_area, self.config.max_classes, exclude
            )
            for lb in labels
        ]
        if regions is None:
            return classes, labels
        if regions.shape != labels.shape:
            raise ValueError(
                f"true label maps of shape {tuple(regions.shape)} for images whose labels are "
                f"{tuple(labels.shape)}: bring them to the images' geometry first"
            )
        regions = regions.to(labels.device).long()
        return [c[torch.isin(c, truth)] for c, truth in zip(classes, regions)], regions

    def _crop_size(self) -> int:
        encoder = self.prompt_encoder
        size = self.config.crop_size or encoder.preset.image_size
        if family_of(encoder.preset).fixed_input_size and size != encoder.preset.image_size:
            raise ValueError(
                f"crop_size={size}: {family_of(encoder.preset).title} prompt encoder ({encoder.preset.name}) takes "
                f"{encoder.preset.image_size} px only; leave crop_size unset"
            )
        return size

    @torch.no_grad()
    def encode_regions(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: list[torch.Tensor],
        features: BackboneFeatures | None = None,
    ) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        """New visual prompts of the detected classes of each image.

        Args:
            images: (B, 3, H, W) in [0, 1]; labels (B, H, W) the maps the regions are cut
                from: round I's argmax (or the true maps, ``config.regions``).
            classes: per image, the (n_b,) class ids to refine.
            features: round I's image features (``pooled-own`` pools them).
        Returns:
            per image: embeddings (n_b, D) (not yet normalised) and per level (n_b, C_j).
        """
        encoder = self.prompt_encoder
        if self.config.crop_policy == "pooled":
            return self._pooled(images, labels, classes)
        if self.config.crop_policy == "pooled-own":
            if features is None:
                raise ValueError("crop_policy='pooled-own' pools round I's features: pass them")
            return [
                _pool_masks(
                    labels[b],
                    c,
                    features.dense[b : b + 1],
                    [lv[b : b + 1] for lv in features.levels],
                )
                for b, c in enumerate(classes)
            ]
        size = (self._crop_size(),) * 2
        crops = [
            crop
            for b, c in enumerate(classes)
            if len(c)
            for crop in crop_regions(images[b], labels[b], c, self.config)
        ]
        # The resize ClipEncoder.preprocess gives the bank's images: bicubic, antialiased; every
        # crop of the batch in one forward.
        batch = torch.cat(
            [F.interpolate(c[None].float(), size, mode="bicubic", antialias=True) for c in crops]
        ).clamp(0, 1)
        encoding = encoder.encode_images(batch.to(encoder.mean.device), size=size[0])
        levels = encoding.pooled_levels()
        out, start = [], 0
        for c in classes:
            end = start + len(c)
            out.append((encoding.embedding[start:end], [lv[start:end] for lv in levels]))
            start = end
        return out

    def _pooled(
        self, images: torch.Tensor, labels: torch.Tensor, classes: list[torch.Tensor]
    ) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        """The ``pooled`` policy: one frozen pass over every image of the batch that refines a
        class (at the encoder's input size, as it saw the bank's images); per image (n, D)
        embeddings and per level (n, C_j)."""
        from pretrained.backbone import ClipBackbone, modality_embedding

        encoder = self.prompt_encoder
        todo = [b for b, c in enumerate(classes) if len(c)]
        out = [(encoder.mean.new_zeros(0, encoder.embed_dim), []) for _ in classes]
        if not todo:
            return out
        if self._dense is None:  # the frozen CLIP's dense view (shares its weights), before
            # any modality gap: pooled, then given the gap, a region is embedded as an image is
            self._dense = [ClipBackbone(encoder.clip, encoder.preset, modality_gap=False)]
        size = (encoder.preset.image_size,) * 2
        x = F.interpolate(images[todo].float(), size, mode="bicubic", antialias=True).clamp(0, 1)
        features = self._dense[0](x.to(encoder.mean.device))
        gap = encoder.preset.modality_gap
        for i, b in enumerate(todo):
            levels = [lv[i : i + 1] for lv in features.levels]
            embedding, pooled = _pool_masks(
                labels[b], classes[b], features.dense[i : i + 1], levels
            )
            out[b] = (modality_embedding(embedding, gap, "image"), pooled)
        return out

    @torch.no_grad()
    def refined_prompts(
        self,
        image: torch.Tensor,
        labels: torch.Tensor,
        prompts: Prompts,
        features: BackboneFeatures | None = None,
        background: int | None = None,
        regions: torch.Tensor | None = None,
    ):
        """One image's prompts after round I, detected classes with their new visual prompt
        (``features``: the image's round I features, batch 1, for ``pooled-own``;
        ``background``, ``regions`` (H, W): as :meth:`refined_classes`); returns (prompts, the
        refined class ids)."""
        (classes,), maps = self.refined_classes(
            labels[None],
            prompts.num_classes,
            background,
            None if regions is None else regions[None],
        )
        if len(classes) == 0:
            return prompts, classes
        embedding, levels = self.encode_regions(image[None], maps, [classes], features)[0]
        return self._with_visual(prompts, classes, embedding, levels), classes

    @staticmethod
    def _with_visual(prompts: Prompts, classes, embedding, levels) -> Prompts:
        device = prompts.visual.device
        return prompts.with_visual(
            classes.to(device), embedding.to(device), [lv.to(device) for lv in levels]
        )

    def second_round(
        self,
        images: torch.Tensor,
        prompts: Prompts,
        first: DPSegOutput,
        reuse_logits: bool = False,
        background: int | None = None,
        regions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Round II for each image of the batch, reusing round I's features -> (B, K, H, W).

        Only the refined classes (:meth:`refined_classes`, with ``background`` and
        ``regions``) are decoded again, every image's in one decoder call
        (``DPSeg.decode_per_image``); the others keep round I's logits, which are what a full
        second decode would give them (the decoder treats classes alone).
        ``reuse_logits`` writes round II's logits into ``first.logits`` instead of a copy (one
        (B, K, H, W) copy less: ``forward`` does, as nothing else sees round I there).
        """
        labels = class_labels(first.logits, dim=1)  # (B, H, W)
        classes_per_image, maps = self.refined_classes(
            labels, prompts.num_classes, background, regions
        )
        out = first.logits if reuse_logits else first.logits.clone()
        mean = class_mean(prompts, self.model.config.prompt_mode)  # round I's centre, kept
        if not any(len(c) for c in classes_per_image):
            return out
        encoded = self.encode_regions(images, maps, classes_per_image, first.features)
        todo = [b for b, classes in enumerate(classes_per_image) if len(classes)]
        refined = [self._with_visual(prompts, classes_per_image[b], *encoded[b]) for b in todo]
        features = BackboneFeatures(
            first.features.dense[todo], [lv[todo] for lv in first.features.levels]
        )
        # every image's refined classes in one decoder call, each with its own crops' prompts
        logits = self.model.decode_per_image(
            images.shape[-2:], features, refined, [classes_per_image[b] for b in todo], mean
        )
        for b, image_logits in zip(todo, logits):
            out[b, classes_per_image[b].to(out.device)] = image_logits
        return out
