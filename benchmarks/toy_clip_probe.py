"""What a toy CLIP knows where DPSeg reads it: its dense features, its crops, its modality gap.

    .venv/bin/python benchmarks/toy_clip_probe.py [--preset toy-convnext] [--weights FILE]
                                                  [--scenes 200] [--json OUT.json]
                                                  [--plot OUT.png]

Measured on multi-object scenes of the toy world (``toy:val``'s renderer and seeds, 128 px,
all 31 classes), with the frozen encoder as DPSeg's prompt side sees it:

- **per-pixel zero-shot mIoU**: the dense features (``ClipBackbone``, 4 x 4 at 128 px)
  against each class's text embedding (80 templates averaged), upsampled, argmax;
- **crop accuracy**: every object cut out by its true mask as round II's ``masked`` policy cuts
  it (``model.refine.crop_regions``: its box, the rest filled with the image's mean colour),
  resized to the encoder's input, classified by the nearest text prompt T_k, the nearest
  visual prompt V_k (the mean embedding of the toy renderer's pictures of the class, one per
  template: what a toy bank holds) and the nearest dual prompt avg(T_k, V_k);
- **modality gap**: the mean cos(V_k, T_k) over the classes (real CLIP: about 0.3);
- **distance to the image**: the mean 1 - cos(crop embedding, prompt of its class) for T, V
  and the dual prompt (the paper's t-SNE argument: 0.39, 0.33 and 0.18).

``--plot`` draws the last two: the crops and the prompts of a few classes projected on the
direction from the text prompts' centre to the visual prompts' and on the main axis of the rest
(a linear projection shows the gap along its own axis at its own size; t-SNE, the paper's
picture, keeps neighbours rather than distances), and the three distances beside the figures
the paper reads off its t-SNE (whose units it does not give).

Everything here is ours (the toy world is).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.errors import SettingError, StorageError, check_output_file  # noqa: E402
from common.io import check_picture_out  # noqa: E402
from data.evaluator import SemSegMetric  # noqa: E402
from data.templates import imagenet80  # noqa: E402
from data.toy_world import ToySceneConfig, render_prompt, render_scene  # noqa: E402
from data.transforms import image_tensor  # noqa: E402
from model.refine import RefineConfig, crop_regions  # noqa: E402
from pretrained.backbone import (  # noqa: E402
    ClipBackbone,
    ClipEncoder,
    clip_tokenizer_for,
    create_clip,
)
from pretrained.presets import get_encoder_preset  # noqa: E402
from pretrained.toy_pretrain import class_text_embeddings, world_classes  # noqa: E402


@torch.no_grad()
def visual_prompts(encoder: ClipEncoder, size: int) -> torch.Tensor:
    """(K, D) normalised: per class, the mean embedding of the renderer's picture of each of the
    80 templates filled with its name (seed 0), as a toy bank's V averaged over templates."""
    out = []
    for names in world_classes():
        pictures = np.stack(
            [render_prompt(t.format(names[0]), seed=0, size=size)[0] for t in imagenet80()]
        )
        emb = encoder.encode_images(torch.from_numpy(pictures).permute(0, 3, 1, 2) / 255.0)
        out.append(F.normalize(emb.embedding.mean(dim=0), dim=-1))
    return torch.stack(out)


PAPER_DISTANCES = {"text": 0.39, "visual": 0.33, "dual": 0.18}  # the paper's t-SNE (no units)
PLOTTED_CLASSES = 6  # the classes with the most crops


@dataclasses.dataclass
class Embeddings:
    """What the report's figures are measured on (D: the embedding width)."""

    text: torch.Tensor  # (K, D) T_k, normalised
    visual: torch.Tensor  # (K, D) V_k, normalised
    dual: torch.Tensor  # (K, D) normalised avg(T_k, V_k)
    crops: torch.Tensor  # (N, D) the crops' embeddings, normalised
    labels: torch.Tensor  # (N,) each crop's class


