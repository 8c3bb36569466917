"""A trained DPSeg as a folder to share: safetensors weights, ``config.json`` and a card.

    python cli.py model export runs/.../last.ckpt --out models/toy-dpseg
    python cli.py segment --model models/toy-dpseg --vocab "red disc; cat" --images photo.jpg

    models/toy-dpseg/
        model.safetensors   the network's state dict (no pickle anywhere)
        config.json         all that rebuilds it: the encoder (name, weights source, revision,
                            fingerprint, licence), the DPSeg config, the inference settings, the
                            banks it was trained with, the training step, the weights' sha256
        README.md           the card: what it is, what trained it, how to use it (written
                            from config.json by card_bytes; a push checks it, a pull writes it)

Loading (``model.share.load_model``) reads safetensors only, checks the weights' sha256 against
``config.json`` (a changed or damaged file is one line), rebuilds the network from the config and
its encoder by name (which must give the recorded fingerprint), then loads the weights strictly.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict
from pathlib import Path

from common.errors import (
    SettingError,
    UnreadableFileError,
    check_output_folder,
    one_line,
    staged_write,
)
from common.io import file_sha256, move_into_place, remove_staging, special_file_kind

FORMAT, FORMAT_VERSION = "dpseg-model", 1
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"


class ModelFileError(UnreadableFileError):
    """An exported model's folder is incomplete, changed or not one of ours."""


def read_metrics(paths: list[str | os.PathLike]) -> list[dict]:
    """The scores of ``cli.py test`` runs (their ``DATASET.run.json``) for a card, one row per
    file: dataset, rounds, metrics (%), command."""
    import math

    rows, seen = [], set()
    for path in paths:
        path = Path(path)
        keep = ("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU", "fwIoU", "pACC")
        if path.resolve() in seen:  # the same record twice would be two rows of the card
            raise ModelFileError(f"--metrics {str(path)!r} is given twice; give each record once")
        seen.add(path.resolve())
        special = special_file_kind(path)
        if special is not None:
            raise ModelFileError(
                f"--metrics {str(path)!r} is {special}, not a file; give the DATASET.run.json "
                "that cli.py test writes in --model.results_dir"
            )
        if not path.is_file():
            raise ModelFileError(
                f"--metrics {str(path)!r}: no such file; give the DATASET.run.json that cli.py "
                "test writes in --model.results_dir"
            )
        try:
            run = json.loads(path.read_text())
            values = {k: run["metrics"][k] for k in keep if k in run["metrics"]}
        except (OSError, ValueError, KeyError, TypeError):
            raise ModelFileError(
                f"--metrics {str(path)!r}: not a test record; give the DATASET.run.json that "
                "cli.py test writes in --model.results_dir"
            ) from None
        if not values:
            raise ModelFileError(
                f"--metrics {str(path)!r}: its metrics hold none of {', '.join(keep)}; give the "
                "DATASET.run.json of a cli.py test that scored them"
            )
        for key, value in values.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value):  # NaN, Infinity: not JSON in config.json
                raise ModelFileError(
                    f"--metrics {str(path)!r}: metrics.{key} is {json.dumps(value)}, not a "
                    "finite number; give the record of a test that scored it (rerun cli.py test)"
                )
        scores = {k: round(100 * float(v), 2) for k, v in values.items()}
        rows.append(
            {
                "dataset": run.get("dataset", path.stem.removesuffix(".run")),
                "rounds": run.get("rounds"),
                **scores,
                "command": run.get("command"),
            }
        )
    return rows


def export_model(
    ckpt: str | os.PathLike, out: str | os.PathLike, metrics: list[str | os.PathLike] = ()
) -> Path:
    """Write the model folder of a Lightning checkpoint (``cli.py model export``); ``metrics``:
    test records to put in the card."""
    import torch

    from model.checkpoint import check_checkpoint, load_module

    out = Path(out)
    check_output_folder(out, "--out")  # a file there or above: one line naming --out
    if out.exists() and any(out.iterdir()):
        raise SettingError(f"--out {str(out)!r} is not empty; give a new folder")
    check_checkpoint(ckpt, "CKPT")
    scores = read_metrics(list(metrics))
    module = load_module(ckpt, "CKPT")
    # the step and epoch only: memory-mapped, the tensors are not read a second time
    raw = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    final, out = out, out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        out.mkdir(parents=True)
    except OSError as e:  # named by the folder the user gave
        raise type(e)(e.errno, e.strerror, str(final)) from None
    try:  # written whole into a staging folder, then renamed: a failed export leaves nothing
        with staged_write(out, f"writing --out {final}"):
            _write_folder(module, raw, state, scores, ckpt, out)
            taken = SettingError(
                f"--out {str(final)!r}: another process exported a model there while this one "
                "worked; give a new folder (nothing of this run was kept)"
            )
            move_into_place(out, final, taken)  # onto an absent or empty folder
    finally:
        remove_staging(out)
    return final


