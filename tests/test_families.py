"""Encoder families (pretrained.families): the registry, the rule that nothing outside the family
objects tests a family's name, and the ResNet family that came in through that door (one file
plus its registration; docs/design.md §8.1) used by DPSeg, banks and open names."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pretrained.backbone import ClipBackbone, ClipEncoder, create_clip
from pretrained.families import FAMILY_MODULES, families, family_of
from pretrained.presets import EncoderPreset, PresetError, list_presets

ROOT = Path(__file__).resolve().parents[1]

TINY_RESNET = EncoderPreset(
    name="tiny-resnet",
    family="resnet",
    arch="dpseg-tiny-resnet",
    pretrained=None,
    image_size=64,
    levels=(1, 2, 3, 4),
    description="a ModifiedResNet, width 16, one block per stage (a test of the family)",
    model_cfg={
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    },
)


def test_every_preset_has_a_registered_family_and_an_unknown_one_is_one_line():
    names = set(families())
    assert {"vit", "convnext", "resnet", "dinotxt"} <= names
    assert len(names) == len(FAMILY_MODULES)  # one family per registered module
    for preset in list_presets("encoder"):
        assert family_of(preset).name == preset.family
    with pytest.raises(PresetError, match=r"encoder family 'swin': dpseg knows vit, convnext"):
        family_of("swin")


def _names_a_family(node: ast.expr) -> bool:
    """A string, or a tuple/list/set of strings (``"vit"``, ``("vit", "dinotxt")``)."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(_names_a_family(e) for e in node.elts)
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def test_no_code_outside_the_family_objects_tests_a_family_s_name():
    """``x.family == "vit"`` / ``!=`` / ``in ("vit", ...)``: the family object says it instead
    (a lookup by name in a registry is fine)."""
    found = []
    for path in sorted(ROOT.glob("**/*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in (".venv", "build") or rel.parts[:2] == ("pretrained", "families"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            sides = (node.left, *node.comparators) if isinstance(node, ast.Compare) else ()
            if any(isinstance(s, ast.Attribute) and s.attr == "family" for s in sides) and any(
                _names_a_family(s) for s in sides
            ):
                found.append(f"{rel}:{node.lineno}")
    assert not found, found


def test_a_resnet_gives_dpseg_a_pyramid_at_any_input_size():
    built = create_clip(TINY_RESNET)
    backbone = ClipBackbone(built.model, built.preset).eval()
    with torch.no_grad():
        features = backbone(torch.rand(2, 3, 96, 128))
    assert features.dense.shape == (2, 32, 3, 4)  # stride 32, the joint space's width
    assert [(96 // f.shape[-2], 128 // f.shape[-1]) for f in features.levels] == [
        (4, 4),
        (8, 8),
        (16, 16),
        (32, 32),
    ]
    # the dense path is the pool's value and output projections per pixel (MaskCLIP): a pixel's
    # feature equals what the pool gives one token that attends only to itself
    pool = built.model.visual.attnpool
    last = features.levels[-1][0, :, 1, 2]
    assert torch.allclose(features.dense[0, :, 1, 2], pool.c_proj(pool.v_proj(last)), atol=1e-6)


def test_dpseg_trains_a_step_on_a_resnet_and_its_bank_encoder_embeds_images():
    from model.factory import build_dpseg

    parts = build_dpseg(TINY_RESNET, num_templates=2)
    encoder = parts.segmenter.prompt_encoder
    assert isinstance(encoder, ClipEncoder) and encoder.level_dims() == [64, 128, 256, 512]
    embedded = encoder.encode_images(torch.rand(3, 3, 80, 80))  # resized to 64 for the pool
    assert embedded.embedding.shape == (3, 32)
    assert torch.allclose(embedded.embedding.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_vip_refuses_a_family_without_a_dense_path_in_one_line():
    from model.vip.dense import create_dense_encoder

    with pytest.raises(PresetError, match=r"\(resnet\): VIP has no dense path for this family"):
        create_dense_encoder(create_clip(TINY_RESNET))


def test_rn50_by_its_open_clip_name_is_the_real_architecture():
    """``RN50:openai`` resolves offline (open_clip's config) to the ResNet family; its real
    architecture, random weights, gives 1024-d dense features at stride 32 and ResNet-50's
    stages."""
    from pretrained.names import resolve_encoder

    preset = resolve_encoder("RN50:openai")
    assert (preset.family, preset.levels, preset.image_size) == ("resnet", (1, 2, 3, 4), 224)
    built = create_clip(preset, random_weights=True)
    backbone = ClipBackbone(built.model, replace(preset)).eval()
    with torch.no_grad():
        features = backbone(torch.rand(1, 3, 224, 224))
    assert features.dense.shape == (1, 1024, 7, 7)
    assert [f.shape[1] for f in features.levels] == [256, 512, 1024, 2048]


def test_a_resnet_backbone_keeps_clip_s_batchnorm_statistics_while_it_trains():
    """(ours) train() leaves the tower's BatchNorm in eval: a training forward does not move the
    running statistics, and the BatchNorm weights still get gradients."""
    built = create_clip(TINY_RESNET)
    backbone = ClipBackbone(built.model, built.preset).train()
    assert backbone.training
    norms = [m for m in backbone.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    before = norms[0].running_mean.clone()
    backbone(torch.rand(2, 3, 64, 64)).dense.sum().backward()
    assert torch.equal(norms[0].running_mean, before) and norms[0].weight.grad is not None
    vit = create_clip("tiny-vit")  # other families: train() as torch's
    assert all(m.training for m in ClipBackbone(vit.model, vit.preset).train().modules())
