"""Model folders as their libraries publish them: open_clip's hub layout, a diffusers pipeline.

    open_clip   open_clip_config.json ({"model_cfg", "preprocess_cfg"}, open_clip's own
                save_config_for_hf), open_clip_model.safetensors, README.md
    diffusers   model_index.json and one folder per component (save_pretrained), README.md

The README's front matter carries the licence, as on the hub.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

License = tuple[str, str | None]  # the hub's license, and license_name (for "other")


def _readme(folder: Path, license_: License, title: str) -> None:
    """A model card's front matter, as the hub writes the licence."""
    name, other = license_
    extra = f"license_name: {other}\n" if other else ""
    (folder / "README.md").write_text(f"---\nlicense: {name}\n{extra}---\n\n# {title}\n")


def open_clip_folder(
    model: nn.Module,
    model_cfg: dict,
    folder: str | os.PathLike,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    license_: License = ("mit", None),
    title: str = "open_clip model",
) -> Path:
    """Write ``model`` (an open_clip CLIP) and its config in open_clip's hub layout."""
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.visual.image_mean, model.visual.image_std = tuple(mean), tuple(std)
    save_config_for_hf(model, folder / "open_clip_config.json", model_config=model_cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    _readme(folder, license_, title)
    return folder


def diffusers_folder(
    pipeline,
    folder: str | os.PathLike,
    license_: License = ("apache-2.0", None),
    title: str = "pipeline",
) -> Path:
    """Write a diffusers pipeline with ``save_pretrained`` (safetensors)."""
    folder = Path(folder)
    pipeline.save_pretrained(folder, safe_serialization=True)
    _readme(folder, license_, title)
    return folder
