"""VIP's training-free maths on hand-made inputs where the right answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from model.vip import VIPConfig, aggregate_aliases, alias_weights, assign_labels, proxy_attention


def test_proxy_attention_matches_the_formula_and_guards_the_all_masked_row():
    f = torch.tensor([[[1.0, 0, 0], [1, 0.1, 0], [1, 0, 0.1], [0, 0, 1]]])
    attention = proxy_attention(f, beta=1.5, gamma=0.5)
    n = torch.nn.functional.normalize(f, dim=-1)
    shifted = (n @ n.mT - 1.5 * (n @ n.mT).mean()) * 0.5
    expected = shifted.masked_fill(shifted <= 0, float("-inf")).softmax(-1)
    torch.testing.assert_close(attention, expected)
    assert attention[0, 0, 3] == 0 and attention[0, 3, 3] == 1  # masked; only itself left
    # Mean similarity above 2/3: every entry (self included) is <= 0 after the shift, so every
    # row is fully masked; the reference code gives NaN, the guard gives "attend to yourself".
    alike = torch.cat([torch.ones(1, 6, 3), torch.tensor([[[1.0, -1, 0]]])], dim=1)
    guarded = proxy_attention(alike)
    assert torch.isfinite(guarded).all()
    torch.testing.assert_close(guarded, torch.eye(7)[None])


def test_alias_weights_softmax_per_class_with_mean_one():
    image = torch.tensor([[1.0, 0.0]])
    aliases = torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    )  # class 0: aliases 0, 1; class 1: 2
    owner = torch.tensor([0, 0, 1])
    w = alias_weights(image, aliases, owner, num_classes=2, scale=2.0)
    e0, e1 = math.exp(2 * 1.0), math.exp(2 * 0.0)
    expected = torch.tensor([[2 * e0 / (e0 + e1), 2 * e1 / (e0 + e1), 1.0]])
    torch.testing.assert_close(w, expected)
    assert w[0, :2].mean().item() == pytest.approx(1.0)


def test_aggregation_is_a_weighted_logsumexp_per_class():
    logits = torch.tensor([0.2, 0.5, 0.3]).view(1, 3, 1, 1)
    weights = torch.tensor([[1.5, 0.5, 1.0]])
    owner = torch.tensor([0, 0, 1])
    out = aggregate_aliases(logits, weights, owner, num_classes=2, tau=3.0)
    c0 = math.log(math.exp(3 * 1.5 * 0.2) + math.exp(3 * 0.5 * 0.5)) / 3
    assert out.shape == (1, 2, 1, 1)
    assert out[0, 0, 0, 0].item() == pytest.approx(c0, rel=1e-6)
    assert out[0, 1, 0, 0].item() == pytest.approx(0.3, rel=1e-6)  # one alias: its own logit
    # large tau: the aggregation tends to the max of the weighted logits
    sharp = aggregate_aliases(logits, weights, owner, 2, tau=1000.0)
    assert sharp[0, 0, 0, 0].item() == pytest.approx(max(1.5 * 0.2, 0.5 * 0.5), abs=1e-3)


def test_background_threshold_to_a_class_or_to_ignore():
    # cosines x logit scale 40: pixel 0 is unsure (p = 0.60), pixel 1 sure (p > 0.99)
    logits = 40 * torch.tensor([[0.30, 0.31], [0.1, 0.5]]).T.reshape(1, 2, 1, 2)
    confident = VIPConfig(prob_thd=0.0)
    assert assign_labels(logits, confident).tolist() == [[[1, 1]]]
    as_class = VIPConfig(prob_thd=0.9, background="class", background_id=0)
    assert assign_labels(logits, as_class).tolist() == [[[0, 1]]]
    assert assign_labels(logits, VIPConfig(prob_thd=0.55, background="class")).tolist() == [
        [[1, 1]]
    ]  # 0.60 >= 0.55: kept
    as_ignore = VIPConfig(prob_thd=0.9, background="ignore")
    assert assign_labels(logits, as_ignore).tolist() == [[[-1, 1]]]
    with pytest.raises(ValueError, match="background_id=5"):
        assign_labels(logits, VIPConfig(prob_thd=0.9, background="class", background_id=5))
    with pytest.raises(ValueError, match="background='sky'"):
        VIPConfig(background="sky")


# ---------------------------------------------------------------------------------------------
# visual-guided alias selection


def _two_region_image() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """16 patches: 0-7 an object (direction 0), 8-15 the rest (direction 1); a texture
    (direction 2) on patches 0, 3, 9, 12 of both regions. Class 0 has a vague canonical name, a
    'texture' alias (scattered over both regions) and an 'object' alias (exactly the object)."""
    gen = torch.Generator().manual_seed(0)
    f = torch.zeros(16, 6)
    f[:8, 0] = 1.0
    f[8:, 1] = 1.0
    f[[0, 3, 9, 12], 2] = 0.8
    f[:, 3:] = 0.05 * torch.randn(16, 3, generator=gen)
    queries = torch.tensor(
        [
            [0.6, 0.4, 0.69, 0, 0, 0],  # class 0 canonical: vague
            [0.0, 0.0, 1.0, 0, 0, 0],  # class 0 alias: the texture
            [1.0, 0.0, 0.0, 0, 0, 0],  # class 0 alias: the object
            [0.0, 1.0, 0.0, 0, 0, 0],  # class 1 canonical
        ]
    )
    return f[None], queries, torch.tensor([0, 0, 0, 1])


def test_alias_selection_keeps_the_better_alias_and_drops_the_worse():
    from model.vip.selection import AliasSelector, SelectionConfig

    features, queries, owner = _two_region_image()
    selector = AliasSelector(
        ["thing", "texture", "object", "stuff"], owner, SelectionConfig(logit_scale=10)
    )
    selector.update(features, queries)
    scores = {s.alias: s for s in selector.scores()}
    thing, texture, obj = scores["thing"], scores["texture"], scores["object"]
    assert thing.kept and thing.canonical and scores["stuff"].kept
    assert obj.kept and obj.agreement > thing.agreement and obj.entropy < thing.entropy
    assert not texture.kept and texture.agreement < thing.agreement
    assert obj.activation == pytest.approx(0.5)  # exactly the 8 object patches


def test_alias_substitution_matches_a_brute_force_softmax():
    from model.vip.selection import AliasSelector, SelectionConfig

    features, queries, owner = _two_region_image()
    selector = AliasSelector(["a", "b", "c", "d"], owner, SelectionConfig())
    logits = (
        40
        * torch.nn.functional.normalize(features[0], dim=-1)
        @ torch.nn.functional.normalize(queries, dim=-1).T
    )
    prob, entropy = selector._substituted(logits)
    for a, k in enumerate(owner.tolist()):
        classes = logits[:, [0, 3]].double().clone()  # the canonical names of classes 0 and 1
        classes[:, k] = logits[:, a]
        p = classes.softmax(dim=1)
        torch.testing.assert_close(prob[:, a], p[:, k])
        torch.testing.assert_close(entropy[:, a], -(p * p.clamp(min=1e-300).log()).sum(1))


def test_a_flat_map_scores_no_agreement_and_a_silent_canonical_name_keeps_no_alias():
    """A map constant over the image (every patch alike) is perfectly 'stable' under
    propagation; it scores 0, not 1. A class whose canonical name never activates has nothing
    to compare its aliases with: they are dropped, saying why."""
    from model.vip.selection import AliasSelector, SelectionConfig

    features, _, owner = _two_region_image()
    queries = torch.tensor(
        [
            [-1.0, -1.0, 0, 0, 0, 0],  # class 0 canonical: far from every patch
            [1.0, 0, 0, 0, 0, 0],  # class 0 alias: the object
            [0, 0, 1.0, 0, 0, 0],  # class 0 alias: the texture
            [0, 1.0, 0, 0, 0, 0],  # class 1 canonical
        ]
    )
    names = ["silent", "object", "texture", "stuff"]
    selector = AliasSelector(names, owner, SelectionConfig(logit_scale=10))
    selector.update(features, queries)
    scores = {s.alias: s for s in selector.scores()}
    assert scores["silent"].entropy == float("inf") and scores["silent"].kept
    assert scores["object"].activation > 0 and not scores["object"].kept
    assert scores["object"].reason == "the canonical name has no region: nothing to compare with"

    blank = features[:, :1].expand_as(features)  # every patch alike: every map is flat
    flat = AliasSelector(names, owner, SelectionConfig(logit_scale=10))
    flat.update(blank, queries)
    assert all(s.agreement == 0.0 for s in flat.scores())  # a soft IoU gave each of them 1


def test_reported_rule_prefilters_by_text_cosine_and_counts_only_non_empty_regions():
    from model.vip.selection import AliasSelector, SelectionConfig

    reported = SelectionConfig.reported(logit_scale=10, affinity="proxy")
    assert (reported.threshold, reported.prefilter, reported.nonempty_only) == (0.4, 0.7, True)
    assert SelectionConfig.reported().affinity == "attention"
    features, queries, owner = _two_region_image()
    cosine = torch.tensor([1.0, 0.2, 0.9, 1.0])  # 'texture' is far from 'thing' in text
    selector = AliasSelector(["thing", "texture", "object", "stuff"], owner, reported, cosine)
    selector.update(features, queries)
    stuff_only = features[:, 8:9].expand_as(features)  # every patch the 'stuff' of class 1
    selector.update(stuff_only, queries)
    scores = {s.alias: s for s in selector.scores()}
    assert scores["texture"].reason == "text cosine with the canonical name 0.20 < 0.7"
    assert scores["object"].kept
    # class 0 has no region in the second image: it is not counted, the figure is the first's
    alone = AliasSelector(["thing", "texture", "object", "stuff"], owner, reported, cosine)
    alone.update(features, queries)
    first = {s.alias: s for s in alone.scores()}
    assert scores["object"].agreement == pytest.approx(first["object"].agreement)
    with pytest.raises(ValueError, match="prefilter"):
        SelectionConfig(prefilter=2.0)


def test_alias_file_round_trips_through_the_vocabulary_reader(tmp_path):
    from data.vocabulary import read_vocabulary_file
    from model.vip.selection import AliasSelector, SelectionConfig, write_alias_file

    features, queries, owner = _two_region_image()
    selector = AliasSelector(
        ["thing", "texture", "object", "stuff"], owner, SelectionConfig(logit_scale=10)
    )
    selector.update(features, queries)
    path = write_alias_file(selector.scores(), tmp_path / "aliases.txt", ["made by a test"])
    text = path.read_text()
    assert "# class 0 'texture': agreement" in text
    assert "(dropped: agreement not above the canonical name's)" in text
    vocab = read_vocabulary_file(path)
    assert [c.synonyms for c in vocab] == [("thing", "object"), ("stuff",)]


# ---------------------------------------------------------------------------------------------
# the dense encoder and the segmenter


@pytest.fixture(scope="module")
def tiny_vit():
    from pretrained.backbone import create_clip

    return create_clip("tiny-vit")


def test_dense_clip_plain_last_block_equals_the_dpseg_backbone(tiny_vit):
    from model.vip.dense import DenseViT
    from pretrained.backbone import ClipBackbone

    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = DenseViT(tiny_vit.model, tiny_vit.preset, attention="none")(images)
        reference = ClipBackbone(tiny_vit.model, tiny_vit.preset)(images).dense
    assert plain.shape == (2, 64, 16, 16)
    torch.testing.assert_close(plain, reference, rtol=1e-4, atol=1e-5)


def test_dense_clip_last_block_variants(tiny_vit):
    from model.vip.dense import DenseViT

    visual = tiny_vit.model.visual
    images = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    outs = {}
    with torch.no_grad():
        for attention in ("clear", "sclip", "vanilla", "proxy"):
            outs[attention] = DenseViT(tiny_vit.model, tiny_vit.preset, attention)(images)
        # vanilla = the block's own attention, without the residual and the FFN
        dense = DenseViT(tiny_vit.model, tiny_vit.preset, "vanilla")
        tokens, grid = dense._tokens_before_last_block((images - dense.mean) / dense.std)
        block = visual.transformer.resblocks[-1]
        y = block.ln_1(tokens)
        attended = block.attn(y, y, y, need_weights=False)[0]
        expected = (visual.ln_post(attended[:, 1:]) @ visual.proj).mT.reshape(1, 64, *grid)
    assert grid == (8, 12)  # a 64 x 96 input: positions resized to the 8 x 12 patch grid
    torch.testing.assert_close(outs["vanilla"], expected, rtol=1e-4, atol=1e-5)
    for a in ("clear", "sclip", "proxy"):
        assert outs[a].shape == (1, 64, 8, 12)
        assert not torch.allclose(outs[a], outs["vanilla"])


def test_dense_clip_refuses_an_attention_the_tower_lacks():
    from model.vip.dense import DenseConvNeXt, create_dense_encoder
    from pretrained.backbone import create_clip

    convnext = create_clip("tiny-convnext")
    with pytest.raises(ValueError, match=r"attention='clear'.*proxy, none"):
        create_dense_encoder(convnext, "clear")
    dense = create_dense_encoder(convnext, "proxy")
    assert isinstance(dense, DenseConvNeXt) and dense.patch_size == 32
    with torch.no_grad():
        assert dense(torch.rand(1, 3, 128, 128)).shape == (1, 64, 4, 4)


class _FixedFeatures(torch.nn.Module):
    """An encoder that returns given dense features (the maths downstream is under test)."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features


