"""Segment any images with a trained checkpoint and any vocabulary (the user's path).

    predictor = Predictor.from_checkpoint("last.ckpt")
    predictor.set_vocabulary("cat, kitty; dog; grass", bank="banks/coco171.zarr")  # classes it has
    labels = predictor.predict(image)            # (H, W) class ids for an (H, W, 3) uint8 image

Classes of the vocabulary that the bank lacks come from ``extra_banks``: banks of those classes
built with the bank's own settings by ``prompt_bank.extend.build_missing_classes`` (which
``cli.py segment`` calls); or, with ``text_only``, they get text prompts only. This is the I/O
side (SAM's ``SamPredictor``); the model stays pure.
"""

from __future__ import annotations

import logging
import os
import signal
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from common.errors import SettingError, UserError, broken_link, check_device, check_output_folder
from common.signals import Interrupted
from data.transforms import ResizeSquare, SlidingWindow, image_tensor, rgb_uint8
from data.vocabulary import Vocabulary, load_vocabulary
from model.cost_volume import Prompts
from model.labels import class_labels
from model.lightning import DPSegModule
from model.prompts import class_index
from model.refine import background_class
from prompt_bank.format import BankMismatchError
from prompt_bank.store import Bank, is_url

log = logging.getLogger(__name__)


