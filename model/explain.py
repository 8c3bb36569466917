"""One class's cost maps for one image: text, visual and dual prompt side by side.

The idea of the paper's Figure 1: where does the image match the class's text prompt, its
visual prompt, and their average (the dual prompt), next to what the trained model predicts.
For debugging a vocabulary: a class whose text map is flat but whose visual map is sharp
(or the reverse) shows which prompt carries it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import SettingError, check_output_file
from common.io import save_figure_atomic
from common.optional import require
from data.transforms import image_tensor
from model.cost_volume import cost_volume, fuse_prompts
from model.predictor import Predictor

MODES = (("text", "text prompt"), ("visual", "visual prompt"), ("avg", "dual prompt (avg)"))


@torch.no_grad()
def class_maps(predictor: Predictor, image: np.ndarray, class_id: int) -> dict[str, np.ndarray]:
    """(H, W, 3) uint8 -> per mode the template-averaged cosine map of ``class_id`` at the
    image's size, and ``probability``: the model's round I sigmoid for the class (the backbone
    runs once for all four maps)."""
    module, prompts = predictor.module, predictor.prompts
    model = module.model
    h, w = image.shape[:2]
    x = image_tensor(image)[None]
    size = model.backbone.image_size
    x = F.interpolate(x.to(predictor.device), size=(size, size), mode="bilinear", antialias=True)
    features = model.backbone(x)
    maps = {}
    for mode, _ in MODES:
        r = fuse_prompts(prompts, mode, model.config.center_prompts)
        cost = cost_volume(features.dense, r[class_id : class_id + 1])  # (1, P, 1, h, w)
        maps[mode] = cost.mean(dim=1)[:, 0]  # (1, h, w)
    logits = model(x, prompts, features=features).logits[:, class_id]  # round I, (1, S, S)
    maps["probability"] = logits.sigmoid()
    return {
        k: F.interpolate(v[None].float(), size=(h, w), mode="bilinear")[0, 0].cpu().numpy()
        for k, v in maps.items()
    }


def check_explanation_out(out: str | os.PathLike, option: str = "--out") -> None:
    """``out`` checked before any work: a file (not a folder) whose suffix is a picture format
    matplotlib writes (.png, .pdf, .svg, ...). One line naming ``option`` (SettingError)."""
    require("matplotlib", "explain's picture")
    from matplotlib.backend_bases import FigureCanvasBase

    check_output_file(out, option, example="explain.png")
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in formats:
        shown = f"a .{suffix} file" if suffix else "a name without a suffix"
        raise SettingError(
            f"{option} {str(out)!r}: {shown} is not a picture format; end it with .png (or "
            f"one of {', '.join('.' + f for f in formats)})"
        )


def write_explanation(
    predictor: Predictor, image: np.ndarray, class_name: str, out: str | os.PathLike
) -> Path:
    """A PNG: the image, the three cost maps (one colour scale), the model's probability."""
    require("matplotlib", "explain's picture").use("Agg")
    import matplotlib.pyplot as plt

    check_explanation_out(out)
    names = predictor.vocabulary.names
    if class_name not in names:
        raise SettingError(
            f"--class {class_name!r} is not in the vocabulary ({', '.join(names[:10])})"
        )
    class_id = names.index(class_name)
    maps = class_maps(predictor, image, class_id)
    lo = min(float(maps[m].min()) for m, _ in MODES)
    hi = max(float(maps[m].max()) for m, _ in MODES)
    fig, axes = plt.subplots(1, 5, figsize=(16, 3.6))
    axes[0].imshow(image)
    axes[0].set_title("image")
    for ax, (mode, title) in zip(axes[1:4], MODES):
        shown = ax.imshow(maps[mode], cmap="viridis", vmin=lo, vmax=hi)
        ax.set_title(f"{title}\ncos {maps[mode].min():.2f}..{maps[mode].max():.2f}")
    fig.colorbar(shown, ax=list(axes[1:4]), fraction=0.02, pad=0.01)
    prob = axes[4].imshow(maps["probability"], cmap="magma", vmin=0, vmax=1)
    axes[4].set_title(f"model, round I:\nP({class_name})")
    fig.colorbar(prob, ax=axes[4], fraction=0.046, pad=0.01)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    source = predictor.sources.get(class_name, "?")
    fig.suptitle(f"{class_name!r}: cost maps (cosine, mean over templates); prompts: {source}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure_atomic(fig, out, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out