def _write_folder(module, raw: dict, state: dict, scores: list, ckpt, out: Path) -> None:
    from safetensors.torch import save

    # bytes first, then Python's own write: a full disk or a file size limit is an OSError
    # with its errno (one line), not safetensors' own error
    (out / WEIGHTS).write_bytes(save(state, metadata={"format": FORMAT}))
    model = {k: v for k, v in module.hparams.items() if not k.startswith("_")}
    model["encoder_weights"] = None  # a path of the exporting machine means nothing elsewhere
    encoder = dict(module.loaded_provenance.get("encoder", {}))
    encoder.setdefault("license", module.encoder_record["license"])
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model,
        "inference": asdict(module.inference_config),
        "test_protocol": module.test_protocol,
        "encoder": encoder,
        "banks": module.loaded_provenance.get("banks", {}),
        "metrics": scores,
        "training": {
            "global_step": int(raw.get("global_step", 0)),
            "epoch": int(raw.get("epoch", 0)),
            "checkpoint": Path(ckpt).name,
        },
        "weights": {
            "file": WEIGHTS,
            "sha256": file_sha256(out / WEIGHTS),
            "parameters": sum(int(v.numel()) for v in state.values()),
        },
    }
    text = json.dumps(config, indent=2, default=str)
    (out / CONFIG).write_text(text)
    # the card of the config as it reads back: what a push checks and a pull writes
    (out / CARD).write_bytes(card_bytes(json.loads(text)))


def card_bytes(config: dict) -> bytes:
    """The card (README.md) that a model's ``config.json`` gives, as export writes it: the one
    source of the card's text (a checkpoint name that is not UTF-8 is shown escaped).

    Raises:
        KeyError, TypeError, AttributeError, ValueError: ``config`` lacks what a card shows (a
            config.json that export did not write).
    """
    return model_card(config).encode("utf-8", "backslashreplace")


def card_problem(folder: str | os.PathLike, config: dict) -> str | None:
    """What is wrong with a model folder's card (README.md), which the content key (the sha256
    of config.json) does not cover: missing, a link (a push would send the file it points to),
    not a file, or other bytes than the card its ``config.json`` gives (an edited licence);
    None when it is that card. Found by a fault probe: an edited or missing card was pushed and
    pulled under the same content key."""
    from prompt_bank.card import card_file_problem

    try:
        expected = card_bytes(config)
    except (KeyError, TypeError, AttributeError, ValueError):
        return f"its {CONFIG} lacks what the card shows (not one that export wrote)"
    return card_file_problem(str(Path(folder) / CARD), expected, "model", f"its {CONFIG} gives")


def model_card(config: dict) -> str:
    """README.md of an exported model (written as :func:`card_bytes`)."""
    enc, model = config["encoder"], config["model"]
    banks = (
        "\n".join(
            f"| {name} | {b.get('classes')} classes x {b.get('templates')} templates | "
            f"{b.get('generator')} + {b.get('encoder')} | `{b.get('location')}` | {b.get('created')} |"
            for name, b in config["banks"].items()
        )
        or "| (none recorded) | | | | |"
    )
    return f"""---
license: other
tags:
- dpseg
- open-vocabulary-segmentation
---

# DPSeg ({model["encoder"]})

A DPSeg model (dual-prompt cost volume, cost-volume-guided decoder) exported by dpseg from
`{config["training"]["checkpoint"]}` after {config["training"]["global_step"]} training steps.

| encoder | value |
|---|---|
| name | `{model["encoder"]}` |
| weights | `{enc.get("weights")}` |
| revision | `{enc.get("revision")}` |
| fingerprint | `{enc.get("fingerprint")}` |
| licence | {enc.get("license")} |

Trained with these banks (a bank's images keep its generator's licence):

| dataset | size | generator + encoder | location | created |
|---|---|---|---|---|
{banks}

Metrics (%, as `cli.py test` reported them):

{metrics_table(config.get("metrics", []))}

Weights: `{WEIGHTS}`, {config["weights"]["parameters"]:,} values, sha256
`{config["weights"]["sha256"]}` (checked at every load).

```bash
python cli.py segment --model THIS_FOLDER --vocab "a; b, synonym" --images photo.jpg --out out/
python cli.py model push THIS_FOLDER s3://bucket/models/name    # or hf://ORG/NAME, file://...
python cli.py segment --model s3://bucket/models/name ...        # pulled into the cache, checked
python cli.py app --model THIS_FOLDER                           # the web app on 127.0.0.1:7860
```

```python
from model.predictor import Predictor
predictor = Predictor.from_pretrained("THIS_FOLDER")
```
"""


