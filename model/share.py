"""Sharing exported models between teams, the way banks are shared (``prompt_bank.share``).

    python cli.py model push models/toy-dpseg s3://team/models/toy-dpseg
    python cli.py model pull s3://team/models/toy-dpseg            # -> the cache, keyed by content
    python cli.py segment --model s3://team/models/toy-dpseg --vocab "red disc" --images a.png

URLs: ``hf://ORG/NAME[@REVISION]`` (a hub model repository, through huggingface_hub) and any
fsspec store: ``s3://``, ``gs://``, ``file://``, and ``http(s)://`` for pulling. A model folder is
three files (``model.export``): ``model.safetensors``, ``config.json`` (which records the
weights' sha256) and ``README.md``.

- **Integrity**: a push checks the local weights against ``config.json`` first; a pull streams
  the weights through sha256 and keeps nothing that differs. ``config.json`` travels last, so a
  reader never sees a model whose weights are not all there.
- **Content key**: the sha256 of ``config.json`` (it pins the weights by their sha256, the
  encoder by its fingerprint, and the banks). Pulls go to ``$XDG_CACHE_HOME/dpseg/models/KEY``
  (``~/.cache/...``; ``$DPSEG_CACHE/models``): pulling a model that is there downloads only its
  config, whatever URL it comes from.
- **Dedupe and repair**: pushing to a URL that holds the same model uploads nothing when the
  remote weights hash right and its card is the one config.json gives; it uploads the weights
  again when they do not hash right, the card alone when only the card differs; a URL holding
  another model is refused.
- **The card** (``README.md``) is not in the content key, so it is held to ``config.json``
  (ours, as a bank's card is held to its attributes; a fault probe pushed and pulled an edited
  licence under the same key): a push refuses a folder whose card is missing, a link, not a file
  or not the card its config.json gives (``model.export.card_problem``), and a pull writes the
  card its config.json gives (``model.export.card_bytes``) and never reads the remote's, so a
  remote card that differs is corrected, not refused. A cached copy whose card differs is pulled
  again. Loading a folder does not look at the card.
- **Errors**: a missing model, a damaged download, no network or no credentials end in one
  line.

To the hub a push is one commit (``HfApi.upload_folder``, what huggingface_hub's
``ModelHubMixin.push_to_hub`` calls; the mixin itself is not used, ours: its ``config.json`` would
hold the constructor's arguments alone, ours also the provenance a load checks).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from argparse import ArgumentError
from pathlib import Path

from common.errors import not_json_answer, staged_write
from common.io import remove_staging
from common.progress import ProgressBar
from common.retry import transient, with_retries
from model.export import (
    CARD,
    CONFIG,
    ModelFileError,
    card_bytes,
    card_problem,
    check_weights,
    parse_config,
    read_config,
)
from prompt_bank.integrity import read_only_url
from prompt_bank.store import (
    filesystem,
    is_url,
    remote_errors,
    resolve_storage_options,
)

FILES = ("model.safetensors", CARD, CONFIG)  # the upload order: config.json last
CHUNK = 1 << 20


def model_key(config_bytes: bytes) -> str:
    """A model's content key: the sha256 of its ``config.json``."""
    return hashlib.sha256(config_bytes).hexdigest()


def _local_model(folder: str | os.PathLike, option: str) -> tuple[Path, bytes, dict]:
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise ModelFileError(
            f"{option} {str(folder)!r}: no {CONFIG}; give a folder written by "
            "`cli.py model export CKPT --out DIR`"
        )
    raw = (folder / CONFIG).read_bytes()
    config = parse_config(raw, folder / CONFIG, option)
    check_weights(folder, config, option)
    return folder, raw, config


