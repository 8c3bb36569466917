"""The one validator of config dataclasses (ours): every ``Literal`` field holds one of its values,
and every rule a dataclass states holds, a bound (``">= 0"``, ``"in [0, 1)"``) or a ``Literal``
type; a failure is one :class:`SettingError` naming the setting as a config names it
(``model.loss.aux_weight``), its value and what it must be.

    IgnoreMode = Literal["negative", "mask"]

    @dataclass
    class LossConfig:
        ignore_mode: str = "negative"
        aux_weight: float = 0.0

        def __post_init__(self) -> None:
            check_fields(self, "model.loss", ignore_mode=IgnoreMode, aux_weight=">= 0")

A field that ``cli.py fit|test`` sets is annotated ``str`` with its ``Literal`` as a rule (ours):
jsonargparse checks a ``Literal`` annotation itself, while parsing, and a wrong value then ends in
its twenty-line Union message instead of this one line.
"""

from __future__ import annotations

import dataclasses
import operator
import re
import types
import typing

from common.errors import SettingError

_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_BOUND = re.compile(r"^(>=|>|<=|<)\s*(-?[\d.e+-]+)$")
_RANGE = re.compile(r"^in\s*([\[(])\s*(-?[\d.e+-]+)\s*,\s*(-?[\d.e+-]+)\s*([\])])$")


def meets(value: float, bound: str) -> bool:
    """Whether ``value`` meets ``bound``: ``">= 0"``, ``"> 0"``, ``"< 1"``, ``"in [0, 1)"``..."""
    if m := _BOUND.match(bound):
        return bool(_COMPARE[m[1]](value, float(m[2])))
    if m := _RANGE.match(bound):
        low, high = float(m[2]), float(m[3])
        above = value >= low if m[1] == "[" else value > low
        below = value <= high if m[4] == "]" else value < high
        return above and below
    raise ValueError(f"bound {bound!r}: write '>= x', '> x', '<= x', '< x' or 'in [a, b)'")


def _literal_values(hint) -> tuple | None:
    """The values of a Literal type (also inside ``X | None``), else None."""
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if (values := _literal_values(arg)) is not None:
                return values
    return None


def _optional(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in (
        typing.get_args(hint)
    )


def check_fields(config, prefix: str, **rules) -> None:
    """Check a config dataclass: its Literal fields, and the ``rules`` (field -> a bound, see
    :func:`meets`, or a ``Literal`` type); a field whose type allows None may be None."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value, hint = getattr(config, field.name), hints[field.name]
        values = _literal_values(hint)
        if values is not None and value not in values and not (value is None and _optional(hint)):
            raise SettingError(
                f"{prefix}.{field.name}={value!r}: use one of {', '.join(map(str, values))}"
            )
    for name, bound in rules.items():
        value = getattr(config, name)
        if value is None and _optional(hints[name]):
            continue
        if (values := _literal_values(bound)) is not None:
            if value not in values:
                raise SettingError(
                    f"{prefix}.{name}={value!r}: use one of {', '.join(map(str, values))}"
                )
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not meets(value, bound)
        ):
            null = " (or null)" if _optional(hints[name]) else ""
            raise SettingError(f"{prefix}.{name}={value!r}: must be {bound}{null}")
