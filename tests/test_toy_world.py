"""The toy world: its classes, seen/unseen split, scenes, prompt pictures and renderer preset."""

import numpy as np
import pytest
import torch

from data.catalog import get_dataset_spec
from data.toy_world import (
    COLOURS,
    OBJECTS,
    SHAPES,
    UNSEEN,
    ToyClass,
    ToySceneConfig,
    alias_entries,
    class_names,
    parse_class,
    prompt_style,
    render_prompt,
    render_scene,
    unseen_names,
)
from data.vocabulary import load_vocabulary


def test_vocabulary_files_are_the_world():
    assert load_vocabulary("toy").names == class_names()
    assert load_vocabulary("toy_seen").names == class_names(seen_only=True)
    assert load_vocabulary("toy_aliases").entries == alias_entries()
    assert len(class_names()) == 31 and len(class_names(seen_only=True)) == 25
    assert load_vocabulary("toy_aliases")[1].synonyms == (
        "red disc",
        "crimson disc",
        "scarlet disc",
        "red circle",
        "red dot",
    )


def test_every_unseen_class_is_made_of_seen_parts():
    seen = [o for o in OBJECTS if not o.unseen]
    assert len(UNSEEN) == 6 and {c for c, _ in UNSEEN} == set(COLOURS)
    for colour, shape in UNSEEN:
        assert sum(o.colour == colour for o in seen) >= 3
        assert sum(o.shape == shape for o in seen) >= 3
    spec = get_dataset_spec("toy")
    assert spec.unseen_classes == tuple(unseen_names()) and spec.num_classes == 31
    assert get_dataset_spec("toy:train").num_classes == 25


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a sketch of a crimson circle.", ToyClass("red", "disc")),
        ("a photo of the lilac plus sign.", ToyClass("purple", "cross")),
        ("the origami tangerine hoop.", ToyClass("orange", "ring")),
        ("a photo of a background.", "background"),
        ("a photo of a zebra.", None),
    ],
)
def test_a_phrase_names_its_class(text, expected):
    assert parse_class(text) == expected


def test_every_alias_names_its_class():
    for obj in OBJECTS:
        for alias in (obj.name, *obj.aliases):
            assert parse_class(f"a photo of a {alias}.") == obj


def test_scenes_split_seen_and_unseen_and_are_deterministic():
    config = ToySceneConfig(train_images=4, val_images=4)
    unseen_ids = {class_names().index(n) for n in unseen_names()}
    val_labels = set()
    for i in range(40):
        image, label = render_scene(config, "train", i)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        values = set(np.unique(label)) - {255}
        assert max(values) < 25  # toy_seen ids
        _, val = render_scene(config, "val", i)
        val_labels |= set(np.unique(val)) - {255}
    assert val_labels & unseen_ids  # unseen classes appear in val
    assert max(val_labels) < 31
    first, again = render_scene(config, "val", 3), render_scene(config, "val", 3)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])


def object_pixels(image: np.ndarray, colour: str) -> np.ndarray:
    target = np.array(COLOURS[colour][0], np.float32)
    return np.abs(image.astype(np.float32) - target).sum(axis=-1) < 60


def test_prompt_pictures_follow_their_template():
    plain, cls = render_prompt("a photo of a red disc.", seed=0)
    assert cls == ToyClass("red", "disc") and plain.shape == (64, 64, 3)
    again, _ = render_prompt("a photo of a red disc.", seed=0)
    assert np.array_equal(plain, again)
    assert not np.array_equal(plain, render_prompt("a photo of a red disc.", seed=1)[0])
    # size words: many pixels for a close-up, few for a small one (over several seeds)
    area = {
        w: np.mean(
            [
                object_pixels(render_prompt(f"a {w} photo of a red disc.", s)[0], "red").sum()
                for s in range(8)
            ]
        )
        for w in ("close-up", "small")
    }
    assert area["close-up"] > 4 * area["small"]
    sketch = np.mean(
        [
            object_pixels(render_prompt("a sketch of a red disc.", s)[0], "red").sum()
            for s in range(8)
        ]
    )
    assert sketch < 0.6 * area["close-up"]  # an outline, not a filled shape
    grey, _ = render_prompt("a black and white photo of a red disc.", seed=0)
    assert np.array_equal(grey[..., 0], grey[..., 1])
    blocks, _ = render_prompt("a pixelated photo of a red disc.", seed=0)
    assert np.array_equal(blocks[::4, ::4].repeat(4, 0).repeat(4, 1), blocks)
    assert prompt_style("a photo of many blue crosses.").count[1] > 1
    empty, cls = render_prompt("a photo of a background.", seed=0)
    assert cls == "background" and not any(object_pixels(empty, c).sum() > 20 for c in COLOURS)


def test_toy_render_preset_draws_prompts():
    from prompt_bank.generator import create_generator

    built = create_generator("toy-render")
    assert built.fingerprint == create_generator("toy-render").fingerprint
    images = built.pipeline.render(
        ["a photo of a blue square.", "a photo of a green ring."], [5, 6]
    )
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.float32
    expected = render_prompt("a photo of a blue square.", 5)[0]
    assert torch.equal(images[0], torch.from_numpy(expected).permute(2, 0, 1).float() / 255)
    with pytest.raises(ValueError, match="takes no weights"):
        create_generator("toy-render", weights="/tmp/x")


def test_shapes_have_synonyms_and_classes_aliases():
    assert all(len(s) == 2 for s in SHAPES.values())
    assert all(len(o.aliases) == 4 for o in OBJECTS)
