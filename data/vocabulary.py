"""Vocabularies: ordered class lists with synonyms (canonical name first).

Two on-disk formats are in use in the field and both are read here:

- JSON (CAT-Seg / SED ``datasets/*.json``): a list of strings, synonyms comma-separated,
  e.g. ``["wall", "building, edifice", ...]``.
- Text (SCLIP / VIP ``cls_*.txt``): one class per line, aliases comma-separated; lines that
  start with ``#`` are comments.

A vocabulary is resolved by :func:`load_vocabulary` (which spells out the rule) from, in order:
an existing ``.json`` or ``.txt`` file; an inline list (``"cat, kitty; dog; grass"``: classes
separated by ``;``); a built-in name (``voc20``, ``voc20b``, ``pc59``, ``ade150``, ``coco171``,
``synthetic``, and with background as class 0 ``voc21``, ``pc60``, ``coco_object``;
``cityscapes``; the remote-sensing ``potsdam``, ``vaihingen``, ``isaid``, ``vdd``); a file
``<name>.json`` / ``<name>.txt`` in the vocabulary directory (``$DPSEG_VOCAB_DIR``, default
``./vocab``), where users drop lists we do not ship (``ade847``, ``pc459``); else, unless it looks
like a vocabulary's name, a single class (``"cat"``, ``"car/truck"``).

Duplicate canonical names with different synonyms are allowed (ADE-847 has ten, e.g. ``"pot"`` and
``"pot, flowerpot"``): their synonym averages differ. An entry repeated exactly is refused by
default, because two identical prompts give identical logits and the second class can never win
an argmax (VIP's ``cls_ade20k.txt`` has ``shower`` twice); ``allow_duplicates=True`` accepts it.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from common.errors import UserError

log = logging.getLogger(__name__)

BUILTIN_VOCABULARIES = (
    "voc20",
    "voc20b",
    "pc59",
    "ade150",
    "coco171",
    "synthetic",
    # the toy world (data.toy_world): all classes, the seen ones, and every class's aliases
    "toy",
    "toy_seen",
    "toy_aliases",
    # the mmsegmentation-layout benchmarks, background first (data.catalog)
    "voc21",
    "pc60",
    "coco_object",
    "cityscapes",
    # the remote-sensing benchmarks of VIP (data.catalog), in mmseg's label order
    "potsdam",
    "vaihingen",
    "isaid",
    "vdd",
)
"""Shipped with the package (``data/vocabularies/<name>.txt``)."""

VOCAB_DIR_ENV = "DPSEG_VOCAB_DIR"
MAX_FILE_BYTES = 16_000_000
"""(ours) The largest vocabulary file read: ade847's is 20 kB, LVIS's with synonyms about 100 kB;
a 3 GB file was read whole (about 9 bytes of memory per byte) before any check (a probe)."""
MAX_CLASSES = 100_000
"""(ours) The most classes a vocabulary may hold (ImageNet-21k has 21,841)."""
MAX_ENTRY = 1000
"""The longest vocabulary entry, in characters (ours: the longest of the reference lists, VIP's
VOC-21 aliases, is 465; a name is encoded into every template's prompt and kept in the bank's
zarr.json)."""
DEFAULT_VOCAB_DIR = "vocab"


class VocabularyError(UserError, ValueError):
    """A vocabulary could not be resolved or is malformed; the message says how to fix it."""


@dataclass(frozen=True)
class ClassName:
    """One class: its synonyms, canonical name first (the one that goes to Stable Diffusion)."""

    synonyms: tuple[str, ...]

    @property
    def name(self) -> str:
        """The canonical name."""
        return self.synonyms[0]

    def __str__(self) -> str:
        return ", ".join(self.synonyms)


@dataclass(frozen=True)
class Vocabulary:
    """An ordered list of K classes; the index of a class is its label id."""

    name: str  # a built-in name, a file stem, or "inline"
    classes: tuple[ClassName, ...]
    source: str = ""  # where it was read from (file path or "builtin:<name>")

    def __post_init__(self) -> None:
        if not self.classes:
            raise VocabularyError(
                f"vocabulary {self.name!r} ({self.source or 'no source'}) has no classes; "
                "give at least one class (one per line, or one string per JSON entry)"
            )

    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self):
        return iter(self.classes)

    def __getitem__(self, index: int) -> ClassName:
        return self.classes[index]

    @property
    def names(self) -> list[str]:
        """Canonical names, one per class."""
        return [c.name for c in self.classes]

    @property
    def entries(self) -> list[str]:
        """Each class as its comma-separated synonym string (the JSON format's entries)."""
        return [str(c) for c in self.classes]

    def to_json(self) -> str:
        return json.dumps(self.entries, ensure_ascii=False)

    def to_text(self) -> str:
        return "\n".join(self.entries) + "\n"

    @classmethod
    def from_entries(
        cls,
        entries: list[str],
        name: str = "inline",
        source: str = "",
        allow_duplicates: bool = False,
        separator: str = ",",
    ) -> Vocabulary:
        """Build from entries like ``"building, edifice"``; ``source`` is used in errors;
        ``separator`` splits an entry into synonyms (VIP's reference splits its alias files on
        ``", "``, so that ``"farmland,forest area"`` is one alias there)."""
        where = source or name
        classes = []
        first_seen: dict[tuple[str, ...], int] = {}
        if len(entries) > MAX_CLASSES:
            raise VocabularyError(
                f"{where}: {len(entries)} classes, more than the {MAX_CLASSES} a vocabulary may "
                "hold; give a list of class names"
            )
        for i, entry in enumerate(entries, start=1):
            if not isinstance(entry, str):
                raise VocabularyError(
                    f"{where}: entry {i} is {entry!r} ({type(entry).__name__}); "
                    "each class must be a string of comma-separated synonyms"
                )
            undecodable = [c for c in entry if "\udc80" <= c <= "\udcff"]
            if undecodable:  # bytes that are not UTF-8, kept by Python as surrogates
                raise VocabularyError(
                    f"{where}: entry {i} ({entry[:40].encode('utf-8', 'surrogateescape')!r}) "
                    f"holds the byte 0x{ord(undecodable[0]) - 0xDC00:02x}, which is not UTF-8 "
                    "text; type class names in UTF-8"
                )
            control = [c for c in entry.strip() if c < " " and c != "\t"]
            if len(entry) > MAX_ENTRY or control:
                raise VocabularyError(
                    f"{where}: entry {i} ({entry[:40]!r}{'...' if len(entry) > 40 else ''}) "
                    + (
                        f"is {len(entry)} characters long, more than {MAX_ENTRY}"
                        if len(entry) > MAX_ENTRY
                        else f"holds a control character ({control[0]!r})"
                    )
                    + "; give class names as plain text, one class per entry"
                )
            if not entry.strip():
                raise VocabularyError(
                    f"{where}: entry {i} ({entry!r}) is empty; remove it or give a class name"
                )
            parts = [s.strip() for s in entry.split(separator)]
            if not parts[0]:
                raise VocabularyError(
                    f"{where}: entry {i} ({entry!r}) has a blank class name before the first "
                    f"{separator.strip()!r}; remove the leading {separator.strip()!r} or put the "
                    "class name first"
                )
            # A stray trailing comma ("marble floor, marble flooring, " in VIP's COCO-Stuff
            # file) adds an empty synonym: dropped, since an empty prompt would be encoded.
            synonyms = tuple(s for s in parts if s)
            key = tuple(dict.fromkeys(s.casefold() for s in synonyms))  # a repeated synonym
            # adds no prompt of its own ('red disc, red disc' is 'red disc'; found by a probe)
            if key in first_seen and not allow_duplicates:
                raise VocabularyError(
                    f"{where}: entry {i} ({entry!r}) repeats entry {first_seen[key]}; two "
                    "identical prompts give identical scores, so the second class can never be "
                    "predicted. Rename or remove one (or give it a synonym that tells them "
                    "apart); to keep the list as it is: cli.py vocab and bank build take "
                    "--allow-duplicate-classes, a VIP config model.allow_duplicate_classes: "
                    "true, Python allow_duplicates=True"
                )
            first_seen.setdefault(key, i)
            classes.append(ClassName(synonyms))
        return cls(name=name, classes=tuple(classes), source=source)


def read_vocabulary_file(
    path: str | os.PathLike, allow_duplicates: bool = False, separator: str = ","
) -> Vocabulary:
    """Read a ``.json`` list (CAT-Seg format) or a text file with one class per line."""
    path = Path(path)
    with contextlib.suppress(OSError):  # an unreadable file is named below
        size = path.stat().st_size
        if path.is_file() and size > MAX_FILE_BYTES:  # read whole, it was gigabytes of memory
            raise VocabularyError(
                f"vocabulary file {str(path)!r} is {size / 1e6:.0f} MB, more than the "
                f"{MAX_FILE_BYTES // 1_000_000} MB a vocabulary may take (ade847's is 20 kB); "
                "give a file of class names, one per line"
            )
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte order mark (Windows editors) goes
    except OSError as e:
        raise VocabularyError(f"cannot read vocabulary file {str(path)!r}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise VocabularyError(
            f"vocabulary file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})"
        ) from e
    if path.suffix.lower() == ".json":
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as e:
            raise VocabularyError(
                f"vocabulary file {str(path)!r} is not valid JSON (line {e.lineno}: {e.msg}); "
                'expected a list of strings like ["wall", "building, edifice"]'
            ) from e
        if not isinstance(entries, list):
            raise VocabularyError(
                f"vocabulary file {str(path)!r} holds a JSON {type(entries).__name__}; "
                'expected a list of strings like ["wall", "building, edifice"]'
            )
    else:
        # Text format: one class per line; blank lines separate groups and are skipped (ours:
        # a class is never blank). Lines starting with "#" are comments (the scores of
        # `cli.py vip select-aliases`).
        entries = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        for number, line in enumerate(text.splitlines(), start=1):
            if ";" in line and not line.lstrip().startswith("#"):
                # an inline list pasted into a file would silently become one class
                raise VocabularyError(
                    f"vocabulary file {str(path)!r}: line {number} ({line[:40]!r}"
                    f"{'...' if len(line) > 40 else ''}) holds ';'; a .txt file takes one class "
                    "per line (',' between synonyms) and ';' separates classes only in an inline "
                    "list: put each class on a line of its own"
                )
    return Vocabulary.from_entries(
        entries,
        name=path.stem,
        source=str(path),
        allow_duplicates=allow_duplicates,
        separator=separator,
    )


def vocab_dir() -> Path:
    """The directory searched for vocabularies that are not built in."""
    return Path(os.environ.get(VOCAB_DIR_ENV, DEFAULT_VOCAB_DIR))


def _builtin_path(name: str):
    return resources.files("data") / "vocabularies" / f"{name}.txt"


def list_vocabularies() -> dict[str, str]:
    """Known vocabulary names and where each comes from (built-ins, then the vocabulary dir)."""
    known = {name: f"builtin:{name}" for name in BUILTIN_VOCABULARIES}
    directory = vocab_dir()
    if directory.is_dir():
        for p in sorted(directory.iterdir()):
            if p.suffix.lower() in (".json", ".txt") and p.stem not in known:
                known[p.stem] = str(p)
    return known


def load_vocabulary(
    spec: str | os.PathLike | Vocabulary, allow_duplicates: bool = False, separator: str = ","
):
    """Resolve a vocabulary from a file, an inline list, a name, or a single class.

    ``spec`` is read by the first rule that applies:

    1. an existing file named with a ``.json``/``.txt`` suffix or a path separator
       (``./classes.csv``): a JSON list, or one class per line;
    2. text with a ``;``: an inline list, ``;`` between classes and ``,`` between synonyms
       (``"cat, kitty; dog; traffic light/signal"``); a trailing ``;`` is allowed, so ``"toys;"``
       is a list of one class;
    3. a ``.json``/``.txt`` name, or a path whose folder exists (``vocab/mine``): a file that
       does not exist, an error;
    4. a known name: built-in, or ``<name>.json``/``.txt`` in the vocabulary directory;
    5. something that looks like a vocabulary name (a word with a digit or ``_``, such as
       ``ade847``, or close to a known name, such as ``ade15O``): an unknown vocabulary, an error
       that says what was meant and how to add it;
    6. anything else is ONE class, its synonyms separated by ``,``: ``"cat"``,
       ``"cat, kitty"``, ``"traffic light"``, ``"car/truck"`` (a ``/`` that names no file).

    Args:
        spec: as above.
        allow_duplicates: accept exactly repeated entries (see the module docstring).
        separator: what splits a file's or a built-in's entry into synonyms (``,``; VIP's alias
            files: ``", "``, as its reference reads them). Inline lists always use ``,``.
    """
    if isinstance(spec, Vocabulary):
        return spec
    text = str(spec)
    path = Path(text)
    has_separator = "/" in text or os.sep in text
    is_json_or_txt = path.suffix.lower() in (".json", ".txt")
    if (is_json_or_txt or has_separator) and path.is_file():
        return read_vocabulary_file(path, allow_duplicates, separator)
    if not text.strip():
        raise VocabularyError(
            f"vocabulary {text!r} is empty; give a name (cli.py vocab lists them), a .json/.txt "
            "file or classes like 'cat, kitty; dog'"
        )
    if ";" in text:
        entries = text.split(";")
        if len(entries) > 1 and not entries[-1].strip():  # "toys;": a list of one class
            entries = entries[:-1]
        if not any(e.strip() for e in entries):
            raise VocabularyError(
                f"vocabulary {text!r} is an empty list: it holds only ';' separators and no class "
                "name; give classes like 'cat, kitty; dog'"
            )
        for i, entry in enumerate(entries, start=1):
            if not entry.strip():
                where = "before the first ';'" if i == 1 else "between two ';' separators"
                raise VocabularyError(
                    f"inline list {text!r}: entry {i} is empty (nothing {where}); remove the "
                    "extra ';' or put a class name there"
                )
        return Vocabulary.from_entries(
            entries, name="inline", source="inline list", allow_duplicates=allow_duplicates
        )
    if (is_json_or_txt or has_separator) and path.is_dir():
        raise VocabularyError(
            f"vocabulary {text!r} is a folder, not a file; give a .json/.txt file (such as one "
            "in it), a name (cli.py vocab lists them) or classes like 'cat, kitty; dog'"
        )
    if (is_json_or_txt or has_separator) and os.path.lexists(path):  # a pipe, a looping link
        raise VocabularyError(
            f"vocabulary file {text!r} is not a regular file (a pipe, device or a link that "
            "cannot be followed); give a .json/.txt file, a name (cli.py vocab lists them) or "
            "classes like 'cat, kitty; dog'"
        )
    if is_json_or_txt or (has_separator and path.parent.is_dir()):
        raise VocabularyError(
            f"vocabulary file {text!r} does not exist; give an existing .json/.txt file, a "
            "name (cli.py vocab lists them) or classes like 'cat, kitty; dog'"
        )
    if text in BUILTIN_VOCABULARIES:
        entries = _builtin_path(text).read_text(encoding="utf-8").splitlines()
        return Vocabulary.from_entries(
            entries,
            name=text,
            source=f"builtin:{text}",
            allow_duplicates=allow_duplicates,
            separator=separator,
        )
    directory = vocab_dir()
    for suffix in (".json", ".txt"):
        candidate = directory / f"{text}{suffix}"
        if candidate.is_file():
            vocab = read_vocabulary_file(candidate, allow_duplicates, separator)
            return Vocabulary(name=text, classes=vocab.classes, source=vocab.source)
        if os.path.lexists(candidate):  # a link to a device or nowhere, a folder, a pipe: named
            raise VocabularyError(  # (a probe: "unknown vocabulary 'zero'; did you mean zero?")
                f"vocabulary {text!r}: {str(candidate)!r} is not a regular file (a folder, pipe, "
                "device, or a link that cannot be followed); put the class list there as a file"
            )
    known = list_vocabularies()
    close = difflib.get_close_matches(text.casefold(), list(known), n=1, cutoff=0.8)
    if close or _looks_like_a_name(text):
        meant = f"; did you mean {close[0]}?" if close else "."
        raise VocabularyError(
            f"unknown vocabulary {text!r}{meant} Known: {', '.join(known)}. To add one, put "
            f"{text}.json (a JSON list of class strings, CAT-Seg format) or {text}.txt (one "
            f"class per line, synonyms comma-separated) in {str(directory)!r} (set "
            f"${VOCAB_DIR_ENV} to use another directory), or pass a file path or an inline list "
            f"like 'cat, kitty; dog; grass' (one class named {text!r}: '{text};')"
        )
    if os.path.lexists(text):  # `--vocab classes` beside a file named classes: say which is read
        log.warning(
            "vocabulary %r is read as ONE class named so; to read the file of that name, give ./%s",
            text,
            text,
        )
    return Vocabulary.from_entries(
        [text], name="inline", source="inline class", allow_duplicates=allow_duplicates
    )


def _looks_like_a_name(text: str) -> bool:
    """A word with a digit or an underscore (``ade847``, ``coco_stuff``): a vocabulary's name,
    not a class (classes are words and spaces: ``traffic light``)."""
    return re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", text) is not None and any(
        c.isdigit() or c == "_" for c in text
    )


