"""The command line as users meet it: help, version, package imports, options from dataclasses."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

import cli


def test_packages_import():
    code = "import prompt_bank, model, data, cli; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr  # installed, not just on the path


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in (
        "presets",
        "vocab",
        "data",
        "bank",
        "eval-masks",
        "fit",
        "validate",
        "test",
        "predict",
        "segment",
        "explain",
        "vip",
    ):
        assert command in result.stdout
    assert "cli.py segment -h" in result.stdout and "--images" not in result.stdout
    assert "select-aliases" in run_cli("vip", "--help").stdout
    data_help = run_cli("data", "--help")
    for command in ("synthetic", "stats", "prepare"):
        assert command in data_help.stdout
    bank_help = run_cli("bank", "--help")
    for command in ("build", "info", "verify", "merge", "gallery"):
        assert command in bank_help.stdout


def test_version_and_missing_command():
    assert run_cli("--version").stdout.startswith("dpseg 0.")
    result = run_cli()
    assert result.returncode == 2 and 'expected "command" to be one of' in result.stderr
    assert result.stderr.startswith("usage: cli.py")


def test_entry_point_installed():
    dpseg = Path(sys.executable).parent / "dpseg"  # the console script pip installs beside python
    result = subprocess.run([str(dpseg), "vocab", "voc20"], capture_output=True, text=True)
    assert result.returncode == 0 and "voc20: 20 classes" in result.stdout


def main(capsys, *argv: str) -> tuple[int, str, str]:
    """``cli.main(argv)`` in this process: (exit status, stdout, stderr)."""
    try:
        code = cli.main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def command_paths(tree=None, path=()):
    for name, command in (cli.commands() if tree is None else tree).items():
        yield (*path, name)
        yield from command_paths(command.subcommands, (*path, name))


def test_every_command_has_help(capsys):
    paths = list(command_paths())
    assert ("segment",) in paths and ("bank", "build") in paths and ("presets", "pretrain") in paths
    assert ("model", "export") in paths and ("model", "push") in paths and ("app",) in paths
    assert len(paths) == 32  # 14 commands, 18 subcommands
    for path in paths:
        code, out, err = main(capsys, *path, "-h")
        assert code == 0, (path, err[-2000:])
        assert out.startswith("usage: cli.py"), (path, out[:200])
        if path[0] in cli.LIGHTNING_COMMANDS:  # LightningCLI's own help, as Lightning wrote it
            assert "--ckpt_path" in out or "--trainer" in out, path
            assert "--images" not in out


def test_segment_and_bank_build_help(capsys):
    code, out, _ = main(capsys, "segment", "-h")
    assert code == 0
    for option in (
        "--images",
        "--vocab",
        "--out",
        "--ckpt",
        "--method {dpseg,vip}",
        "--rounds",
        "--dual-prompts BANK",
        "--text-only",
    ):
        assert option in out
    code, out, _ = main(capsys, "bank", "build", "-h")
    assert code == 0
    # the option names users know, help from the fields' comments (BankBuildOptions, BuildConfig)
    for option in (
        "--vocab VOCAB",
        "--out OUT",
        "--preset",
        "--templates",
        "--images-per-prompt",
        "--encoder-weights PATH",
        "--keep-images",
        "--level-dtype {float16,float32}",
        "--device {cpu,cuda}",
        "--config CONFIG",
        "--allow-duplicate-classes",
    ):
        assert option in out
    assert "N images per (class, template) (type: int, default: 1)" in " ".join(out.split())
    assert "toy-dinotxt (cli.py presets --kind bank)" in " ".join(out.split())


def test_field_docs_come_from_the_dataclass_comments():
    from commands.bank import BankBuildOptions
    from commands.options import field_docs
    from commands.vip import SelectAliasesOptions

    docs = field_docs(BankBuildOptions)
    assert docs["vocab"] == "vocabulary: a name, a .json/.txt file, or 'a; b, c'"
    assert docs["preset"].endswith("toy-vit, toy-dinotxt (cli.py presets --kind bank)")
    assert set(docs) == {f for f in BankBuildOptions.__dataclass_fields__}
    rule = field_docs(SelectAliasesOptions)["rule"]  # three comment lines
    assert rule.startswith("ours (docs/vip.md)") and rule.endswith("options below override it")


def test_bank_build_reads_a_yaml_file_and_options_override_it(capsys, tmp_path):
    from prompt_bank.store import Bank

    config = tmp_path / "my_bank.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "vocab": "cat; dog",
                "preset": "tiny",
                "templates": "single",
                "images_per_prompt": 3,
                "out": str(tmp_path / "from_yaml.zarr"),
                "cpu_threads": 1,
                "quiet": True,
            }
        )
    )
    out = tmp_path / "given.zarr"
    code, printed, err = main(
        capsys,
        "bank",
        "build",
        "--config",
        str(config),
        "--images-per-prompt",
        "2",
        "--out",
        str(out),
    )
    assert code == 0, err[-2000:]
    assert "4 items built" in printed  # 2 classes x 1 template x 2 images
    bank = Bank.open(out)
    assert bank.classes == ["cat", "dog"] and len(bank.templates) == 1
    assert bank.attrs["images_per_prompt"] == 2  # the option, not the file's 3
    assert bank.attrs["generator"]["preset"] == "tiny-sd"  # the tiny bank preset's
    assert not (tmp_path / "from_yaml.zarr").exists()
    # --print_config shows what a file would hold
    code, printed, _ = main(capsys, "bank", "build", "--config", str(config), "--print_config")
    assert code == 0 and yaml.safe_load(printed)["images_per_prompt"] == 3


def test_bank_build_config_errors_exit_2(capsys, tmp_path):
    """A mistake in a --config file: one line naming the file; on the command line: usage."""
    config = tmp_path / "typo.yaml"
    config.write_text("vocab: cat\nout: x.zarr\nimages_per_promt: 2\n")
    code, _, err = main(capsys, "bank", "build", "--config", str(config))
    assert code == 2 and "Option 'images_per_promt' is not accepted" in err
    assert err.startswith(f"error: --config {str(config)!r}: ") and err.count("\n") == 1
    code, _, err = main(
        capsys, "bank", "build", "--vocab", "cat", "--out", "x.zarr", "--level-dtype", "int8"
    )
    assert code == 2 and "int8" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["bank", "build", "--vocab", "cat; dog", "--out", "x.zarr", "--images-per-prompt", "0"],
        ["bank", "build", "--vocab", "cat; dog", "--out", "x.zarr", "--guidance", "-3"],
        ["presets", "pretrain", "toy-vit", "--lr", "0"],
    ],
)
def test_invalid_settings_are_one_line_user_errors(capsys, argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = main(capsys, *argv)
    assert code == 2 and err.startswith("error: --") and len(err.strip().splitlines()) == 1


def test_lightning_predict_keeps_its_meaning_and_hints_at_segment(capsys):
    code, _, err = main(capsys, "predict", "--images", "x.jpg", "--vocab", "cat", "--out", "o")
    assert code == 2
    assert "unrecognized arguments" in err.lower() or "--images" in err
    assert err.strip().splitlines()[-1].startswith("hint:") and "cli.py segment" in err


def test_a_command_run_in_process_starts_with_no_cached_filesystem(cli_in_process):
    """``cli_in_process`` stands for a fresh process: fsspec keys its cached clients by their
    arguments, not by ``$AWS_ENDPOINT_URL``, so an earlier in-process command's S3 client (its
    server stopped since) answered a later test's ``model push`` (a CI failure)."""
    import s3fs

    before = s3fs.S3FileSystem(anon=True)  # built without a request
    assert s3fs.S3FileSystem(anon=True) is before  # fsspec's instance cache
    assert cli_in_process("--version").returncode == 0
    assert s3fs.S3FileSystem(anon=True) is not before
