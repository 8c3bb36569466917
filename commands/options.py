"""What every command module shares: the :class:`Command` record, options made from a settings
dataclass's fields (their comments as help), ``--config FILE.yaml``, lazy imports, our logging.

Every command but LightningCLI's four is a jsonargparse parser in one tree (``cli.build_parser``).
Where a command runs a settings dataclass (BuildConfig, SelectionConfig, PretrainConfig) its
options are that dataclass's fields, added by :func:`add_fields`: ``--field-name``, the field's
type and default, and as help the comment the field carries in its class. Where the user types
strings that become objects (a vocabulary, templates) a small *Options dataclass in the command's
module documents them.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable

ROOT_HELP = "datasets root (default $DETECTRON2_DATASETS or ./datasets)"


@dataclasses.dataclass
class Command:
    """One command: its help line, what adds its options, what runs it, its subcommands."""

    help: str
    options: Callable | None = None  # options(parser): adds the options (only when it is chosen)
    run: Callable | None = None  # run(args) -> exit status (None: 0); None: a group
    subcommands: dict[str, Command] = dataclasses.field(default_factory=dict)
    description: str | None = None  # the -h text (default: help)
    keeps_finished_work: bool = False  # items are written one by one and a rerun goes on: what
    # a storage error (a full disk) then tells the user; else nothing partial is left
    leaves: str | None = None  # what a stopped write leaves, where neither of those is true (a
    # push: part of the upload at the URL, common.signals.PUSH_CUT)

    def after_a_stopped_write(self) -> str:
        """What a storage error's line says the stopped run left."""
        from common.errors import KEPT, NOTHING_LEFT

        return self.leaves or (KEPT if self.keeps_finished_work else NOTHING_LEFT)


def field_docs(cls) -> dict[str, str]:
    """Each dataclass field's comment: ``name: type = default  # what it is``, continued on the
    comment-only lines right below it (``# fmt:`` directives are no documentation)."""
    import inspect
    import io
    import re
    import textwrap
    import tokenize

    source = textwrap.dedent(inspect.getsource(cls))
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT and not token.string.lstrip("# ").startswith("fmt:")
    }
    names = {f.name for f in dataclasses.fields(cls)}
    docs: dict[str, str] = {}
    current = None
    for number, line in enumerate(source.splitlines(), 1):
        field = re.match(r" {4}(\w+)\s*:", line)
        if field and field.group(1) in names:
            current = field.group(1) if number in comments else None
            if current:
                docs[current] = comments[number]
        elif current and line.lstrip().startswith("#") and number in comments:
            docs[current] += " " + comments[number]
        else:
            current = None
    return docs


def add_fields(
    parser, cls, skip=(), overrides: dict | None = None, unset: str = "", group: str | None = None
) -> None:
    """One option per field of the dataclass ``cls`` (but ``skip``): ``--field-name``, typed,
    with the field's default, and its comment as help. ``overrides[field]``: add_argument keywords
    that add to or replace these (choices, a metavar, a help where the class has none).
    ``unset``: every option defaults to None, "not given", and its help says what then applies
    (``unset`` and the field's own default), for settings another default can decide. ``group``:
    the title under which ``-h`` lists them."""
    import typing

    if group is not None:
        parser = parser.add_argument_group(group)
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        kwargs: dict = {"help": docs.get(f.name, "")}
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if unset:
            kwargs.update(type=kind | None, default=None)
            kwargs["help"] += f" (not given: {unset} {default})"
        elif kind is bool and default is False:
            kwargs["action"] = "store_true"
        elif default is dataclasses.MISSING:
            kwargs.update(type=kind, required=True)
        else:
            kwargs.update(type=kind, default=default)
        extra = (overrides or {}).get(f.name, {})
        if "choices" in extra:  # the choices are strings: no type (Literal, str | None) to apply
            kwargs.pop("type", None)
        kwargs.update(extra)
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def config_from(cls, args, **values):
    """An instance of the dataclass ``cls`` from the parsed options named after its fields (those
    given: an option left None keeps the field's default), ``values`` on top."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }
    return cls(**{**given, **values})


def config_file(parser) -> None:
    """``--config FILE.yaml``: the command's options from a YAML file (``--print_config`` writes
    one); options given after it override it."""
    from jsonargparse import ActionConfigFile

    parser.add_argument(
        "--config",
        action=ActionConfigFile,
        help="a YAML file of these options, keys spelled with underscores (images_per_prompt: 2); "
        "options after it override it; --print_config prints one",
    )


def lazy(module: str, name: str) -> Callable:
    """``module.name``, imported when first called (a command's options or its run)."""

    def call(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    return call


class StderrHandler(logging.StreamHandler):
    """A log handler that writes to ``sys.stderr`` as it is at each message, not as it was when
    the handler was made (a caller of ``cli.main``, or a test, may have replaced it since)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it: sys.stderr is read instead
        pass


def log_ours(quiet: bool = False) -> None:
    """Our modules' info messages on stderr (with ``quiet``, as ``--quiet``: warnings only);
    other libraries' only from warnings up."""
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for ours in ("model", "data", "prompt_bank", "pretrained"):
        logger = logging.getLogger(ours)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.propagate = False  # Lightning's root handler would print it again
        logger.setLevel(logging.WARNING if quiet else logging.INFO)


def add_storage_option(p) -> None:
    """``--storage-options JSON``: fsspec options for the URLs a command reads or writes."""
    p.add_argument(
        "--storage-options",
        metavar="JSON",
        help="fsspec storage options for URLs, as a JSON object (default: $DPSEG_STORAGE_OPTIONS; "
        "credentials come from the filesystem's usual places)",
    )


def pull_target(args) -> str | None:
    """A pull's ``--to`` (None: the cache). An empty one is refused: it read as "not given", and
    the pull went to the cache unasked (found by a probe)."""
    from common.errors import SettingError

    if args.to is not None and not args.to.strip():
        raise SettingError(
            f"--to {args.to!r}: give a folder, or leave --to out to pull into the cache"
        )
    return args.to


def storage_options(args) -> dict | None:
    """The parsed ``--storage-options`` (None: not given, the environment's apply)."""
    from prompt_bank.store import parse_storage_options

    raw = getattr(args, "storage_options", None)
    return None if raw is None else parse_storage_options(raw, "--storage-options")
