"""common/settings.py: the one validator of config dataclasses (bounds and Literal rules)."""

from dataclasses import dataclass
from typing import Literal

import pytest

from common.errors import SettingError
from common.settings import check_fields, meets

Mode = Literal["a", "b"]


@pytest.mark.parametrize(
    ("value", "bound", "expected"),
    [
        (0, ">= 0", True),
        (0, "> 0", False),
        (1, "< 1", False),
        (1, "<= 1", True),
        (0, "in [0, 1)", True),
        (1, "in [0, 1)", False),
        (1, "in [0, 1]", True),
        (0, "in (0, 1)", False),
        (-0.5, ">= -1", True),
    ],
)
def test_bounds(value, bound, expected):
    assert meets(value, bound) is expected


def test_a_bound_that_is_not_one_is_a_bug():
    with pytest.raises(ValueError, match="bound 'positive'"):
        meets(1, "positive")


@dataclass
class Example:
    mode: str = "a"
    choice: Literal["x", "y"] = "x"
    rate: float = 0.5
    cap: int | None = None

    def __post_init__(self) -> None:
        check_fields(self, "model.example", mode=Mode, rate="in [0, 1]", cap=">= 1")


def test_numbers_of_numpy_and_an_int_for_a_float_are_taken():
    import numpy as np

    assert Example(rate=1, cap=np.int64(3)).rate == 1
    assert Example(rate=np.float32(0.25)).rate == 0.25


@pytest.mark.parametrize(
    ("kwargs", "line"),
    [
        ({"mode": "c"}, "model.example.mode='c': use one of a, b"),
        ({"choice": "z"}, "model.example.choice='z': use one of x, y"),
        ({"rate": 2.0}, "model.example.rate=2.0: must be in [0, 1]"),
        ({"cap": 0}, "model.example.cap=0: must be >= 1 (or null)"),
        ({"rate": "high"}, "model.example.rate='high': must be a number"),
        ({"rate": None}, "model.example.rate=None: must be a number"),
        ({"rate": True}, "model.example.rate=True: must be a number"),
        ({"cap": 2.5}, "model.example.cap=2.5: must be an integer (or null)"),
        ({"mode": 3}, "model.example.mode=3: must be a string"),
    ],
)
def test_a_setting_out_of_its_rule_is_one_setting_error(kwargs, line):
    with pytest.raises(SettingError) as caught:
        Example(**kwargs)
    assert str(caught.value) == line
    assert isinstance(caught.value, ValueError)  # what Python callers caught before


def test_settings_within_their_rules_pass():
    assert Example(mode="b", choice="y", rate=1.0, cap=None).cap is None
