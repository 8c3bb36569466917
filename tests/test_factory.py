"""The factories compose the networks the LightningModules, predictors and benchmarks use, and
classes a bank lacks are built outside ``model/`` (``prompt_bank.extend``)."""

from __future__ import annotations

import torch
from conftest import make_bank

from data.vocabulary import load_vocabulary
from model.factory import build_dpseg, build_vip
from model.refine import RefineConfig


def test_build_dpseg_gives_the_lightning_modules_network_and_a_frozen_prompt_encoder():
    from benchmarks.inference_cost import build as benchmark_build
    from model.dpseg import DPSegConfig
    from model.lightning import DPSegModule

    torch.manual_seed(0)  # the decoder's initial weights come from torch's generator
    parts = build_dpseg("tiny-convnext", num_templates=3, inference=RefineConfig(rounds=2))
    torch.manual_seed(0)
    module = DPSegModule(encoder="tiny-convnext", num_templates=3)
    ours, theirs = parts.model.state_dict(), module.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # the same network, value for value
    assert parts.level_dims == module.level_dims and len(parts.level_dims) >= 2
    assert parts.fingerprint == module.encoder_fingerprint
    # the frozen prompt encoder is not part of the trainable network's state
    assert not any(p.requires_grad for p in parts.prompt_encoder.parameters())
    assert any(p.requires_grad for p in parts.model.backbone.parameters())
    assert parts.segmenter.config.rounds == 2 and parts.segmenter.training
    # the benchmark measures the same architecture (random weights: values may differ)
    bench_model, bench_encoder = benchmark_build(
        "tiny-convnext", DPSegConfig(), 3, torch.device("cpu")
    )
    assert bench_model.state_dict().keys() == ours.keys() and not bench_model.training
    assert tuple(bench_encoder.level_dims()) == parts.level_dims


def test_build_vip_is_frozen_and_its_text_side_matches_the_pixels():
    parts = build_vip("tiny-dinotxt")
    assert parts.attention == "proxy" and not parts.segmenter.training
    assert not any(p.requires_grad for p in parts.segmenter.parameters())
    features = parts.segmenter.encoder(torch.rand(1, 3, 64, 64))  # (B, D, h, w)
    cat = load_vocabulary("cat, kitty; dog")
    texts = parts.text_encoder.encode_class_texts(list(cat), ["a photo of a {}."], parts.tokenizer)
    assert features.shape[:2] == (1, texts.shape[-1]) and features.shape[2:] == (4, 4)
    plain = build_vip("tiny-dinotxt", attention="none")
    assert plain.attention == "none" and plain.fingerprint == parts.fingerprint


def test_missing_classes_are_built_into_a_cached_bank_once(tmp_path):
    from prompt_bank.extend import build_missing_classes, cache_location, missing_classes
    from prompt_bank.store import Bank

    bank_path = make_bank(tmp_path / "bank.zarr", "single")
    bank = Bank.open(bank_path)
    vocab = load_vocabulary(f"{bank.classes[0]}; okapi")
    assert [c.name for c in missing_classes(bank, vocab)] == ["okapi"]
    both = f"{bank.classes[1]}; {bank.classes[0]}"
    assert missing_classes(bank, load_vocabulary(both)) is None
    first = build_missing_classes(str(bank_path), vocab, progress=False)
    assert first == [cache_location(bank, missing_classes(bank, vocab))]
    extra = Bank.open(first[0])
    assert extra.classes == ["okapi"] and extra.templates == bank.templates
    assert extra.attrs["encoder"] == bank.attrs["encoder"]
    stamp = (tmp_path / "bank.cache").stat().st_mtime_ns
    assert build_missing_classes(str(bank_path), vocab, progress=False) == first  # reused
    assert (tmp_path / "bank.cache").stat().st_mtime_ns == stamp
    assert build_missing_classes(bank, both, progress=False) == []
    # a class already generated is taken from the cache, whatever set it was built with
    more = build_missing_classes(bank, "okapi; zebra crossing", progress=False)
    assert more[0] == first[0] and len(more) == 2
    assert Bank.open(more[1]).classes == ["zebra crossing"]  # only the new class was generated