class ImagePredictor(ABC):
    """What DPSeg's and VIP's predictors share: ``predict`` of one image (grey, RGB, RGBA uint8
    or floats in [0, 1]: ``data.transforms.rgb_uint8``) and ``predict_batch``."""

    @abstractmethod
    def predict(self, image: np.ndarray) -> np.ndarray:
        """An image -> (H, W) int64 class ids of the vocabulary."""

    module: torch.nn.Module
    vocabulary: Vocabulary | None

    @abstractmethod
    def settings(self) -> object:
        """The inference settings that decide the label maps (a dataclass)."""

    @abstractmethod
    def vocabulary_prompts(self) -> object:
        """The vocabulary's encoded prompts or queries (a dataclass of tensors)."""

    def identity(self) -> str:
        """sha256 over what decides the label maps: the weights, the inference settings, the
        vocabulary and its prompts. ``segment`` records it in each image's JSON and keeps the
        outputs of an earlier run whose identity and image bytes match (ours: a resume)."""
        import dataclasses
        import hashlib
        import json

        from pretrained.fingerprint import state_fingerprint

        if self.vocabulary is None:
            raise RuntimeError("call set_vocabulary first")
        state = {f"model.{k}": v for k, v in self.module.state_dict().items()}
        rest = {"settings": repr(self.settings()), "classes": self.vocabulary.names}
        for field in dataclasses.fields(prompts := self.vocabulary_prompts()):
            value = getattr(prompts, field.name)
            if isinstance(value, torch.Tensor):
                state[f"prompts.{field.name}"] = value
            elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
                state.update({f"prompts.{field.name}.{i}": v for i, v in enumerate(value)})
            else:
                rest[field.name] = repr(value)
        digest = hashlib.sha256(state_fingerprint(state).encode())
        digest.update(json.dumps(rest, sort_keys=True).encode())
        return digest.hexdigest()

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Several images, of any sizes -> their (H_i, W_i) label maps, in order. Every image is
        checked before any runs, so a bad one costs no work (its index is in the message)."""
        checked = [rgb_uint8(image, f"images[{i}]") for i, image in enumerate(images)]
        return [self.predict(image) for image in checked]


class Predictor(ImagePredictor):
    """A trained DPSeg model with a vocabulary's prompts, for images of any size."""

    def __init__(self, module: DPSegModule, device: str | torch.device = "cpu"):
        device = check_device(device)
        self.module = module.eval().to(device)
        self.device = torch.device(device)
        self.vocabulary: Vocabulary | None = None
        self.prompts: Prompts | None = None
        self.background: int | None = None  # the vocabulary's "background" class (round II)
        self.sources: dict[str, str] = {}  # class -> "bank", "generated" or "text"
        self.recorded_in = "the checkpoint"  # what records the training banks, for messages

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | None = None, rounds: int | None = None
    ) -> Predictor:
        from model.checkpoint import load_module

        device = check_device(device)  # before the checkpoint is read
        return cls._with_rounds(load_module(path, "--ckpt"), device, rounds)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: str | None = None, rounds: int | None = None
    ) -> Predictor:
        """A model folder of ``cli.py model export`` (``model.export``): safetensors only, the
        weights' sha256 and the encoder's fingerprint checked."""
        from model.share import load_model

        device = check_device(device)
        predictor = cls._with_rounds(load_model(path), device, rounds)
        predictor.recorded_in = "the model folder's config.json"  # not a checkpoint (a probe)
        return predictor

    @classmethod
    def _with_rounds(cls, module: DPSegModule, device, rounds: int | None) -> Predictor:
        predictor = cls(module, device)
        predictor.set_rounds(module.inference_config.rounds if rounds is None else rounds)
        return predictor

    def set_rounds(self, rounds: int) -> None:
        """One round (the model on the whole image) or two (round II refines each class found
        on its crop, the paper's two-round inference) for the images to come."""
        from common.errors import SettingError

        if rounds not in (1, 2):
            raise SettingError(f"--rounds {rounds}: give 1 or 2")
        self.module.inference_config.rounds = rounds
        self.module.segmenter.config = self.module.inference_config

    def set_rejection(self, threshold: float | None, max_classes: int | None = None) -> None:
        """Class early rejection for the images to come (``model.rejection``; a checkpoint holds
        no inference settings): probability ``threshold`` (None: none), at most ``max_classes``
        decoded per image (None: no bound; both None: off). A bad value raises SettingError
        naming it."""
        from common.errors import SettingError
        from model.rejection import check_rejection

        try:
            check_rejection(threshold, None, max_classes)
        except ValueError as e:
            raise SettingError(str(e)) from None
        config = self.module.inference_config
        config.rejection_threshold, config.rejection_max_classes = threshold, max_classes
        self.module.segmenter.config = config

    def recorded_banks(self) -> list[str]:
        """Where the checkpoint's training banks were when it was made."""
        banks = self.module.loaded_provenance.get("banks", {})
        return [info["location"] for info in banks.values() if info.get("location")]

    def training_bank(self) -> str | None:
        """The training bank the checkpoint records, if it is still there."""
        for location in self.recorded_banks():
            if is_url(location) or Path(location).exists():
                return location
        return None

    def missing_bank_note(self) -> str:
        """Which recorded training bank is not here, for a message: "'B' that the checkpoint
        records is not here" (or that it records none)."""
        recorded = self.recorded_banks()
        if not recorded:
            return f"{self.recorded_in} records no training bank"
        return f"the training bank {recorded[0]!r} that {self.recorded_in} records is not here"

    def set_vocabulary(
        self,
        vocabulary: str | Vocabulary,
        bank: str | Bank | None = None,
        extra_banks: Sequence[str | Bank] = (),
        text_only: bool = False,
    ) -> Prompts:
        """Prompts for ``vocabulary``: from ``bank`` (default: the checkpoint's training bank),
        then from ``extra_banks`` (classes built for it: ``prompt_bank.extend``), else text
        prompts where ``text_only`` allows them."""
        module = self.module
        vocabulary = load_vocabulary(vocabulary)
        if bank is None:
            bank = self.training_bank()
            if bank is None and not text_only:
                raise FileNotFoundError(
                    f"no bank: {self.missing_bank_note()}; give --bank, a bank built with the "
                    "model's encoder (that one copied here, or any other), or --text-only for "
                    "text prompts alone (from Python: bank=, text_only=True)"
                )
            if bank is not None:
                log.info("using the checkpoint's training bank %s", bank)
        banks = [] if bank is None else [bank, *extra_banks]
        banks = [module.check_bank(b if isinstance(b, Bank) else Bank.open(b)) for b in banks]
        self.sources = {}
        for i, opened in enumerate(banks):
            for c, row in zip(vocabulary, class_index(opened.classes, vocabulary)):
                if row is not None:
                    self.sources.setdefault(c.name, "bank" if i == 0 else "generated")
        missing = [c.name for c in vocabulary if c.name not in self.sources]
        if banks and missing and not text_only:
            raise BankMismatchError(
                f"vocabulary: {len(missing)} classes are not in {banks[0].location} "
                f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): give a "
                "bank that has them, or a vocabulary of its classes (cli.py segment builds "
                "missing classes itself); from Python, pass extra_banks built by "
                "prompt_bank.extend.build_missing_classes, or text_only=True"
            )
        if banks:
            prompts = module.bank_prompts(banks, vocabulary, allow_text_only=True)
        else:
            prompts = module.text_only_prompts(vocabulary)
        for c in vocabulary:
            self.sources.setdefault(c.name, "text")
        self.vocabulary = vocabulary
        self.background = background_class(vocabulary.names)
        self.prompts = prompts.to(self.device)
        return self.prompts

    def use_vocabulary(
        self,
        vocabulary: str | Vocabulary,
        bank: str | None = None,
        text_only: bool = False,
        generator_weights: str | None = None,
        progress: bool = True,
    ) -> Prompts:
        """Prompts for ``vocabulary`` as ``cli.py segment`` makes them: classes the bank (default:
        the checkpoint's training bank) lacks are built first with the bank's own settings
        (``prompt_bank.extend``; a progress bar), unless ``text_only``. :meth:`set_vocabulary`
        refuses such classes instead."""
        from prompt_bank.extend import build_missing_classes

        bank = bank or self.training_bank()
        extra = []
        if bank is not None and not text_only:
            opened = self.module.check_bank(Bank.open(bank))  # before any generation
            extra = build_missing_classes(opened, vocabulary, generator_weights, progress)
            bank = opened  # opened once
        return self.set_vocabulary(vocabulary, bank=bank, extra_banks=extra, text_only=text_only)

    def settings(self):
        return self.module.inference_config

    def vocabulary_prompts(self) -> Prompts:
        if self.prompts is None:
            raise RuntimeError("call set_vocabulary first")
        return self.prompts

    def protocol(self):
        """How an image of any size is fed: ConvNeXt resized to the training crop's side as a
        square (SED); a ViT in windows of its input size (CAT-Seg)."""
        size = self.module.model.backbone.image_size
        if self.module.model.backbone.family.fixed_input_size:
            return SlidingWindow(short_side=size * 5 // 3, crop=size, stride=size * 2 // 3)
        return ResizeSquare(size)

    @torch.no_grad()
    def logits(self, image: np.ndarray) -> torch.Tensor:
        """An image -> (K, H, W) logits: (H, W, 3) uint8 RGB, or what ``data.transforms.rgb_uint8``
        takes (grey, RGBA, floats in [0, 1]); anything else is one ``SettingError``."""
        if self.prompts is None:
            raise RuntimeError("call set_vocabulary first")
        x = image_tensor(rgb_uint8(image))
        x = x.to(self.device)
        segmenter, prompts, background = self.module.segmenter, self.prompts, self.background
        return self.protocol()(lambda batch: segmenter(batch, prompts, background), x)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB (or grey, RGBA, floats in [0, 1]) -> (H, W) int64 class ids of
        the vocabulary."""
        return class_labels(self.logits(image), dim=0).cpu().numpy()


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def expand_images(specs: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths, in order."""
    import glob

    paths: list[Path] = []
    for spec in specs:
        if not spec.strip():  # Path("") is the working folder: never what was meant
            raise FileNotFoundError(f"--images {spec!r}: empty; give an image file, folder or glob")
        p = Path(spec)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            paths.append(p)
        elif p.is_symlink():
            raise FileNotFoundError(f"--images {broken_link(p)}")
        else:
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise FileNotFoundError(f"--images {spec!r}: no such file, folder or glob match")
            paths += [Path(m) for m in matches if Path(m).is_file()]
    return paths


def write_prediction(
    out: Path,
    stem: str,
    image: np.ndarray,
    labels: np.ndarray,
    vocabulary: Vocabulary,
    sources: dict[str, str],
    source: str,
    provenance: dict[str, str] | None = None,
) -> dict:
    """``stem.png`` (label ids: 8-bit, 16-bit when K > 256), ``stem_overlay.png``, ``stem.json``."""
    from PIL import Image

    from common.io import ConcurrentWriteError, file_sha256, save_image_atomic, write_json_atomic
    from data.preview import overlay

    k = len(vocabulary)
    if k <= 256:
        label_image = Image.fromarray(labels.astype(np.uint8))
    else:
        label_image = Image.fromarray(labels.astype(np.uint16))  # PNG 16-bit grey
    counts = np.bincount(labels.ravel(), minlength=k)
    total = int(labels.size)
    classes = [
        {
            "id": int(c),
            "name": vocabulary.names[c],
            "pixels": int(counts[c]),
            "fraction": round(float(counts[c]) / total, 6),
            "prompt": sources.get(vocabulary.names[c]),
        }
        for c in np.argsort(-counts, kind="stable")
        if counts[c] > 0
    ]
    record = {
        "image": source,
        "height": int(labels.shape[0]),
        "width": int(labels.shape[1]),
        "vocabulary": vocabulary.name,
        "num_classes": k,
        "label_map": f"{stem}.png",
        "overlay": f"{stem}_overlay.png",
        "classes": classes,
        **(provenance or {}),
    }
    files = [out / f"{stem}.png", out / f"{stem}_overlay.png", out / f"{stem}.json"]
    for f in files:
        refuse_folder_in_place(f, out)
    try:  # all three or none (a full disk midway left a label map alone)
        save_image_atomic(label_image, files[0], "PNG")
        save_image_atomic(overlay(image, labels, vocabulary.names), files[1], "PNG")
        # what a rerun checks before it keeps them (a truncated label map is made again)
        record["outputs_sha256"] = {f.name: file_sha256(f) for f in files[:2]}
        write_json_atomic(files[2], record)
    except ConcurrentWriteError:  # the other process writes these very files: they stay its
        raise
    except BaseException:
        for f in files:
            f.unlink(missing_ok=True)
        raise
    return record


class NoReadableImageError(UserError):
    """Every input image was unreadable: nothing to segment (a user error, exit status 2)."""


def refuse_folder_in_place(path: Path, out: Path) -> None:
    """One line where a folder stands where segment writes a file of ``out``."""
    if path.is_dir():
        raise SettingError(
            f"--out {str(out)!r}: {path.name} is a folder where segment writes a file; remove it "
            f"(rm -r {path}) and run the command again"
        )


def earlier_prediction(out: Path, stem: str, path: Path, identity: str) -> dict | None:
    """The record of an earlier run's outputs for this image, when the same predictor
    (:meth:`ImagePredictor.identity`) made them from the same image bytes and its label map and
    overlay are there; else None (the image is segmented again)."""
    import json

    from common.io import file_sha256

    try:
        record = json.loads((out / f"{stem}.json").read_text(encoding="utf-8"))
        if record.get("predictor") != identity or record.get("image") != str(path):
            return None
        hashes = record.get("outputs_sha256") or {}
        for key in ("label_map", "overlay"):
            name = record[key]
            if hashes.get(name) is None or file_sha256(out / name) != hashes[name]:
                return None  # missing, changed or cut short: made again
        if record.get("image_sha256") != file_sha256(path):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # absent, garbled, other
        return None
    return record


def predict_images(
    predictor: ImagePredictor,
    paths: list[Path],
    out: str | os.PathLike,
    progress: bool = True,
    redo: bool = False,
) -> dict:
    """Segment every image; an unreadable one is reported and skipped. Returns a summary.

    An image whose outputs an earlier run left in ``out``, made by the same predictor (weights,
    settings, vocabulary and prompts: :meth:`ImagePredictor.identity`) from the same image bytes,
    is kept, not segmented again (``summary["kept"]``), unless ``redo``: so the same command run
    again after an interruption segments only the rest (ours).

    An image that does not decode, or is a decompression bomb, is skipped (``summary["skipped"]``
    names it and why) and the run goes on. When NO image could be read, after summary.json is
    written, it raises :class:`NoReadableImageError` (a user error: one line, exit status 2).
    """
    import time

    from common.io import file_sha256, write_json_atomic
    from common.progress import ProgressBar
    from data.datasets import UnreadableImageError, read_image

    check_output_folder(out, "--out")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    refuse_folder_in_place(out / "summary.json", out)
    identity = predictor.identity()
    written, skipped, stems, kept = [], [], set(), 0
    start = time.perf_counter()
    interrupted: str | None = None
    with ProgressBar("segment", len(paths), unit="images", enabled=progress) as bar:
        try:
            for path in paths:
                stem = path.stem
                n = 1
                while stem in stems:  # the same name in two folders
                    n += 1
                    stem = f"{path.stem}_{n}"
                earlier = None if redo else earlier_prediction(out, stem, path, identity)
                if earlier is not None:
                    stems.add(stem)
                    written.append(earlier)
                    kept += 1
                    bar.advance()
                    continue
                try:
                    image = read_image(path)
                except UnreadableImageError as e:  # also a decompression bomb: one line each
                    skipped.append({"image": str(path), "error": e.reason})
                    log.debug("skipped %s: %s", path, e)  # the caller reports summary["skipped"]
                    bar.advance()
                    continue
                stems.add(stem)
                labels = predictor.predict(image)
                provenance = {"predictor": identity, "image_sha256": file_sha256(path)}
                written.append(
                    write_prediction(
                        out,
                        stem,
                        image,
                        labels,
                        predictor.vocabulary,
                        predictor.sources,
                        str(path),
                        provenance,
                    )
                )
                bar.advance()
        except (KeyboardInterrupt, Interrupted) as e:  # Ctrl-C, SIGTERM: what is written
            # stays, and summary.json says so
            interrupted = signal.Signals(getattr(e, "signum", signal.SIGINT))
    seconds = time.perf_counter() - start
    made = len(written) - kept
    summary = {
        "images": len(written),
        "kept": kept,
        "skipped": skipped,
        "seconds": round(seconds, 2),
        "images_per_second": round(made / seconds, 2) if seconds and made else None,
        "predictor": identity,
        "prompts": predictor.sources,
        "outputs": [r["label_map"] for r in written],
    }
    if interrupted:
        summary["interrupted"] = f"after {len(written) + len(skipped)} of {len(paths)} images"
    write_json_atomic(out / "summary.json", summary)
    if interrupted:
        raise Interrupted(
            interrupted,
            f"segment interrupted by {interrupted.name} after {len(written) + len(skipped)} of "
            f"{len(paths)} images: the {len(written)} segmented are in {str(out)!r} "
            "(summary.json lists them); "
            + (
                "run it again without --redo to segment the rest (with --redo it starts over)"
                if redo
                else "run the same command again to segment the rest (the images done are kept)"
            ),
        )
    if skipped and not written:
        raise NoReadableImageError(
            f"--images: none of the {len(skipped)} images could be segmented "
            f"({skipped[0]['image']}: "
            f"{skipped[0]['error']}{'; ...' if len(skipped) > 1 else ''}; all in "
            f"{str(out / 'summary.json')!r}); fix or replace them as each reason says"
        )
    return summary
