"""DPSeg in Lightning: training loss and optimiser, prompts from banks, evaluation and results.

The pure model (``model.dpseg.DPSeg``, ``model.refine.TwoRoundSegmenter``) never reads a file;
this wrapper loads each dataset's prompts from its bank (``model.prompts``), checks the bank's
encoder against the model's frozen prompt encoder, and writes metrics (docs/design.md §8.2).

Trainable: the image encoder (``backbone``, lr x ``encoder_lr_mult``), cost embedding and
decoder. Frozen and not checkpointed: the prompt encoder (the original CLIP of the preset, for
round II crops and text-only classes). The checkpoint holds plain types only (hyper-parameters
as dicts, provenance as strings), so ``torch.load(..., weights_only=True)`` reads it.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from common.errors import SettingError
from common.settings import check_fields
from data.catalog import IGNORE_INDEX, DatasetError, get_dataset_spec
from data.templates import SINGLE_TEMPLATE
from data.transforms import ResizeSquare
from data.vocabulary import load_vocabulary
from model.cost_volume import Prompts
from model.data_module import stack_images
from model.dpseg import DPSeg, DPSegConfig
from model.evaluation import SegmentationModule
from model.factory import build_dpseg
from model.prompts import BankProvenance, check_bank_encoder, load_prompts
from model.refine import RefineConfig, background_class
from pretrained.backbone import ClipEncoder
from pretrained.fingerprint import fingerprint_mismatch, package_versions
from prompt_bank.format import BankMismatchError

log = logging.getLogger(__name__)

IgnoreMode = Literal["negative", "mask"]
IGNORE_MODES: tuple[str, ...] = get_args(IgnoreMode)


@dataclass
class OptimConfig:
    """AdamW, lr 2e-4 (the paper's, as its 80k iterations at batch 4 in configs/dpseg_*.yaml).
    Ours (SED-like; configs/README.md): weight decay, the encoder's lr x 0.01, the cosine
    schedule, warm-up and the final lr ratio."""

    lr: float = 2e-4
    weight_decay: float = 1e-4
    encoder_lr_mult: float = 0.01  # image encoder lr = lr x this (1.0 for random tiny encoders)
    warmup_steps: int = 0  # linear warm-up before the cosine decay
    min_lr_ratio: float = 0.0  # the cosine ends at lr x this

    def __post_init__(self) -> None:
        check_fields(
            self,
            "model.optim",
            lr="> 0",
            weight_decay=">= 0",
            encoder_lr_mult=">= 0",
            warmup_steps=">= 0",
            min_lr_ratio=">= 0",
        )


@dataclass
class LossConfig:
    """Per-pixel BCE over the K classes (docs/design.md §2.4) and an optional auxiliary term."""

    ignore_mode: str = "negative"  # "negative": ignore pixels are negatives (SED,
    # CAT-Seg); "mask": they are left out of the loss
    aux_weight: float = 0.0  # cross-entropy on the cost volume itself (docs/design.md §6; 0 = off)
    aux_scale: float = 10.0  # cosine x this = the auxiliary logits
    classes_per_image: int | None = None  # (ours) decode each training image's present classes
    # plus random absent ones up to this many (more if more are present); None: all K, as
    # the paper's loss over the training vocabulary
    hard_classes: int = 0  # (ours) of those absent ones, this many are the image's hardest: the
    # absent classes its cost volume scores highest (hard negatives); the rest are random
    coarse_weight: float = 1.0  # (ours) BCE of the decoder's coarse head (where each class is,
    # at 1/16 of the image): class early rejection's detector, and a deep supervision of the
    # decoder's first stage, as SED supervises its layers (0: off, and rejection untrained)

    def __post_init__(self) -> None:
        check_fields(
            self,
            "model.loss",
            ignore_mode=IgnoreMode,
            aux_weight=">= 0",
            coarse_weight=">= 0",
            classes_per_image=">= 1",
            hard_classes=">= 0",
        )


def _as(cls, value):
    """A config dataclass from itself or a dict (hyper-parameters of a checkpoint are dicts)."""
    if value is None:
        return cls()
    return cls(**value) if isinstance(value, dict) else copy.deepcopy(value)


def bce_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_mode: str) -> torch.Tensor:
    """logits (B, K, H, W), labels (B, H, W) with IGNORE_INDEX -> mean per-pixel BCE.

    ``negative``: an ignore pixel is a negative for every class; ``mask``: it is left out.
    """
    valid = labels != IGNORE_INDEX
    target = torch.zeros_like(logits)  # one-hot in the logits' dtype (no int64 K-fold copy)
    target.scatter_(1, labels.clamp(min=0)[:, None], valid[:, None].to(logits.dtype))
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if ignore_mode == "mask":
        weight = valid[:, None].expand_as(loss).to(loss.dtype)
        return (loss * weight).sum() / weight.sum().clamp(min=1)
    return loss.mean()


def sample_classes(
    labels: torch.Tensor,
    num_classes: int,
    count: int,
    generator: torch.Generator,
    hardness: torch.Tensor | None = None,
    hard: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The classes each training image decodes: those present in its labels, then absent ones,
    k = max(count, most present in an image) per image, capped at ``num_classes``. The absent
    ones are the ``hard`` with the highest ``hardness`` (B, num_classes), then random ones.

    Args:
        labels: (B, H, W) ids in [0, num_classes) or IGNORE_INDEX.

    Returns:
        classes (B, k) ascending ids, and the labels (B, H, W) renumbered to positions in them
        (IGNORE_INDEX kept).
    """
    valid = labels != IGNORE_INDEX
    # every pixel marks its class; ignore pixels mark an extra bin that is dropped (one value
    # for every write, so the order of the writes does not matter)
    bins = torch.zeros(labels.shape[0], num_classes + 1, dtype=torch.bool, device=labels.device)
    bins.scatter_(1, torch.where(valid, labels, num_classes).flatten(1), True)
    present = bins[:, :num_classes]
    k = min(num_classes, max(count, int(present.sum(dim=1).max())))
    # present classes first (score 4), then the hardest absent ones (score 2), then absent
    # ones in a random order (score in [0, 1))
    score = present.float() * 4 + torch.rand(present.shape, generator=generator).to(labels.device)
    if hardness is not None and hard > 0:
        ranked = hardness.masked_fill(present, float("-inf"))
        top = ranked.topk(min(hard, num_classes), dim=1).indices
        score.scatter_add_(1, top, (~present).gather(1, top).float() * 2)
    chosen = score.topk(k, dim=1).indices.sort(dim=1).values
    position = torch.full_like(present, 0, dtype=torch.long)
    position.scatter_(1, chosen, torch.arange(k, device=labels.device).expand_as(chosen))
    renumbered = torch.where(
        valid, position.gather(1, torch.where(valid, labels, 0).flatten(1)).view_as(labels), labels
    )
    return chosen, renumbered


def cost_aux_loss(cost: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """Cross-entropy of the template-averaged cost volume (B, P, K, h, w) x scale, upsampled."""
    logits = F.interpolate(
        cost.mean(dim=1) * scale, size=labels.shape[-2:], mode="bilinear", align_corners=False
    )
    if not (labels != IGNORE_INDEX).any():
        return logits.sum() * 0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def coarse_loss(coarse: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE of the coarse head's logits (B, K, h, w) against where each class is: a cell is
    positive for a class with any pixel of it there (labels (B, H, W), IGNORE_INDEX counts for
    none). What class early rejection's detector learns (``model.rejection``; ours)."""
    valid = labels != IGNORE_INDEX
    target = torch.zeros(
        *coarse.shape[:2], *labels.shape[-2:], dtype=coarse.dtype, device=coarse.device
    )
    target.scatter_(1, labels.clamp(min=0)[:, None], valid[:, None].to(coarse.dtype))
    present = F.adaptive_max_pool2d(target, coarse.shape[-2:])
    return F.binary_cross_entropy_with_logits(coarse, present)


def _regions_without_truth() -> SettingError:
    return SettingError(
        "--model.inference.regions true cuts round I's classes from the true label map, which "
        "predict and segment do not have; set it false (test and validate only)"
    )


class DPSegModule(SegmentationModule):
    """DPSeg for ``cli.py fit|validate|test|predict``.

    Args:
        encoder: encoder preset of the image and prompt encoders (``cli.py presets``); the
            banks must be built with it (checked by fingerprint).
        encoder_weights: local weights file or folder instead of the hub.
        image_size: input size of a ViT encoder (positional embedding resampled; linked to
            ``data.crop``); ignored by ConvNeXt.
        num_templates: P of the banks (linked to the data module, which reads it from them).
        dpseg: model settings (prompt mode, F_v levels, decoder sizes, class chunk).
        optim: AdamW and schedule. loss: BCE ignore mode and auxiliary loss.
        inference: rounds (1 or 2), detection area, crop policy, which classes round II
            refines (``refine_background``) and the ``regions`` oracle (test only).
        test_protocol: ``sed`` (768 square), ``catseg`` (sliding windows), ``vip``, ``resize:N``.
        allow_text_only: classes missing from a bank get text prompts (warning) instead of an
            error.
        results_dir: where ``test`` writes metrics (default: the logger's folder /results).
    """

    method_name = "dpseg"

    def __init__(
        self,
        encoder: str = "convnext-b-laion",
        encoder_weights: str | None = None,
        image_size: int | None = None,
        num_templates: int | None = 80,
        dpseg: DPSegConfig | None = None,
        optim: OptimConfig | None = None,
        loss: LossConfig | None = None,
        inference: RefineConfig | None = None,
        test_protocol: str = "sed",
        allow_text_only: bool = False,
        results_dir: str | None = None,
    ):
        super().__init__(test_protocol, results_dir)
        if num_templates is None:  # linked from data.num_templates: no bank was found
            raise DatasetError(
                "no bank of data.train/val/test is here, so the number of templates "
                "(model.num_templates) is unknown; build them (make bank VOCAB=...) or fix the "
                "paths"
            )
        if num_templates < 1:
            raise SettingError(
                f"model.num_templates={num_templates}: the templates P of the banks, must be >= 1"
            )
        self.dpseg_config = _as(DPSegConfig, dpseg)
        self.optim_config = _as(OptimConfig, optim)
        self.loss_config = _as(LossConfig, loss)
        self.inference_config = _as(RefineConfig, inference)
        self.check_regions_protocol()  # before any weights or data are read
        # Inference settings are not hyper-parameters: LightningCLI puts a checkpoint's
        # hyper-parameters over the command line, and `test --model.inference.rounds 2` on a
        # checkpoint must mean what it says. Plain dicts, not dataclasses: weights_only=True.
        self.save_hyperparameters(
            ignore=[
                "dpseg",
                "optim",
                "loss",
                "inference",
                "test_protocol",
                "results_dir",
                "allow_text_only",
            ]
        )
        # class_chunk only bounds memory (any value, the same logits): the machine's choice.
        dpseg_saved = {k: v for k, v in asdict(self.dpseg_config).items() if k != "class_chunk"}
        self.hparams.update(
            dpseg=dpseg_saved,
            optim=asdict(self.optim_config),
            loss=asdict(self.loss_config),
        )
        self.allow_text_only = allow_text_only
        if image_size is not None and image_size < 1:
            raise SettingError(f"model.image_size={image_size}: must be >= 1 (or null)")
        parts = build_dpseg(
            encoder,
            num_templates,
            self.dpseg_config,
            self.inference_config,
            encoder_weights=encoder_weights,
            image_size=image_size,
        )
        self.encoder_fingerprint = parts.fingerprint
        self.encoder_source = parts.weights
        self.encoder_record = {"revision": parts.preset.revision, "license": parts.preset.license}
        # The frozen prompt encoder and its tokenizer: kept out of the state dict.
        self._frozen = {"prompt_encoder": parts.prompt_encoder, "tokenizer": parts.tokenizer}
        self.level_dims = parts.level_dims
        self.segmenter = parts.segmenter
        model = parts.model
        if self.optim_config.encoder_lr_mult == 0:  # frozen before DDP wraps the module
            model.backbone.requires_grad_(False)
        self._prompts: dict[str, Prompts] = {}
        self._prompt_banks: dict[str, str | None] = {}
        self._backgrounds: dict[str, int | None] = {}  # the id of a class named "background"
        self._rejection: dict[str, list[int]] = {}  # per dataset: class early rejection counts
        self.loaded_provenance: dict = {}  # the "dpseg" record of the checkpoint loaded, if any
        self._provenance: dict[str, dict] = {}
        self.train()  # the frozen encoder stays in eval mode; training toggles the rest per stage

    # -- parts ------------------------------------------------------------------------------

    @property
    def model(self) -> DPSeg:
        return self.segmenter.model

    @property
    def prompt_encoder(self) -> ClipEncoder:
        enc = self._frozen["prompt_encoder"]
        if enc.mean.device != self.device:
            enc.to(self.device)
        return enc

    def _text_prompts(self, classes, templates) -> torch.Tensor:
        with torch.no_grad():
            return self.prompt_encoder.encode_class_texts(
                classes, templates, self._frozen["tokenizer"]
            )

    # -- prompts from banks -----------------------------------------------------------------

    def _start(self) -> None:
        """Also the frozen prompt encoder on the module's device: it is not a submodule, so
        Lightning does not move it."""
        self._frozen["prompt_encoder"].to(self.device)
        super()._start()

    def on_fit_start(self) -> None:
        self._start()

    def prepare_dataset(self, dataset: str, bank: str | None) -> None:
        self.add_prompts(dataset, bank)

    def add_prompts(self, dataset: str, bank: str | None) -> Prompts:
        """Load (once per bank) the prompts of a dataset's vocabulary from its bank."""
        if dataset in self._prompts and self._prompt_banks.get(dataset) == bank:
            return self._prompts[dataset]
        from prompt_bank.store import Bank

        spec = get_dataset_spec(dataset)
        vocabulary = load_vocabulary(spec.vocabulary)
        if bank is None:
            if not self.allow_text_only:
                raise BankMismatchError(
                    f"dataset {dataset!r} has no bank; give one ({{dataset: {dataset}, bank: "
                    "PATH}}) or pass --model.allow_text_only true for text prompts only"
                )
            prompts = self.text_only_prompts(vocabulary)
        else:
            opened = self.check_bank(Bank.open(bank))
            prompts = self.bank_prompts([opened], vocabulary, self.allow_text_only)
            self._provenance[dataset] = asdict(BankProvenance.of(opened))
        self._prompts[dataset] = prompts
        self._prompt_banks[dataset] = bank
        self._backgrounds[dataset] = background_class(vocabulary.names)
        return prompts

    def check_bank(self, bank):
        """The bank, if it was built by the model's prompt encoder and has its number of
        templates P (the cost embedding's input): checked before any class is generated for it."""
        check_bank_encoder(bank, self.hparams.encoder, self.encoder_fingerprint)
        p = self.model.num_templates
        if len(bank.templates) != p:
            raise BankMismatchError(
                f"bank {bank.location!r} has {len(bank.templates)} templates but the model was "
                f"built for {p}; use a bank built with the model's templates (--templates)"
            )
        return bank

    def bank_prompts(self, banks: list, vocabulary, allow_text_only: bool) -> Prompts:
        """``model.prompts.load_prompts`` checked against this model's prompt encoder."""
        return load_prompts(
            banks,
            vocabulary,
            encoder_preset=self.hparams.encoder,
            encoder_fingerprint=self.encoder_fingerprint,
            text_encoder=self._text_prompts,
            allow_text_only=allow_text_only,
        )

    def text_only_prompts(self, vocabulary) -> Prompts:
        """Prompts without a bank: one template's text prompt in each of the model's P slots,
        the visual prompt equal to it (so ``avg`` is text), level prompts zero."""
        text = self._text_prompts(vocabulary.classes, [SINGLE_TEMPLATE]).float().cpu()
        text = text.expand(-1, self.model.num_templates, -1).contiguous()
        levels = [torch.zeros(len(vocabulary), c) for c in self.level_dims]
        return Prompts(text, text.clone(), levels)

    def prompts_for(self, dataset: str) -> Prompts:
        return self.on_device(self._prompts, dataset, "prompts", "add_prompts")

    # -- training ---------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> logits (B, K, H, W) (rounds as configured)."""
        return self.segmenter(images, prompts)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        dataset = self.trainer.datamodule.pairs("train")[0].dataset
        images, labels = stack_images(batch), batch["label"]
        prompts = self.prompts_for(dataset)
        count = self.loss_config.classes_per_image
        if count is None or count >= prompts.num_classes:
            out = self.model(images, prompts)
        else:  # each image decodes its own classes; the draw is a function of seed and step
            generator = torch.Generator().manual_seed(
                hash((torch.initial_seed(), self.global_step)) % 2**63
            )
            features = self.model.backbone(images)
            hard = self.loss_config.hard_classes
            hardness = self.model.class_scores(features, prompts) if hard else None
            classes, labels = sample_classes(
                labels.long(), prompts.num_classes, count, generator, hardness, hard
            )
            out = self.model.decode_classes(
                images.shape[-2:], features, [prompts] * len(images), list(classes)
            )
        bce = bce_loss(out.logits, labels, self.loss_config.ignore_mode)
        loss = bce
        if self.loss_config.aux_weight > 0:
            aux = cost_aux_loss(out.cost, labels, self.loss_config.aux_scale)
            loss = loss + self.loss_config.aux_weight * aux
            self.log("train/aux", aux)
        if self.loss_config.coarse_weight > 0:
            coarse = coarse_loss(out.coarse, labels)
            loss = loss + self.loss_config.coarse_weight * coarse
            self.log("train/coarse", coarse)
        self.log("train/bce", bce)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        cfg = self.optim_config
        encoder = [p for p in self.model.backbone.parameters() if p.requires_grad]
        encoder_ids = {id(p) for p in encoder}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in encoder_ids]
        groups = [{"params": rest, "lr": cfg.lr}]
        if encoder:
            groups.append({"params": encoder, "lr": cfg.lr * cfg.encoder_lr_mult})
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))

        def factor(step: int) -> float:
            if step < cfg.warmup_steps:
                return (step + 1) / cfg.warmup_steps
            t = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # -- evaluation (loops and results: model.evaluation) -----------------------------------

    def segment(
        self, image: torch.Tensor, dataset: str, truth: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One image (3, H, W) in [0, 1] -> logits (K, H, W) by the test protocol and rounds.

        ``truth``: the image's true label map (H, W), for ``inference.regions`` (ignored
        otherwise); round II sees it at the geometry of the image the protocol feeds
        (nearest-neighbour). The dataset's background class (a class named "background") goes
        to round II for ``inference.refine_background``.
        """
        prompts = self.prompts_for(dataset)
        config = self.segmenter.config = self.inference_config
        background = self._backgrounds.get(dataset)
        self.segmenter.kept = None  # the classes round I keeps in this image (rejection)
        if not config.regions:
            return self.protocol()(lambda x: self.segmenter(x, prompts, background), image)
        self.check_regions_protocol()
        if truth is None:
            raise _regions_without_truth()

        def logits(x: torch.Tensor) -> torch.Tensor:
            regions = F.interpolate(
                truth.to(x.device)[None, None].float(), size=x.shape[-2:], mode="nearest"
            )[:, 0].long()
            return self.segmenter(x, prompts, background, regions.expand(len(x), -1, -1))

        return self.protocol()(logits, image)

    def takes_truth(self) -> bool:
        return self.inference_config.regions

    def observe_truth(self, dataset: str, truth: torch.Tensor) -> None:
        """With class early rejection: count the image's true classes and those round I kept
        (its recall), and the classes kept."""
        kept = self.segmenter.kept
        if kept is None:
            return
        present = truth.unique().cpu()
        present = present[(present >= 0) & (present < len(kept))]
        counts = self._rejection.setdefault(dataset, [0] * 5)
        for i, n in enumerate(
            (1, len(present), int(kept[present].sum()), int(kept.sum()), len(kept))
        ):
            counts[i] += n  # images, true classes, kept true classes, kept classes, classes

    def on_test_start(self) -> None:
        self._rejection.clear()
        super().on_test_start()

    def on_test_epoch_end(self) -> None:
        """Rejection's counts summed over ranks (every rank, before the results are written)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for dataset in self._eval_datasets("test"):
                total = torch.tensor(self._rejection.get(dataset, [0] * 5), device=self.device)
                dist.all_reduce(total)
                if total[0]:
                    self._rejection[dataset] = total.tolist()
        super().on_test_epoch_end()

    def rejection_record(self, dataset: str) -> dict | None:
        """Class early rejection's figures on a test dataset (None when it was off): its recall
        (the share of the images' true classes that round I kept, over all images) and the
        classes decoded per image."""
        counts = self._rejection.get(dataset)
        if counts is None:
            return None
        images, true, kept_true, kept, classes = counts
        return {
            "threshold": self.inference_config.rejection_threshold,
            "top_k": self.inference_config.rejection_top_k,
            "max_classes": self.inference_config.rejection_max_classes,
            "order": self.inference_config.rejection_order,
            "recall": kept_true / max(true, 1),
            "kept_per_image": kept / max(images, 1),
            "classes": classes // max(images, 1),
            "images": images,
        }

    def on_predict_start(self) -> None:
        if self.inference_config.regions:  # before any image: predict has no labels
            raise _regions_without_truth()
        super().on_predict_start()

    def check_regions_protocol(self) -> None:
        """``inference.regions`` needs a protocol that feeds the whole image (``sed``,
        ``resize:N``): a window's true regions are not cut (SettingError otherwise)."""
        if self.inference_config.regions and not isinstance(self.protocol(), ResizeSquare):
            raise SettingError(
                f"--model.inference.regions true with --model.test_protocol "
                f"{self.test_protocol}: the true regions are given for whole images only; use "
                "a protocol that feeds the whole image (sed, resize:N)"
            )

    def run_record(self, dataset: str) -> dict:
        return {
            "rounds": self.inference_config.rounds,
            "inference": asdict(self.inference_config),
            "prompt_mode": self.dpseg_config.prompt_mode,
            "encoder": self.hparams.encoder,
            "bank": self._provenance.get(dataset),
            "rejection": self.rejection_record(dataset),
        }

    def summary_label(self) -> str:
        oracle = ", true regions" if self.inference_config.regions else ""
        return f"DPSeg ({self.hparams.encoder}, round {self.inference_config.rounds}{oracle})"

    # -- checkpoints ------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["dpseg"] = {
            "encoder": {
                "preset": self.hparams.encoder,
                "fingerprint": self.encoder_fingerprint,
                "weights": self.encoder_source,
                **self.encoder_record,
                "packages": package_versions(),
            },
            "banks": copy.deepcopy(self._provenance),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.loaded_provenance = copy.deepcopy(checkpoint.get("dpseg", {}))
        state = checkpoint.get("state_dict", {})
        head = {k: v for k, v in self.state_dict().items() if ".coarse_head." in k}
        if state and head and not any(k in state for k in head):
            # a checkpoint from before class early rejection: everything else loads; the head
            # keeps its initial weights, and rejection refuses to run with it (model.refine)
            state.update(head)
            self.segmenter.detector_trained = False
        saved = checkpoint.get("dpseg", {}).get("encoder", {})
        if saved and saved.get("fingerprint") != self.encoder_fingerprint:
            mismatch = fingerprint_mismatch(
                "the checkpoint",
                str(saved.get("preset")),
                str(saved.get("fingerprint")),
                self.hparams.encoder,
                self.encoder_fingerprint,
                saved.get("packages"),
            )
            raise ValueError(
                f"{mismatch}: the encoder weights found here are not the ones it was trained "
                "from; put those in the Hugging Face cache (or at the checkpoint's "
                "hyper_parameters.encoder_weights)"
            )
