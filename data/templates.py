"""Prompt templates: a list of format strings with one ``{}`` for the class name (docs/design.md §2.1).

- ``imagenet80``: open_clip's ``OPENAI_IMAGENET_TEMPLATES`` (the 80 templates SED and VIP use).
- ``single``: ``"A photo of a {} in the scene."`` (CAT-Seg's single template).
- ``imagenet80:N``: the first N of the 80 (the paper ablates 1/10/20/40/80 templates).
- ``seg`` (6) and ``city`` (10): VIP's template sets (MiSsU-HH/VIP, prompts/imagenet_template.py;
  VOC, COCO-Object and ADE use ``seg``; Cityscapes, COCO-Stuff and PASCAL-Context ``city``).
  ``city`` lists "{} in a city environment." twice, so that template weighs double in the
  mean; kept as the reference has it.
- a path to a text file with one template per line, each containing ``{}`` exactly once.
"""

from __future__ import annotations

import os
from pathlib import Path

from common.errors import UserError
from common.io import special_file_kind

SINGLE_TEMPLATE = "A photo of a {} in the scene."  # CAT-Seg's template
BUILTIN_TEMPLATES = ("imagenet80", "single", "seg", "city")
VIP_TEMPLATES = {
    "seg": (
        "a photo of a {}.",
        "a cropped photo of a {}.",
        "a detailed view of a {}.",
        "the pixel of a {} with visible surface details.",
        "{} with fine details.",
        "{} isolated.",
    ),
    "city": (
        "a photo of a {}.",
        "a detailed view of a {}.",
        "{} isolated.",
        "{} on an urban street.",
        "{} in a city environment.",
        "{} with urban background.",
        "{} in a city environment.",  # the reference's duplicate: this template weighs double
        "{} in traffic.",
        "{} with structural details.",
        "{} with functional parts.",
    ),
}


class TemplateError(UserError, ValueError):
    """Templates could not be resolved or are malformed; the message says how to fix it."""


def imagenet80() -> list[str]:
    """open_clip's 80 ImageNet templates as ``{}`` format strings (they ship as lambdas)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def _check(templates: list[str], source: str) -> list[str]:
    if not templates:
        raise TemplateError(f"templates {source!r} are empty; give at least one line with '{{}}'")
    for i, t in enumerate(templates, start=1):
        if t.count("{}") != 1:
            raise TemplateError(
                f"template {i} of {source!r} ({t!r}) must contain '{{}}' exactly once, where the "
                "class name goes, e.g. 'a photo of a {}.'"
            )
        try:
            t.format("x")
        except (IndexError, KeyError, ValueError) as e:
            raise TemplateError(
                f"template {i} of {source!r} ({t!r}) is not a valid format string ({e}); "
                "write literal braces as '{{' and '}}'"
            ) from e
    if len(set(templates)) != len(templates):
        dup = next(t for t in templates if templates.count(t) > 1)
        raise TemplateError(f"templates {source!r} repeat {dup!r}; remove the duplicate line")
    return templates


def load_templates(spec: str | os.PathLike) -> list[str]:
    """Resolve templates by name (``imagenet80``, ``imagenet80:N``, ``single``, ``seg``,
    ``city``) or file path."""
    text = str(spec)
    if text == "single":
        return [SINGLE_TEMPLATE]
    if text == "imagenet80":
        return imagenet80()
    if text in VIP_TEMPLATES:
        return list(VIP_TEMPLATES[text])
    if text.startswith("imagenet80:"):
        count = text.split(":", 1)[1]
        if not count.isdigit() or not 1 <= int(count) <= 80:
            raise TemplateError(
                f"templates {text!r}: the count after 'imagenet80:' must be 1 to 80, got {count!r}"
            )
        return imagenet80()[: int(count)]
    path = Path(text)
    special = special_file_kind(path)
    if special is not None:  # a pipe would block the read, a device never end it
        raise TemplateError(
            f"templates file {text!r} is {special}, not a file; give a text file with one "
            "template per line containing '{}'"
        )
    if path.is_file():
        try:
            # utf-8-sig: a byte order mark (Windows editors) is not part of the first template
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise TemplateError(f"cannot read templates file {text!r}: {e}") from e
        return _check([line.strip() for line in lines if line.strip()], text)
    raise TemplateError(
        f"unknown templates {text!r}: use one of {', '.join(BUILTIN_TEMPLATES)}, 'imagenet80:N' "
        "for the first N, or a path to a text file with one template per line containing '{}'"
    )