def match_entries(entries: list[str], vocabulary: Vocabulary) -> list[int | None]:
    """For each class of `vocabulary`, the index of the entry (``"name, synonym"`` strings, e.g.
    a bank's classes) that stands for it, or None.

    Tried in order: the same full entry; the same canonical name; a synonym of one that is a
    synonym of the other, when exactly one entry qualifies (case-insensitive). Where an entry
    appears twice (ADE-847's two "pot"s), the first wins. So an ADE-847 bank serves ADE-150 or
    PASCAL-Context classes whose names ADE-847 spells the same or lists as synonyms.
    """
    by_entry: dict[str, int] = {}
    by_name: dict[str, int] = {}
    by_synonym: dict[str, set[int]] = {}
    for i, entry in enumerate(entries):
        synonyms = [s.strip().casefold() for s in entry.split(",") if s.strip()]
        by_entry.setdefault(entry, i)
        if synonyms:
            by_name.setdefault(synonyms[0], i)
        for s in synonyms:
            by_synonym.setdefault(s, set()).add(i)
    out: list[int | None] = []
    for c in vocabulary:
        found = by_entry.get(str(c), by_name.get(c.name.casefold()))
        if found is None:
            candidates = set().union(*(by_synonym.get(s.casefold(), set()) for s in c.synonyms))
            found = next(iter(candidates)) if len(candidates) == 1 else None
        out.append(found)
    return out
