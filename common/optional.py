"""Optional dependencies: packages only some commands need, installed as extras.

    pip install 'dpseg[charts]'     matplotlib: per-class IoU charts, ``explain``'s picture
    pip install 'dpseg[prepare]'    scipy: PASCAL-Context's .mat annotations (``data prepare``)
    pip install 'dpseg[hf]'         datasets: Hugging Face datasets as evaluation sources
    pip install 'dpseg[tensorboard]'  TensorBoard logs beside the CSV logs of fit/test

``make install`` installs every extra (the ``dev`` extra includes them). Without one, the command
that needs it stops in one line naming the extra (:class:`MissingExtraError`), and what can go
without it (a chart next to the metrics, the TensorBoard log) is skipped with a warning.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from types import ModuleType

from common.errors import UserError

log = logging.getLogger(__name__)

EXTRAS = {
    "matplotlib": "charts",
    "scipy": "prepare",
    "datasets": "hf",
    "tensorboard": "tensorboard",
    "gradio": "app",
}
"""Top-level package -> the extra of pyproject.toml that installs it."""


class MissingExtraError(UserError, ModuleNotFoundError):
    """An optional package a command needs is not installed."""


def available(package: str) -> bool:
    """Whether ``package`` (a top-level name) can be imported."""
    try:
        return importlib.util.find_spec(package) is not None
    except ValueError:  # a module whose __spec__ is None (set to None in sys.modules)
        return False


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``scipy.io``) or stop in one line naming the extra to install."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name not in (top, module):
            raise  # the package is there but broken: a bug or a broken install, not the user's
        raise MissingExtraError(
            f"{purpose} needs {top}, an optional dependency: pip install 'dpseg[{EXTRAS[top]}]' "
            "(make install has every extra)"
        ) from None
