"""Prompts for a vocabulary, read from a prompt bank (the I/O side of DESIGN §2.1).

The model consumes :class:`model.cost_volume.Prompts`; this module makes them from a bank:

    text      T (K, P, D) = text/embeddings
    visual    V (K, P, D) = normalize(mean_n visual/embeddings)        (the N images averaged)
    levels    V_j (K, C_j) = mean_{p, n} visual/level_j                 (DESIGN §2.2, ours)

A bank is accepted only when its encoder is the model's prompt encoder (same weight
fingerprint): cosines between a bank of one CLIP and the features of another mean nothing.
Classes are matched by their full entry ("building, edifice"), else by canonical name. Classes the
bank lacks are an error listing them, or (``allow_text_only``) get text prompts from the prompt
encoder and a visual prompt equal to their text prompt, so ``avg`` reduces to text for them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from data.vocabulary import Vocabulary
from model.cost_volume import Prompts
from prompt_bank.format import BankMismatchError
from prompt_bank.store import Bank

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BankProvenance:
    """What a checkpoint or a results file records about a bank (never the bank itself)."""

    location: str
    created: str
    classes: int
    templates: int
    images_per_prompt: int
    generator: str  # generator preset name
    encoder: str  # encoder preset name
    encoder_fingerprint: str

    @classmethod
    def of(cls, bank: Bank) -> BankProvenance:
        a = bank.attrs
        return cls(
            location=bank.location,
            created=str(a.get("created", "")),
            classes=len(a["classes"]),
            templates=len(a["templates"]),
            images_per_prompt=int(a["images_per_prompt"]),
            generator=str(a["generator"].get("preset", "")),
            encoder=str(a["encoder"].get("preset", "")),
            encoder_fingerprint=str(a["encoder"].get("fingerprint", "")),
        )


def check_bank_encoder(bank: Bank, preset: str, fingerprint: str) -> None:
    """Refuse a bank made by another encoder than the model's prompt encoder."""
    enc = bank.attrs["encoder"]
    if enc.get("fingerprint") != fingerprint:
        raise BankMismatchError(
            f"bank {bank.location!r} was built with encoder {enc.get('preset')!r} (fingerprint "
            f"{str(enc.get('fingerprint'))[:12]}) but the model's prompt encoder is {preset!r} "
            f"(fingerprint {fingerprint[:12]}); their embeddings are not comparable. Build a bank "
            f"with the model's encoder: cli.py bank build --encoder {preset} ..."
        )


def class_index(bank_classes: list[str], vocabulary: Vocabulary) -> list[int | None]:
    """For each vocabulary class, its row in the bank: full entry first, then canonical name."""
    by_entry = {entry: i for i, entry in reversed(list(enumerate(bank_classes)))}
    by_name = {
        entry.split(",")[0].strip(): i for i, entry in reversed(list(enumerate(bank_classes)))
    }
    return [by_entry.get(str(c), by_name.get(c.name)) for c in vocabulary]


def _incomplete(done: np.ndarray) -> list[int]:
    """Bank rows (of the selected ones) with an item still missing."""
    return [i for i, row in enumerate(done) if not row.all()]


def load_prompts(
    bank: Bank | str | os.PathLike,
    vocabulary: Vocabulary,
    *,
    encoder_preset: str,
    encoder_fingerprint: str,
    text_encoder=None,
    allow_text_only: bool = False,
) -> Prompts:
    """The prompts of ``vocabulary`` from a bank.

    Args:
        bank: a bank or its location.
        vocabulary: the classes to segment, in label order.
        encoder_preset / encoder_fingerprint: the model's prompt encoder (checked against the bank).
        text_encoder: ``(classes, templates) -> (K', P, D)`` text embeddings, for classes the bank
            lacks when ``allow_text_only``.
        allow_text_only: serve missing classes with text prompts instead of refusing.

    Raises:
        BankMismatchError: other encoder, classes missing (listed), or incomplete items.
    """
    if not isinstance(bank, Bank):
        bank = Bank.open(bank)
    check_bank_encoder(bank, encoder_preset, encoder_fingerprint)
    rows = class_index(bank.classes, vocabulary)
    missing = [str(c) for c, r in zip(vocabulary, rows) if r is None]
    if missing and not allow_text_only:
        shown = ", ".join(repr(m) for m in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise BankMismatchError(
            f"bank {bank.location!r} lacks {len(missing)} of the {len(vocabulary)} classes of "
            f"vocabulary {vocabulary.name!r}: {shown}{more}. Build them into a bank (cli.py bank "
            "build --vocab ... then bank merge), or serve them text-only with --allow-text-only"
        )
    present = [r for r in rows if r is not None]
    index = np.asarray(sorted(set(present)), dtype=np.int64)
    where = {int(r): i for i, r in enumerate(index)}
    done = bank.read("visual/done", index) if len(index) else np.zeros((0, 1, 1), bool)
    bad = _incomplete(done)
    if bad:
        names = ", ".join(repr(bank.classes[int(index[i])]) for i in bad[:10])
        raise BankMismatchError(
            f"bank {bank.location!r} is incomplete for {len(bad)} of the needed classes ({names}); "
            "finish it by running the same `cli.py bank build` command again (it resumes)"
        )
    p, d = len(bank.templates), bank.layout.embed_dim
    k = len(vocabulary)
    text = torch.zeros(k, p, d)
    visual = torch.zeros(k, p, d)
    levels = [torch.zeros(k, c) for c in bank.layout.level_dims]
    have = [i for i, r in enumerate(rows) if r is not None]
    if have:
        sel = [where[rows[i]] for i in have]
        t = torch.from_numpy(bank.read("text/embeddings", index))[sel]
        v = torch.from_numpy(bank.read("visual/embeddings", index)).float()[sel]  # (K, P, N, D)
        text[have] = t.float()
        visual[have] = F.normalize(v.mean(dim=2), dim=-1)
        for j, name in enumerate(bank.level_names()):
            lv = torch.from_numpy(bank.read(name, index).astype(np.float32))[sel]
            levels[j][have] = lv.mean(dim=(1, 2))
    if missing:
        log.warning(
            "%d classes are not in bank %s and are served text-only: %s",
            len(missing),
            bank.location,
            ", ".join(missing[:20]),
        )
        if text_encoder is None:
            raise ValueError("allow_text_only needs a text_encoder for the missing classes")
        lacking = [i for i, r in enumerate(rows) if r is None]
        t = text_encoder([vocabulary[i] for i in lacking], bank.templates).float().cpu()
        text[lacking] = t
        visual[lacking] = t  # avg(T, T) = T: the text prompt alone
    return Prompts(text, visual, levels)
