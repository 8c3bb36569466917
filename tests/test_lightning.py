"""DPSeg training and inference: loss, prompts from banks, two rounds, LightningCLI, DDP.

Everything runs on the tiny presets with a small synthetic set and small real banks."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import ROOT, TEMPLATES, TINY, make_bank, run_tiny_cli, tiny_cli_here

from data.catalog import IGNORE_INDEX
from data.datasets import SegmentationFolder
from data.vocabulary import Vocabulary, load_vocabulary
from model.lightning import DPSegModule, bce_loss, coarse_loss, cost_aux_loss
from model.prompts import load_prompts
from model.refine import RefineConfig, crop_regions, detected_classes
from pretrained.backbone import BackboneFeatures
from pretrained.fingerprint import package_versions, recorded_fingerprints
from prompt_bank.format import BankMismatchError
from prompt_bank.store import Bank

ABLATIONS = sorted((ROOT / "configs" / "ablations").glob("*.yaml"))


def tiny_module(**kwargs) -> DPSegModule:
    tiny = yaml.safe_load(TINY.read_text())["model"]
    return DPSegModule(**{**tiny, "num_templates": TEMPLATES, **kwargs})


# ---------------------------------------------------------------------------------------------
# losses


def test_bce_loss_counts_ignore_as_negative_or_leaves_it_out():
    logits = torch.tensor([[[[2.0, -1.0]], [[0.5, 3.0]]]])  # (B=1, K=2, H=1, W=2)
    labels = torch.tensor([[[0, IGNORE_INDEX]]])

    def bce(x, t):
        return -(
            t * math.log(1 / (1 + math.exp(-x))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-x)))
        )

    # pixel 0 is class 0: targets (1, 0); pixel 1 is ignore: (0, 0) as negatives, or left out
    px0 = [bce(2.0, 1), bce(0.5, 0)]
    px1 = [bce(-1.0, 0), bce(3.0, 0)]
    assert bce_loss(logits, labels, "negative").item() == pytest.approx(sum(px0 + px1) / 4)
    assert bce_loss(logits, labels, "mask").item() == pytest.approx(sum(px0) / 2)


def test_cost_aux_loss_is_cross_entropy_of_the_scaled_mean_cost():
    torch.manual_seed(0)
    cost = torch.rand(2, 3, 4, 4, 4) * 2 - 1  # (B, P, K, h, w)
    labels = torch.randint(0, 4, (2, 8, 8))
    labels[0, 0, 0] = IGNORE_INDEX
    up = F.interpolate(cost.mean(1) * 10, size=(8, 8), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(up, labels, ignore_index=IGNORE_INDEX)
    assert cost_aux_loss(cost, labels, 10.0).item() == pytest.approx(expected.item(), rel=1e-6)
    all_ignored = torch.full((2, 8, 8), IGNORE_INDEX)
    assert cost_aux_loss(cost, all_ignored, 10.0).item() == 0.0


# ---------------------------------------------------------------------------------------------
# prompts from a bank


def test_prompts_are_the_bank_arrays_averaged(world):
    bank = Bank.open(world / "bank.zarr")
    module = tiny_module()
    vocab = load_vocabulary("synthetic")
    prompts = load_prompts(
        bank, vocab, encoder_preset="tiny-convnext", encoder_fingerprint=module.encoder_fingerprint
    )
    text = bank.read("text/embeddings")
    visual = bank.read("visual/embeddings")  # (K, P, N, D)
    assert prompts.text.shape == (8, TEMPLATES, text.shape[-1])
    np.testing.assert_allclose(prompts.text.numpy(), text, rtol=0, atol=0)
    mean = visual.mean(axis=2)
    mean /= np.linalg.norm(mean, axis=-1, keepdims=True)
    np.testing.assert_allclose(prompts.visual.numpy(), mean, atol=1e-6)
    for j, name in enumerate(bank.level_names()):
        level = bank.read(name).astype(np.float32).mean(axis=(1, 2))  # (K, C_j)
        np.testing.assert_allclose(prompts.visual_levels[j].numpy(), level, rtol=1e-5)


def test_missing_classes_are_listed_or_served_text_only(world, caplog):
    module = tiny_module()
    vocab = Vocabulary.from_entries(
        [*load_vocabulary("synthetic").entries, "zebra", "okapi, forest giraffe"]
    )
    with pytest.raises(
        BankMismatchError, match=r"lacks 2 of the 10 classes.*'zebra', 'okapi, forest giraffe'"
    ):
        module_prompts = load_prompts(
            world / "bank.zarr",
            vocab,
            encoder_preset="tiny-convnext",
            encoder_fingerprint=module.encoder_fingerprint,
        )
    module_prompts = load_prompts(
        world / "bank.zarr",
        vocab,
        encoder_preset="tiny-convnext",
        encoder_fingerprint=module.encoder_fingerprint,
        text_encoder=module._text_prompts,
        allow_text_only=True,
    )
    # the probe: "text-only: cat, dog, puppy" listed a synonym as a class; ';' between classes
    assert "served text-only: zebra; okapi, forest giraffe" in caplog.text
    expected = module._text_prompts(vocab.classes[8:], Bank.open(world / "bank.zarr").templates)
    torch.testing.assert_close(module_prompts.text[8:], expected)
    torch.testing.assert_close(module_prompts.visual[8:], expected)  # avg(T, T) = T
    assert module_prompts.visual_levels[0][8:].abs().sum() == 0


def test_a_bigger_bank_serves_a_vocabulary_by_name_or_synonym(world):
    """A bank whose classes are a superset (an ade847 bank serving ade150): rows by name."""
    module = tiny_module()
    entries = load_vocabulary("synthetic").entries
    # Reordered, one class by a synonym of ours that the bank does not list as its name.
    vocab = Vocabulary.from_entries([entries[5], "disc, " + entries[1], entries[3]])
    prompts = load_prompts(
        world / "bank.zarr",
        vocab,
        encoder_preset="tiny-convnext",
        encoder_fingerprint=module.encoder_fingerprint,
    )
    text = torch.from_numpy(Bank.open(world / "bank.zarr").read("text/embeddings"))
    torch.testing.assert_close(prompts.text, text[[5, 1, 3]])


def test_bank_with_other_templates_is_refused(world):
    module = tiny_module(num_templates=TEMPLATES - 1)
    with pytest.raises(
        BankMismatchError,
        match=f"has {TEMPLATES} templates but the model was built for {TEMPLATES - 1}",
    ):
        module.add_prompts("synthetic", str(world / "bank.zarr"))


def test_bank_of_another_encoder_is_refused(world):
    module = tiny_module(encoder="tiny-vit")
    with pytest.raises(BankMismatchError, match=r"tiny-convnext.*tiny-vit.*--encoder tiny-vit"):
        module.add_prompts("synthetic", str(world / "bank.zarr"))


def test_a_fingerprint_mismatch_says_whether_package_versions_differ(world, tmp_path):
    """The same preset with other weights (made with other versions): one line saying so."""
    import shutil

    import zarr

    bank = tmp_path / "bank.zarr"
    shutil.copytree(world / "bank.zarr", bank)
    group = zarr.open_group(str(bank), mode="r+")
    fingerprint = group.attrs["encoder"]["fingerprint"]
    group.attrs["encoder"] = {**group.attrs["encoder"], "fingerprint": "ce57886f" + "0" * 56}
    group.attrs["builder"] = {
        **group.attrs["builder"],
        "packages": {**package_versions(), "torch": "2.0.0"},
    }
    from prompt_bank.seal import seal_bank

    seal_bank(str(bank))  # sealed as the other machine would have sealed it
    with pytest.raises(BankMismatchError) as caught:
        tiny_module().add_prompts("synthetic", str(bank))
    message = str(caught.value)
    assert "\n" not in message
    assert "with preset 'tiny-convnext' (fingerprint ce57886f0000)" in message
    assert f"the same preset gives {fingerprint[:12]} here" in message
    assert f"package versions differ: torch 2.0.0 there, {package_versions()['torch']} here" in (
        message
    )


# ---------------------------------------------------------------------------------------------
# model contract


def test_training_step_gradients_only_on_trainable_parameters(world):
    torch.manual_seed(0)
    module = tiny_module()
    prompts = module.add_prompts("synthetic", str(world / "bank.zarr"))
    images = torch.rand(2, 3, 64, 64)
    labels = torch.randint(0, 8, (2, 64, 64))
    labels[:, :4] = IGNORE_INDEX
    out = module.model(images, prompts)
    assert out.logits.shape == (2, 8, 64, 64) and torch.isfinite(out.logits).all()
    loss = bce_loss(out.logits, labels, "negative") + 0.5 * cost_aux_loss(out.cost, labels, 10)
    loss = loss + coarse_loss(out.coarse, labels)  # the coarse head (class early rejection)
    loss.backward()
    for name, p in module.named_parameters():
        assert p.requires_grad and p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
    frozen = module.prompt_encoder
    assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())
    # The frozen prompt encoder (and its text tower) is not part of the checkpointed state.
    assert not any("transformer" in k or "text" in k for k in module.state_dict())
    assert all(k.startswith("segmenter.model.") for k in module.state_dict())


def test_detection_and_crops():
    labels = torch.zeros(10, 12, dtype=torch.long)
    labels[2:6, 3:9] = 1  # 24 px
    labels[8, 0] = 2  # 1 px: below min_area
    found = detected_classes(labels, num_classes=4, min_area=0.05)
    assert found.tolist() == [0, 1]
    image = torch.rand(3, 10, 12)
    box, masked = (
        crop_regions(image, labels, torch.tensor([1]), RefineConfig(crop_policy=p, crop_margin=0))[
            0
        ]
        for p in ("box", "masked")
    )
    torch.testing.assert_close(box, image[:, 2:6, 3:9])
    torch.testing.assert_close(masked, image[:, 2:6, 3:9])  # the box holds only class 1
    grown = crop_regions(image, labels, torch.tensor([1]), RefineConfig(crop_margin=0.5))[0]
    assert grown.shape == (3, 8, 12)  # rows 0..8, cols 0..12 (clipped to the image)
    masked0 = crop_regions(image, labels, torch.tensor([0]), RefineConfig(crop_policy="masked"))[0]
    fill = image.mean(dim=(1, 2))
    assert torch.allclose(masked0[:, 2, 3], fill)  # a class-1 pixel inside class 0's box


def test_pooled_policy_pools_the_frozen_encoders_features_inside_each_mask():
    """One frozen pass over the image; a class's prompt is its features averaged over its
    mask. With a mask that covers the whole image, the prompt is the image's own embedding
    and level means (toy-convnext norms per pixel before its pool: exactly the bank's)."""
    from model.refine import TwoRoundSegmenter
    from pretrained.backbone import ClipEncoder, create_clip

    built = create_clip("toy-convnext")
    encoder = ClipEncoder(built.model, built.preset).eval()
    segmenter = TwoRoundSegmenter(None, encoder, RefineConfig(rounds=2, crop_policy="pooled"))
    image = torch.rand(3, 64, 64)
    whole = torch.zeros(64, 64, dtype=torch.long)
    ((embedding, levels),) = segmenter.encode_regions(image[None], whole[None], [torch.tensor([0])])
    with torch.no_grad():
        expected = encoder.encode_images(image[None])
    torch.testing.assert_close(
        F.normalize(embedding, dim=-1), expected.embedding, atol=1e-5, rtol=1e-5
    )
    for ours, theirs in zip(levels, expected.pooled_levels()):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    halves = torch.zeros(64, 64, dtype=torch.long)
    halves[:, 32:] = 1  # two classes, one half each: two different prompts, one frozen pass
    calls = []
    segmenter._dense[0].register_forward_pre_hook(lambda *_: calls.append(1))  # the frozen view
    ((two, _),) = segmenter.encode_regions(image[None], halves[None], [torch.tensor([0, 1])])
    assert two.shape == (2, expected.embedding.shape[1]) and not torch.allclose(two[0], two[1])
    assert len(calls) == 1


def test_pooled_own_pools_round_one_features_without_any_frozen_pass(world):
    module = tiny_module(inference={"rounds": 2, "min_area": 0.0, "crop_policy": "pooled-own"})
    module.eval()
    prompts = module.add_prompts("synthetic", str(world / "bank.zarr"))
    encoder = module.segmenter.prompt_encoder
    encoder.encode_images = lambda *a, **k: pytest.fail("no crop may be encoded")
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        first = module.model(images, prompts)
        second = module.segmenter.second_round(images, prompts, first)
        labels = first.logits.argmax(dim=1)
        classes = detected_classes(labels[1], 8, 0.0)
        ((embedding, levels),) = module.segmenter.encode_regions(
            images[1:],
            labels[1:],
            [classes],
            BackboneFeatures(first.features.dense[1:], [lv[1:] for lv in first.features.levels]),
        )
    assert module.segmenter._dense is None and second.shape == first.logits.shape
    mask = (labels[1] == classes[0]).float()[None, None]
    grid = first.features.dense[1:]
    weights = F.adaptive_avg_pool2d(mask, grid.shape[-2:])[0, 0]
    expected = (grid[0] * weights).sum(dim=(1, 2)) / weights.sum()
    torch.testing.assert_close(embedding[0], expected, atol=1e-5, rtol=1e-5)
    assert len(levels) == len(first.features.levels)
    with pytest.raises(ValueError, match="pooled-own"):
        module.segmenter.encode_regions(images, labels, [classes, classes])


def test_crops_of_a_whole_batch_go_through_the_encoder_in_one_forward(world):
    module = tiny_module(inference={"rounds": 2, "min_area": 0.0}).eval()
    prompts = module.add_prompts("synthetic", str(world / "bank.zarr"))
    encoder = module.segmenter.prompt_encoder
    sizes = []
    original = encoder.encode_images
    encoder.encode_images = lambda images, size=None: (
        sizes.append(len(images)) or original(images, size)
    )
    with torch.no_grad():
        first = module.model(torch.rand(3, 3, 64, 64), prompts)
        module.segmenter.second_round(torch.rand(3, 3, 64, 64), prompts, first)
    labels = first.logits.argmax(dim=1)
    expected = sum(len(detected_classes(lb, 8, 0.0)) for lb in labels)
    assert sizes == [expected]


def test_round_two_reuses_the_image_features(world):
    module = tiny_module().eval()
    prompts = module.add_prompts("synthetic", str(world / "bank.zarr"))
    calls = {"backbone": 0, "crops": 0}
    module.model.backbone.register_forward_pre_hook(
        lambda *_: calls.__setitem__("backbone", calls["backbone"] + 1)
    )
    encoder = module.prompt_encoder
    original = encoder.encode_images

    def counting(images, size=None):
        calls["crops"] += images.shape[0]
        return original(images, size)

    encoder.encode_images = counting
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        module.segmenter.config = RefineConfig(rounds=1)
        first = module(images, prompts)
        assert calls == {"backbone": 1, "crops": 0}
        module.segmenter.config = RefineConfig(rounds=2, min_area=0.0)
        second = module(images, prompts)
    assert calls["backbone"] == 2  # once per call: round II did not run it again
    detected = sum(len(detected_classes(first[b].argmax(0), 8, 0.0)) for b in range(2))
    assert calls["crops"] == detected > 0
    assert second.shape == first.shape and not torch.equal(first, second)


def test_decoding_a_subset_of_classes_equals_the_full_decode(world):
    module = tiny_module().eval()  # centred prompts: every class's R depends on all K
    prompts = module.add_prompts("synthetic", str(world / "bank.zarr"))
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        full = module.model(images, prompts)
        part = module.model(images, prompts, features=full.features, classes=torch.tensor([1, 5]))
    torch.testing.assert_close(part.logits, full.logits[:, [1, 5]])


def test_round_two_equals_a_full_decode_of_the_refined_prompts(world):
    from model.cost_volume import class_mean

    module = tiny_module().eval()  # centred prompts: refining one class must not move the others
    prompts = module.add_prompts("synthetic", str(world / "bank.zarr"))
    module.segmenter.config = RefineConfig(rounds=2, min_area=0.0, max_classes=1)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        first = module.model(images, prompts)
        second = module.segmenter.second_round(images, prompts, first)
        refined, classes = module.segmenter.refined_prompts(
            images[0], first.logits[0].argmax(0), prompts
        )
        full = module.model(
            images, refined, features=first.features, center_mean=class_mean(prompts, "avg")
        ).logits
    assert len(classes) == 1
    torch.testing.assert_close(second, full)
    others = [c for c in range(8) if c != int(classes[0])]
    torch.testing.assert_close(second[:, others], first.logits[:, others])


def test_round_two_in_place_equals_round_two_on_a_copy(world):
    module = tiny_module(inference={"rounds": 2, "min_area": 0.0}).eval()
    prompts = module.add_prompts("synthetic", str(world / "bank.zarr"))
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        first = module.model(images, prompts)
        kept = first.logits.clone()
        copied = module.segmenter.second_round(images, prompts, first)
        assert torch.equal(first.logits, kept)  # the default leaves round I alone
        in_place = module.segmenter.second_round(images, prompts, first, reuse_logits=True)
        through_forward = module.segmenter(images, prompts)
    assert in_place is first.logits and not torch.equal(in_place, kept)
    torch.testing.assert_close(in_place, copied, rtol=0, atol=0)
    torch.testing.assert_close(through_forward, copied, rtol=0, atol=0)


def test_round_two_of_a_batch_equals_round_two_of_each_image_alone(world):
    # one decoder call for the batch: image b's classes with image b's crops, padded to the
    # largest count; round I's label maps are set by hand so the images refine 3, 1 and 2 classes
    from model.dpseg import DPSegOutput

    module = tiny_module(inference={"rounds": 2, "min_area": 0.05}).eval()
    prompts = module.add_prompts("synthetic", str(world / "bank.zarr"))
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    logits = torch.zeros(3, 8, 64, 64)
    logits[0, 1, :, :20], logits[0, 4, :, 20:40], logits[0, 6, :, 40:] = 1, 1, 1
    logits[1, 2] = 1
    logits[2, 0, :32], logits[2, 7, 32:] = 1, 1
    with torch.no_grad():
        features = module.model.backbone(images)
        first = DPSegOutput(logits, torch.zeros(0), features)
        batch = module.segmenter.second_round(images, prompts, first)

        def alone(b: int) -> torch.Tensor:
            one = BackboneFeatures(
                features.dense[b : b + 1], [lv[b : b + 1] for lv in features.levels]
            )
            first_b = DPSegOutput(logits[b : b + 1], torch.zeros(0), one)
            return module.segmenter.second_round(images[b : b + 1], prompts, first_b)

        alone = torch.cat([alone(b) for b in range(3)])
    changed = [
        (batch[b] != logits[b]).flatten(1).any(dim=1).nonzero().flatten().tolist() for b in range(3)
    ]
    assert changed == [[1, 4, 6], [2], [0, 7]]  # exactly the refined classes were decoded
    torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-5)