def test_segmenter_aggregates_aliases_and_adds_visual_prompts():
    from model.vip.segmenter import AliasQueries, VIPSegmenter

    features = torch.tensor([[1.0, 0.0], [0.6, 0.8]]).T.reshape(1, 2, 1, 2)  # 2 pixels
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])  # class 0: aliases 0, 1
    queries = AliasQueries(text, torch.tensor([0, 0, 1]), ["a", "b", "c"], num_classes=2)
    config = VIPConfig(logit_scale=10.0, tau=2.0, alias_scale=1.0)
    segmenter = VIPSegmenter(_FixedFeatures(features), config)
    logits = segmenter(torch.zeros(1, 3, 8, 16), queries)
    f = torch.nn.functional.normalize(features.flatten(2).mT[0], dim=-1)  # (2, D)
    image = torch.nn.functional.normalize(f.mean(0), dim=0)
    w = alias_weights(image[None], text, queries.owner, 2, scale=1.0)[0]
    for pixel in range(2):
        cos = f[pixel] @ text.T
        c0 = torch.logsumexp(2.0 * w[:2] * 10 * cos[:2], 0) / 2.0
        assert logits[0, 0, 0, pixel].item() == pytest.approx(c0.item(), rel=1e-5)
        assert logits[0, 1, 0, pixel].item() == pytest.approx(10 * cos[2].item(), rel=1e-5)
    # dual prompts: each alias query is normalize((t + v) / 2) with its class's visual prompt
    visual = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    dual = AliasQueries(text, queries.owner, queries.aliases, 2, visual=visual)
    fused = torch.nn.functional.normalize((text + visual[[0, 0, 1]]) / 2, dim=-1)
    torch.testing.assert_close(dual.embeddings(0.5), fused)
    assert dual.embeddings(0.5).norm(dim=-1).allclose(torch.ones(3))  # one logit scale for all
    assert not torch.allclose(segmenter(torch.zeros(1, 3, 8, 16), dual), logits)
    with pytest.raises(ValueError, match="visual prompts"):
        AliasQueries(text, queries.owner, queries.aliases, 2, visual=torch.zeros(3, 2))


