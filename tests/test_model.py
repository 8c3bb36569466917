"""Contract tests of the DPSeg model parts: shapes, values, ablation switches, chunking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.cost_volume import Prompts, cost_volume, fuse_prompts, visual_cost_volume
from model.dpseg import DPSeg, DPSegConfig
from pretrained.backbone import ClipBackbone, create_clip

K, P = 5, 3
SMALL = dict(
    cost_channels=16, decoder_channels=(16, 8, 8), guidance_channels=(8, 4, 4), attention_heads=2
)


def random_prompts(dims, k=K, p=P, d=64, seed=0) -> Prompts:
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(k, p, d, generator=g), dim=-1)
    visual = F.normalize(torch.randn(k, p, d, generator=g), dim=-1)
    return Prompts(text, visual, [torch.randn(k, c, generator=g) for c in dims])


def build(name: str, **config) -> tuple[DPSeg, tuple[int, ...]]:
    built = create_clip(name)
    backbone = ClipBackbone(built.model, built.preset)
    with torch.no_grad():
        dims = tuple(f.shape[1] for f in backbone(torch.zeros(1, 3, 128, 128)).levels)
    torch.manual_seed(0)
    return DPSeg(backbone, P, dims, DPSegConfig(**{**SMALL, **config})), dims


@pytest.mark.parametrize("encoder", ["tiny-convnext", "tiny-vit"])
def test_shapes_finite_and_gradients(encoder):
    model, dims = build(encoder)
    prompts = random_prompts(dims)
    width = 96 if encoder == "tiny-convnext" else 128  # a ViT takes its own square size
    out = model(torch.rand(2, 3, 128, width), prompts)
    assert out.logits.shape == (2, K, 128, width)
    assert out.cost.shape[:3] == (2, P, K)
    assert torch.isfinite(out.logits).all()
    assert out.coarse.shape[:2] == (2, K)  # training mode: the coarse head's logits too
    out.logits.square().mean().backward(retain_graph=True)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == ["decoder.coarse_head.weight", "decoder.coarse_head.bias"]
    first_stage = model.decoder.stages[0].fuse[0].weight
    before = first_stage.grad.clone()
    out.coarse.square().mean().backward()  # the head, and the first stage (deep supervision)
    assert all(p.grad is not None for p in model.decoder.coarse_head.parameters())
    assert not torch.equal(first_stage.grad, before)
    assert prompts.text.grad is None  # prompts are inputs, never trained


def test_cost_volume_is_cosine_per_pixel():
    dense = torch.randn(2, 8, 3, 4)
    prompts = F.normalize(torch.randn(K, P, 8), dim=-1)
    cost = cost_volume(dense, prompts)
    assert cost.shape == (2, P, K, 3, 4)
    expected = F.cosine_similarity(dense[1, :, 2, 3], prompts[4, 1], dim=0)
    assert cost[1, 1, 4, 2, 3] == pytest.approx(float(expected), abs=1e-6)
    fv = visual_cost_volume(torch.randn(2, 6, 3, 4), torch.randn(K, 6))
    assert fv.shape == (2, K, 3, 4) and fv.abs().max() <= 1 + 1e-6


def test_prompt_fusion_modes():
    text, visual = (F.normalize(torch.randn(K, P, 8), dim=-1) for _ in range(2))
    prompts = Prompts(text, visual, [])
    torch.testing.assert_close(fuse_prompts(prompts, "text"), text)
    torch.testing.assert_close(fuse_prompts(prompts, "visual"), visual)
    torch.testing.assert_close(fuse_prompts(prompts, "avg"), F.normalize(text + visual, dim=-1))
    centred = fuse_prompts(prompts, "avg", center=True)
    torch.testing.assert_close(centred.norm(dim=-1), torch.ones(K, P))
    with pytest.raises(ValueError, match="prompt part 'sum'"):
        fuse_prompts(prompts, "sum")


@pytest.mark.parametrize("mode", ["cost-avg", "cost-concat"])
def test_cost_level_fusion_rows(mode):
    """The rows the paper compares its averaged embeddings with: a text and a visual cost
    volume, averaged or concatenated along the template axis (2P channels); a subset of
    classes decodes as in the full output, centred on the full prompts' means."""
    from model.cost_volume import class_mean

    model, dims = build("tiny-convnext", prompt_mode=mode, center_prompts=True)
    model.eval()
    assert model.cost_embedding.num_templates == (2 * P if mode == "cost-concat" else P)
    prompts, image = random_prompts(dims), torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        out = model(image, prompts)
        dense = out.features.dense
        t = cost_volume(dense, fuse_prompts(prompts, "text", center=True))
        v = cost_volume(dense, fuse_prompts(prompts, "visual", center=True))
        expected = torch.cat([t, v], dim=1) if mode == "cost-concat" else (t + v) / 2
        torch.testing.assert_close(out.cost, expected)
        classes = torch.tensor([3, 1])
        subset = model(
            image,
            prompts,
            features=out.features,
            classes=classes,
            center_mean=class_mean(prompts, mode),
        ).logits
    torch.testing.assert_close(subset, out.logits[:, classes], atol=1e-5, rtol=1e-5)
    assert class_mean(prompts, mode).shape == (2, 1, P, 64)


