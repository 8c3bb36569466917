"""Pictures people trust: colours from class names, grey only for background, a font that
draws any name, a legend that stays small."""

from __future__ import annotations

import numpy as np

from data.preview import BACKGROUND_COLOUR, legend, legend_font, name_colour, overlay


def test_a_class_colour_comes_from_its_name_and_only_background_is_grey():
    assert name_colour("person") == name_colour("person, human")  # the canonical name decides
    assert name_colour("background") == BACKGROUND_COLOUR == name_colour("Unlabeled")
    colours = np.array([name_colour(f"class {i}") for i in range(300)], dtype=int)
    chroma = colours.max(axis=1) - colours.min(axis=1)
    assert chroma.min() >= 60  # vivid, never grey
    assert len({tuple(c) for c in colours}) == 300


def test_overlay_colours_follow_names_not_positions():
    image = np.zeros((20, 30, 3), np.uint8)
    labels = np.zeros((20, 30), np.int64)
    labels[:, 15:] = 1
    first = np.asarray(overlay(image, labels, ["person", "dog"], alpha=1.0))
    second = np.asarray(overlay(image, 1 - labels, ["dog", "person"], alpha=1.0))
    np.testing.assert_array_equal(first[:20], second[:20])  # same names, same colours
    assert tuple(first[0, 0]) == name_colour("person") != BACKGROUND_COLOUR


def test_legend_is_capped_and_draws_any_name():
    assert legend_font().getname()[0] == "DejaVu Sans"
    names = [f"café {i}" for i in range(300)]
    capped = legend(names, 300, 600)
    few = legend(names[:24], 24, 600)
    assert capped.height <= few.height + 15  # 24 entries and one "+276 more" line
    assert capped.width == 600