def test_decode_per_image_equals_one_forward_per_image(world):
    module = tiny_module().eval()  # centred prompts
    prompts = module.add_prompts("synthetic", str(world / "bank.zarr"))
    images = torch.rand(2, 3, 64, 64)
    other = prompts.with_visual(
        torch.tensor([2, 6]),
        torch.randn(2, prompts.visual.shape[-1]),
        [torch.randn(2, lv.shape[1]) for lv in prompts.visual_levels],
    )
    classes = [torch.tensor([1, 5, 6]), torch.tensor([2])]
    with torch.no_grad():
        features = module.model.backbone(images)
        batched = module.model.decode_per_image((64, 64), features, [prompts, other], classes)
        for b, image_prompts in enumerate([prompts, other]):
            one = BackboneFeatures(
                features.dense[b : b + 1], [lv[b : b + 1] for lv in features.levels]
            )
            expected = module.model(
                images[b : b + 1], image_prompts, features=one, classes=classes[b]
            ).logits[0]
            assert batched[b].shape == (len(classes[b]), 64, 64)
            torch.testing.assert_close(batched[b], expected, rtol=1e-4, atol=1e-5)


def test_class_labels_equal_argmax_with_ties_and_nan():
    from model.labels import class_labels

    scores = torch.randn(2, 150, 17, 19)
    scores[0, 3] = scores[0, 7]  # ties: the first class wins, as argmax
    scores[1, :, 0, 0] = 1.0
    scores[1, 9, 1, 1] = float("nan")
    for dim in (0, 1):
        assert torch.equal(class_labels(scores, dim), scores.argmax(dim=dim))
    assert class_labels(scores, 1)[1, 0, 0] == 0 and class_labels(scores, 1)[1, 1, 1] == 9