def _remote_sha256(fs, path: str) -> str | None:
    """The sha256 of a remote file, streamed (None: it is not there)."""
    digest = hashlib.sha256()
    try:
        with fs.open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def push_model(
    folder: str | os.PathLike, url: str, storage_options: dict | None = None, progress=True
) -> dict:
    """Upload an exported model folder to ``url`` after checking its weights.

    Returns {"url", "uploaded" (bytes; 0: the URL held it already), "key", "repaired" (the URL
    held this model with damaged or missing weights, or another card: those were sent again)}.

    Raises:
        ModelFileError: the folder is not a complete, unchanged export (its card included), or
            ``url`` holds another model. RemoteError: the store could not be reached or refused
            the upload.
    """
    if is_url(str(folder)):
        raise ModelFileError(f"model push: MODEL {str(folder)!r} must be a local model folder")
    if read_only_url(url):  # before any request (a probe: HTTP 501)
        raise ModelFileError(
            f"model push: URL {url}: an http(s) URL can be read but not written; push to a "
            "writable URL (file://, s3://, gs://, hf://ORG/NAME), then serve that"
        )
    folder, raw, config = _local_model(folder, "MODEL")
    load_model(folder, "MODEL")  # a config.json edited to settings the weights do not fit
    # the card is not in the content key: never one that lies, never a file from elsewhere (a
    # probe: an edited licence was pushed under the same key). Read here, refused below once
    # the URL is known to hold no other model: an edited config.json is first of all that.
    wrong = card_problem(folder, config)
    key = model_key(raw)
    weights = config["weights"]["file"]
    files = [weights, CARD, CONFIG]
    start = time.perf_counter()
    if url.startswith("hf://"):
        from prompt_bank.share import hub_repo

        kind, _, revision = hub_repo(url)
        if kind != "model" or revision:
            raise ModelFileError(
                f"URL {url!r}: a model goes to a hub model repository's main branch: write "
                "hf://ORG/NAME (no datasets/, no @REVISION)"
            )
    from prompt_bank.share import is_lock_file, pushing_to

    with pushing_to(url, storage_options, "model push"):
        repaired = False
        fs, base, there = _remote_model(url, storage_options)
        if there is not None and there != raw:
            raise ModelFileError(
                f"URL {url} holds another model (content key {model_key(there)[:16]}); push "
                "to a new URL (a push never replaces a model)"
            )
        if there is None and fs is not None and fs.exists(base):
            names = (p.removeprefix(base + "/") for p in fs.find(base))
            others = sorted(n for n in names if n not in FILES and not is_lock_file(n))
            if others:
                raise ModelFileError(
                    f"URL {url} holds other files ({', '.join(others[:5])}); push to a new URL"
                )
        if wrong is not None:
            raise ModelFileError(
                f"model push: MODEL {str(folder)!r}: {wrong}; nothing was uploaded. Restore "
                "README.md as `cli.py model export` wrote it, or export the model again "
                "(`cli.py model export CKPT --out DIR`)"
            )
        if there is not None:
            found = _remote_sha256(fs, f"{base}/{weights}")
            if found != config["weights"]["sha256"]:
                repaired = True  # same config, damaged or missing weights: send them again
            elif _read_remote(fs, f"{base}/{CARD}") != card_bytes(config):
                files, repaired = [CARD], True  # only the card differs there: send it alone
            else:
                return {"url": url, "uploaded": 0, "key": key, "repaired": False}
        from prompt_bank.share import upload_folder

        upload_folder(folder, url, storage_options, progress, files=files, last=CONFIG)
    size = sum((folder / f).stat().st_size for f in files)
    return {
        "url": url,
        "uploaded": size,
        "key": key,
        "repaired": repaired,
        "seconds": time.perf_counter() - start,
    }


def _remote_model(url: str, storage_options: dict | None):
    """(filesystem, base path, the config.json there or None) of a push's URL; for a hub
    repository that does not exist yet, (None, base, None)."""
    if url.startswith("hf://"):
        from huggingface_hub import HfApi

        from prompt_bank.share import hub_repo

        _, repo, _ = hub_repo(url)
        if not HfApi().repo_exists(repo):
            return None, url, None
    fs, base = filesystem(url, storage_options)
    base = base.rstrip("/")
    return fs, base, _read_remote(fs, f"{base}/{CONFIG}")


def _raise_a_transient_cause(error: FileNotFoundError) -> None:
    """fsspec says "not found" for a stalled or failing request too (a probe): its transient
    cause is raised instead, for ``with_retries`` to ask again."""
    if error.__cause__ is not None and transient(error.__cause__):
        raise error.__cause__ from None


def _read_remote(fs, path: str) -> bytes | None:
    """The bytes of ``path``, None where there is none; a transient failure is asked again
    (``common.retry``): a single 503 for config.json failed a pull (probe 12), where a bank's
    root zarr.json is asked again."""

    def read() -> bytes | None:
        try:
            return fs.cat_file(path)
        except FileNotFoundError as e:
            _raise_a_transient_cause(e)
            return None

    return with_retries(read)


