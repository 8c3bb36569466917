"""The toy presets know their world: committed weights, pretraining, and informative banks.

These fail when pretraining stops producing informative models: a zero-shot accuracy far above
chance (1/31), and visual prompts whose nearest text prompt is their own class.
"""

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

from model.backbone import ClipEncoder, clip_tokenizer_for, create_clip
from model.bundled_weights import bundled_path, load_weights, read_metadata, save_weights
from model.fingerprint import recorded_fingerprints
from model.hub import WeightsUnavailableError
from model.presets import get_encoder_preset
from model.toy_pretrain import PretrainConfig, pretrain, render_pool, zero_shot_accuracy

CHANCE = 1 / 31
TOY = ("toy-convnext", "toy-vit")


@pytest.mark.parametrize("name", TOY)
def test_committed_weights_load_as_recorded_and_are_small(name):
    built = create_clip(name)
    assert built.weights == f"bundled:{name}.safetensors"
    assert built.fingerprint == recorded_fingerprints()["fingerprints"][name]
    assert bundled_path(f"{name}.safetensors").stat().st_size < 4e6  # a few MB in git
    assert get_encoder_preset(name).offline and not get_encoder_preset(name).is_random


@pytest.mark.parametrize("name", TOY)
def test_committed_weights_classify_held_out_pictures(name):
    """Zero-shot on pictures never used in pretraining (other seeds), far above chance."""
    built = create_clip(name)
    encoder, tokenizer = ClipEncoder(built.model, built.preset), clip_tokenizer_for(built.preset)
    images, _, labels = render_pool(300, seed=987_654, size=64, distractors=0, plain=True)
    accuracy = zero_shot_accuracy(encoder, tokenizer, images, labels)
    assert accuracy > 10 * CHANCE, accuracy
    recorded = float(read_metadata(bundled_path(f"{name}.safetensors"))["zero_shot_plain"])
    assert abs(accuracy - recorded) < 0.12  # the file's record says what it does


def test_a_short_pretraining_is_informative(tmp_path):
    """A fresh (short) pretraining, run as a user runs it, learns the world: not the committed
    bits, but an informative model in a valid weights file."""
    out = tmp_path / "toy.safetensors"
    result = run_cli("presets", "pretrain", "toy-convnext", "--steps", "120", "--pool", "1500",
                     "--out", str(out), "--json", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["zero_shot_plain"] > 5 * CHANCE, report
    assert report["config"]["steps"] == 120 and out.stat().st_size == report["bytes"]
    built = create_clip("toy-convnext", weights=out)  # the file is a valid preset weights file
    assert built.weights == str(out)
    assert built.fingerprint != recorded_fingerprints()["fingerprints"]["toy-convnext"]
    assert read_metadata(out)["command"].startswith("cli.py presets pretrain toy-convnext")


def test_pretrain_refuses_bad_settings():
    result = run_cli("presets", "pretrain", "toy-convnext", "--steps", "0")
    assert result.returncode == 2 and "--steps 0: must be >= 1" in result.stderr
    with pytest.raises(ValueError, match="not a toy preset"):
        pretrain("tiny-vit", PretrainConfig(steps=1), "/tmp/never.safetensors", progress=False)


def test_weights_file_keeps_only_changed_token_rows_and_refuses_other_architectures(tmp_path):
    from model.backbone import clip_architecture

    preset = get_encoder_preset("toy-vit")
    model = clip_architecture(preset)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.token_embedding.weight[[5, 7]] += 1.0
        model.visual.proj += 0.5
    path = tmp_path / "w.safetensors"
    save_weights(model, path, initial)
    from safetensors.torch import load_file

    stored = load_file(str(path))
    assert stored["token_embedding.weight.rows"].tolist() == [5, 7]
    fresh = clip_architecture(preset)
    load_weights(fresh, path, "--encoder-weights")
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    other = clip_architecture(get_encoder_preset("toy-convnext"))
    with pytest.raises(WeightsUnavailableError, match="does not fit the preset's architecture"):
        load_weights(other, path, "--encoder-weights")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsUnavailableError, match="not a readable safetensors file"):
        load_weights(fresh, tmp_path / "junk.safetensors", "--encoder-weights")


def test_a_toy_bank_has_visual_prompts_that_find_their_own_class(tmp_path):
    """At least 90% of classes: the nearest class-mean text prompt to the class-mean visual
    prompt is the class's own (`bank info --prompts`)."""
    out = tmp_path / "toy.zarr"
    build = run_cli("bank", "build", "--vocab", "toy", "--preset", "toy", "--templates",
                    "imagenet80:8", "--batch-size", "32", "--out", str(out), "--quiet")  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    info = run_cli("bank", "info", str(out), "--prompts", "--json")
    assert info.returncode == 0, info.stderr[-2000:]
    agreement = json.loads(info.stdout)["prompts"]
    assert agreement["classes"] == 31
    assert agreement["retrieval"] >= 0.9, agreement["misses"]
    assert agreement["visual_between_classes"] < 0.5  # classes' visual prompts differ
    text = run_cli("bank", "info", str(out), "--prompts")
    assert "visual -> text retrieval" in text.stdout
    assert "trained weights model/weights/toy-convnext.safetensors" in text.stdout
    assert "toy-render (drawn from the prompt, no weights)" in text.stdout
    assert np.isfinite(agreement["own_cosine"])
