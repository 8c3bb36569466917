"""The encoders' and generators' user error, below every module of ``pretrained`` that raises it
(``pretrained.presets`` and the encoder families both do)."""

from __future__ import annotations

from common.errors import UserError


class PresetError(UserError, ValueError):
    """Unknown preset name or invalid preset settings; the message lists the known names."""


def recorded_encoder_error(error: PresetError, source: str) -> str:
    """``error`` (about ``--encoder NAME``) said of the file that recorded NAME, where the user
    gave no --encoder: "the encoder 'NAME' that --ckpt 'run.ckpt' records is not a preset ..."."""
    import re

    text = str(error)
    match = re.match(r"--encoder ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")", text)
    if match is None:
        return f"{source}: {text}"
    return f"the encoder {match.group(1)} that {source} records{text[match.end() :]}"
