"""Encoder families: one object per family of image + text encoder (docs/design.md §8.9).

A family says how its encoders are built, tokenise text, give DPSeg's dense features and
levels, which inputs they take, which VIP attentions they have and how the toy world pretrains
them. Everything else in dpseg asks the preset's family (:func:`family_of`) instead of testing
its name, as timm and open_clip look models up in a registry.

Adding a family: one file beside these, whose class is decorated with :func:`register`, and its
module named in :data:`FAMILY_MODULES` (the registration). ``pretrained.names`` then recognises
open_clip configs the family :meth:`~pretrained.families.base.EncoderFamily.matches`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pretrained.families.base import EncoderFamily
    from pretrained.presets import EncoderPreset

FAMILY_MODULES = (
    "pretrained.families.clip_vit",
    "pretrained.families.clip_convnext",
    "pretrained.families.clip_resnet",
    "pretrained.families.dinotxt",
)
"""The modules that define the families, imported on the first lookup (the registration)."""

_REGISTRY: dict[str, EncoderFamily] = {}


def register(cls: type[EncoderFamily]) -> type[EncoderFamily]:
    """Class decorator: the family's one instance, under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"encoder family {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def families() -> dict[str, EncoderFamily]:
    """Every registered family by name, in :data:`FAMILY_MODULES` order."""
    for module in FAMILY_MODULES:
        importlib.import_module(module)  # a no-op once imported
    return dict(_REGISTRY)


def family_of(preset: EncoderPreset | str) -> EncoderFamily:
    """The family object of a preset (or of a family's name)."""
    name = preset if isinstance(preset, str) else preset.family
    known = families()
    if name not in known:
        from pretrained.errors import PresetError

        raise PresetError(f"encoder family {name!r}: dpseg knows {', '.join(known)}")
    return known[name]
