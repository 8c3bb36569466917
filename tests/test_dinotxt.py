"""dino.txt at tiny width: VIP's proxy head against a direct transcription of its formula, the
official key layouts loading without missing or unexpected keys (also through the preset path:
a folder of officially named files), the encoder a bank uses, and clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.vip.aggregation import proxy_attention
from pretrained.dinotxt import (
    DINOTXT_FILES,
    PREFIX_TOKENS,
    TINY_DINOTXT,
    DinoTxt,
    load_backbone_weights,
    load_dinotxt_weights,
)
from pretrained.hub import WeightsUnavailableError
from pretrained.presets import EncoderPreset, get_encoder_preset
from rehearsal.dinotxt_files import official_backbone_state, official_dinotxt_state


@pytest.fixture(scope="module")
def model() -> DinoTxt:
    torch.manual_seed(0)
    m = DinoTxt(TINY_DINOTXT).eval()
    with torch.no_grad():  # LayerScales at 1, not 1e-5: the blocks must matter in the test
        for p in m.head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for block in m.head.blocks:
            block.ls1.gamma.fill_(1.0)
            block.ls2.gamma.fill_(1.0)
    return m


def reference_head(head, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VIP's vision head with proxy attention, written out from its description, batch 1."""
    x = tokens[0]
    feat = tokens[0, PREFIX_TOKENS:]
    c = x.shape[-1]
    heads = head.blocks[0].attn.heads
    f_hat = feat / feat.norm(dim=-1, keepdim=True)
    s = f_hat @ f_hat.T
    s2 = 0.5 * (s - 1.5 * s.mean())
    s2[s2 <= 0] = float("-inf")
    a = torch.softmax(s2, dim=-1)
    for blk in head.blocks:
        z = F.layer_norm(x, (c,), blk.norm1.weight, blk.norm1.bias, 1e-5)
        v = z[PREFIX_TOKENS:] @ blk.attn.qkv.weight[2 * c :].T  # (N, C), no bias
        v = v.reshape(-1, heads, c // heads).permute(1, 0, 2)  # (h, N, d)
        o = (a @ v).permute(1, 0, 2).reshape(-1, c)
        o = o @ blk.attn.proj.weight.T + blk.attn.proj.bias
        x = x + blk.ls1.gamma * torch.cat([z[:PREFIX_TOKENS], o])
        y = F.layer_norm(x, (c,), blk.norm2.weight, blk.norm2.bias, 1e-5)
        mlp = blk.mlp
        x = x + blk.ls2.gamma * mlp.w3(F.silu(mlp.w1(y)) * mlp.w2(y))
    out = F.layer_norm(x, (c,), head.ln_final.weight, head.ln_final.bias, 1e-5)
    patches = out[PREFIX_TOKENS:]
    return torch.cat([out[0], patches.mean(0)])[None], patches[None]


def test_proxy_head_matches_the_reference_formula(model):
    torch.manual_seed(1)
    images = torch.randn(1, 3, 64, 96)  # a 4 x 6 grid: any size, not only square
    with torch.no_grad():
        tokens = model.backbone.forward_features(images)
        ours = model.head(tokens, proxy=True)
        theirs = reference_head(model.head, tokens)
        global_, patches, levels = model.encode_image(images, levels=(0, 1))
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max().item() <= 1e-5
    assert global_.shape == (1, 128) and patches.shape == (1, 4, 6, 64)
    assert [tuple(m.shape) for m in levels] == [(1, 64, 4, 6)] * 2
    after_last = model.backbone.forward_intermediates(images, indices=[1], norm=True)[1][0]
    torch.testing.assert_close(  # the last level, normed, is what the head received
        after_last.flatten(2).mT, tokens[:, PREFIX_TOKENS:]
    )
    torch.testing.assert_close(global_[:, 64:], patches.mean(dim=(1, 2)))  # [CLS, mean patches]


def test_batches_equal_single_images_and_plain_attention_differs(model):
    torch.manual_seed(2)
    images = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        together = model.encode_image(images)[1]
        alone = torch.cat([model.encode_image(images[i : i + 1])[1] for i in range(3)])
        plain = model.encode_image(images, proxy=False)[1]
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert (plain - together).abs().max() > 1e-3


def test_a_flat_crop_gives_no_nan():
    """Every S_ij equal: no entry exceeds 1.5 mean S (VIP: NaN); each token keeps itself."""
    affinity = proxy_attention(torch.ones(1, 9, 8))
    torch.testing.assert_close(affinity[0], torch.eye(9))
    assert torch.isfinite(affinity).all()


def test_text_tower_pools_the_eot_token(model):
    tokens = torch.zeros(2, 77, dtype=torch.long)
    tokens[:, 0] = 49406
    tokens[0, 1:4] = torch.tensor([320, 1125, 49407])  # EOT at 3
    tokens[1, 1:3] = torch.tensor([320, 49407])  # EOT at 2
    with torch.no_grad():
        out = model.encode_text(tokens)
        longer = tokens.clone()
        longer[1, 3:6] = 7  # after EOT: a causal tower does not see it
        again = model.encode_text(longer)
    assert out.shape == (2, 128)
    torch.testing.assert_close(out, again)


def test_official_layouts_load_with_every_key_used(tmp_path):
    torch.manual_seed(3)
    model = DinoTxt(TINY_DINOTXT)
    backbone, dinotxt = official_backbone_state(TINY_DINOTXT), official_dinotxt_state(TINY_DINOTXT)
    torch.save(backbone, tmp_path / "backbone.pth")
    torch.save(dinotxt, tmp_path / "dinotxt.pth")
    load_backbone_weights(model, tmp_path / "backbone.pth")
    load_dinotxt_weights(model, tmp_path / "dinotxt.pth")
    c = TINY_DINOTXT.width
    block = model.backbone.blocks[1]
    torch.testing.assert_close(block.attn.q_bias, backbone["blocks.1.attn.qkv.bias"][:c])
    torch.testing.assert_close(block.gamma_2, backbone["blocks.1.ls2.gamma"])
    torch.testing.assert_close(model.backbone.reg_token, backbone["storage_tokens"])
    torch.testing.assert_close(model.backbone.rope.periods, backbone["rope_embed.periods"])
    torch.testing.assert_close(
        model.head.blocks[0].mlp.w3.weight, dinotxt["visual_model.head.blocks.0.mlp.w3.weight"]
    )
    torch.testing.assert_close(
        model.text.linear_projection.weight, dinotxt["text_model.head.linear_projection.weight"]
    )


def test_wrong_files_are_refused_by_name(tmp_path):
    model = DinoTxt(TINY_DINOTXT)
    dinotxt = official_dinotxt_state(TINY_DINOTXT)
    del dinotxt["visual_model.head.blocks.1.mlp.w1.bias"]
    torch.save(dinotxt, tmp_path / "partial.pth")
    with pytest.raises(WeightsUnavailableError, match=r"1 missing keys \(blocks\.1\.mlp\.w1\.bias"):
        load_dinotxt_weights(model, tmp_path / "partial.pth")
    torch.save(official_dinotxt_state(TINY_DINOTXT), tmp_path / "dinotxt.pth")
    with pytest.raises(WeightsUnavailableError, match="does not fit the backbone"):
        load_backbone_weights(model, tmp_path / "dinotxt.pth")  # the two files swapped
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="is not a readable weights file"):
        load_backbone_weights(model, tmp_path / "junk.pth")
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        load_dinotxt_weights(model, tmp_path / "absent.pth")