def test_text_mode_ignores_visual_prompts_and_visual_levels_switch():
    model, dims = build("tiny-convnext", prompt_mode="text", visual_levels=())
    model.eval()
    a, b = random_prompts(dims, seed=1), random_prompts(dims, seed=2)
    mixed = Prompts(a.text, b.visual, b.visual_levels)  # same text, other visual prompts
    image = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(image, a).logits, model(image, mixed).logits)
    full, _ = build("tiny-convnext", prompt_mode="text", visual_levels=(2, 3, 4))
    full.eval()
    with torch.no_grad():  # with F_v the visual prompts' level features matter
        assert not torch.allclose(full(image, a).logits, full(image, mixed).logits)


def test_class_chunks_give_the_same_logits():
    model, dims = build("tiny-convnext", class_chunk=64)
    model.eval()
    prompts, image = random_prompts(dims), torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        whole = model(image, prompts).logits
        model.decoder.class_chunk = 2
        chunked = model(image, prompts).logits
    torch.testing.assert_close(whole, chunked, atol=1e-5, rtol=1e-5)


def test_decoder_attention_modes():
    """Where the decoder attends: every stage, the coarse stage only, windows or nowhere; the
    parts the modes share start from the same weights (model.seeding)."""
    image = torch.rand(1, 3, 128, 128)
    models = {
        mode: build("tiny-convnext", attention=mode, attention_window=4)[0].eval()
        for mode in ("global", "coarse", "window", "none")
    }
    prompts = random_prompts(build("tiny-convnext")[1])
    has = {
        m: [s.attention is not None for s in model.decoder.stages] for m, model in models.items()
    }
    assert has == {
        "global": [True] * 3,
        "coarse": [True, False, False],
        "window": [True] * 3,
        "none": [False] * 3,
    }
    global_ = models["global"].state_dict()
    for mode in ("coarse", "none"):
        assert all(torch.equal(v, global_[k]) for k, v in models[mode].state_dict().items())
    with torch.no_grad():
        logits = {m: model(image, prompts).logits for m, model in models.items()}
    assert len({tuple(v.flatten()[:50].tolist()) for v in logits.values()}) == 4  # all differ
    # a window as large as the finest map is global attention
    wide = build("tiny-convnext", attention="window", attention_window=64)[0].eval()
    with torch.no_grad():
        torch.testing.assert_close(wide(image, prompts).logits, logits["global"])
    with pytest.raises(ValueError, match="attention='swin'"):
        build("tiny-convnext", attention="swin")


@pytest.mark.parametrize("use_visual_cost", [True, False])
def test_a_stage_fuses_the_guidance_once_per_image_as_the_concatenation_would(use_visual_cost):
    """fuse is conv3x3(cat[class map, guidance, F_v]) computed as a per-class convolution plus
    the guidance's once per image: the same output as the concatenated input."""
    from model.decoder import DecoderStage

    torch.manual_seed(0)
    stage = DecoderStage(16, 8, 12, 6, use_visual_cost, attention_heads=0).eval()
    x, level = torch.randn(2, 5, 16, 6, 7), torch.randn(2, 12, 3, 4)
    visual = torch.randn(2, 5, 3, 4) if use_visual_cost else None
    with torch.no_grad():
        out = stage(x, level, visual)
        guidance = stage.guidance(F.interpolate(level, size=(6, 7), mode="bilinear"))
        parts = [x, guidance[:, None].expand(2, 5, -1, 6, 7)]
        if use_visual_cost:
            parts.append(F.interpolate(visual, size=(6, 7), mode="bilinear")[:, :, None])
        y = stage.hdc(stage.fuse(torch.cat(parts, dim=2).flatten(0, 1)))
        expected = stage.up(y).view(2, 5, 8, 12, 14)
    assert out.shape == (2, 5, 8, 12, 14)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_windowed_attention_attends_within_each_window():
    from model.decoder import SpatialSelfAttention

    torch.manual_seed(0)
    windowed, whole = SpatialSelfAttention(16, 2, window=4), SpatialSelfAttention(16, 2)
    whole.load_state_dict(windowed.state_dict())
    x = torch.randn(2, 16, 6, 7)  # not whole windows: the edge windows are padded and masked
    with torch.no_grad():
        out = windowed(x)
        for rows, cols in ((slice(0, 4), slice(0, 4)), (slice(4, 6), slice(4, 7))):
            tile = x[..., rows, cols].contiguous()
            torch.testing.assert_close(out[..., rows, cols], whole(tile), atol=1e-5, rtol=1e-5)


