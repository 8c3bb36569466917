"""``--config`` files read as their author meant: UTF-8 YAML, or one line naming the file.

Every command (cli.py's own and LightningCLI's) reads its ``--config`` files here first, before
jsonargparse parses them: a file that is not UTF-8 or not YAML ends in one user error
(common/errors.py) rather than jsonargparse's usage text and parser message.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from common.errors import SettingError, UnreadableFileError, one_line

MAX_CONFIG_VALUES = 100_000
"""(ours) The most values a ``--config`` file may hold once its YAML aliases are expanded: a
config has hundreds; a file of nested aliases (a "billion laughs") has billions, and the
parsers that copy it ran out of memory without a word."""


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping that names a key twice (invalid YAML 1.2; PyYAML keeps the last silently)."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (ours; a probe found a
    config with two ``vocab`` lines building a one-class bank without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:  # the mapping's own keys: a merged one (<<) may be set
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key is None:  # `null: 3` or `: 3` (a probe: "Key must be a string, got: None")
                raise DuplicateKeyError(
                    None,
                    None,
                    "a key is empty (null); give the setting's name",
                    key_node.start_mark,
                )
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            seen.setdefault(key, key_node.start_mark.line + 1)
            if first is not None:
                raise DuplicateKeyError(
                    None,
                    None,
                    f"the key {key!r} is given twice ("
                    + (
                        f"lines {first} and {line}"
                        if (line := key_node.start_mark.line + 1) != first
                        else f"on line {line}"
                    )
                    + "); keep one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _expanded_size(loaded, limit: int) -> int:
    """How many values ``loaded`` holds with every alias expanded, counted up to ``limit`` + 1
    (a shared list or mapping counts each time it is reached)."""
    count, stack = 0, [loaded]
    while stack and count <= limit:
        value = stack.pop()
        count += 1
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return count


def read_config(path: str, option: str = "--config"):
    """A ``--config`` file's YAML; one user error naming ``option`` when it is not UTF-8, not
    YAML (a key given twice in one mapping included), or holds more than :data:`MAX_CONFIG_VALUES` values once its aliases are expanded."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        loaded = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no Python objects
    except UnicodeDecodeError as e:
        raise UnreadableFileError(
            f"{option} {path!r}: not UTF-8 text ({e.reason}: byte 0x{e.object[e.start]:02x} at "
            f"offset {e.start}); save it as UTF-8"
        ) from None
    except RecursionError:  # PyYAML's composer recurses once per level
        raise UnreadableFileError(
            f"{option} {path!r}: nested too deeply to be read (a file made to exhaust the "
            "parser?); write the settings out at an ordinary depth"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or one_line(e)
        raise UnreadableFileError(
            f"{option} {path!r}: not valid YAML{where} ({one_line(problem)}); fix the file"
        ) from None
    if _expanded_size(loaded, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
        raise UnreadableFileError(
            f"{option} {path!r}: its YAML aliases expand to more than {MAX_CONFIG_VALUES} values "
            "(a file made to exhaust memory?); write the settings out without nested aliases"
        )
    return loaded


def config_values(argv: list[str]) -> list[str]:
    """Every value of ``--config`` (``-c``) in ``argv``: a path, or inline YAML."""
    values = []
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg in ("--config", "-c") and i + 1 < len(argv) else None
        value = arg.split("=", 1)[1] if arg.startswith("--config=") else value
        if value is not None:
            values.append(value)
    return values


def config_files(argv: list[str]) -> list[str]:
    """The ``--config`` files ``argv`` names that exist."""
    return [value for value in config_values(argv) if Path(value).is_file()]


def check_config_files(argv: list[str]) -> None:
    """Every ``--config`` of ``argv`` checked first: a path that is no regular file (a folder,
    a pipe, which jsonargparse would wait on forever, a device) or that does not exist (unless
    the value is inline YAML settings, which jsonargparse also takes) is one user error; each
    file is read (``read_config``). jsonargparse parses them afterwards."""
    for value in config_values(argv):
        path = Path(value)
        if path.exists() and not path.is_file():
            raise UnreadableFileError(
                f"--config {value!r}: not a regular file (a folder, pipe or device); give a "
                "YAML file"
            )
        if not path.exists() and not _inline_settings(value):
            raise FileNotFoundError(
                f"--config {value!r}: no such file; give a YAML file of settings (or inline "
                "YAML settings, '{name: value, ...}')"
            )
    for path in config_files(argv):
        read_config(path)


def _inline_settings(value: str) -> bool:
    """Whether a ``--config`` value that names no file is inline YAML settings (a mapping)."""
    try:
        return isinstance(yaml.safe_load(value), dict)
    except yaml.YAMLError:
        return False


def _keys(settings: dict, prefix: str = "") -> list[str]:
    """Every key of nested ``settings`` as a dotted path (``trainer``, ``trainer.max_steps``)."""
    keys = []
    for key, value in settings.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys += _keys(value, f"{prefix}{key}.")
    return keys


def config_file_at_fault(argv: list[str], message: str) -> str | None:
    """The ``--config`` file that jsonargparse's parse error ``message`` is about: the last one
    that is not a mapping (``Unexpected config``) or that sets a key the message names (at any
    depth, dotted: ``trainer.max_stepz``); None for a mistake on the command line itself."""
    for path in reversed(config_files(argv)):
        settings = read_config(path)
        if not isinstance(settings, dict):
            return path
        if any(f'"{key}"' in message or f"'{key}'" in message for key in _keys(settings)):
            return path
    return None


def short_parse_error(message: str) -> str:
    """jsonargparse's nested parse error (``Parser key "model": ... Parser key "optim": ...
    Option 'lrr' is not accepted``, twenty lines) as one phrase: the setting's dotted path and
    the innermost reason (``model.optim: Option 'lrr' is not accepted``); the message on one
    line when it has no such reason."""
    reason = re.search(r"(Option '[^']+' is not accepted|does not accept option '[^']+')", message)
    if reason is None:
        return one_line(message)
    keys = re.findall(r'Parser key "([^"]+)"', message[: reason.start()])
    return f"{'.'.join(keys)}: {reason.group(1)}" if keys else reason.group(1)


_TYPE_NAMES = {"int": "an integer", "float": "a number", "str": "text", "bool": "true or false"}


def option_type_error(
    argv: list[str], command: str, message: str, given_only: bool = False
) -> SettingError | None:
    """jsonargparse's error for an option value of the wrong type (``Parser key "batch_size":
    Does not validate ... Given value: abc``, ten lines after the usage) as one line naming the
    option, the value and what it takes; None for any other error. A nested setting's keys
    (``Parser key "model": ... Parser key "optim": ... Parser key "lr"``) name the dotted
    option (``--model.optim.lr``) where the command line gave it; ``given_only``: None where it
    did not (the value came from a --config file)."""
    key = re.match(r'Parser key "([^"]+)"', message)
    given = re.search(r"(?:Given|Got) value: (.*)", message)
    if key is None or given is None:
        return None
    name = key.group(1)
    dotted = ".".join(re.findall(r'Parser key "([^"]+)"', message[: given.start()]))
    for candidate in (dotted, name):
        spellings = [f"--{candidate}", f"--{candidate.replace('_', '-')}"]
        option = next((a for a in argv for s in spellings if a == s or a.startswith(s + "=")), None)
        if option is not None:
            break
    if option is None and given_only:
        return None
    option = (option or f"--{name.replace('_', '-')}").split("=")[0]
    wanted = []
    for kind in re.findall(r"Expected a (typing\.Literal\[[^\]]*\]|<class '(\w+)'>)", message):
        literal, cls = kind
        if cls == "NoneType":
            continue
        if literal.startswith("typing.Literal"):
            wanted.append("one of " + literal[len("typing.Literal[") : -1])
        else:
            wanted.append(_TYPE_NAMES.get(cls, cls))
    if given.group(1).strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        wanted = ["a finite number" if w == "a number" else w for w in wanted]
    expected = " or ".join(dict.fromkeys(wanted)) or "another value"
    return SettingError(
        f"{option} {given.group(1).strip()!r}: expected {expected} (cli.py {command} --help "
        "lists the options)"
    )


def config_file_error(argv: list[str], command: str, message: str) -> UnreadableFileError | None:
    """The one-line error for a parse error ``message`` of ``cli.py COMMAND`` that a ``--config``
    file of ``argv`` caused (a setting it may not have); None for a mistake on the command line
    (argparse's usage and message then)."""
    file = config_file_at_fault(argv, message)
    if file is None:
        return None
    settings = read_config(file)
    if not isinstance(settings, dict):  # jsonargparse's "Unexpected config:"
        what = (
            "is empty"
            if settings is None
            else f"holds {type(settings).__name__} {one_line(repr(settings))[:60]}"
        )
        return UnreadableFileError(
            f"--config {file!r} {what}, not a mapping of settings: write each as `key: value` "
            f"(cli.py {command} --help lists the settings it takes)"
        )
    return UnreadableFileError(
        f"--config {file!r}: {short_parse_error(message)}; fix the file (cli.py {command} "
        "--help lists the settings it takes)"
    )
