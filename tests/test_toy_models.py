"""The toy presets know their world: committed weights, pretraining, and informative banks.

These fail when pretraining stops producing informative models: a zero-shot accuracy far above
chance (1/31), and visual prompts whose nearest text prompt is their own class.
"""

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

from pretrained.backbone import (
    clip_tokenizer_for,
    create_clip,
    create_encoder,
    text_encoder_for,
)
from pretrained.bundled_weights import bundled_path, load_weights, read_metadata, save_weights
from pretrained.families import family_of
from pretrained.fingerprint import recorded_fingerprints
from pretrained.hub import WeightsUnavailableError
from pretrained.presets import get_encoder_preset
from pretrained.toy_pretrain import PretrainConfig, pretrain, render_pool, zero_shot_accuracy

CHANCE = 1 / 31
TOY = ("toy-convnext", "toy-vit", "toy-dinotxt")
# zero-shot floors: 10x chance; dino.txt is measured as VIP uses it, through the proxy head that
# pretraining never ran (the plain head it trained: 60% recorded; the proxy head: 30%)
FLOOR = {"toy-dinotxt": 5 * CHANCE}


def architecture(name):
    """A toy preset's architecture with its portable initial weights (CLIP or dino.txt)."""
    preset = get_encoder_preset(name)
    return family_of(preset).architecture(preset)


@pytest.mark.parametrize("name", TOY)
def test_committed_weights_load_as_recorded_and_are_small(name):
    built = create_encoder(name)
    assert built.weights == f"bundled:{name}.safetensors"
    assert built.fingerprint == recorded_fingerprints()["fingerprints"][name]
    assert bundled_path(f"{name}.safetensors").stat().st_size < 4e6  # a few MB in git
    preset = get_encoder_preset(name)
    assert preset.offline and not preset.is_random
    assert preset.needs.startswith("nothing: pretrained on the toy world")
    assert clip_tokenizer_for(preset)(["a red disc"]).shape == (1, 32)  # the toy context


@pytest.mark.parametrize("name", TOY)
def test_committed_weights_classify_held_out_pictures(name):
    """Zero-shot on pictures never used in pretraining (other seeds), far above chance (dino.txt:
    as VIP uses it, text's patch half against the proxy head's mean patch embedding)."""
    built = create_encoder(name)
    encoder, tokenizer = text_encoder_for(built), clip_tokenizer_for(built.preset)
    images, _, labels = render_pool(300, seed=987_654, size=64, distractors=0, plain=True)
    accuracy = zero_shot_accuracy(encoder, tokenizer, images, labels)
    assert accuracy > FLOOR.get(name, 10 * CHANCE), accuracy
    recorded = float(read_metadata(bundled_path(f"{name}.safetensors"))["zero_shot_plain"])
    assert abs(accuracy - recorded) < 0.12  # the file's record says what it does


def test_toy_dinotxt_file_records_its_objective_and_stays_a_dinotxt_state():
    """The file holds dino.txt's own tensors (no temperature: VIP does not use it; its value is
    in the metadata), the token table by changed rows, and the dino.txt zero-shot figures."""
    from safetensors.torch import load_file

    path = bundled_path("toy-dinotxt.safetensors")
    meta, stored = read_metadata(path), load_file(str(path))
    assert "logit_scale" not in stored and float(meta["logit_scale"]) > 0
    assert len(stored["text.token_embedding.weight.rows"]) < 500  # the toy world's tokens
    assert float(meta["zero_shot_plain"]) > FLOOR["toy-dinotxt"]  # VIP's proxy head
    for key in ("zero_shot_plain_plain_head", "zero_shot_plain_global"):  # as trained
        assert float(meta[key]) > 10 * CHANCE, (key, meta[key])
    assert meta["command"].startswith("cli.py presets pretrain toy-dinotxt")
    with pytest.raises(ValueError, match=r"is dino\.txt"):  # not DPSeg's CLIP
        create_clip("toy-dinotxt")


def test_a_short_dinotxt_pretraining_trains_the_plain_head_and_writes_a_valid_file(
    tmp_path, monkeypatch
):
    """A few steps: the head trains with plain attention (the official head's training; VIP's
    proxy attention is for inference, and for the VIP-side zero-shot figure), the temperature
    learns, and the file is a valid toy-dinotxt weights file."""
    from pretrained import dinotxt

    calls = []
    forward = dinotxt.VisionHead.forward

    def spy(self, tokens, proxy=True, shape=(1.5, 0.5)):
        calls.append((torch.is_grad_enabled(), proxy))
        return forward(self, tokens, proxy, shape)

    monkeypatch.setattr(dinotxt.VisionHead, "forward", spy)
    out = tmp_path / "toy-dinotxt.safetensors"
    config = PretrainConfig(steps=2, batch_size=16, pool=64, eval_images=32, warmup_steps=1)
    report = pretrain("toy-dinotxt", config, out, progress=False)
    training = [proxy for grad, proxy in calls if grad]
    assert training == [False, False]  # two steps, plain attention
    assert {proxy for grad, proxy in calls if not grad} == {True, False}  # VIP's, plain, global
    assert report["logit_scale"] != round(float(np.log(1 / 0.07)), 4)  # it learned
    assert {"zero_shot_plain_plain_head", "zero_shot_plain_global"} <= set(report)
    built = create_encoder("toy-dinotxt", weights=out)
    assert built.weights == str(out) and out.stat().st_size == report["bytes"]
    assert built.fingerprint != recorded_fingerprints()["fingerprints"]["toy-dinotxt"]