def test_optimizer_groups_and_schedule(world):
    module = tiny_module(optim={"lr": 1e-3, "encoder_lr_mult": 0.1, "warmup_steps": 2})

    class Trainer:  # what configure_optimizers reads
        estimated_stepping_batches = 10

    module._trainer = Trainer()
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    decoder, encoder = optimizer.param_groups
    assert {id(p) for p in encoder["params"]} == {id(p) for p in module.model.backbone.parameters()}
    assert len(decoder["params"]) + len(encoder["params"]) == len(list(module.parameters()))
    lrs = []
    for _ in range(10):
        lrs.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"]))
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx((0.5e-3, 0.5e-4))  # warm-up 1/2
    assert lrs[2] == pytest.approx((1e-3, 1e-4))  # cosine starts at the peak
    assert lrs[6] == pytest.approx(
        (0.5e-3 * (1 + math.cos(math.pi * 4 / 8)), 0.5e-4 * (1 + math.cos(math.pi * 4 / 8)))
    )
    frozen = tiny_module(optim={"encoder_lr_mult": 0.0})
    assert not any(p.requires_grad for p in frozen.model.backbone.parameters())


def test_max_classes_keeps_the_largest():
    labels = torch.tensor([[0, 0, 0, 1, 1, 2], [0, 0, 3, 3, 3, 3]])
    assert detected_classes(labels, 4, 0.0).tolist() == [0, 1, 2, 3]
    assert detected_classes(labels, 4, 0.0, max_classes=2).tolist() == [0, 3]