def test_vip_runs_on_dinotxt_through_its_seams(model):
    """The segmenter VIP uses, fed by dino.txt's dense and text encoders (a tiny random model:
    shapes and plumbing, not accuracy)."""
    from data.vocabulary import Vocabulary
    from model.vip.dense import DenseDinoTxt
    from pretrained.backbone import clip_tokenizer_for
    from pretrained.dinotxt import DinoTxtEncoder

    dinotxt_tokenizer = lambda: clip_tokenizer_for(get_encoder_preset("tiny-dinotxt"))  # noqa: E731
    from model.vip.segmenter import VIPSegmenter, encode_aliases

    vocab = Vocabulary.from_entries(["background", "cat, kitty", "dog"])
    text = DinoTxtEncoder(model, get_encoder_preset("tiny-dinotxt"))
    per_template = text.encode_class_texts(vocab.classes, ["a photo of a {}."], dinotxt_tokenizer())
    assert per_template.shape == (3, 1, 64)
    torch.testing.assert_close(per_template.norm(dim=-1), torch.ones(3, 1))
    queries = encode_aliases(text, vocab, ["a photo of a {}.", "{} isolated."], dinotxt_tokenizer())
    assert queries.text.shape == (4, 2, 64) and queries.aliases == [
        "background",
        "cat",
        "kitty",
        "dog",
    ]
    dense = DenseDinoTxt(model)
    images = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        features = dense(images)
        logits = VIPSegmenter(dense)(images, queries)
    assert features.shape == (2, 64, 3, 4) and logits.shape == (2, 3, 3, 4)
    assert torch.isfinite(logits).all()


