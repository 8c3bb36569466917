"""A sha256 fingerprint of model weights, recorded by banks and checkpoints.

Two models share a fingerprint exactly when they have the same parameter and buffer names,
dtypes, shapes and bytes. A bank built by one encoder is refused by a model whose prompt encoder
has another fingerprint (docs/design.md §4): comparing names of presets is not enough, since a local
weights file, a different torch version's initialisation or a cast to bf16 all change the weights.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

# The fingerprints of the offline presets' weights, recorded with the package versions that built
# them (rewritten by ``tests/golden/regenerate.py`` after a deliberate change).
RECORDED = Path(__file__).with_name("recorded_fingerprints.json")


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 hex digest over (name, dtype, shape, bytes) of every tensor, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        tensor = tensor.contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # Reinterpret as bytes: works for every dtype, bf16 included (numpy has no bf16).
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_fingerprint(*modules: nn.Module, prefixes: tuple[str, ...] | None = None) -> str:
    """Fingerprint of one or several modules (e.g. a pipeline's unet, vae and text encoder).

    Args:
        modules: the modules whose ``state_dict`` is hashed.
        prefixes: a name per module, prepended to its keys (default ``m0.``, ``m1.``, ...).
    """
    prefixes = prefixes or tuple(f"m{i}" for i in range(len(modules)))
    if len(prefixes) != len(modules):
        raise ValueError(f"prefixes has {len(prefixes)} names for {len(modules)} modules")
    state: dict[str, torch.Tensor] = {}
    for prefix, module in zip(prefixes, modules):
        for key, value in module.state_dict().items():
            state[f"{prefix}.{key}"] = value
    return state_fingerprint(state)


# The packages whose versions decide how weights are built or loaded (recorded with fingerprints).
WEIGHT_PACKAGES = ("torch", "timm", "open_clip_torch", "diffusers", "transformers", "numpy")


def package_versions() -> dict[str, str]:
    """Installed versions of :data:`WEIGHT_PACKAGES` (``"absent"`` where one is missing)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in WEIGHT_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def versions_note(recorded: dict | None) -> str:
    """Whether the package versions recorded with a fingerprint differ from the installed ones."""
    if not recorded:
        return "the package versions it was made with are not recorded"
    here = package_versions()
    differ = [
        f"{name} {recorded[name]} there, {here.get(name, 'absent')} here"
        for name in sorted(recorded)
        if recorded[name] != here.get(name, "absent")
    ]
    if differ:
        return "package versions differ: " + "; ".join(differ)
    return "package versions are the same, so the weights themselves differ"


def fingerprint_mismatch(
    what: str,
    made_with: str,
    expected: str,
    here: str,
    found: str,
    recorded: dict | None = None,
) -> str:
    """One line: which weights were expected, which were found, and whether versions differ.

    Args:
        what: what holds the expected fingerprint ("bank 'x.zarr'", "the checkpoint").
        made_with / expected: the preset it was made with and that fingerprint.
        here / found: the preset built here and its fingerprint.
        recorded: the package versions recorded with ``expected``, if any.
    """
    if made_with != here:  # another encoder: versions say nothing (found by a probe)
        return (
            f"{what} was made with preset {made_with!r} (fingerprint {expected[:12]}), but "
            f"preset {here!r} gives {found[:12]} here: another encoder"
        )
    return (
        f"{what} was made with preset {made_with!r} (fingerprint {expected[:12]}), but "
        f"the same preset gives {found[:12]} here; {versions_note(recorded)}"
    )


@functools.lru_cache(maxsize=1)
def recorded_fingerprints() -> dict:
    """``{"fingerprints": {preset: sha256}, "packages": {package: version}}`` as recorded."""
    return json.loads(RECORDED.read_text())


def check_recorded(preset: str, found: str) -> str | None:
    """None when an offline preset's weights built here have the recorded fingerprint, else the
    one line that says so (both fingerprints, whether package versions differ, what follows)."""
    record = recorded_fingerprints()
    expected = record["fingerprints"].get(preset)
    if expected is None or expected == found:
        return None
    return (
        f"{fingerprint_mismatch('the record of offline presets', preset, expected, preset, found, record['packages'])}"
        "; banks and checkpoints made with the recorded weights will be refused here"
    )


def warn_if_unrecorded(preset: str, found: str) -> None:
    """Log :func:`check_recorded`'s line, once per preset and fingerprint, when they differ."""
    line = check_recorded(preset, found)
    if line is not None and (preset, found) not in _warned:
        _warned.add((preset, found))
        log.warning(line)


_warned: set[tuple[str, str]] = set()