# ---------------------------------------------------------------------------------------------
# LightningCLI


@pytest.mark.parametrize("ablation", ABLATIONS, ids=[p.stem for p in ABLATIONS])
def test_every_ablation_config_instantiates_and_runs_a_step(world, ablation):
    from model.lightning_cli import make_cli

    settings = yaml.safe_load(ablation.read_text())
    extra = []
    if ablation.stem.startswith("templates_"):
        n = int(ablation.stem.split("_")[1])
        # The row is a set of banks with n templates; here: the synthetic vocabulary's.
        assert all(f"banks/t{n}/" in str(v) for v in settings["data"].values())
        bank = make_bank(world / f"t{n}.zarr", f"imagenet80:{n}")
        val = json.dumps([{"dataset": "synthetic", "bank": str(bank)}])
        extra = [
            "--data.train",
            json.dumps({"dataset": "synthetic:train", "bank": str(bank)}),
            "--data.val",
            val,
            "--data.test",
            val,
        ]
    cli = make_cli(
        [
            "--config",
            str(TINY),
            "--config",
            str(ablation),
            "--config",
            str(world / "overlay.yaml"),
            *extra,
            "--trainer.max_steps",
            "1",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.callbacks",
            "[]",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.val_check_interval",
            "1",
            "--trainer.default_root_dir",
            str(world / f"ablation_{ablation.stem}"),
        ],
        run=False,
    )
    model = cli.model
    for key, value in settings.get("model", {}).get("dpseg", {}).items():
        assert getattr(model.dpseg_config, key) == (
            tuple(value) if isinstance(value, list) else value
        )
    for key, value in settings.get("model", {}).get("inference", {}).items():
        assert getattr(model.inference_config, key) == value
    if extra:
        assert model.model.cost_embedding.num_templates == n  # linked from the bank
    cli.trainer.fit(model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    assert 0 <= float(cli.trainer.callback_metrics["val/mIoU"]) <= 1


def test_a_step_that_decodes_each_image_s_own_classes_trains(world):
    """``loss.classes_per_image`` (the toy config's): each image decodes its present classes and
    its hardest absent ones (``hard_classes``), a step's loss is finite and its gradients reach
    the decoder."""
    from model.lightning_cli import make_cli

    cli = make_cli(
        [
            "--config",
            str(TINY),
            "--config",
            str(world / "overlay.yaml"),
            "--model.loss.classes_per_image",
            "3",
            "--model.loss.hard_classes",
            "1",
            "--trainer.max_steps",
            "1",
            "--trainer.limit_val_batches",
            "0",
            "--trainer.logger",
            "false",
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.callbacks",
            "[]",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.default_root_dir",
            str(world / "classes_per_image"),
        ],
        run=False,
    )
    assert (cli.model.loss_config.classes_per_image, cli.model.loss_config.hard_classes) == (3, 1)
    before = {k: v.clone() for k, v in cli.model.model.decoder.state_dict().items()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    after = cli.model.model.decoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_run_s_loggers_share_one_version_folder(world, tmp_path):
    """Loggers pick their versions one by one, and the first one's folder exists before the
    others look: the CLI gives all of them the first one's next version (a user's stays)."""
    from model.lightning_cli import make_cli

    (tmp_path / "runs" / "a" / "version_0").mkdir(parents=True)  # an earlier run of the first
    csv = "lightning.pytorch.loggers.CSVLogger"
    loggers = [
        {"class_path": csv, "init_args": {"save_dir": str(tmp_path / "runs"), "name": n}}
        for n in ("a", "b")
    ]
    common = ["--config", str(TINY), "--config", str(world / "overlay.yaml")]
    cli = make_cli([*common, "--trainer.logger", json.dumps(loggers)], run=False)
    assert [lg.version for lg in cli.trainer.loggers] == [1, 1]
    loggers[1]["init_args"]["version"] = "mine"
    cli = make_cli([*common, "--trainer.logger", json.dumps(loggers)], run=False)
    assert [lg.version for lg in cli.trainer.loggers] == [1, "mine"]


def test_print_config_shows_the_settings(world, capsys, monkeypatch):
    result = tiny_cli_here(world, capsys, monkeypatch, "fit", "--print_config")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["model"]["class_path"] == "model.lightning.DPSegModule"  # the default method
    assert config["model"]["init_args"]["dpseg"]["prompt_mode"] == "avg"
    assert config["data"]["train"]["dataset"] == "synthetic:train"
    assert (
        "num_templates" not in config["model"]["init_args"]
    )  # linked from the banks, not repeated


def error_line(result) -> str:
    """The one ``error:`` line of a command that failed on a user error (exit 2, no traceback)."""
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--data.train", '{"dataset": "ade9000", "bank": "x"}'], "unknown dataset 'ade9000'"),
        (["--model.dpseg.prompt_mode", "both"], "prompt_mode='both'"),
        (["--model.optim.lr", "-1"], "model.optim.lr=-1.0: must be > 0"),
        (["--data.crop", "-5"], "data.crop=-5"),
        # found by the probe: tracebacks, or (limit_eval -1) the last image silently left out
        (["--data.crop", "100000"], "data.crop=100000: the training crop side in pixels, must"),
        (["--data.num_workers", "-2"], "data.num_workers=-2: loader processes, must be >= 0"),
        (["--data.limit_eval", "-1"], "data.limit_eval=-1: the first N images of each evalu"),
        (["--trainer.max_steps", "-5"], "a --trainer setting: `max_steps` must be a non-neg"),
        (["--seed_everything", "99999999999999999999"], "give a seed from 0 to 4294967295"),
        # the probe: blamed on the --config file, as jsonargparse's nested Union dump
        (["--model.optim.lr", "nan"], "error: --model.optim.lr 'nan': expected a finite number"),
        (["--data.batch_size", "abc"], "error: --data.batch_size 'abc': expected an integer"),
        # probe 6: a negative width reached torch (two tracebacks)
        (["--model.dpseg.cost_channels", "-1"], "model.dpseg.cost_channels=-1: must be >= 1"),
        (["--model.dpseg.decoder_channels", "[8, 0, 4]"], "decoder_channels=[8, 0, 4]: must be"),
    ],
)
def test_bad_settings_of_fit_are_one_line_errors(world, capsys, monkeypatch, args, expected):
    # config dataclasses refuse them in __post_init__, inside jsonargparse's Union parsing
    assert expected in error_line(tiny_cli_here(world, capsys, monkeypatch, "fit", *args))