@pytest.mark.e2e
def test_a_short_pretraining_is_informative(tmp_path):
    """A fresh (short) pretraining, run as a user runs it, learns the world: not the committed
    bits, but an informative model in a valid weights file."""
    out = tmp_path / "toy.safetensors"
    result = run_cli(
        "presets",
        "pretrain",
        "toy-convnext",
        "--steps",
        "120",
        "--pool",
        "1500",
        "--scene-pool",
        "64",
        "--scene-batch",
        "8",
        "--out",
        str(out),
        "--json",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["zero_shot_plain"] > 5 * CHANCE, report
    assert report["config"]["steps"] == 120 and out.stat().st_size == report["bytes"]
    assert report["region_loss"] is True and report["modality_gap"] == 1.4  # ConvNeXt: both
    built = create_clip("toy-convnext", weights=out)  # the file is a valid preset weights file
    assert built.weights == str(out)
    assert built.fingerprint != recorded_fingerprints()["fingerprints"]["toy-convnext"]
    assert read_metadata(out)["command"].startswith("cli.py presets pretrain toy-convnext")


def test_pretraining_a_convnext_writes_a_valid_file_with_the_region_loss(tmp_path):
    """The mechanics of ``presets pretrain`` for a ConvNeXt (the learning itself: the test above,
    marked e2e): the region loss over rendered scenes runs, the report says so, the file is a
    valid weights file of the preset."""
    out = tmp_path / "toy.safetensors"
    result = run_cli(
        "presets",
        "pretrain",
        "toy-convnext",
        "--steps",
        "2",
        "--pool",
        "40",
        "--batch-size",
        "16",
        "--eval-images",
        "31",
        "--scene-pool",
        "8",
        "--scene-batch",
        "2",
        "--out",
        str(out),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 steps in " in result.stdout and f"MB written to {out}" in result.stdout
    meta = read_metadata(out)
    assert meta["region_loss"] == "True" and float(meta["modality_gap"]) == 1.4
    assert create_clip("toy-convnext", weights=out).weights == str(out)


def test_pretrain_refuses_bad_settings():
    result = run_cli("presets", "pretrain", "toy-convnext", "--steps", "0")
    assert result.returncode == 2 and "--steps 0: must be >= 1" in result.stderr
    with pytest.raises(ValueError, match="not a toy preset"):
        pretrain("tiny-vit", PretrainConfig(steps=1), "/tmp/never.safetensors", progress=False)


@pytest.mark.parametrize(
    ("name", "table", "other"),
    [
        ("toy-vit", "token_embedding.weight", "toy-convnext"),
        ("toy-dinotxt", "text.token_embedding.weight", "toy-vit"),
    ],
)
def test_weights_file_keeps_only_changed_token_rows_and_refuses_other_architectures(
    tmp_path, name, table, other
):
    model = architecture(name)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.get_parameter(table)[[5, 7]] += 1.0
        next(p for k, p in model.named_parameters() if k != table).add_(0.5)
    path = tmp_path / "w.safetensors"
    save_weights(model, path, initial)
    from safetensors.torch import load_file

    stored = load_file(str(path))
    assert stored[f"{table}.rows"].tolist() == [5, 7]
    fresh = architecture(name)
    load_weights(fresh, path, "--encoder-weights")
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    other = architecture(other)
    with pytest.raises(WeightsUnavailableError, match="does not fit the preset's architecture"):
        load_weights(other, path, "--encoder-weights")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsUnavailableError, match="not a readable safetensors file"):
        load_weights(fresh, tmp_path / "junk.safetensors", "--encoder-weights")


def test_a_toy_bank_has_visual_prompts_that_find_their_own_class(tmp_path):
    """At least 90% of classes: the nearest class-mean text prompt to the class-mean visual
    prompt is the class's own (`bank info --prompts`)."""
    out = tmp_path / "toy.zarr"
    build = run_cli(
        "bank",
        "build",
        "--vocab",
        "toy",
        "--preset",
        "toy",
        "--templates",
        "imagenet80:8",
        "--batch-size",
        "32",
        "--out",
        str(out),
        "--quiet",
    )
    assert build.returncode == 0, build.stderr[-2000:]
    info = run_cli("bank", "info", str(out), "--prompts", "--json")
    assert info.returncode == 0, info.stderr[-2000:]
    agreement = json.loads(info.stdout)["prompts"]
    assert agreement["classes"] == 31
    assert agreement["retrieval"] >= 0.9, agreement["misses"]
    # classes' visual prompts differ: beyond what the modality gap's offset alone gives any two
    # image embeddings, g^2 / (1 + g^2) (docs/toy_world.md)
    g = get_encoder_preset("toy-convnext").modality_gap
    shared = g * g / (1 + g * g)
    assert (agreement["visual_between_classes"] - shared) / (1 - shared) < 0.5
    text = run_cli("bank", "info", str(out), "--prompts")
    assert "visual -> text retrieval" in text.stdout
    assert "trained weights pretrained/weights/toy-convnext.safetensors" in text.stdout
    assert "toy-render (drawn from the prompt, no weights)" in text.stdout
    assert np.isfinite(agreement["own_cosine"])
