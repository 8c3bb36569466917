"""Contrastive pretraining of the toy CLIP presets on captioned pictures of the toy world.

Real CLIP has seen the whole real world; ours sees the whole toy world (``data.toy_world``):
pictures of every class (30 objects and ``background``, unseen classes included, as CLIP has
seen ADE's classes) drawn from captions that fill one of the 80 ImageNet templates with the
class's name or an alias ("a sketch of the crimson circle."), in the style the template asks
for, with a few small distractor objects; and, as real captions name several things, photos of
2-3 objects captioned with all of them ("a photo of a red disc and a blue square."). The model
is an open_clip ``CLIP`` of the preset's architecture, from its portable initial weights; for
``toy-dinotxt`` it is ``pretrained.dinotxt.DinoTxt`` (below).

Choices (ours): a pool of pictures rendered once and reused over epochs (rendering is numpy on
the same 2 cores); CLIP's symmetric cross-entropy with every caption of the same class counted
as a positive (the toy world has 31 classes, so a batch of 128 holds each several times, and
treating those as negatives would fight the labels; a group photo's only positive is its own
caption); AdamW with warm-up and cosine decay, no
weight decay on gains, biases, embeddings and the temperature. ``cli.py presets pretrain NAME``
runs it and writes the weights file the preset loads (``pretrained.bundled_weights``).

dino.txt (``toy-dinotxt``; the objective and its settings are ours, after dino.txt's): the same
loop and loss between the normalised global image embedding [CLS_out, mean of patch_out] (2C)
and the normalised text embedding (2C), with a learned temperature (``logit_scale``, CLIP's
init log(1/0.07); the official file keeps one too; ours is not stored as a tensor, VIP does not
use it: its final value goes in the file's metadata). The vision head is trained with plain
attention (the official head is; VIP switches its proxy attention on at inference). Unlike
dino.txt, whose backbone is a frozen self-supervised DINOv3, the whole model (backbone, head,
text tower) trains from its portable initial weights: there is no self-supervised toy backbone
to start from. Its zero-shot accuracies are measured as VIP uses the model
(``DinoTxtEncoder``: the text's patch half against the mean patch embedding of the proxy head),
and also with the plain head, and on the full 2C global embedding it was trained on.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from data.templates import imagenet80
from data.toy_world import BACKGROUND, OBJECTS, render_group, render_prompt
from pretrained.presets import EncoderPreset, PretrainConfig

PLAIN_TEMPLATE = "a photo of a {}."
SCENE_SEED = 1_000  # + the config's seed: the region loss's scenes (the datasets use 0)


def world_classes() -> list[tuple[str, ...]]:
    """Per class index (0 = background, then the 30 objects): its names, canonical first."""
    return [(BACKGROUND,)] + [(o.name, *o.aliases) for o in OBJECTS]


def render_pool(
    count: int,
    seed: int,
    size: int,
    distractors: int,
    plain: bool = False,
    groups: float = 0.0,
    progress=None,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``count`` captioned pictures: (N, S, S, 3) uint8, N captions, (N,) labels.

    Picture i is a pure function of (seed, i): class, template and name are drawn from
    ``SeedSequence((seed, i))``. A label is the class index (0 = background), or for a group
    photo (a share ``groups`` of the pictures) ``1000 + i``, a label of its own. ``plain``: the
    canonical name in ``a photo of a {}.``.
    """
    classes, templates = world_classes(), imagenet80()
    images = np.zeros((count, size, size, 3), dtype=np.uint8)
    captions, labels = [], np.zeros(count, dtype=np.int64)
    for i in range(count):
        rng = np.random.default_rng(np.random.SeedSequence((seed, i)))
        if groups and rng.random() < groups:
            picks = rng.choice(len(OBJECTS), size=int(rng.integers(2, 4)), replace=False)
            members = [OBJECTS[int(j)] for j in picks]
            names = [classes[int(j) + 1][int(rng.integers(5))] for j in picks]
            caption = "a photo of a " + " and a ".join(names) + "."
            images[i] = render_group(members, seed=int(rng.integers(2**31)), size=size)
            label = 1000 + i
        else:
            label = int(rng.integers(len(classes)))
            names = classes[label]
            if plain:
                caption = PLAIN_TEMPLATE.format(names[0])
            else:
                template = templates[int(rng.integers(len(templates)))]
                caption = template.format(names[int(rng.integers(len(names)))])
            images[i], _ = render_prompt(
                caption, seed=int(rng.integers(2**31)), size=size, distractors=distractors
            )
        captions.append(caption)
        labels[i] = label
        if progress is not None:
            progress(1)
    return images, captions, labels