def test_dual_prompts_fuse_per_template_then_average_the_templates():
    """(A, P, D) text and (K, P, D) visual: r = normalize((1 - w) t + w v) per alias and
    template, then the template mean; a bank of other templates gives one v per class."""
    from model.vip.segmenter import AliasQueries

    gen = torch.Generator().manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=gen), dim=-1)  # noqa: E731
    text, visual, owner = unit(3, 4, 8), unit(2, 4, 8), torch.tensor([0, 0, 1])
    queries = AliasQueries(text, owner, ["a", "b", "c"], 2, visual=visual)
    expected = torch.stack(
        [
            torch.stack(
                [
                    torch.nn.functional.normalize(
                        0.7 * text[a, p] + 0.3 * visual[owner[a], p], dim=0
                    )
                    for p in range(4)
                ]
            ).mean(0)
            for a in range(3)
        ]
    )
    torch.testing.assert_close(queries.embeddings(0.3), expected)
    torch.testing.assert_close(
        AliasQueries(text, owner, ["a", "b", "c"], 2).embeddings(0.3), text.mean(dim=1)
    )
    one = AliasQueries(text, owner, ["a", "b", "c"], 2, visual=visual[:, :1])  # (K, 1, D)
    assert one.embeddings(0.5).shape == (3, 8)
    with pytest.raises(ValueError, match="P=4 or 1"):
        AliasQueries(text, owner, ["a", "b", "c"], 2, visual=visual[:, :3])


