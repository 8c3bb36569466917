"""Prompts for a vocabulary, read from a prompt bank (the I/O side of docs/design.md §2.1).

The model consumes :class:`model.cost_volume.Prompts`; this module makes them from a bank:

    text      T (K, P, D) = text/embeddings
    visual    V (K, P, D) = normalize(mean_n visual/embeddings)        (the N images averaged)
    levels    V_j (K, C_j) = mean_{p, n} visual/level_j                 (docs/design.md §2.2, ours)

A bank is accepted only when its encoder is the model's prompt encoder (same weight
fingerprint): cosines between a bank of one CLIP and the features of another mean nothing.
Classes are matched by their full entry ("building, edifice"), else by canonical name. Classes the
bank lacks are an error listing them, or (``allow_text_only``) get text prompts from the prompt
encoder and a visual prompt equal to their text prompt, so ``avg`` reduces to text for them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from data.vocabulary import Vocabulary, match_entries
from model.cost_volume import Prompts
from pretrained.fingerprint import fingerprint_mismatch
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
        mismatch = fingerprint_mismatch(
            f"bank {bank.location!r}",
            str(enc.get("preset")),
            str(enc.get("fingerprint")),
            preset,
            fingerprint,
            bank.attrs.get("builder", {}).get("packages"),
        )
        raise BankMismatchError(
            f"{mismatch}; their embeddings are not comparable. Build a bank with the model's "
            f"encoder: cli.py bank build --encoder {preset} ..."
        )


def class_index(bank_classes: list[str], vocabulary: Vocabulary) -> list[int | None]:
    """For each vocabulary class, its row in the bank (full entry, canonical name, then an
    unambiguous synonym: ``data.vocabulary.match_entries``)."""
    return match_entries(bank_classes, vocabulary)


def _incomplete(done: np.ndarray) -> list[int]:
    """Bank rows (of the selected ones) with an item still missing."""
    return [i for i, row in enumerate(done) if not row.all()]


def load_prompts(
    bank: Bank | str | os.PathLike | Sequence[Bank | str | os.PathLike],
    vocabulary: Vocabulary,
    *,
    encoder_preset: str,
    encoder_fingerprint: str,
    text_encoder=None,
    allow_text_only: bool = False,
) -> Prompts:
    """The prompts of ``vocabulary`` from a bank (or several: a class comes from the first that
    has it, e.g. a shared bank then a local cache of generated extra classes).

    Args:
        bank: a bank, its location, or a list of them (same encoder and templates).
        vocabulary: the classes to segment, in label order.
        encoder_preset / encoder_fingerprint: the model's prompt encoder (checked against banks).
        text_encoder: ``(classes, templates) -> (K', P, D)`` text embeddings, for classes no bank
            has when ``allow_text_only``.
        allow_text_only: serve missing classes with text prompts instead of refusing.

    Raises:
        BankMismatchError: other encoder, other templates, classes missing (listed), or
            incomplete items.
    """
    banks = [bank] if isinstance(bank, Bank | str | os.PathLike) else list(bank)
    banks = [b if isinstance(b, Bank) else Bank.open(b) for b in banks]
    first = banks[0]
    for b in banks:
        check_bank_encoder(b, encoder_preset, encoder_fingerprint)
        if b.templates != first.templates or b.layout.level_dims != first.layout.level_dims:
            raise BankMismatchError(
                f"banks {first.location!r} and {b.location!r} differ in templates or level "
                "sizes; prompts of one model come from banks built with the same settings"
            )
    k, p, d = len(vocabulary), len(first.templates), first.layout.embed_dim
    text, visual = torch.zeros(k, p, d), torch.zeros(k, p, d)
    levels = [torch.zeros(k, c) for c in first.layout.level_dims]
    todo = list(range(k))
    for b in banks:
        rows = class_index(b.classes, vocabulary)
        here = [i for i in todo if rows[i] is not None]
        if here:
            _read_rows(b, [rows[i] for i in here], here, text, visual, levels)
        todo = [i for i in todo if rows[i] is None]
    missing = [str(vocabulary[i]) for i in todo]
    where = " or ".join(repr(b.location) for b in banks)
    if missing and not allow_text_only:
        shown = ", ".join(repr(m) for m in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise BankMismatchError(
            f"bank {where} lacks {len(missing)} of the {k} classes of vocabulary "
            f"{vocabulary.name!r}: {shown}{more}. Build them into a bank (cli.py bank build "
            "--vocab ... then bank merge), or serve them text-only (cli.py fit/test: "
            "--model.allow_text_only true; cli.py segment/explain: --text-only)"
        )
    if missing:
        log.warning(
            "%d classes are not in bank %s and are served text-only: %s",
            len(missing),
            where,
            "; ".join(missing[:20]),  # the vocabulary's own separator: ',' joins synonyms
        )
        if text_encoder is None:
            raise ValueError("allow_text_only needs a text_encoder for the missing classes")
        t = text_encoder([vocabulary[i] for i in todo], first.templates).float().cpu()
        text[todo] = t
        visual[todo] = t  # avg(T, T) = T: the text prompt alone; level prompts stay 0
    return Prompts(text, visual, levels)


def _read_rows(bank: Bank, rows: list[int], targets: list[int], text, visual, levels) -> None:
    """Copy the prompts of bank rows ``rows`` into positions ``targets`` of the outputs."""
    index = np.asarray(sorted(set(rows)), dtype=np.int64)
    where = {int(r): i for i, r in enumerate(index)}
    # every needed shard read once and checked against its manifest: damage is a one-line
    # BankFormatError naming the object and `bank verify` / `bank repair`, never zeros
    data = bank.read_rows(
        index, ["visual/done", "text/embeddings", "visual/embeddings", *bank.level_names()]
    )
    bad = _incomplete(data["visual/done"])
    if bad:
        names = ", ".join(repr(bank.classes[int(index[i])]) for i in bad[:10])
        raise BankMismatchError(
            f"bank {bank.location!r} is incomplete for {len(bad)} of the needed classes ({names}); "
            "finish it by running the same `cli.py bank build` command again (it resumes)"
        )
    sel = [where[r] for r in rows]
    text[targets] = torch.from_numpy(data["text/embeddings"])[sel].float()
    v = torch.from_numpy(data["visual/embeddings"]).float()[sel]  # (K', P, N, D)
    visual[targets] = F.normalize(v.mean(dim=2), dim=-1)
    for j, name in enumerate(bank.level_names()):
        lv = torch.from_numpy(data[name].astype(np.float32))[sel]
        levels[j][targets] = lv.mean(dim=(1, 2))
