"""dpseg command line: ``python cli.py COMMAND ...`` (also installed as ``dpseg``).

The commands live in ``commands/``, one module per group; this file assembles them into one
jsonargparse tree, parses, and runs the chosen one (fit/validate/test/predict go to LightningCLI).
Each command imports what it needs when it runs, so ``--help`` answers at once. User errors
(unknown names, malformed files, unreachable weights) print one message and exit with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import sys
from importlib.metadata import PackageNotFoundError, version

from jsonargparse import ArgumentError

from commands.options import Command, log_ours
from common.config_files import check_config_files, config_file_error, option_type_error
from common.errors import (  # what ends a command in one line (cheap: no torch)
    NOTHING_LEFT,
    PATH_ERRNOS,
    STORAGE_ERRNOS,
    USER_ERRORS,
    broken_link,
    printable,
    storage_fault,
)
from common.signals import Interrupted, interruptible, outside_the_command


def _version() -> str:
    try:
        return version("dpseg")
    except PackageNotFoundError:
        return "unknown (not installed: run make install)"


LIGHTNING_COMMANDS = {
    "fit": "train DPSeg (LightningCLI: cli.py fit --config configs/tiny_synthetic.yaml)",
    "validate": "validate a checkpoint on data.val (LightningCLI)",
    "test": "test on every (dataset, bank) of data.test; metrics + summary (LightningCLI; VIP: "
    "cli.py test --config configs/vip_tiny.yaml [--model.dual_prompts BANK])",
    "predict": "LightningCLI's predict over data.test: --config ... --ckpt_path ... (any images: "
    "cli.py segment)",
}
"""Run by LightningCLI (``model/lightning_cli.py``): ``cli.py fit --config configs/X.yaml``."""


def commands() -> dict[str, Command]:
    """Every command of ``cli.py``: name -> :class:`Command`, in the order of ``-h`` (LightningCLI's
    four have no options here: they are LightningCLI's). Each group lives in its module of
    ``commands/``."""
    from commands import app, bank, data, model, presets, segment, vip, vocab

    return {
        **{name: Command(what) for name, what in LIGHTNING_COMMANDS.items()},
        **segment.COMMANDS,
        **presets.COMMANDS,
        **vocab.COMMANDS,
        **bank.COMMANDS,
        **model.COMMANDS,
        **vip.COMMANDS,
        **data.COMMANDS,
        **app.COMMANDS,
    }


def _help_formatter():
    from jsonargparse import DefaultHelpFormatter

    class HelpFormatter(DefaultHelpFormatter):
        """jsonargparse's, but an option whose help tells its default is not given another."""

        def _get_help_string(self, action) -> str:
            text = super()._get_help_string(action)
            if "default" in (action.help or ""):
                text = text.replace(", default: %(default)s)", ")")
                text = text.replace(" (default: %(default)s)", "")
            return text

    return HelpFormatter


def build_parser(argv: list[str] | None = None, parsers: dict | None = None):
    """The command tree, one jsonargparse parser. Only the commands named in ``argv`` get their
    options (what they import, torch for some, waits until they are chosen); None: all do.
    ``parsers`` (a dict) receives each command's parser by its path (``("bank", "build")``)."""
    from jsonargparse import ArgumentParser

    formatter = _help_formatter()
    parser = ArgumentParser(
        prog="cli.py",
        formatter_class=formatter,
        description="dpseg: open-vocabulary semantic segmentation with dual prompts (DPSeg, VIP). "
        "fit, validate, test and predict are LightningCLI's (cli.py fit -h); any images: "
        "cli.py segment -h.",
    )
    parser.add_argument("--version", action="version", version=f"dpseg {_version()}")
    _add_commands(parser, commands(), argv, formatter, {} if parsers is None else parsers)
    return parser


def _add_commands(parser, tree, argv, formatter, parsers, path=(), required=True) -> None:
    from jsonargparse import ArgumentParser

    subcommands = parser.add_subcommands(dest="command", metavar="COMMAND", required=required)
    for name, command in tree.items():
        sub = ArgumentParser(
            description=command.description or command.help, formatter_class=formatter
        )
        subcommands.add_subcommand(name, sub, help=command.help)  # before its own subcommands
        parsers[(*path, name)] = sub
        if argv is None or name in argv:
            if command.options is not None:
                command.options(sub)
            if command.subcommands:
                _add_commands(
                    sub,
                    command.subcommands,
                    argv,
                    formatter,
                    parsers,
                    (*path, name),
                    command.run is None,
                )


def _parse(argv: list[str]) -> tuple[Command, object]:
    """The command a command line chose and its options. The deepest command named at its
    start parses the rest itself, so that its errors come with its own usage line (jsonargparse
    4.53 reports an unknown key of a YAML file given to a subcommand's subcommand as a KeyError
    of the parent's name)."""
    parsers: dict = {}
    parser = build_parser(argv, parsers)
    tree, path, command = commands(), (), None
    while len(path) < len(argv) and argv[len(path)] in tree:
        command = tree[argv[len(path)]]
        path = (*path, argv[len(path)])
        tree = command.subcommands
    if command is None:
        return _chosen(parser.parse_args(argv))
    parser = parsers[path]
    vars(parser).pop("parent_parser", None)  # a root now: --print_config prints its options
    check_config_files(argv)  # not UTF-8, not YAML: one line, not jsonargparse's usage text
    parser.exit_on_error = False
    try:
        return _chosen(parser.parse_args(argv[len(path) :]), command)
    except ArgumentError as e:
        error = config_file_error(argv, " ".join(path), str(e))
        error = error or option_type_error(argv, " ".join(path), str(e))
        if error is None:  # a mistake on the command line: argparse's usage, then the message
            parser.exit_on_error = True
            parser.error(_options_as_typed(parser, str(e)))
        raise error from None


def _options_as_typed(parser, message: str) -> str:
    """jsonargparse names missing options by their destination ("required: ignore_index"); say
    them as the user types them ("--ignore-index"; found by a probe)."""
    head = "the following arguments are required: "
    if not message.startswith(head):
        return message
    import re

    usage = parser.format_usage()

    def typed(dest: str) -> str:
        option = "--" + dest.replace("_", "-")
        if re.search(rf"{re.escape(option)}\b", usage):
            return option
        other = re.search(rf"(--[\w-]+) {re.escape(dest.upper())}\b", usage)  # --class CLASS_NAME
        return other.group(1) if other else dest  # a positional argument keeps its name

    return head + ", ".join(typed(name.strip()) for name in message[len(head) :].split(","))


def _chosen(config, command: Command | None = None) -> tuple[Command, object]:
    """The command a parsed command line chose (below ``command``), and its own options."""
    tree = commands() if command is None else command.subcommands
    args = config
    while args.get("command"):
        command, args = tree[args.command], args[args.command]
        tree = command.subcommands
    return command, args


# ---------------------------------------------------------------------------------------------


def lightning_main(argv: list[str]) -> int:
    """fit/validate/test/predict, exactly LightningCLI's (model/lightning_cli.py)."""

    log_ours()
    check_config_files(argv)  # before Lightning's imports (seconds): a bad file is one line at once
    from model.lightning_cli import main as run

    try:
        run(argv)
    except SystemExit as e:
        if e.code == 2 and argv[0] == "predict" and any(a.startswith("--images") for a in argv):
            print(
                "hint: predict is LightningCLI's (over data.test); any images: cli.py segment "
                "--images ... --vocab ... --out ...",
                file=sys.stderr,
            )
        raise
    return 0


def main(argv: list[str] | None = None, script: bool = False) -> int:
    """``cli.py ARGS`` -> its exit status. ``script``: this is cli.py's own process (a signal
    outside the command then ends it in one line too: ``signals.outside_the_command``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = command = None
    # a path that is not UTF-8 (kept by Python as surrogates) is printed escaped, as stderr
    # does, rather than ending a finished command in UnicodeEncodeError
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        if script:
            outside_the_command()
        if argv and argv[0] in LIGHTNING_COMMANDS:
            # a signal in the imports and set-up, or in validate/test/predict, raises
            # Interrupted (one line); Lightning chains this handler behind its SIGTERM one, and
            # fit's StopOnInterrupt replaces it while training. Before, SIGTERM in the set-up and
            # either signal after the results were written ended `test` silently (probes 11, 12)
            with interruptible():
                return lightning_main(argv)
        command, args = _parse(argv)
        if args.get("root", "unset") is None:
            import os

            args.root = os.environ.get("DETECTRON2_DATASETS", "datasets")
            if "DETECTRON2_DATASETS" in os.environ:  # errors name it, not --root
                args.root_from = "$DETECTRON2_DATASETS"
        with interruptible():  # Ctrl-C / SIGTERM: clean-ups run, then one line
            return command.run(args) or 0
    except USER_ERRORS as e:  # common/errors.py: one line, exit 2
        if isinstance(e, OSError) and e.errno in PATH_ERRNOS and e.filename:  # the OS's own
            return _one_line(f"error: {_link_fault(e) or storage_fault(e)}", 2)
        return _one_line(f"error: {_link_fault(e) or e}", 2)
    except (Interrupted, KeyboardInterrupt) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        keeps = command is not None and command.keeps_finished_work
        report = getattr(e, "report", "") or (
            f"interrupted by {signal.Signals(signum).name}; "
            + (
                "finished work is kept and nothing partial is left (run the command again to go on)"
                if keeps
                else "nothing partial is left (the same command starts over)"
            )
        )
        return _one_line(f"error: {report}", 128 + signum)
    except RecursionError:  # a JSON or YAML input nested a thousand levels deep (found by a probe)
        return _one_line(
            "error: an input of this command (a --config or --vocab file, or a bank's or model's "
            "JSON) is nested too deeply to be read (Python's recursion limit); give a file of an "
            "ordinary depth",
            2,
        )
    except BrokenPipeError:
        if _stdout_is_open():  # a socket's peer hung up: the command's own error, not ours
            raise
        # `cli.py ... | head`: the reader has all it wanted; end quietly, as Unix tools do. SIGPIPE
        # itself stays ignored (Python's default), so a server or a client whose peer hangs up
        # gets an error rather than a silent death
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    except OSError as e:
        link = _link_fault(e) if e.errno == errno.ELOOP else None
        if link:
            return _one_line(f"error: {link}", 2)
        if e.errno not in STORAGE_ERRNOS and e.errno not in PATH_ERRNOS:
            if _remote_failure(e):
                return _one_line(f"error: {_remote_fault(e, argv, command)}", 2)
            raise
        # the file at fault, else the output the command was writing (zarr's writes name none)
        output = next(
            (getattr(args, k, None) for k in ("out", "root", "bank") if getattr(args, k, None)),
            None,
        )
        where = f"writing in {output}" if output else None
        if argv and argv[0] in LIGHTNING_COMMANDS:  # Lightning's writes name no file
            given = {k: _option_value(argv, k) for k in LIGHTNING_OUTPUTS}
            named = [f"{k} {v}" for k, v in given.items() if v] or ["under runs/"]
            where = (
                f"{argv[0]}: writing the run's checkpoints, logs or results ({', '.join(named)})"
            )
        after = command.after_a_stopped_write() if command is not None else NOTHING_LEFT
        kept = _whole_checkpoint_beside(e.filename) if argv and argv[0] == "fit" else None
        if kept is not None:  # the steps trained are not lost (a probe: "run it again" restarted)
            after = (
                f"nothing partial is left, and {kept} is whole: resume from it with the same "
                f"command and --ckpt_path {kept}"
            )
        return _one_line(f"error: {storage_fault(e, where, after)}", 2)
    except Exception as e:  # a store's client failed a request that no command wraps
        if not _remote_failure(e):
            raise
        return _one_line(f"error: {_remote_fault(e, argv, command)}", 2)


def _whole_checkpoint_beside(filename) -> str | None:
    """The newest other checkpoint in the folder of the checkpoint whose write failed (written
    whole: model.lightning_cli.AtomicCheckpointIO), or None."""
    from pathlib import Path

    if not isinstance(filename, str) or not filename.endswith(".ckpt"):
        return None
    folder = Path(filename).parent
    others = [p for p in folder.glob("*.ckpt") if p != Path(filename) and p.is_file()]
    return str(max(others, key=lambda p: p.stat().st_mtime)) if others else None


def _remote_failure(error: BaseException) -> bool:
    """A request to a remote store failed (an HTTP status, a cut connection, a short body, a
    refusal by S3 or the hub), after the retries of ``common.retry`` where they apply."""
    from common.retry import transient
    from prompt_bank.store import remote_client_errors

    return isinstance(error, remote_client_errors()) or transient(error)


def _remote_fault(error: BaseException, argv: list[str], command: Command | None) -> str:
    """One line for a failed remote request: the command's URLs, the failure, the fix."""
    import itertools
    import re

    from common.retry import failure_advice, failure_text, worded

    urls = [a for a in argv if "://" in a] or ["its remote store"]
    words = itertools.takewhile(lambda a: re.fullmatch(r"[a-z][a-z-]*", a) is not None, argv)
    name = " ".join(list(words)[:2]) or "cli.py"
    after = command.after_a_stopped_write() if command is not None else NOTHING_LEFT
    failed = f"a request to {', '.join(urls)} failed"
    # a timeout or a malformed reply in words, without its type (failure_text)
    failed += f": {failure_text(error)}" if worded(error) else f" ({failure_text(error)})"
    return (
        f"{name}: {failed}; "
        f"{failure_advice(error, '--storage-options, $DPSEG_STORAGE_OPTIONS')}; {after}"
    )


LIGHTNING_OUTPUTS = ("--trainer.default_root_dir", "--model.results_dir")
"""The command-line options that say where a Lightning run writes (else runs/ and results/)."""


def _option_value(argv: list[str], option: str) -> str | None:
    """The last value ``argv`` gives ``option`` (``--x v`` or ``--x=v``), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
    return value


def _link_fault(error: BaseException) -> str | None:
    """What is wrong when the path an OSError names, or a folder above it, is a symbolic link
    that loops or points nowhere (``--out self`` linked to itself); None when none is."""
    name = getattr(error, "filename", None)
    return broken_link(name) if isinstance(name, str) else None


def _stdout_is_open() -> bool:
    """False once the reader of stdout has gone (the write end of a pipe then polls POLLERR)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return not any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows) or no stdout: assume it is
        return True


def _one_line(message: str, status: int) -> int:
    # one write: the lines of several ranks stay whole; a newline or control character inside
    # the message (a path that holds one, found by a probe) is escaped, never a line break
    sys.stderr.write(printable(message) + "\n")
    sys.stderr.flush()
    return status


if __name__ == "__main__":
    sys.exit(main(script=True))
