"""Finding pretrained weights: a local path, the Hugging Face cache, or the hub, failing fast.

Hugging Face's client retries an unreachable hub for about a minute before it gives up, with a
wall of tracebacks. Here a missing file ends at once in one :class:`WeightsUnavailableError` that
names the model id, the local-path option and the offline ``tiny`` presets.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from common.errors import UserError


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights could not be found locally nor fetched; the message says how to fix it."""


def _hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached now, or None when it can (or when a proxy decides)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a proxy may reach what a direct socket cannot; let the client try
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        return f"cannot connect to {host}: {e.strerror or e}"
    return None


def unavailable_message(what: str, model_id: str, local_option: str, reason: str) -> str:
    """One line: what needs which weights, why they cannot be had, and the three fixes."""
    return (
        f"{what} needs the weights {model_id!r} from the Hugging Face hub, which are not in the "
        f"local cache and cannot be downloaded ({reason}); download them where there is "
        f"internet (hf download {model_id}) and pass the folder or file with {local_option}, "
        "or copy the Hugging Face cache (~/.cache/huggingface) here, or run offline with the "
        "tiny presets (--preset tiny; make bank PRESET=tiny; --encoder tiny-convnext / "
        "--generator tiny-sd), which need no download"
    )


def hub_file(
    repo_id: str, filenames: tuple[str, ...], what: str, local_option: str, revision=None
) -> str:
    """Path of the first of `filenames` in `repo_id`: from the cache, else downloaded.

    Raises:
        WeightsUnavailableError: not cached and the hub is unreachable (at once, no retries).
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    for name in filenames:
        cached = try_to_load_from_cache(repo_id, name, revision=revision)
        if isinstance(cached, str):
            return cached
    reason = _hub_unreachable_reason()
    if reason is not None:
        raise WeightsUnavailableError(unavailable_message(what, repo_id, local_option, reason))
    last_error: Exception | None = None
    for name in filenames:
        try:
            return hf_hub_download(repo_id, name, revision=revision)
        except Exception as e:  # the client raises many types; keep the last one for the message
            last_error = e
    raise WeightsUnavailableError(
        unavailable_message(what, repo_id, local_option, f"download failed: {last_error}")
    )


def ensure_hub_reachable_or_cached(is_cached: bool, what: str, model_id: str, local_option: str):
    """For loaders that fetch whole repositories (diffusers): fail fast when nothing can work."""
    if is_cached:
        return
    reason = _hub_unreachable_reason()
    if reason is not None:
        raise WeightsUnavailableError(unavailable_message(what, model_id, local_option, reason))


def refuse_weights_for_random(name: str, weights) -> None:
    """A random-weight preset given a weights path would silently ignore it: refuse instead."""
    if weights is not None:
        from common.errors import SettingError

        raise SettingError(
            f"preset {name!r} has random weights; weights={str(weights)!r} would be ignored: "
            "drop it or pick a pretrained preset"
        )


def local_weights_file(path: str | os.PathLike, candidates: tuple[str, ...], option: str) -> str:
    """A weights file given directly, or the first of `candidates` inside a given folder."""
    p = Path(path).expanduser()
    if p.is_file():
        return str(p)
    if p.is_dir():
        for name in candidates:
            if (p / name).is_file():
                return str(p / name)
        found = sorted(x.name for x in p.iterdir())[:10]
        raise WeightsUnavailableError(
            f"{option} {str(path)!r} is a folder without any of {', '.join(candidates)} "
            f"(it holds: {', '.join(found) or 'nothing'}); pass the weights file itself"
        )
    raise WeightsUnavailableError(
        f"{option} {str(path)!r} does not exist; pass a weights file or the folder holding it"
    )
