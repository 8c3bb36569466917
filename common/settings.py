"""The one validator of config dataclasses (ours): every ``bool``/``int``/``float``/``str`` field
holds its type, every ``Literal`` field holds one of its values, and every rule a dataclass states
holds, a bound (``">= 0"``, ``"in [0, 1)"``) or a ``Literal`` type; a failure is one
:class:`SettingError` naming the setting as a config names it (``model.loss.aux_weight``), its
value and what it must be.

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
import numbers
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


_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check_scalar(value, hint, name: str) -> None:
    """A field annotated ``bool``, ``int``, ``float`` or ``str`` (or one of them ``| None``)
    holds that type (an int where a float is asked, too): a config file's ``null`` or ``"8"``
    is one line here rather than a TypeError where the value is first used."""
    optional = _optional(hint)
    if optional:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            return
        hint = args[0]
    if hint not in _SCALARS or (value is None and optional):
        return
    if hint is bool:
        fits = isinstance(value, bool)
    else:  # True is an int to Python, not to a config; an int is a float to a config
        kind = {int: numbers.Integral, float: numbers.Real, str: str}[hint]
        fits = isinstance(value, kind) and not isinstance(value, bool)
    if not fits:
        null = " (or null)" if optional else ""
        raise SettingError(f"{name}={value!r}: must be {_SCALARS[hint]}{null}")


def check_fields(config, prefix: str, **rules) -> None:
    """Check a config dataclass: its Literal fields, and the ``rules`` (field -> a bound, see
    :func:`meets`, or a ``Literal`` type); a field whose type allows None may be None."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value, hint = getattr(config, field.name), hints[field.name]
        _check_scalar(value, hint, f"{prefix}.{field.name}")
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
            or not isinstance(value, numbers.Real)
            or not meets(value, bound)
        ):
            null = " (or null)" if _optional(hints[name]) else ""
            raise SettingError(f"{prefix}.{name}={value!r}: must be {bound}{null}")
