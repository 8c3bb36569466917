"""A trained DPSeg as a folder to share (cli.py model export; model.export)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import cli_here, run_cli
from PIL import Image


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    from model.export import export_model

    return export_model(trained, tmp_path_factory.mktemp("export") / "model", [])


def test_export_then_segment_with_the_folder_gives_the_checkpoint_s_labels(
    trained, world, tmp_path, capsys, monkeypatch
):
    def run_cli(*args, cwd):  # in this process: a fresh one would add 7 s of imports each
        return cli_here(capsys, monkeypatch, *args, cwd=cwd)

    folder = tmp_path / "model"
    result = run_cli("model", "export", str(trained), "--out", str(folder), cwd=world)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "dpseg-model" and config["model"]["encoder"] == "tiny-convnext"
    assert len(config["encoder"]["fingerprint"]) == 64 and config["training"]["global_step"] == 4
    assert config["banks"] and "sha256" in (folder / "README.md").read_text()
    images = sorted((world / "datasets" / "synthetic" / "images" / "val").glob("*.jpg"))[:2]
    vocab = "red disc; green square; blue triangle; background"
    outputs = {}
    for option, value in (("--ckpt", trained), ("--model", folder)):
        out = tmp_path / option.strip("-")
        result = run_cli(
            "segment",
            option,
            str(value),
            "--images",
            *map(str, images),
            "--vocab",
            vocab,
            "--out",
            str(out),
            "--quiet",
            cwd=world,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[option] = [np.asarray(Image.open(out / f"{p.stem}.png")) for p in images]
    for a, b in zip(outputs["--ckpt"], outputs["--model"]):
        np.testing.assert_array_equal(a, b)
    # a tampered weights file: one line, exit 2, nothing written
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (folder / "model.safetensors").write_bytes(bytes(data))
    result = run_cli(
        "segment",
        "--model",
        str(folder),
        "--images",
        str(images[0]),
        "--vocab",
        vocab,
        "--out",
        str(tmp_path / "bad"),
        "--quiet",
        cwd=world,
    )
    assert result.returncode == 2
    assert "the file was changed or damaged" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_export_refuses_a_non_empty_folder_and_segment_both_sources(trained, world, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    result = run_cli("model", "export", str(trained), "--out", str(tmp_path / "taken"), cwd=world)
    assert result.returncode == 2 and "is not empty" in result.stderr
    result = run_cli(
        "segment",
        "--ckpt",
        str(trained),
        "--model",
        str(tmp_path),
        "--images",
        "x.jpg",
        "--vocab",
        "a",
        "--out",
        str(tmp_path / "o"),
        cwd=world,
    )
    assert result.returncode == 2 and "give one of them" in result.stderr


def test_the_card_lists_each_test_record_it_was_given(trained, tmp_path):
    from model.export import export_model

    records = []
    for rounds, miou in ((1, 0.52), (2, 0.48)):
        path = tmp_path / f"round{rounds}" / "toy.run.json"
        path.parent.mkdir()
        path.write_text(
            json.dumps(
                {
                    "dataset": "toy",
                    "rounds": rounds,
                    "command": f"python cli.py test r{rounds}",
                    "metrics": {"mIoU": miou, "mIoU_seen": miou},
                }
            )
        )
        records.append(path)
    folder = export_model(trained, tmp_path / "model", records)
    config = json.loads((folder / "config.json").read_text())
    assert [(m["rounds"], m["mIoU"]) for m in config["metrics"]] == [(1, 52.0), (2, 48.0)]
    card = (folder / "README.md").read_text()
    assert "`python cli.py test r1`" in card and "`python cli.py test r2`" in card
    (tmp_path / "bad.json").write_text("{}")
    from common.errors import SettingError
    from model.export import ModelFileError, parse_config

    with pytest.raises(ModelFileError, match="not a test record"):
        export_model(trained, tmp_path / "model2", [tmp_path / "bad.json"])
    with pytest.raises(ModelFileError, match=r"nothere\.json': no such file; give the"):
        export_model(trained, tmp_path / "model2", [tmp_path / "nothere.json"])
    # the re-probe: NaN went into config.json as bare NaN (not JSON), true became 100.0, an
    # empty record passed, a record given twice made two rows, a folder was "no such file"
    # (and the probe after it: each message names the field and its value)
    for metrics, expected in (
        ({"mIoU": float("nan")}, "metrics.mIoU is NaN, not a finite number"),
        ({"mIoU": True}, "metrics.mIoU is true, not a finite number"),
        ({"hIoU": float("inf")}, "metrics.hIoU is Infinity, not a finite number"),
        ({}, "its metrics hold none of mIoU, mIoU_seen, mIoU_unseen, hIoU, fwIoU, pACC"),
    ):
        (tmp_path / "odd.json").write_text(json.dumps({"dataset": "toy", "metrics": metrics}))
        with pytest.raises(ModelFileError, match=expected):
            export_model(trained, tmp_path / "model2", [tmp_path / "odd.json"])
    with pytest.raises(SettingError, match=r"--out '.*last\.ckpt' is a file, not a folder"):
        export_model(trained, trained, [])  # the probe: an ENOTDIR line that named no option
    garbled = tmp_path / "config.json"
    garbled.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ModelFileError, match=r"is not JSON \(.*\): edited or damaged; export the"):
        parse_config(garbled.read_bytes(), garbled, "MODEL")
    with pytest.raises(ModelFileError, match="is given twice; give each record once"):
        export_model(trained, tmp_path / "model2", [records[0], records[0]])
    with pytest.raises(ModelFileError, match="is a folder, not a file"):
        export_model(trained, tmp_path / "model2", [tmp_path])
    assert not (tmp_path / "model2").exists()
    # the re-probe: a hostile record's fields broke the card's table (and could inject HTML)
    (tmp_path / "hostile.json").write_text(
        json.dumps({"dataset": "a|b\n# heading <script>", "rounds": 1, "metrics": {"mIoU": 0.5}})
    )
    card = export_model(trained, tmp_path / "model3", [tmp_path / "hostile.json"]) / "README.md"
    (row,) = [line for line in card.read_text().splitlines() if line.startswith("| a")]
    assert row.startswith("| a&#124;b # heading &lt;script&gt; | 1 | 50.0 |"), row


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("image_size", "big", "image_size: 'big' is not of its type"),
        ("dpseg", [1], "dpseg: [1] is not of its type"),
        ("image_size", -5, "model.image_size=-5: must be >= 1"),
        ("dpseg.cost_channels", None, "model.dpseg.cost_channels=None: must be an integer"),
        # a long value is quoted whole, and the fix after it kept (was cut at 200 characters)
        ("dpseg.prompt_mode", "averaged-" * 30, "-': use one of text, visual, avg, cost-avg"),
        # the probe: "shared_templates=0 must be in 1..0", a key the file does not have
        ("num_templates", 0, "model.num_templates=0: the templates P of the banks, must be >= 1"),
    ],
)
def test_a_config_json_with_settings_of_another_type_is_one_line(
    exported, tmp_path, key, value, message
):
    """Found by the fault probe: each was a traceback where the value was first used (and
    segment left an empty --out)."""
    import shutil

    from model.export import ModelFileError
    from model.share import load_model

    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    *within, name = key.split(".")
    settings = config["model"]
    for part in within:
        settings = settings[part]
    settings[name] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="holds settings DPSeg does not take") as error:
        load_model(folder)
    assert message in str(error.value)


@pytest.mark.parametrize("kind", ["pipe", "device", "folder", "missing"])
@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_model_file_that_is_not_a_file_is_named_for_what_it_is(exported, tmp_path, kind, name):
    """Found by the probe: a pipe or a link to /dev/zero as model.safetensors was called
    "missing" (and a pipe as config.json "no config.json"). Each is named for what it is, with
    one stat and no read (a pipe would block it, /dev/zero never end)."""
    import os
    import shutil

    from model.export import ModelFileError
    from model.share import load_model

    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    path = folder / name
    path.unlink()
    {
        "pipe": lambda: os.mkfifo(path),
        "device": lambda: path.symlink_to("/dev/zero"),
        "folder": path.mkdir,
        "missing": lambda: None,
    }[kind]()
    expected = {
        "pipe": "is a pipe, not a file",
        "device": "is a device, socket or other special file, not a file",
        "folder": "is a folder, not a file",
        "missing": "is missing" if name == "model.safetensors" else "no config.json",
    }[kind]
    with pytest.raises(ModelFileError, match=expected) as error:
        load_model(folder)
    assert name in str(error.value) and "export" in str(error.value)
