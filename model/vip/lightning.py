"""VIP for ``cli.py test|predict --config configs/vip_*.yaml`` (no training, no checkpoint).

Per test dataset: its alias vocabulary (``vocabularies: {dataset: FILE}``; default the
dataset's own class list, whose synonyms then serve as aliases), the alias queries encoded once,
and optionally a prompt bank whose visual prompts join the text queries (``dual_prompts``).
Evaluation, results and label maps are ``model.evaluation.SegmentationModule``'s.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict

import torch

from data.catalog import get_dataset_spec
from data.templates import load_templates
from data.vocabulary import VocabularyError, load_vocabulary
from model.evaluation import SegmentationModule
from model.factory import build_vip
from model.vip.aggregation import VIPConfig, assign_labels
from model.vip.segmenter import AliasQueries, encode_aliases

log = logging.getLogger(__name__)


def _vip_config(value) -> VIPConfig:
    if value is None:
        return VIPConfig()
    return VIPConfig(**value) if isinstance(value, dict) else copy.deepcopy(value)


class VIPModule(SegmentationModule):
    """Training-free VIP over dino.txt (VIP's encoder) or an open_clip CLIP (ours).

    Args:
        encoder: encoder preset (``cli.py presets``): ``dinotxt-l16`` (VIP's), ``tiny-dinotxt``
            and ``tiny-vit`` offline, or a CLIP.
        encoder_weights: local weights file or folder instead of the hub (``dinotxt-l16``: the
            folder holding its two official files).
        attention: the dense path; dino.txt: ``proxy`` (VIP's proxy head, its default) or
            ``none`` (the plain head); a CLIP ViT's last block: ``clear`` (ClearCLIP, its
            default), ``sclip``, ``vanilla``, ``proxy``, ``none``; ConvNeXt: ``proxy`` or ``none``.
        templates: ``seg`` and ``city`` (VIP's sets), ``imagenet80`` (also ``imagenet80:N``),
            ``single`` or a file.
        vip: logit scale, tau, prob_thd, background handling, alias weight scale.
        vocabularies: alias vocabulary per dataset name (a name in ``$DPSEG_VOCAB_DIR``, a
            file, or an inline list); its K must be the dataset's.
        allow_duplicate_classes: accept exactly repeated classes (VIP's ADE file repeats
            ``shower``).
        alias_separator: what splits a line of an alias file into aliases: ``", "``, as VIP's
            reference reads its files (``"farmland,forest area"`` is one alias; ``","`` would
            make it two and change Potsdam's, Vaihingen's, iSAID's and VDD's queries).
        dual_prompts: a prompt bank built with the same encoder: its visual prompts join the
            text queries (``vip.visual_weight``). A ``bank`` given with a test dataset in
            ``data.test`` is used for that dataset instead.
        test_protocol: ``vip`` (short side 336, crop 336, stride 112) or another protocol.
        results_dir: where ``test`` writes metrics.
    """

    method_name = "vip"
    trainable = False
    unassigned_predictions = True  # background="ignore": low-confidence pixels get no class

    def __init__(
        self,
        encoder: str = "dinotxt-l16",
        encoder_weights: str | None = None,
        attention: str | None = None,
        templates: str = "imagenet80",
        vip: VIPConfig | None = None,
        vocabularies: dict[str, str] | None = None,
        allow_duplicate_classes: bool = False,
        alias_separator: str = ", ",
        dual_prompts: str | None = None,
        test_protocol: str = "vip",
        results_dir: str | None = None,
    ):
        super().__init__(test_protocol, results_dir)
        self.config = _vip_config(vip)
        self.encoder_name = encoder
        self.templates_spec = templates
        self.templates = load_templates(templates)
        self.vocabularies = dict(vocabularies or {})
        self.allow_duplicate_classes = allow_duplicate_classes
        self.alias_separator = alias_separator
        self.dual_prompts = dual_prompts
        parts = build_vip(
            encoder, attention, self.config, encoder_weights, option="--model.encoder_weights"
        )
        self.encoder_fingerprint = parts.fingerprint
        self.encoder_source = parts.weights
        self.attention = parts.attention
        self.segmenter = parts.segmenter
        # The text tower is used once per vocabulary; kept out of the module's parameters.
        self._text = {"encoder": parts.text_encoder, "tokenizer": parts.tokenizer}
        self._queries: dict[str, AliasQueries] = {}
        self._records: dict[str, dict] = {}
        self.requires_grad_(False)

    # -- queries ----------------------------------------------------------------------------

    def alias_vocabulary(self, dataset: str):
        """The dataset's alias vocabulary, checked against its number of classes."""
        spec = get_dataset_spec(dataset)
        source = self.vocabularies.get(dataset, spec.vocabulary)
        vocabulary = load_vocabulary(
            source, allow_duplicates=self.allow_duplicate_classes, separator=self.alias_separator
        )
        if len(vocabulary) != spec.num_classes:
            raise VocabularyError(
                f"vocabulary {source!r} for dataset {dataset!r} has {len(vocabulary)} classes but "
                f"the dataset's labels have {spec.num_classes} ({spec.vocabulary}); give its alias "
                f"file with --model.vocabularies '{{{dataset}: FILE}}' (one line per class, in "
                "label order)"
            )
        return vocabulary

    def encode_vocabulary(self, vocabulary, bank=None) -> AliasQueries:
        """Alias queries of a vocabulary, with the visual prompts of ``bank`` (a location or an
        opened ``prompt_bank.store.Bank``) if given."""
        encoder = self._text["encoder"].to(self.device)
        queries = encode_aliases(encoder, vocabulary, self.templates, self._text["tokenizer"])
        if bank is not None:
            queries.visual = self.visual_prompts(bank, vocabulary)
        return queries

    def visual_prompts(self, bank, vocabulary) -> torch.Tensor:
        """A bank's visual prompts of the vocabulary's classes: (K, P, D) per template when the
        bank has VIP's templates (in its order), else (K, 1, D) its templates' normalised mean."""
        from model.prompts import load_prompts
        from prompt_bank.store import Bank

        opened = bank if isinstance(bank, Bank) else Bank.open(bank)
        prompts = load_prompts(
            opened,
            vocabulary,
            encoder_preset=self.encoder_name,
            encoder_fingerprint=self.encoder_fingerprint,
        )
        visual = prompts.visual.float()  # (K, P', D)
        if list(opened.templates) == list(self.templates):
            return visual
        return torch.nn.functional.normalize(visual.mean(dim=1, keepdim=True), dim=-1)

    def prepare_dataset(self, dataset: str, bank: str | None) -> None:
        from prompt_bank.store import Bank

        location = bank or self.dual_prompts
        opened = Bank.open(location) if location is not None else None  # opened once
        vocabulary = self.alias_vocabulary(dataset)
        queries = self.encode_vocabulary(vocabulary, opened)
        self._queries[dataset] = queries
        record = {
            "method": "VIP",
            "encoder": self.encoder_name,
            "attention": self.attention,
            "templates": f"{self.templates_spec} ({len(self.templates)})",
            "vocabulary": vocabulary.source,
            "classes": len(vocabulary),
            "aliases": len(queries.aliases),
            "vip": asdict(self.config),
            "low_confidence": self.low_confidence_rule(),
            "dual_prompts": None,
        }
        if opened is not None:
            from model.prompts import BankProvenance

            record["dual_prompts"] = asdict(BankProvenance.of(opened))
            per_template = queries.visual.shape[1] == len(self.templates) > 1
            record["dual_prompts"]["fusion"] = (
                f"normalize({1 - self.config.visual_weight:g} t + {self.config.visual_weight:g} v) "
                + ("per template" if per_template else "with v the mean of the bank's templates")
            )
        self._records[dataset] = record
        log.info(
            "VIP on %s: %d classes, %d aliases, %s%s",
            dataset,
            len(vocabulary),
            len(queries.aliases),
            record["low_confidence"],
            f", dual prompts from {location}" if location else "",
        )
        if self.config.prob_thd > 0 and self.config.background == "ignore":
            log.warning(
                "%s: pixels under prob_thd=%.2f get no class (a miss, never a false positive), "
                "which inflates mIoU compared with a method that labels every pixel",
                dataset,
                self.config.prob_thd,
            )

    def low_confidence_rule(self) -> str:
        c = self.config
        if c.prob_thd <= 0:
            return "none (prob_thd 0: every pixel takes its argmax)"
        if c.background == "class":
            return f"top probability < {c.prob_thd} -> class {c.background_id} (background)"
        return (
            f"top probability < {c.prob_thd} -> no class (scored as a miss of the ground-truth "
            "class and nobody's false positive, as mmseg scores the reference's 255: this "
            "inflates mIoU against labelling every pixel)"
        )

    def queries_for(self, dataset: str) -> AliasQueries:
        return self.on_device(self._queries, dataset, "queries", "prepare_dataset")

    # -- segmentation -----------------------------------------------------------------------

    def forward(self, images: torch.Tensor, queries: AliasQueries) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> class logits (B, K, h, w) (x logit scale)."""
        return self.segmenter(images, queries)

    @torch.no_grad()
    def segment(self, image: torch.Tensor, dataset: str) -> torch.Tensor:
        queries = self.queries_for(dataset)
        return self.protocol()(lambda x: self.segmenter(x, queries), image)

    def predict_labels(self, image: torch.Tensor, dataset: str) -> torch.Tensor:
        return assign_labels(self.segment(image, dataset)[None], self.config)[0]

    def run_record(self, dataset: str) -> dict:
        return self._records.get(dataset, {})

    def summary_label(self) -> str:
        dual = (
            ", dual prompts" if any(r.get("dual_prompts") for r in self._records.values()) else ""
        )
        return f"VIP ({self.encoder_name}, {self.attention}{dual})"
