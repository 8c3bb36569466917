"""Segment any images with VIP and any vocabulary (``cli.py segment --method vip``).

    predictor = VIPPredictor.from_config("configs/vip_voc21.yaml")   # or encoder="tiny-vit"
    predictor.set_vocabulary("cat, kitty; dog; grass")               # aliases after commas
    labels = predictor.predict(image)          # (H, W) class ids for an (H, W, 3) uint8 image

The same outputs as DPSeg's predictor (``model.predictor.predict_images``): label map, overlay,
class areas. Every pixel gets a class: low-confidence pixels go to ``vip.background_id`` when
``vip.background`` is ``class`` and ``prob_thd > 0``; with ``ignore`` they keep their argmax
(an unlabelled pixel has no colour to paint).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data.transforms import image_tensor
from data.vocabulary import load_vocabulary
from model.labels import class_labels
from model.lightning_cli import read_config
from model.vip.aggregation import assign_labels
from model.vip.lightning import VIPModule

PREDICT_IGNORES = ("vocabularies", "results_dir", "dual_prompts")
"""Settings of a test config that mean nothing for free-form images."""


class VIPPredictor:
    def __init__(self, module: VIPModule, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = module.to(self.device).eval()
        self.vocabulary = None
        self.queries = None
        self.sources: dict[str, str] = {}

    @classmethod
    def from_config(
        cls,
        config: str | Path | None = None,
        encoder: str | None = None,
        device: str | None = None,
    ) -> VIPPredictor:
        """VIP with the ``model:`` settings of a ``configs/vip_*.yaml`` (default: VIPModule's
        defaults), the encoder optionally replaced."""
        settings: dict = {}
        if config is not None:
            loaded = read_config(str(config)) or {}  # not UTF-8 or not YAML: one line
            settings = dict(loaded.get("model") or {})
            if loaded.get("method", "vip") != "vip":
                raise ValueError(f"--config {str(config)!r} is not a VIP config (method: vip)")
        for key in PREDICT_IGNORES:
            settings.pop(key, None)
        if encoder is not None:
            settings["encoder"] = encoder
        return cls(VIPModule(**settings), device)

    def set_vocabulary(self, vocabulary, bank: str | None = None):
        """Alias queries of ``vocabulary`` (synonyms are aliases), with a bank's visual prompts."""
        vocab = load_vocabulary(vocabulary)
        with torch.no_grad():
            self.queries = self.module.encode_vocabulary(vocab, bank).to(self.device)
        self.vocabulary = vocab
        kind = "text+visual (dual)" if bank else "text"
        self.sources = {c.name: f"{kind}, {len(c.synonyms)} aliases" for c in vocab}
        return self.queries

    @torch.no_grad()
    def logits(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> (K, H, W) class logits (x logit scale)."""
        if self.queries is None:
            raise RuntimeError("call set_vocabulary first")
        x = image_tensor(image)
        segmenter, queries = self.module.segmenter, self.queries
        return self.module.protocol()(lambda b: segmenter(b, queries), x.to(self.device))

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, W) int64 class ids of the vocabulary."""
        logits = self.logits(image)
        config = self.module.config
        if config.prob_thd > 0 and config.background == "class":
            return assign_labels(logits[None], config)[0].cpu().numpy()
        return class_labels(logits, dim=0).cpu().numpy()