def test_bank_encoder_embeds_images_through_the_pixels_dense_path(model):
    """A visual prompt of dino.txt is the generated image's patch embeddings after the proxy
    head, pooled and normalised: the same path as the pixels VIP compares it with."""
    from model.vip.dense import DenseDinoTxt
    from pretrained.dinotxt import DinoTxtEncoder

    preset = get_encoder_preset("tiny-dinotxt")
    encoder, dense = DinoTxtEncoder(model, preset), DenseDinoTxt(model)
    images = torch.rand(2, 3, preset.image_size, preset.image_size)
    with torch.no_grad():
        encoding = encoder.encode_images(images)
        pooled = F.normalize(dense(images).mean(dim=(2, 3)), dim=-1)
    torch.testing.assert_close(encoding.embedding, pooled, atol=1e-5, rtol=1e-5)
    assert encoder.level_dims() == [64, 64] and encoder.embed_dim == 64
    side = preset.image_size // 16
    assert [tuple(m.shape) for m in encoding.levels] == [(2, 64, side, side)] * 2


def test_dense_path_takes_sizes_that_are_not_multiples_of_the_patch(model):
    from model.vip.dense import DenseDinoTxt

    dense = DenseDinoTxt(model)
    with torch.no_grad():
        odd = dense(torch.rand(1, 3, 50, 33))
    assert odd.shape == (1, 64, 4, 3) and torch.isfinite(odd).all()  # ceil(50/16), ceil(33/16)


def _officially_named_folder(folder, config):
    folder.mkdir()
    torch.save(official_backbone_state(config), folder / DINOTXT_FILES[0])
    torch.save(official_dinotxt_state(config), folder / DINOTXT_FILES[1])
    return folder


def test_a_folder_of_the_official_files_builds_the_preset(tmp_path):
    """The preset path a user takes: a folder holding the two files by their official names
    (here in tiny shapes, under a tiny variant of the dinotxt-l16 preset)."""
    from dataclasses import asdict

    from pretrained.dinotxt import create_dinotxt, find_weight_files

    torch.manual_seed(4)
    folder = _officially_named_folder(tmp_path / "weights", TINY_DINOTXT)
    assert find_weight_files(folder, "--x") == (
        folder / DINOTXT_FILES[0],
        folder / DINOTXT_FILES[1],
    )
    preset = EncoderPreset(
        name="dinotxt-tiny-test",
        family="dinotxt",
        arch="dinotxt",
        pretrained="lvd1689m",
        image_size=64,
        levels=(0, 1),
        description="test",
        model_cfg=asdict(TINY_DINOTXT),
    )
    built = create_dinotxt(preset, folder, option="--model.encoder_weights")
    backbone = torch.load(folder / DINOTXT_FILES[0], weights_only=True)
    torch.testing.assert_close(built.model.backbone.reg_token, backbone["storage_tokens"])
    assert built.weights.endswith(DINOTXT_FILES[1]) and len(built.fingerprint) == 64
    again = create_dinotxt(preset, folder)
    assert again.fingerprint == built.fingerprint


def test_missing_files_name_both_files_and_the_option(tmp_path):
    from pretrained.backbone import create_encoder
    from pretrained.dinotxt import find_weight_files

    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsUnavailableError) as info:
        create_encoder("dinotxt-l16", weights=tmp_path / "empty", option="--model.encoder_weights")
    message = str(info.value)
    assert "\n" not in message and "neither is in" in message
    assert (
        all(name in message for name in DINOTXT_FILES) and "--model.encoder_weights DIR" in message
    )
    torch.save({}, tmp_path / "empty" / DINOTXT_FILES[0])
    with pytest.raises(WeightsUnavailableError, match=f"{DINOTXT_FILES[1]} is not in"):
        find_weight_files(tmp_path / "empty", "--encoder-weights")
    with pytest.raises(WeightsUnavailableError, match="is not a folder"):
        find_weight_files(tmp_path / "empty" / DINOTXT_FILES[0], "--encoder-weights")


def test_tiny_dinotxt_preset_is_portable_and_random():
    from pretrained.backbone import create_encoder

    a, b = create_encoder("tiny-dinotxt"), create_encoder("tiny-dinotxt")
    assert a.fingerprint == b.fingerprint and a.weights == "random(seed=0)"
    with pytest.raises(ValueError, match="DPSeg's image encoder is a CLIP"):
        from pretrained.backbone import create_clip

        create_clip("tiny-dinotxt")