def _remote_size(fs, path: str, url: str, name: str) -> int:
    """The size of a pulled model's weights file. fsspec says "not found" (the bare URL) for a
    stalled, failing or missing file alike (a probe): a failure that passes is asked again
    (``common.retry``) and, when it outlives the retries, worded by the caller's
    ``remote_errors``; a file that is not there is named so."""

    def size() -> int:
        try:
            return int(fs.size(path) or 0)
        except FileNotFoundError as e:
            _raise_a_transient_cause(e)
            where = (  # an http(s) URL is read only: the push goes to the store it serves
                "to the store this URL serves"
                if read_only_url(url)
                else f"(cli.py model push MODEL {url})"
            )
            raise ModelFileError(
                f"{url}: its {name} is missing there, so the copy is incomplete; push it again "
                f"from a good export {where}"
            ) from None

    return with_retries(size)


def _download(fs, source: str, target: Path, bar: ProgressBar) -> str:
    """Stream ``source`` to ``target``; returns its sha256. A transient failure (a 5xx, a cut
    connection or a short body) starts the stream over, a few times (``common.retry``)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    # over HTTP, a stream (block_size=0): a plain server that ignores Range serves it whole,
    # where fsspec's random-access file refuses such a server
    options = {"block_size": 0} if {"http", "https"} & set(protocols) else {}

    def stream() -> str:
        digest, received = hashlib.sha256(), 0
        try:
            with fs.open(source, "rb", **options) as f, open(target, "wb") as out:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
                    bar.advance(len(chunk))
        except BaseException:
            bar.advance(-received)  # a retry counts from the start again
            raise
        return digest.hexdigest()

    return with_retries(stream)


def cached_copy_is_whole(target: Path, raw: bytes) -> bool:
    """Whether ``target`` holds this config, weights that hash right and the card the config
    gives (a copy whose card was edited or removed is pulled again)."""
    if not (target / CONFIG).is_file() or (target / CONFIG).read_bytes() != raw:
        return False
    try:
        config = parse_config(raw, target / CONFIG, "--to")
        check_weights(target, config, "--to")
    except ModelFileError:
        return False
    return card_problem(target, config) is None


def pull_model(
    url: str,
    to: str | os.PathLike | None = None,
    storage_options: dict | None = None,
    progress=True,
) -> dict:
    """Download a shared model into ``to`` or the cache (keyed by content), its weights checked.

    Returns {"path", "downloaded" (bytes; 0: it was there), "key"}.

    Raises:
        ModelFileError: ``url`` holds no model, or its weights arrive with another sha256.
        RemoteError: the store could not be reached.
    """
    from prompt_bank.share import checked_cache_dir

    options = resolve_storage_options(storage_options)
    if to is not None:
        from common.errors import check_output_folder

        check_output_folder(to, "--to")  # a file, or a path below one: refused before any request
    else:
        cache = checked_cache_dir("models")
    with remote_errors(url, "model pull from"):
        fs, base = filesystem(url, options)
        base = base.rstrip("/")
        raw = _read_remote(fs, f"{base}/{CONFIG}")
        if raw is None:
            raise ModelFileError(
                f"{url}: no {CONFIG} there, so no model; check the URL (a model is pushed with "
                "`cli.py model push MODEL URL`)"
            )
        try:
            json.loads(raw)
        except ValueError:  # a login or error page (a probe: "export the model again")
            raise ModelFileError(not_json_answer(url, CONFIG, raw)) from None
        config = parse_config(raw, f"{url}/{CONFIG}", "URL")
        try:  # the card is written from config.json; the remote README.md is never read
            card = card_bytes(config)
        except (KeyError, TypeError, AttributeError, ValueError):
            raise ModelFileError(
                f"{url}: its {CONFIG} lacks what a model card shows (training, weights, banks "
                "or metrics are not as `cli.py model export` writes them): edited or damaged; "
                "push it again from a good export"
            ) from None
        key = model_key(raw)
        target = Path(to) if to is not None else cache / key
        if cached_copy_is_whole(target, raw):
            return {"path": str(target), "downloaded": 0, "key": key}
        if target.exists() and (target / CONFIG).is_file():
            if (target / CONFIG).read_bytes() != raw:
                raise ModelFileError(
                    f"--to {str(target)!r} holds another model; give a new or empty folder"
                )
        elif target.exists() and any(target.iterdir()):
            raise ModelFileError(
                f"--to {str(target)!r} holds other files; give a new or empty folder"
            )
        weights = config["weights"]
        start = time.perf_counter()
        staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
        where = f"writing {'--to' if to is not None else 'the model cache'} {target}"
        try:
            with staged_write(staging, where):
                target.parent.mkdir(parents=True, exist_ok=True)
                staging.mkdir()
                with ProgressBar(
                    "pull",
                    _remote_size(fs, f"{base}/{weights['file']}", url, weights["file"]),
                    unit="bytes",
                    enabled=progress,
                ) as bar:
                    found = _download(
                        fs, f"{base}/{weights['file']}", staging / weights["file"], bar
                    )
                if found != weights["sha256"]:
                    raise ModelFileError(
                        f"{url}: {weights['file']} arrived with sha256 {found[:12]}..., its {CONFIG} "
                        f"says {weights['sha256'][:12]}...; the remote copy is damaged (push it again "
                        "from a good export)"
                    )
                (staging / CARD).write_bytes(card)  # whatever README.md the remote holds (ours)
                (staging / CONFIG).write_bytes(raw)
                if not cached_copy_is_whole(target, raw):  # another pull may have finished it
                    if target.exists():  # a damaged copy of this model: replaced whole
                        shutil.rmtree(target)
                    try:
                        os.rename(staging, target)
                    except OSError:
                        if not cached_copy_is_whole(target, raw):  # a pull beside this one won
                            raise
        finally:
            remove_staging(staging)
    downloaded = sum(p.stat().st_size for p in target.iterdir() if p.is_file())
    return {
        "path": str(target),
        "downloaded": downloaded,
        "key": key,
        "seconds": time.perf_counter() - start,
    }


def resolve_model(location: str | os.PathLike, option: str = "--model") -> Path:
    """A local model folder for ``location``: a path as it is, a URL pulled (cached) first."""
    if is_url(str(location)):
        return Path(pull_model(str(location), progress=False)["path"])
    return Path(location)


def _module_of(config: dict, folder: Path, option: str):
    """The ``DPSegModule`` that ``config.json``'s settings describe, their types checked as the
    command line checks a config file's (jsonargparse, against the module's signature): an edited
    config is one line, not a traceback where a value of another type is first used."""
    from jsonargparse import ArgumentParser

    from common.errors import one_line
    from model.lightning import DPSegModule
    from pretrained.errors import PresetError, recorded_encoder_error

    settings = {
        **config["model"],
        "inference": config["inference"],
        "test_protocol": config.get("test_protocol"),
    }
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(DPSegModule)
    try:
        parser.parse_object(settings)
        return DPSegModule(**settings)
    except PresetError as e:  # an encoder this installation cannot build
        reason = recorded_encoder_error(e, f"{option} {str(folder / CONFIG)!r}")
        raise ModelFileError(f"{reason}; export or pull the model again") from None
    except (ArgumentError, TypeError, ValueError) as e:  # a SettingError (a bound) included
        reason = one_line(e)
        if reason.startswith('Parser key "'):  # jsonargparse's: the key, then every subtype tried
            key = reason.split('"')[1]
            reason = f"{key}: {settings.get(key)!r} is not of its type"
        raise ModelFileError(
            f"{option}: {folder / CONFIG} holds settings DPSeg does not take ({reason}); "
            "export or pull the model again"
        ) from None


def load_model(location: str | os.PathLike, option: str = "--model"):
    """The ``DPSegModule`` of an exported folder or a URL it was pushed to (pulled into the cache
    first: :func:`resolve_model`), its weights checked and loaded strictly."""
    from safetensors.torch import load_file

    from model.checkpoint import weights_misfit

    folder = resolve_model(location, option)
    config = read_config(folder, option)
    weights = check_weights(folder, config, option)
    module = _module_of(config, folder, option)
    recorded = config["encoder"].get("fingerprint")
    if recorded and recorded != module.encoder_fingerprint:
        raise ModelFileError(
            f"{option}: the encoder {config['model']['encoder']!r} built here has fingerprint "
            f"{module.encoder_fingerprint[:12]}..., the model was trained on {recorded[:12]}...; "
            "load the encoder weights it records "
            f"({config['encoder'].get('weights')}, revision {config['encoder'].get('revision')})"
        )
    try:
        module.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as e:
        misfit = weights_misfit(e)
        if misfit is None:
            raise
        raise ModelFileError(
            f"{option}: {weights.name} does not fit the model {CONFIG} describes ({misfit}); "
            f"{CONFIG} was edited or belongs to another model: export the model again "
            "(cli.py model export)"
        ) from None
    module.loaded_provenance = {"encoder": config["encoder"], "banks": config["banks"]}
    return module.eval()
