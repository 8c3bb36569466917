"""Round II's inference settings that choose what is refined and from where (docs/design.md
§2.3, both ours): ``refine_background`` (the class named "background" keeps round I) and the
``regions`` oracle (round I's detected classes cut from the true label map)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import TEMPLATES, TINY

from common.errors import SettingError
from data.catalog import IGNORE_INDEX
from data.evaluator import SemSegMetric
from model.dpseg import DPSegOutput
from model.evaluation import _key
from model.lightning import DPSegModule
from model.refine import RefineConfig, background_class, crop_regions, detected_classes


def tiny_module(**kwargs) -> DPSegModule:
    tiny = yaml.safe_load(TINY.read_text())["model"]
    return DPSegModule(**{**tiny, "num_templates": TEMPLATES, **kwargs})


def round_one(module, images, logits) -> DPSegOutput:
    """Round I with label maps set by hand: these logits over the images' real features."""
    return DPSegOutput(logits, torch.zeros(0), module.model.backbone(images))


def changed_classes(after: torch.Tensor, before: torch.Tensor) -> list[int]:
    """(K, H, W) -> the classes whose logits round II changed."""
    return (after != before).flatten(1).any(dim=1).nonzero().flatten().tolist()


def test_background_class_is_the_class_named_background():
    assert background_class(["background", "cat", "dog"]) == 0
    assert background_class(["cat", "Background"]) == 1
    assert background_class(["cat", "dog"]) is None
    # potsdam's "clutter, background": its canonical name is clutter, a class of its own
    assert background_class(["road", "clutter"]) is None


def test_an_excluded_class_is_never_detected_nor_counted_by_max_classes():
    labels = torch.zeros(10, 10, dtype=torch.long)
    labels[:, 6:] = 1
    labels[:2, :2] = 2
    assert detected_classes(labels, 3, 0.0).tolist() == [0, 1, 2]
    assert detected_classes(labels, 3, 0.0, exclude=0).tolist() == [1, 2]
    # the largest classes after the exclusion: 1 (40 px), not background (56 px)
    assert detected_classes(labels, 3, 0.0, max_classes=1, exclude=0).tolist() == [1]


# ---------------------------------------------------------------------------------------------
# refine_background


@pytest.fixture(scope="module")
def hand_set(world):
    """A module, the synthetic prompts, two images and round I logits in which image 0 shows
    background (class 0, left half) and classes 3, 5; image 1 only background and class 2."""
    torch.manual_seed(0)
    module = tiny_module(inference={"rounds": 2, "min_area": 0.0}).eval()
    prompts = module.add_prompts("synthetic", str(world / "bank.zarr"))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    logits = torch.zeros(2, 8, 64, 64)
    logits[0, 0, :, :32], logits[0, 3, :32, 32:], logits[0, 5, 32:, 32:] = 1, 1, 1
    logits[1, 0, :40], logits[1, 2, 40:] = 1, 1
    return module, prompts, images, logits


def test_background_keeps_round_one_when_not_refined(hand_set):
    module, prompts, images, logits = hand_set
    assert module._backgrounds["synthetic"] == 0  # the synthetic vocabulary's class 0
    with torch.no_grad():
        first = round_one(module, images, logits)
        module.segmenter.config = RefineConfig(rounds=2, min_area=0.0)
        every = module.segmenter.second_round(images, prompts, first, background=0)
        module.segmenter.config = RefineConfig(rounds=2, min_area=0.0, refine_background=False)
        kept = module.segmenter.second_round(images, prompts, first, background=0)
        unknown = module.segmenter.second_round(images, prompts, first)  # no background class
    assert [changed_classes(every[b], logits[b]) for b in range(2)] == [[0, 3, 5], [0, 2]]
    assert [changed_classes(kept[b], logits[b]) for b in range(2)] == [[3, 5], [2]]
    torch.testing.assert_close(kept[:, 0], logits[:, 0], rtol=0, atol=0)
    # the other classes are refined as before (the decoder treats classes alone)
    torch.testing.assert_close(kept[0, [3, 5]], every[0, [3, 5]])
    torch.testing.assert_close(kept[1, 2], every[1, 2])
    torch.testing.assert_close(unknown, every, rtol=0, atol=0)  # a dataset without one