def parse_config(raw: bytes, path, option: str) -> dict:
    """An exported model's ``config.json`` (its bytes ``raw``, read from ``path``), checked to be
    ours."""
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise ModelFileError(
            f"{option}: {path} is not JSON ({one_line(e)}): edited or damaged; export the model "
            "again (`cli.py model export CKPT --out DIR`) or get it again from its source"
        ) from None
    if (
        not isinstance(config, dict)
        or config.get("format") != FORMAT
        or config.get("format_version") != FORMAT_VERSION
    ):
        found = config if isinstance(config, dict) else {}
        raise ModelFileError(
            f"{option}: {path} is not a {FORMAT} v{FORMAT_VERSION} config (format "
            f"{found.get('format')!r} v{found.get('format_version')!r})"
        )
    expected = {"model": dict, "inference": dict, "encoder": dict, "banks": dict, "weights": dict}
    wrong = [k for k, kind in expected.items() if not isinstance(config.get(k), kind)]
    weights = config.get("weights") or {}
    if not wrong and (weights.get("file") != WEIGHTS or not isinstance(weights.get("sha256"), str)):
        wrong.append("weights")  # the file is always model.safetensors: no other path is read
    if wrong:
        raise ModelFileError(
            f"{option}: {path} lacks a valid {', '.join(wrong)} entry (a config.json of "
            "`cli.py model export` names the weights file model.safetensors and its sha256); "
            "export or pull the model again"
        )
    return config


def metrics_table(metrics: list[dict]) -> str:
    if not metrics:
        return "(none recorded: export with --metrics RESULTS/DATASET.run.json)"
    rows = [
        "| dataset | rounds | mIoU | seen | unseen | hIoU | command |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(value) -> str:
        """A record's text as one table cell: one line, no '|' or HTML (a record is input)."""
        text = " ".join(str(value).split())
        return text.replace("|", "&#124;").replace("<", "&lt;").replace(">", "&gt;")

    for m in metrics:
        command = cell(m.get("command") or "?").replace("`", "'")
        rows.append(
            f"| {cell(m.get('dataset'))} | {cell(m.get('rounds'))} | {m.get('mIoU', '')} | "
            f"{m.get('mIoU_seen', '')} | {m.get('mIoU_unseen', '')} | {m.get('hIoU', '')} | "
            f"`{command}` |"
        )
    return "\n".join(rows)


def read_config(folder: Path, option: str) -> dict:
    path = folder / CONFIG
    special = special_file_kind(path)
    if special is not None:
        raise ModelFileError(
            f"{option} {str(folder)!r}: {CONFIG} is {special}, not a file; export or pull the "
            "model again"
        )
    if not path.is_file():
        raise ModelFileError(
            f"{option} {str(folder)!r}: no {CONFIG}; an exported model is a folder written by "
            "`cli.py model export CKPT --out DIR` (a .ckpt goes in --ckpt)"
        )
    return parse_config(path.read_bytes(), path, option)


def check_weights(folder: Path, config: dict, option: str) -> Path:
    """The weights file of a model folder, present and with the sha256 its config records."""
    weights = Path(folder) / config["weights"]["file"]
    special = special_file_kind(weights)
    if special is not None:
        raise ModelFileError(
            f"{option}: {weights} is {special}, not a file; export or pull the model again"
        )
    if not weights.is_file():
        raise ModelFileError(f"{option}: {weights} is missing; export or pull the model again")
    found = file_sha256(weights)
    if found != config["weights"]["sha256"]:
        raise ModelFileError(
            f"{option}: {weights} has sha256 {found[:12]}..., not the {config['weights']['sha256'][:12]}... "
            f"its {CONFIG} records: the file was changed or damaged; export or pull the model again"
        )
    return weights