@torch.no_grad()
def probe(
    preset: str, weights: str | None, scenes: int, gap: float | None = None
) -> tuple[dict, Embeddings]:
    chosen = get_encoder_preset(preset)
    if gap is not None:
        chosen = dataclasses.replace(chosen, modality_gap=gap)
    built = create_clip(chosen, weights)
    encoder, backbone = (
        ClipEncoder(built.model, built.preset),
        ClipBackbone(built.model, built.preset),
    )
    tokenizer = clip_tokenizer_for(built.preset)
    text = class_text_embeddings(encoder, tokenizer)  # (K, D)
    visual = visual_prompts(encoder, built.preset.image_size)
    dual = F.normalize(text + visual, dim=-1)
    k = text.shape[0]
    config = ToySceneConfig()
    metric = SemSegMetric(k, ignore_index=255)
    # crops as round II's masked policy cuts them (model.refine.crop_regions), no margin
    cut = RefineConfig(crop_policy="masked", crop_margin=0.0)
    emb, crop_labels = [], []
    for i in range(scenes):
        image, label = render_scene(config, "val", i)
        image_t, label_t = image_tensor(image), torch.from_numpy(label).long()
        dense = F.normalize(backbone(image_t[None]).dense, dim=1)
        cost = torch.einsum("bdhw,kd->bkhw", dense, text)
        metric.update(
            F.interpolate(cost, size=label.shape, mode="bilinear").argmax(dim=1)[0], label_t
        )
        classes = [
            c for c in label_t.unique().tolist() if c not in (0, 255) and (label_t == c).sum() >= 16
        ]
        for crop, cls in zip(crop_regions(image_t, label_t, torch.tensor(classes), cut), classes):
            emb.append(encoder.encode_images(crop[None]).embedding)  # resized as images are
            crop_labels.append(cls)
    emb, labels = torch.cat(emb), torch.tensor(crop_labels)
    report = {
        "preset": preset,
        "weights": built.weights,
        "scenes": scenes,
        "modality_gap": built.preset.modality_gap,
        "crops": len(crop_labels),
        "pixel_zero_shot_miou": float(metric.compute()["mIoU"]),
        "modality_gap_cos_VT": float((visual * text).sum(-1).mean()),
    }
    # cos(f, normalize(T + V)) = (cos(f, T) + cos(f, V)) / 2 / s with s = |T + V| / 2 for unit T,
    # V: the dual prompt's cost volume is the cost-avg row's divided by s, class by class
    scale = (text + visual).norm(dim=-1) / 2  # (K,)
    report |= {
        "dual_cost_scale_mean": float(scale.mean()),
        "dual_cost_scale_std": float(scale.std()),
    }
    for name, prompts in (("text", text), ("visual", visual), ("dual", dual)):
        report[f"crop_accuracy_{name}"] = float(
            ((emb @ prompts.T).argmax(1) == labels).float().mean()
        )
        report[f"distance_{name}"] = float((1 - (emb * prompts[labels]).sum(-1)).mean())
    return report, Embeddings(text, visual, dual, emb, labels)


def most_cropped(labels: torch.Tensor, num_classes: int, count: int) -> list[int]:
    """Up to ``count`` classes with the most crops, most first (ties by class index); a class
    with no crop is never among them. ``labels``: (N,) each crop's class."""
    crops = torch.bincount(labels, minlength=num_classes)
    order = crops.argsort(descending=True, stable=True).tolist()
    return [c for c in order if crops[c] > 0][:count]


def project(points: Embeddings, classes: list[int]) -> dict[str, torch.Tensor]:
    """2-D coordinates of the crops of ``classes`` and of their prompts: on the direction from
    the text prompts' centre to the visual prompts' (where the modality gap lies), and on the
    main axis of what is left. Returns "crops" (n, 2) with "labels" (n,), and "text",
    "visual", "dual" (C, 2) in the order of ``classes``."""
    shown = torch.isin(points.labels, torch.tensor(classes))
    crops = points.crops[shown]  # (n, D)
    prompts = {n: getattr(points, n)[classes] for n in ("text", "visual", "dual")}  # (C, D) each
    everything = torch.cat([crops, *prompts.values()])  # (n + 3C, D)
    centred = everything - everything.mean(dim=0)
    gap = F.normalize(points.visual.mean(dim=0) - points.text.mean(dim=0), dim=0)  # (D,)
    rest = centred - torch.outer(centred @ gap, gap)  # (n + 3C, D), orthogonal to the gap
    axes = torch.stack([gap, torch.linalg.svd(rest, full_matrices=False).Vh[0]], dim=1)  # (D, 2)
    xy = centred @ axes  # (n + 3C, 2)
    parts = xy.split([len(crops)] + [len(classes)] * 3)
    return {"crops": parts[0], "labels": points.labels[shown]} | dict(zip(prompts, parts[1:]))