def test_alias_queries_average_the_templates_of_each_alias(tiny_vit):
    from data.vocabulary import ClassName, load_vocabulary
    from model.vip.segmenter import encode_aliases
    from pretrained.backbone import ClipEncoder, clip_tokenizer_for

    encoder = ClipEncoder(tiny_vit.model, tiny_vit.preset)
    tokenizer = clip_tokenizer_for(tiny_vit.preset)
    templates = ["a photo of a {}.", "a drawing of a {}."]
    queries = encode_aliases(encoder, load_vocabulary("cat, kitty; dog"), templates, tokenizer)
    assert queries.aliases == ["cat", "kitty", "dog"] and queries.owner.tolist() == [0, 0, 1]
    with torch.no_grad():
        kitty = encoder.encode_class_texts([ClassName(("kitty",))], templates, tokenizer)
    torch.testing.assert_close(queries.text[1], kitty[0])  # (P, D) per template
    torch.testing.assert_close(queries.embeddings()[1], kitty[0].mean(0))


def test_reported_affinity_is_the_backbones_attention_among_patches():
    """dino.txt's last backbone block's attention among patches (per head a softmax over the
    patch keys, then the heads averaged), on the grid the dense path keeps; the selector takes it in place of the
    proxy attention and asks for it when the config says so."""
    from model.vip.dense import create_dense_encoder
    from model.vip.selection import AliasSelector, SelectionConfig
    from pretrained.backbone import create_encoder

    dense = create_dense_encoder(create_encoder("tiny-dinotxt"))
    images = torch.rand(2, 3, 50, 33)  # padded to 64 x 48 inside, 4 x 3 cells kept
    affinity = dense.backbone_attention(images)
    assert affinity.shape == (2, 12, 12) and (affinity >= 0).all()
    torch.testing.assert_close(affinity.sum(dim=-1), torch.ones(2, 12))
    attn = dense.model.backbone.blocks[-1].attn
    assert attn.fused_attn  # restored after the call
    # per head a softmax over the patch keys, then the heads averaged (VIP's reference), not
    # the heads averaged over every token and then renormalised (0.18 apart on real weights)
    from pretrained.dinotxt import PREFIX_TOKENS

    probs: list = []
    attn.fused_attn = False
    hook = attn.attn_drop.register_forward_hook(lambda _m, _i, out: probs.append(out))
    try:
        dense(images)
    finally:
        hook.remove()
        attn.fused_attn = True
    heads = probs[-1].float()[:, :, PREFIX_TOKENS:, PREFIX_TOKENS:]
    expected = (heads / heads.sum(dim=-1, keepdim=True)).mean(dim=1)
    torch.testing.assert_close(affinity, expected)
    averaged_first = heads.mean(dim=1)
    averaged_first = averaged_first / averaged_first.sum(dim=-1, keepdim=True)
    assert not torch.allclose(affinity, averaged_first, atol=1e-6)
    features = dense(images).flatten(2).transpose(1, 2)  # (2, 12, 64)
    assert not torch.allclose(affinity, proxy_attention(features), atol=1e-3)
    queries = torch.nn.functional.normalize(torch.randn(3, 64), dim=-1)
    selector = AliasSelector(["a", "b", "c"], torch.tensor([0, 0, 1]), SelectionConfig.reported())
    with pytest.raises(ValueError, match="pass the"):
        selector.update(features, queries)
    selector.update(features, queries, affinity)
    assert selector.images == 2


def test_vip_predictor_takes_the_same_inputs_as_dpseg_s():
    import numpy as np

    from common.errors import SettingError
    from model.vip.predictor import VIPPredictor

    predictor = VIPPredictor.from_config(encoder="tiny-vit")
    predictor.set_vocabulary("cat, kitty; dog; grass")
    rgb = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    maps = predictor.predict_batch([rgb, rgb / 255.0, rgb[..., 0]])
    assert [m.shape for m in maps] == [(48, 40)] * 3
    np.testing.assert_array_equal(maps[0], maps[1])
    with pytest.raises(SettingError, match=r"^images\[1\]: dtype int16 is not taken"):
        predictor.predict_batch([rgb, rgb.astype(np.int16)])


def test_segment_s_missing_vip_weights_name_the_setting_segment_takes(tmp_path):
    from conftest import run_cli
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    result = run_cli(
        "segment",
        "--method",
        "vip",
        "--encoder",
        "dinotxt-l16",
        "--images",
        str(image),
        "--vocab",
        "a; b",
        "--out",
        str(tmp_path / "o"),
        env={"TORCH_HOME": str(tmp_path / "torch")},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--model.encoder_weights" not in result.stderr
    assert "encoder_weights: DIR in the model: section of a --config file" in result.stderr
