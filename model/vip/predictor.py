"""Segment any images with VIP and any vocabulary (``cli.py segment --method vip``).

    predictor = VIPPredictor.from_config("configs/vip_voc21.yaml")   # or encoder="tiny-vit"
    predictor.set_vocabulary("cat, kitty; dog; grass")               # aliases after commas
    labels = predictor.predict(image)          # (H, W) class ids for an (H, W, 3) uint8 image
    maps = predictor.predict_batch([image, other])   # grey, RGBA, floats in [0, 1] too

The same outputs as DPSeg's predictor (``model.predictor.predict_images``): label map, overlay,
class areas. Every pixel gets a class: low-confidence pixels go to ``vip.background_id`` when
``vip.background`` is ``class`` and ``prob_thd > 0``; with ``ignore`` they keep their argmax
(an unlabelled pixel has no colour to paint).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch

from common.config_files import read_config
from common.errors import SettingError, check_device
from data.transforms import image_tensor, rgb_uint8
from data.vocabulary import load_vocabulary
from model.labels import class_labels
from model.predictor import ImagePredictor
from model.vip.aggregation import assign_labels
from model.vip.lightning import VIPModule

PREDICT_IGNORES = ("vocabularies", "results_dir", "dual_prompts")
"""Settings of a test config that mean nothing for free-form images."""


class VIPPredictor(ImagePredictor):
    def __init__(self, module: VIPModule, device: str | None = None):
        self.device = torch.device(check_device(device))
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
        option: str = "--config",
    ) -> VIPPredictor:
        """VIP with the ``model:`` settings of a ``configs/vip_*.yaml`` (default: VIPModule's
        defaults), the encoder optionally replaced; ``option``: how the file was given, for
        messages (the app's ``--vip-config``)."""
        check_device(device)  # before the encoder is built
        settings: dict = {}
        if config is not None:
            settings = _vip_settings(config, option)
        for key in PREDICT_IGNORES:
            settings.pop(key, None)
        if encoder is not None:
            settings["encoder"] = encoder
        from pretrained.hub import WeightsUnavailableError

        try:
            module = VIPModule(**settings)
        except WeightsUnavailableError as e:  # name the setting this path takes
            import re

            where = (
                f"the model: section of {config}"
                if config
                else (f"the model: section of a {option} file (configs/vip_*.yaml)")
            )
            raise WeightsUnavailableError(
                re.sub(
                    r"--model\.encoder_weights (\S+)",
                    lambda m: f"encoder_weights: {m.group(1)} in {where}",
                    str(e),
                )
            ) from None
        return cls(module, device)

    def set_vocabulary(self, vocabulary, bank: str | None = None):
        """Alias queries of ``vocabulary`` (synonyms are aliases), with a bank's visual prompts."""
        vocab = load_vocabulary(vocabulary)
        with torch.no_grad():
            self.queries = self.module.encode_vocabulary(vocab, bank).to(self.device)
        self.vocabulary = vocab
        kind = "text+visual (dual)" if bank else "text"
        self.sources = {c.name: f"{kind}, {len(c.synonyms)} aliases" for c in vocab}
        return self.queries

    def settings(self):
        return self.module.config

    def vocabulary_prompts(self):
        if self.queries is None:
            raise RuntimeError("call set_vocabulary first")
        return self.queries

    @torch.no_grad()
    def logits(self, image: np.ndarray) -> torch.Tensor:
        """An image ((H, W, 3) uint8 RGB, or what ``data.transforms.rgb_uint8`` takes) ->
        (K, H, W) class logits (x logit scale)."""
        if self.queries is None:
            raise RuntimeError("call set_vocabulary first")
        x = image_tensor(rgb_uint8(image))
        segmenter, queries = self.module.segmenter, self.queries
        return self.module.protocol()(lambda b: segmenter(b, queries), x.to(self.device))

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, W) int64 class ids of the vocabulary."""
        logits = self.logits(image)
        config = self.module.config
        if config.prob_thd > 0 and config.background == "class":
            return assign_labels(logits[None], config)[0].cpu().numpy()
        return class_labels(logits, dim=0).cpu().numpy()


VIP_CLASS_PATH = f"{VIPModule.__module__}.{VIPModule.__qualname__}"
"""``model.class_path`` of a VIP config (model.vip.lightning.VIPModule)."""

VIP_CONFIG_SECTIONS = (
    "model",
    "data",
    "trainer",
    "seed_everything",
    "ckpt_path",
    "verbose",
    "weights_only",
)
"""The top-level keys a VIP config may have: those ``cli.py test --config`` takes (segment reads
only ``model:``; the others are accepted so that one file serves both)."""


def _vip_settings(config: str | Path, option: str = "--config") -> dict:
    """The ``model:`` section of a VIP config file, checked: one line naming ``option``, the
    file and what a VIP config is when the file is missing, not a mapping, another method's, or
    has keys VIPModule does not take."""
    what = (
        "a VIP config is a YAML file whose model: section has class_path: "
        f"{VIP_CLASS_PATH} and VIPModule's settings under init_args:, like configs/vip_*.yaml"
    )
    path = Path(config)
    if not path.is_file():
        from common.io import special_file_kind

        kind = special_file_kind(path)
        state = f"is {kind}, not a file" if kind else "does not exist"
        raise SettingError(f"{option} {str(config)!r} {state}; {what}")
    loaded = read_config(str(config), option)  # not UTF-8 or not YAML: one line
    if loaded is None or loaded == {}:
        raise SettingError(f"{option} {str(config)!r} is empty, not a mapping of settings; {what}")
    if not isinstance(loaded, dict):
        raise SettingError(
            f"{option} {str(config)!r} holds a YAML {type(loaded).__name__}, not a mapping; {what}"
        )
    unknown = sorted(str(k) for k in loaded if k not in VIP_CONFIG_SECTIONS)
    if unknown:  # a misspelt section (modle:) would leave every setting at its default
        raise SettingError(
            f"{option} {str(config)!r}: does not accept "
            + (
                f"option {unknown[0]!r}"
                if len(unknown) == 1
                else f"options {', '.join(map(repr, unknown))}"
            )
            + "; fix the file (a VIP "
            f"config takes the sections {', '.join(VIP_CONFIG_SECTIONS)}, like configs/vip_*.yaml)"
        )
    model = loaded.get("model") or {}
    if not isinstance(model, dict):
        raise SettingError(f"{option} {str(config)!r}: its model: section is not a mapping; {what}")
    class_path = model.get("class_path")
    if class_path is not None and str(class_path) not in (VIP_CLASS_PATH, "VIPModule"):
        raise SettingError(f"{option} {str(config)!r} is a {class_path} config, not VIP's; {what}")
    settings = (model.get("init_args") or {}) if class_path is not None else model
    if not isinstance(settings, dict):
        raise SettingError(
            f"{option} {str(config)!r}: its model.init_args is not a mapping; {what}"
        )
    accepted = set(inspect.signature(VIPModule.__init__).parameters) - {"self"}
    unknown = sorted(str(k) for k in settings if k not in accepted)
    if unknown:
        hint = " (a DPSeg config? DPSeg takes --ckpt)" if class_path is None else ""
        raise SettingError(
            f"{option} {str(config)!r}: model keys {', '.join(unknown)} are not VIP's{hint}; {what}"
        )
    return dict(settings)