def test_segment_tells_round_two_the_datasets_background(hand_set):
    module, _, images, _ = hand_set
    image = images[0]
    with torch.no_grad():
        module.inference_config = RefineConfig(rounds=1)
        first = module.segment(image, "synthetic")
        module.inference_config = RefineConfig(rounds=2, min_area=0.0, refine_background=False)
        second = module.segment(image, "synthetic")
        module.inference_config = RefineConfig(rounds=2, min_area=0.0)
        every = module.segment(image, "synthetic")
    assert 0 in detected_classes(first.argmax(0), 8, 0.0).tolist()  # round I found background
    torch.testing.assert_close(second[0], first[0])
    assert not torch.equal(second, first)  # other classes were refined
    assert not torch.equal(every[0], first[0])


# ---------------------------------------------------------------------------------------------
# regions: the oracle


def test_regions_cut_the_detected_classes_from_the_true_map(hand_set):
    module, prompts, images, logits = hand_set
    # truth of image 0: class 3 on the top rows, 5 below, 7 in a corner; background absent
    truth = torch.full((2, 64, 64), IGNORE_INDEX)
    truth[0, :20], truth[0, 20:], truth[0, 50:, :10] = 3, 5, 7
    truth[1, :, :16], truth[1, :, 16:] = 0, 2
    config = RefineConfig(rounds=2, min_area=0.0, regions=True)
    module.segmenter.config = config
    classes, maps = module.segmenter.refined_classes(logits.argmax(1), 8, regions=truth)
    # detected by round I and present in the truth; 7 (not detected) is not refined: no leak
    assert [c.tolist() for c in classes] == [[3, 5], [0, 2]] and maps is not None
    assert torch.equal(maps, truth)
    with torch.no_grad():
        first = round_one(module, images, logits)
        oracle = module.segmenter.second_round(images, prompts, first, regions=truth)
        module.segmenter.config = RefineConfig(rounds=2, min_area=0.0)
        predicted = module.segmenter.second_round(images, prompts, first)
        # round I "predicting" the truth: its classes are cut from the true map as well
        truth_first = round_one(
            module, images, F.one_hot(truth.clamp(min=0), 8).permute(0, 3, 1, 2).float()
        )
        from_truth = module.segmenter.second_round(images, prompts, truth_first)
    assert changed_classes(oracle[0], logits[0]) == [3, 5]  # background 0: absent, round I kept
    # (the batch's decoder call pads to its largest class count: equal up to float error)
    torch.testing.assert_close(oracle[0, [3, 5]], from_truth[0, [3, 5]], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(oracle[1, [0, 2]], from_truth[1, [0, 2]], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(oracle[0, 3], predicted[0, 3])  # other crops than round I's
    torch.testing.assert_close(oracle[0, [0, 1, 2, 4, 6, 7]], logits[0, [0, 1, 2, 4, 6, 7]])


def test_true_and_predicted_crops_differ():
    image = torch.rand(3, 16, 16)
    predicted = torch.zeros(16, 16, dtype=torch.long)
    predicted[:, 8:] = 1
    truth = torch.zeros(16, 16, dtype=torch.long)
    truth[:4, :4] = 1
    config = RefineConfig(crop_margin=0)
    (true_crop,) = crop_regions(image, truth, torch.tensor([1]), config)
    (predicted_crop,) = crop_regions(image, predicted, torch.tensor([1]), config)
    torch.testing.assert_close(true_crop, image[:, :4, :4])
    assert predicted_crop.shape == (3, 16, 8)


def test_segment_gives_round_two_the_true_map_at_the_fed_geometry(hand_set, monkeypatch):
    module, _, images, _ = hand_set
    image = images[0, :, :, :48]  # not square: resize:128 stretches it, and the map with it
    truth = torch.zeros(64, 48, dtype=torch.long)
    truth[:, 24:] = 4
    seen = []
    segmenter = module.segmenter
    original = segmenter.forward

    def spy(x, prompts, background=None, regions=None):
        seen.append((x.shape, regions))
        return original(x, prompts, background, regions)

    monkeypatch.setattr(segmenter, "forward", spy)
    module.inference_config = RefineConfig(rounds=2, min_area=0.0, regions=True)
    with torch.no_grad():
        logits = module.segment(image, "synthetic", truth)
    ((shape, regions),) = seen
    assert logits.shape == (8, 64, 48) and shape == (1, 3, 128, 128)
    assert regions.shape == (1, 128, 128) and regions.unique().tolist() == [0, 4]
    assert (regions[0, :, :64] == 0).all() and (regions[0, :, 64:] == 4).all()


def test_the_test_loop_passes_the_labels_only_for_the_oracle(hand_set, monkeypatch):
    module, _, images, _ = hand_set
    labels = torch.randint(0, 8, (2, 64, 64))
    given = []
    original = module.segment
    monkeypatch.setattr(module, "_eval_datasets", lambda split: ["synthetic"])
    monkeypatch.setattr(
        module,
        "segment",
        lambda image, dataset, truth=None: given.append(truth) or original(image, dataset, truth),
    )
    module._metrics[_key("synthetic")] = SemSegMetric(8)
    for regions in (False, True):
        module.inference_config = RefineConfig(rounds=2, min_area=0.0, regions=regions)
        with torch.no_grad():
            module._eval_step({"image": images, "label": labels}, 0, "test")
    assert given[:2] == [None, None]
    assert torch.equal(given[2], labels[0]) and torch.equal(given[3], labels[1])


# ---------------------------------------------------------------------------------------------
# refusals


def test_regions_without_a_true_map_are_refused(hand_set):
    module, prompts, images, logits = hand_set
    module.segmenter.config = RefineConfig(rounds=2, regions=True)
    with (
        torch.no_grad(),
        pytest.raises(SettingError, match=r"--model\.inference\.regions") as caught,
    ):
        module.segmenter(images, prompts)
    assert "\n" not in str(caught.value)
    module.inference_config = RefineConfig(rounds=2, regions=True)
    with pytest.raises(SettingError, match=r"--model\.inference\.regions true") as caught:
        module.predict_labels(images[0], "synthetic")  # predict: no labels to give
    assert "\n" not in str(caught.value) and "predict" in str(caught.value)
    with pytest.raises(SettingError, match=r"--model\.inference\.regions true"):
        module.on_predict_start()  # refused before the first image
    module.segmenter.config = RefineConfig(rounds=2)
    with pytest.raises(ValueError, match=r"config\.regions is false"):
        module.segmenter.refined_classes(logits.argmax(1), 8, regions=logits.argmax(1))


@pytest.mark.parametrize("protocol", ["catseg", "vip", "vip-fit:448"])
def test_regions_with_a_windowed_protocol_are_refused(protocol):
    with pytest.raises(SettingError) as caught:
        tiny_module(test_protocol=protocol, inference={"rounds": 2, "regions": True})
    message = str(caught.value)
    assert "\n" not in message
    assert "--model.inference.regions" in message and protocol in message
    assert "sed, resize:N" in message
    tiny_module(test_protocol="sed", inference={"rounds": 2, "regions": True})  # whole images


def test_the_command_line_takes_both_settings(capsys, world):
    import cli

    def main(*argv):
        try:
            code = cli.main(list(argv))
        except SystemExit as e:
            code = e.code
        return code, *capsys.readouterr()

    code, out, err = main("test", "--model.help", "DPSegModule")  # the method's settings
    assert code == 0, err[-2000:]
    assert "--model.inference.help" in out and "``refine_background``" in out
    code, out, err = main(
        "test",
        "--config",
        str(TINY),
        "--config",
        str(world / "overlay.yaml"),
        "--model.inference.refine_background",
        "false",
        "--model.inference.regions",
        "true",
        "--print_config",
    )
    assert code == 0, err[-2000:]
    inference = yaml.safe_load(out)["model"]["init_args"]["inference"]
    assert inference["refine_background"] is False and inference["regions"] is True
    code, _, err = main(
        "test",
        "--config",
        str(TINY),
        "--config",
        str(world / "overlay.yaml"),
        "--model.inference.regions",
        "true",
        "--model.test_protocol",
        "catseg",
    )
    assert code == 2 and err.startswith("error: --model.inference.regions true"), err[-2000:]
    assert len(err.strip().splitlines()) == 1