def test_class_scores_are_each_class_highest_cost():
    model, dims = build("tiny-convnext")
    prompts, image = random_prompts(dims), torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        out = model(image, prompts)
        scores = model.class_scores(out.features, prompts)
    assert scores.shape == (2, K)
    torch.testing.assert_close(scores, out.cost.mean(dim=1).amax(dim=(-2, -1)))


def test_features_are_reused_not_recomputed():
    model, dims = build("tiny-convnext")
    calls = []
    model.backbone.register_forward_hook(lambda *_: calls.append(1))
    image, prompts = torch.rand(1, 3, 128, 128), random_prompts(dims)
    first = model(image, prompts)
    model(image, prompts, features=first.features)
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"visual_levels": (1,)}, r"levels \[1\] have no decoder stage; choose from \[2, 3, 4\]"),
        ({"prompt_mode": "both"}, "prompt_mode='both'"),
        ({"class_chunk": 0}, "class_chunk=0"),
        ({"cost_channels": -1}, "cost_channels=-1: must be >= 1"),
        ({"guidance_channels": (16, 8)}, r"guidance_channels=\[16, 8\]: must be 3 channel"),
        (
            {"attention": "window", "attention_window": 0},
            "model.dpseg.attention_window=0: must be >= 1",
        ),
    ],
)
def test_bad_config(config, match):
    with pytest.raises(ValueError, match=match):
        build("tiny-convnext", **config)


def test_template_count_mismatch_is_clear():
    model, dims = build("tiny-convnext")
    wrong = random_prompts(dims, p=P + 1)
    with pytest.raises(ValueError, match="has 4 templates but the model was built for 3"):
        model(torch.rand(1, 3, 128, 128), wrong)


def test_vit_positions_resampled_for_another_size():
    built = create_clip("tiny-vit")
    backbone = ClipBackbone(built.model, built.preset, image_size=192)
    features = backbone(torch.rand(1, 3, 192, 192))
    assert features.dense.shape == (1, 64, 24, 24)
    with pytest.raises(ValueError, match=r"takes 192x192 images .* got \(128, 128\)"):
        backbone(torch.rand(1, 3, 128, 128))


def test_a_convnext_clip_with_an_mlp_head_gives_dense_features():
    """ConvNeXt-L/D's CLIP projects with an MLP (no ``head.proj``): the dense map is that MLP
    applied per pixel after the trunk's head norm, as SED does."""
    import dataclasses

    import open_clip

    from pretrained.backbone import clip_architecture
    from pretrained.presets import get_encoder_preset

    tiny = get_encoder_preset("tiny-convnext")
    cfg = {**tiny.model_cfg, "vision_cfg": {**tiny.model_cfg["vision_cfg"], "timm_proj": "mlp"}}
    preset = dataclasses.replace(tiny, name="tiny-convnext-mlp", model_cfg=cfg)
    clip = clip_architecture(preset).eval()
    assert not hasattr(clip.visual.head, "proj") and isinstance(clip, open_clip.CLIP)
    backbone = ClipBackbone(clip, preset)
    images = torch.rand(2, 3, 128, 96)
    with torch.no_grad():
        features = backbone(images)
        x = (images - backbone.mean) / backbone.std
        final = clip.visual.trunk.forward_intermediates(x, indices=[3])[0]
        normed = clip.visual.trunk.head.norm(final)
        pixel = clip.visual.head(normed[:, :, 1, 2])  # one cell through the MLP
    assert features.dense.shape == (2, 64, 4, 3)
    torch.testing.assert_close(features.dense[:, :, 1, 2], pixel)
