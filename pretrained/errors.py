"""The encoders' and generators' user error, below every module of ``pretrained`` that raises it
(``pretrained.presets`` and the encoder families both do)."""

from __future__ import annotations

from common.errors import UserError


class PresetError(UserError, ValueError):
    """Unknown preset name or invalid preset settings; the message lists the known names."""
