"""``vocab``: the known vocabularies, or the classes of one."""

from __future__ import annotations

import argparse
import json

from commands.options import Command


def cmd_vocab(args: argparse.Namespace) -> None:
    """List known vocabularies, or show one (name, file or inline list)."""
    from data.vocabulary import list_vocabularies, load_vocabulary, vocab_dir

    if args.spec is None:
        from data.vocabulary import VocabularyError

        known = list_vocabularies()
        problems = {}
        for name, source in known.items():
            if not source.startswith("builtin:"):  # a file of the vocabulary dir: read it
                try:
                    load_vocabulary(source)
                except VocabularyError as e:
                    problems[name] = str(e)
        if args.json:
            print(
                json.dumps(
                    {n: {"source": s, "error": problems.get(n)} for n, s in known.items()}, indent=2
                )
            )
            return
        for name, source in known.items():
            flag = f"  INVALID: {problems[name]}" if name in problems else ""
            print(f"{name:12s} {source}{flag}")
        print(f"(more: put NAME.json or NAME.txt in {str(vocab_dir())!r}, or set DPSEG_VOCAB_DIR)")
        return
    vocab = load_vocabulary(args.spec, allow_duplicates=args.allow_duplicate_classes)
    if args.json:
        print(json.dumps({"name": vocab.name, "source": vocab.source, "classes": vocab.entries}))
        return
    print(f"{vocab.name}: {len(vocab)} classes ({vocab.source})")
    for i, c in enumerate(vocab):
        print(f"{i:5d}  {c}")


def _vocab_options(p) -> None:
    p.add_argument(
        "spec",
        nargs="?",
        help="a name, a .json/.txt file, 'cat, kitty; dog', or one class: 'cat', 'car/truck' "
        "(a word with a digit or _ is taken as a name; 'toys;' forces a class)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--allow-duplicate-classes", action="store_true", help="accept exactly repeated entries"
    )


COMMANDS = {"vocab": Command("list vocabularies, or show one", _vocab_options, cmd_vocab)}