def test_a_run_that_fails_before_training_leaves_no_run_folder(
    world, capsys, monkeypatch, tmp_path
):
    """A bank of another encoder is refused in setup, after Lightning made runs/dpseg/version_N
    (config.yaml, logs): the failed run removes what it made, and leaves earlier runs alone."""
    from conftest import cli_here

    vit = make_bank(tmp_path / "vit.zarr", f"imagenet80:{TEMPLATES}", encoder="tiny-vit")
    configs = ["--config", str(TINY), "--config", str(world / "overlay.yaml")]
    train = json.dumps({"dataset": "synthetic:train", "bank": str(vit)})
    run = tmp_path / "run"
    run.mkdir()
    for earlier in ([], ["version_0"]):
        for name in earlier:
            (run / "runs" / "dpseg" / name).mkdir(parents=True)
        result = cli_here(capsys, monkeypatch, "fit", *configs, "--data.train", train, cwd=run)
        assert "tiny-vit" in error_line(result)
        left = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
        assert left == ([] if not earlier else ["runs", "runs/dpseg", "runs/dpseg/version_0"])


def test_a_torch_file_that_is_not_a_lightning_checkpoint_is_refused(
    world, capsys, monkeypatch, tmp_path
):
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    line = error_line(
        tiny_cli_here(
            world, capsys, monkeypatch, "test", "--ckpt_path", str(tmp_path / "other.ckpt")
        )
    )
    assert "--ckpt_path" in line and "not a checkpoint of cli.py fit" in line


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_in_fit_saves_a_checkpoint_that_resumes(world, tmp_path, stop):
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) stops fit at the end of the step in
    progress, saves interrupted.ckpt and ends in one line naming it; the same command with
    --ckpt_path resumes from its step."""
    args = [
        sys.executable,
        str(ROOT / "cli.py"),
        "fit",
        "--config",
        str(TINY),
        "--config",
        str(world / "overlay.yaml"),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.enable_progress_bar",
        "false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [*args, "--trainer.max_steps", "100000"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not list(tmp_path.glob("runs/dpseg/version_0/config.yaml")):  # the trainer is set up
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(2)  # a few steps
    process.send_signal(stop)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + stop and "Traceback" not in stderr, stderr[-3000:]
    for folder, names in re.findall(r"checkpoints in (\S+) \(([^)]*)\)", stdout):
        for name in names.split(", "):  # the summary names only checkpoints that exist
            assert (tmp_path / folder / name.removeprefix("best ")).is_file(), stdout[-3000:]
    line = [x for x in stderr.splitlines() if x.startswith("error:")]
    assert len(line) == 1, stderr[-3000:]
    found = re.search(
        rf"fit interrupted by {stop.name} at step (\d+): .* saved in (\S+); resume with "
        r"the same command and --ckpt_path (\S+)$",
        line[0],
    )
    assert found, line
    step, saved = int(found[1]), Path(found[2])
    assert found[3] == str(saved) and saved.name == "interrupted.ckpt"
    assert torch.load(saved, map_location="cpu", weights_only=True)["global_step"] == step
    resumed = subprocess.run(
        [*args, "--trainer.max_steps", str(step + 2), "--ckpt_path", str(saved)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    last = sorted(tmp_path.glob("runs/dpseg/version_1/checkpoints/last.ckpt"))
    assert torch.load(last[0], map_location="cpu", weights_only=True)["global_step"] == step + 2


@pytest.mark.parametrize("when", ["sets up", "ended"])
def test_sigterm_while_test_sets_up_or_as_it_ends_is_one_line(trained, world, tmp_path, when):
    """SIGTERM while `test` builds its model and trainer (before Lightning's loop), or just
    after it wrote its results: one line and 143, as for other commands; both ended silently
    under the default action (probes 11, 12)."""
    argv = ["test", "--config", str(TINY), "--config", str(world / "overlay.yaml")]
    test = f"cli.main({[*argv, '--ckpt_path', str(trained)]!r}, script=True)"
    script = (
        "import os, signal, sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import cli\n"
        "from model import lightning_cli\n"
        "def set_up(self):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        + (
            f"lightning_cli.SegmentationCLI.before_instantiate_classes = set_up\nsys.exit({test})\n"
            if when == "sets up"
            else f"code = {test}\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(60)\n"
        )
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    lines = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    if when == "ended":
        assert lines == [
            "error: interrupted by SIGTERM as the command ended; its work is complete"
        ], result.stderr[-3000:]
        assert list(tmp_path.glob("runs/*/*/results/summary.csv")), "the results were written"
        return
    assert lines == [
        "error: interrupted by SIGTERM; nothing partial is left (the same command starts over)"
    ], result.stderr[-3000:]
    assert not list(tmp_path.glob("runs/*/*/results*")), "nothing partial is left"


def test_checkpoint_is_weights_only_safe_and_records_provenance(trained, world):
    ckpt = torch.load(trained, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    meta = ckpt["dpseg"]
    recorded = recorded_fingerprints()
    assert meta["encoder"]["fingerprint"] == recorded["fingerprints"]["tiny-convnext"]
    assert meta["encoder"]["packages"] == package_versions()  # said when a fingerprint differs
    bank = meta["banks"]["synthetic:train"]
    assert bank["location"] == str(world / "bank.zarr") and bank["templates"] == TEMPLATES
    assert ckpt["hyper_parameters"]["dpseg"]["prompt_mode"] == "avg"
    # Inference settings stay out: LightningCLI would put them over `test --model.inference...`
    assert not {"inference", "results_dir", "test_protocol"} & set(ckpt["hyper_parameters"])
    assert "class_chunk" not in ckpt["hyper_parameters"]["dpseg"]  # a memory knob, not a weight
    assert all(k.startswith("segmenter.model.") for k in ckpt["state_dict"])  # no frozen parts


def test_test_on_two_datasets_writes_metrics_and_summary(trained, world, capsys, monkeypatch):
    out = world / "results_two"
    test = json.dumps(
        [
            {"dataset": "synthetic", "bank": str(world / "bank.zarr")},
            {"dataset": "synthetic:train", "bank": str(world / "bank.zarr")},
        ]
    )
    result = tiny_cli_here(
        world,
        capsys,
        monkeypatch,
        "test",
        "--ckpt_path",
        str(trained),
        "--data.test",
        test,
        "--model.results_dir",
        str(out),
        "--model.inference.rounds",
        "2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for stem in ("synthetic", "synthetic_train"):
        metrics = json.loads((out / f"{stem}.json").read_text())
        assert 0 <= metrics["mIoU"] <= 1 and metrics["num_classes"] == 8
        run = json.loads((out / f"{stem}.run.json").read_text())
        assert run["rounds"] == 2 and run["bank"]["templates"] == TEMPLATES
        assert (out / f"{stem}_per_class_iou.png").stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "| synthetic | synthetic:train |" in summary and "round 2" in summary
    assert "mIoU (%) by dataset" in result.stdout
    assert "is replaced by the checkpoint's" not in result.stderr  # the config agrees with it


def test_a_network_setting_the_checkpoint_overrides_is_named(
    trained, world, tmp_path, capsys, monkeypatch
):
    result = tiny_cli_here(
        world,
        capsys,
        monkeypatch,
        "test",
        "--ckpt_path",
        str(trained),
        "--model.dpseg.prompt_mode",
        "visual",
        "--model.results_dir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--model.dpseg.prompt_mode visual is replaced by the checkpoint's avg" in result.stderr
    run = json.loads((tmp_path / "synthetic.run.json").read_text())
    assert run["prompt_mode"] == "avg"  # what ran


@pytest.mark.e2e  # 45-55 s of two DDP launches (two processes each): make test-all (CI) runs it
def test_two_process_ddp_fit_and_test_match_one_process(trained, world, capsys, monkeypatch):
    env = {"OMP_NUM_THREADS": "1"}
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    result = run_tiny_cli(world, "fit", *ddp, "--trainer.max_steps", "2", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    confusions = []
    for devices, name in (("1", "one"), ("2", "two")):
        test = ["test", "--ckpt_path", str(trained), "--model.results_dir", str(world / name)]
        if devices == "1":  # one process: this one (DDP launches its ranks as new processes)
            result = tiny_cli_here(world, capsys, monkeypatch, *test)
        else:
            result = run_tiny_cli(world, *test, *ddp, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        confusions.append(json.loads((world / name / "synthetic.run.json").read_text()))
    one, two = confusions
    assert one["confusion_matrix"] == two["confusion_matrix"]
    folder = SegmentationFolder("synthetic", world / "datasets", limit=6)
    valid = sum(int((folder.load(i)["label"] != IGNORE_INDEX).sum()) for i in range(6))
    assert sum(map(sum, one["confusion_matrix"])) == valid  # every labelled pixel exactly once
    assert one["metrics"] == two["metrics"]


def test_validate_and_predict_run_from_a_checkpoint(trained, world, capsys, monkeypatch):
    out = world / "predicted"
    result = tiny_cli_here(
        world,
        capsys,
        monkeypatch,
        "predict",
        "--ckpt_path",
        str(trained),
        "--model.results_dir",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    maps = sorted((out / "predictions" / "synthetic").glob("*.png"))
    assert len(maps) == 6
    from PIL import Image

    label = np.asarray(Image.open(maps[0]))
    assert label.shape == (128, 128) and label.max() < 8
    result = tiny_cli_here(world, capsys, monkeypatch, "validate", "--ckpt_path", str(trained))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val/mIoU" in result.stdout


def test_fit_says_where_its_checkpoints_went_without_lightning_s_noise(fit_run, trained):
    """The fit of the session fixture: a step bar against max_steps, the checkpoint folder at
    the end, and none of Lightning's tips, its logs-folder warning or its pytree deprecation."""
    out = fit_run.stdout + fit_run.stderr
    folder = trained.parent.relative_to(trained.parents[4])  # runs/dpseg/version_N/checkpoints
    assert f"fit: 4 steps; checkpoints in {folder} (last.ckpt, best step4-" in out, out[-3000:]
    for noise in ("💡 Tip", "exists and is not empty", "LeafSpec", "Epoch 0/"):
        assert noise not in out, noise


def test_a_fingerprint_mismatch_of_another_preset_says_another_encoder():
    """Probe 7: a bank of tiny-vit read by a tiny-convnext model said "package versions are the
    same, so the weights themselves differ"."""
    from pretrained.fingerprint import fingerprint_mismatch

    line = fingerprint_mismatch("bank 'b.zarr'", "tiny-vit", "a" * 64, "tiny-convnext", "b" * 64)
    assert line == (
        "bank 'b.zarr' was made with preset 'tiny-vit' (fingerprint aaaaaaaaaaaa), but preset "
        "'tiny-convnext' gives bbbbbbbbbbbb here: another encoder"
    )