def render_scenes(
    count: int, seed: int, size: int, progress=None
) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """``count`` multi-object scenes of every class for the region loss: (N, S, S, 3) uint8,
    (N, S, S) labels in the 31 world ids (255 ignore), and per scene one caption per world id
    (a random template and name of that class; ``background`` for id 0).

    Scenes are :func:`data.toy_world.render_scene`'s with seed ``seed``, which the datasets never
    use (they use ``ToySceneConfig.seed``, 0 by default, and ``render_scene`` keys on it).
    """
    from data.toy_world import ToySceneConfig, render_scene

    config = ToySceneConfig(seed=seed, size=size)
    classes, templates = world_classes(), imagenet80()
    images = np.zeros((count, size, size, 3), dtype=np.uint8)
    labels = np.zeros((count, size, size), dtype=np.uint8)
    captions = []
    for i in range(count):
        images[i], labels[i] = render_scene(config, "test", i)
        rng = np.random.default_rng(np.random.SeedSequence((seed, 13, i)))
        captions.append(
            [
                templates[int(rng.integers(len(templates)))].format(
                    names[int(rng.integers(len(names)))]
                )
                for names in classes
            ]
        )
        if progress is not None:
            progress(1)
    return images, labels, captions


def region_embeddings(
    dense: torch.Tensor, labels: torch.Tensor, num_classes: int, min_cells: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask-pooled dense features: each class present in an image, its features averaged with
    the share of each cell it covers.

    Args:
        dense: (B, D, h, w) features. labels: (B, H, W) class ids, 255 ignored.
        min_cells: a region covering less than this many cells in all is dropped.

    Returns:
        (R, D) region features (not normalised), (R,) their image index, (R,) their class id.
    """
    h, w = dense.shape[-2:]
    valid = labels != 255
    onehot = F.one_hot(labels.long().clamp(max=num_classes - 1), num_classes).permute(0, 3, 1, 2)
    onehot = (onehot * valid[:, None]).float()
    share = F.adaptive_avg_pool2d(onehot, (h, w))  # (B, K, h, w): coverage of each cell
    mass = share.sum(dim=(2, 3))  # (B, K) in cells
    image, cls = torch.nonzero(mass >= min_cells, as_tuple=True)
    weights = share[image, cls]  # (R, h, w)
    pooled = torch.einsum("rhw,rdhw->rd", weights, dense[image]) / mass[image, cls][:, None]
    return pooled, image, cls


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def class_text_embeddings(encoder, tokenizer, templates: list[str] | None = None) -> torch.Tensor:
    """(31, D) normalised: each class's canonical name in every template, averaged."""
    from data.vocabulary import ClassName

    classes = [ClassName((names[0],)) for names in world_classes()]
    texts = encoder.encode_class_texts(classes, templates or imagenet80(), tokenizer)
    return F.normalize(texts.mean(dim=1), dim=-1)


@torch.no_grad()
def zero_shot_accuracy(encoder, tokenizer, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy over the 31 classes of pictures (N, S, S, 3), by their nearest class text
    embedding (80 templates averaged, as CLIP's zero-shot ImageNet protocol)."""
    text = class_text_embeddings(encoder, tokenizer)
    correct = 0
    for start in range(0, len(images), 256):
        batch = _to_tensor(images[start : start + 256])
        emb = encoder.encode_images(batch).embedding
        correct += int(((emb @ text.T).argmax(dim=1).numpy() == labels[start : start + 256]).sum())
    return correct / len(images)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        flat = p.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if flat else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0},
    ]


def contrastive_loss(
    image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric cross-entropy of (B, D) x (B, D) normalised embeddings, every pair of the same
    class a positive (the targets spread evenly over a row's positives)."""
    logits = scale * image @ text.T
    same = (labels[:, None] == labels[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (
        torch.sum(-target * F.log_softmax(logits, dim=1), dim=1).mean()
        + torch.sum(-target * F.log_softmax(logits.T, dim=1), dim=1).mean()
    )


def pretrain(
    preset_name: str | EncoderPreset,
    config: PretrainConfig,
    out: str | os.PathLike,
    progress: bool = True,
    overwrite: bool = True,
) -> dict:
    """Pretrain a toy preset (CLIP, or dino.txt) from its portable initial weights and write its
    file. ``preset_name``: a toy preset's name (or a preset object, for trials of other sizes);
    ``overwrite=False``: a file at ``out`` is never replaced.

    Returns:
        A report: zero-shot accuracies (plain template; any template and style; for dino.txt
        also with the plain head and on the 2C global embedding), chance, loss, seconds, the
        file and its size.
    """
    from pretrained.backbone import modality_embedding
    from pretrained.bundled_weights import save_weights
    from pretrained.families import family_of
    from pretrained.presets import get_encoder_preset

    preset = get_encoder_preset(preset_name) if isinstance(preset_name, str) else preset_name
    preset_name = preset.name
    if preset.bundled is None:
        raise ValueError(
            f"preset {preset_name!r} is not a toy preset (pretraining makes the weights of "
            "toy-convnext, toy-vit and toy-dinotxt)"
        )
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    family = family_of(preset)
    model = family.architecture(preset)  # what the file stores
    # what the optimiser trains (dino.txt: + the temperature), and the encoder as banks and VIP
    # use it (dino.txt: proxy head, patch side)
    trainee, encoder = family.pretraining_parts(model, preset)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    tokenizer = family.tokenizer(preset)
    size = preset.image_size
    gap = preset.modality_gap  # the losses see the embeddings the presets give

    from common.progress import ProgressBar

    rendering = ProgressBar(
        "rendering captioned pictures", config.pool, unit="pictures", enabled=progress
    )
    with rendering as bar:
        images, captions, labels = render_pool(
            config.pool,
            config.seed,
            size,
            config.distractors,
            groups=config.groups,
            progress=bar.advance,
        )
        tokens = tokenizer(captions)
        held_out = render_pool(config.eval_images, config.seed + 1_000_003, size, 0)
        held_plain = render_pool(config.eval_images, config.seed + 2_000_003, size, 0, plain=True)
        # (ours) the region loss: mask-pooled dense features of multi-object scenes against each
        # object's caption, so that the pixels carry their own object (ConvNeXt: any input size)
        scene_batch = config.scene_batch if family.segments and not family.fixed_input_size else 0
        if scene_batch:
            from pretrained.backbone import ClipBackbone

            dense_of = ClipBackbone(model, preset)  # shares the model's modules
            bar.update(label="rendering scenes", total=config.scene_pool, restart=True)
            scenes, scene_labels, scene_captions = render_scenes(
                config.scene_pool, SCENE_SEED + config.seed, config.scene_size, bar.advance
            )
            scene_labels_t = torch.from_numpy(scene_labels)

        optimizer = torch.optim.AdamW(_param_groups(trainee, config.weight_decay), lr=config.lr)

        def factor(step: int) -> float:
            if step < config.warmup_steps:
                return (step + 1) / config.warmup_steps
            t = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        rng = np.random.default_rng(config.seed)
        labels_t = torch.from_numpy(labels)
        trainee.train()
        bar.update(
            label=f"pretraining {preset_name}", total=config.steps, unit="steps", restart=True
        )
        loss_avg = None
        for _ in range(config.steps):
            idx = rng.choice(config.pool, size=config.batch_size, replace=False)
            batch = _to_tensor(images[idx])
            if rng.random() < 0.5:  # flips keep every shape's name
                batch = batch.flip(-1)
            image = modality_embedding(
                trainee.encode_image(encoder.preprocess(batch)), gap, "image"
            )
            text = modality_embedding(trainee.encode_text(tokens[idx]), gap, "text")
            scale = trainee.logit_scale.exp().clamp(max=100)
            loss = contrastive_loss(image, text, labels_t[idx], scale)
            if scene_batch:
                pick = rng.choice(config.scene_pool, size=scene_batch, replace=False)
                regions, owner, cls = region_embeddings(
                    dense_of(_to_tensor(scenes[pick])).dense,
                    scene_labels_t[pick],
                    len(world_classes()),
                )
                regions = modality_embedding(regions, gap, "image")
                said = [scene_captions[int(pick[o])][int(c)] for o, c in zip(owner, cls)]
                region_text = modality_embedding(trainee.encode_text(tokenizer(said)), gap, "text")
                loss = loss + config.scene_weight * contrastive_loss(
                    regions, region_text, cls, scale
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            value = float(loss.detach())
            loss_avg = value if loss_avg is None else 0.95 * loss_avg + 0.05 * value
            bar.update(info=f"loss {loss_avg:.3f}")
            bar.advance()
    trainee.eval()
    report = {
        "preset": preset_name,
        "zero_shot_plain": zero_shot_accuracy(encoder, tokenizer, held_plain[0], held_plain[2]),
        "zero_shot_any_template": zero_shot_accuracy(encoder, tokenizer, held_out[0], held_out[2]),
    }
    report |= family.pretraining_report(
        model,
        trainee,
        preset,
        lambda e: zero_shot_accuracy(e, tokenizer, held_plain[0], held_plain[2]),
    )
    report |= {
        "chance": 1 / len(world_classes()),
        "region_loss": bool(scene_batch),
        "modality_gap": gap,
        "final_loss": loss_avg,
        "seconds": round(time.perf_counter() - start, 1),
        "config": asdict(config),
    }
    metadata = {k: str(v) for k, v in report.items() if k != "config"}
    metadata["config"] = str(asdict(config))
    metadata["command"] = f"cli.py presets pretrain {preset_name} (see config)"
    report["bytes"] = save_weights(model, out, initial, metadata, overwrite)
    report["out"] = str(out)
    return report