def plot(report: dict, points: Embeddings, path: Path) -> None:
    """The crops and prompts of the classes with the most crops (:func:`project`), and the mean
    distance of a crop to each of its class's prompts beside the paper's t-SNE figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.io import save_figure_atomic

    classes = most_cropped(points.labels, points.text.shape[0], PLOTTED_CLASSES)
    xy = project(points, classes)
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5.2), width_ratios=(1.4, 1))
    colours = plt.get_cmap("tab10").colors
    for i, cls in enumerate(classes):
        ours = xy["crops"][xy["labels"] == cls].numpy()  # (n_cls, 2)
        left.scatter(*ours.T, s=8, alpha=0.5, color=colours[i], label=world_classes()[cls][0])
    for name, marker in (("text", "^"), ("visual", "s"), ("dual", "*")):
        left.scatter(
            *xy[name].numpy().T, s=110, marker=marker, facecolors="none", linewidths=1.6,
            edgecolors=colours[: len(classes)], zorder=3,
        )  # fmt: skip
        left.scatter([], [], s=80, marker=marker, facecolors="none", edgecolors="black", label=name)
    left.set_aspect("equal", adjustable="datalim")  # both axes in the same units of cosine space
    left.set(
        title=f"crops (dots) and prompts of {len(classes)} classes, {report['preset']}; mean "
        f"cos(V_k, T_k) {report['modality_gap_cos_VT']:.2f}",
        xlabel="from the text prompts' centre to the visual prompts'",
        ylabel="the main axis of the rest",
    )
    left.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    kinds = list(PAPER_DISTANCES)
    x = np.arange(len(kinds))
    ours = [report[f"distance_{k}"] for k in kinds]
    right.bar(x - 0.2, ours, 0.4, label=f"toy world: mean 1 - cos ({report['crops']} crops)")
    right.bar(
        x + 0.2, [PAPER_DISTANCES[k] for k in kinds], 0.4, label="the paper: its t-SNE's figures"
    )
    for xi, value in zip(x - 0.2, ours):
        right.text(xi, value, f"{value:.2f}", ha="center", va="bottom", fontsize=8)
    right.set_xticks(x, [f"{k} prompt" for k in kinds])
    right.set(title="a crop's distance to its class's prompt", ylabel="distance")
    right.legend(fontsize=8)
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="toy-convnext", choices=("toy-convnext", "toy-vit"))
    parser.add_argument("--weights", help="a weights file (default: the preset's own)")
    parser.add_argument("--scenes", type=int, default=200, help="val scenes (default 200)")
    parser.add_argument(
        "--modality-gap",
        type=float,
        help="the preset's gap instead of its own (0: none, for weights pretrained without one)",
    )
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument("--plot", help="draw the crops, the prompts and their distances here")
    args = parser.parse_args(argv)
    if args.scenes < 1:
        parser.error(f"--scenes {args.scenes}: give 1 or more")
    if args.modality_gap is not None and args.modality_gap < 0:
        parser.error(f"--modality-gap {args.modality_gap}: give 0 or more")
    if args.plot:  # before the probe's minute of work
        try:
            check_output_file(args.plot, "--plot", example="gap.png")  # a folder, under a file
            check_picture_out(args.plot, "--plot")
        except (SettingError, StorageError) as e:
            parser.error(str(e))
        if not Path(args.plot).resolve().parent.is_dir():
            parser.error(f"--plot {args.plot!r}: its folder does not exist; create it first")
    report, points = probe(args.preset, args.weights, args.scenes, args.modality_gap)
    chance = 1 / len(world_classes())
    print(
        f"{report['preset']} ({report['weights']}, modality gap {report['modality_gap']}), "
        f"{report['scenes']} toy:val scenes, "
        f"{report['crops']} object crops:\n"
        f"  per-pixel zero-shot mIoU      {100 * report['pixel_zero_shot_miou']:.1f}\n"
        f"  crop accuracy text / visual / dual prompts  "
        f"{100 * report['crop_accuracy_text']:.1f} / {100 * report['crop_accuracy_visual']:.1f} / "
        f"{100 * report['crop_accuracy_dual']:.1f} % (chance {100 * chance:.1f})\n"
        f"  modality gap: mean cos(V_k, T_k) {report['modality_gap_cos_VT']:.3f}\n"
        f"  dual prompt's cost = (T's cost + V's cost) / 2 / s, s = |T_k + V_k| / 2: "
        f"{report['dual_cost_scale_mean']:.3f} ± {report['dual_cost_scale_std']:.3f} over classes\n"
        f"  distance of a crop to its class's text / visual / dual prompt  "
        f"{report['distance_text']:.3f} / {report['distance_visual']:.3f} / "
        f"{report['distance_dual']:.3f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot(report, points, Path(args.plot))
        print(f"picture: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
