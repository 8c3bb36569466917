import json

import pytest
from conftest import run_cli

from data.synthetic import synthetic_class_names
from data.vocabulary import (
    BUILTIN_VOCABULARIES,
    Vocabulary,
    VocabularyError,
    load_vocabulary,
    read_vocabulary_file,
)

# Built-in name -> the CAT-Seg reference list it must equal (docs/design.md §5).
CATSEG_FILES = {
    "voc20": "voc20",
    "voc20b": "voc20b",
    "pc59": "pc59",
    "ade150": "ade150",
    "coco171": "coco",
}
SIZES = {
    "voc20": 20,
    "voc20b": 59,
    "pc59": 59,
    "ade150": 150,
    "coco171": 171,
    "synthetic": 8,
    "voc21": 21,
    "pc60": 60,
    "coco_object": 81,
    "cityscapes": 19,
    "toy": 31,
    "toy_seen": 25,
    "toy_aliases": 31,
    "potsdam": 6,
    "vaihingen": 6,
    "isaid": 16,
    "vdd": 7,
}


@pytest.mark.parametrize("name", sorted(CATSEG_FILES))
def test_builtin_equals_catseg_reference(name, shared_vocab):
    reference = json.loads((shared_vocab / "catseg" / f"{CATSEG_FILES[name]}.json").read_text())
    vocab = load_vocabulary(name)
    assert vocab.entries == [", ".join(s.strip() for s in e.split(",")) for e in reference]
    assert len(vocab) == SIZES[name]


@pytest.mark.parametrize("name", BUILTIN_VOCABULARIES)
def test_builtin_sizes_and_canonical_names(name):
    vocab = load_vocabulary(name)
    assert len(vocab) == SIZES[name]
    assert vocab.source == f"builtin:{name}"
    assert all(n and n == n.strip() for n in vocab.names)


def test_synthetic_vocabulary_matches_generator():
    assert load_vocabulary("synthetic").names == synthetic_class_names()


def test_synonyms_canonical_first(shared_vocab):
    vocab = load_vocabulary(shared_vocab / "catseg" / "ade847.json")
    assert vocab[1].synonyms == ("building", "edifice")
    assert vocab[1].name == "building"
    assert vocab.names[:3] == ["wall", "building", "sky"]
    assert vocab.entries[1] == "building, edifice"


def test_every_shared_file_parses(shared_vocab):
    files = sorted(shared_vocab.glob("catseg/*.json")) + sorted(shared_vocab.glob("vip/*.txt"))
    assert len(files) == 19
    for path in files:
        # VIP's ADE file names two ADE classes "shower": accepted only when asked for.
        vocab = read_vocabulary_file(path, allow_duplicates=path.name == "cls_ade20k.txt")
        assert len(vocab) > 1, path
        assert all(s for c in vocab for s in c.synonyms), path
    sizes = {p.name: len(read_vocabulary_file(p, allow_duplicates=True)) for p in files}
    assert sizes["ade847.json"] == 847 and sizes["pc459.json"] == 459
    assert sizes["cls_ade20k.txt"] == 150 and sizes["cls_voc21.txt"] == 21
    # Unspaced commas ("background,other") split like spaced ones.
    assert read_vocabulary_file(shared_vocab / "vip" / "cls_iSAID.txt")[0].synonyms == (
        "background",
        "other",
    )


def test_exact_duplicate_refused_with_both_positions(shared_vocab):
    with pytest.raises(VocabularyError, match=r"entry 146 \('shower'\) repeats entry 59"):
        read_vocabulary_file(shared_vocab / "vip" / "cls_ade20k.txt")


def test_same_canonical_different_synonyms_allowed(shared_vocab):
    vocab = read_vocabulary_file(shared_vocab / "catseg" / "ade847.json")
    assert vocab.names.count("pot") == 2  # "pot" and "pot, flowerpot" are distinct ADE classes


def test_vocab_dir_resolves_user_lists(tmp_path, monkeypatch, shared_vocab):
    (tmp_path / "ade847.json").write_text((shared_vocab / "catseg" / "ade847.json").read_text())
    (tmp_path / "mine.txt").write_text("cat, kitty\ndog\n")
    monkeypatch.setenv("DPSEG_VOCAB_DIR", str(tmp_path))
    assert len(load_vocabulary("ade847")) == 847
    mine = load_vocabulary("mine")
    assert mine.name == "mine" and mine.entries == ["cat, kitty", "dog"]


def test_unknown_name_lists_known_and_how_to_add(tmp_path, monkeypatch):
    monkeypatch.setenv("DPSEG_VOCAB_DIR", str(tmp_path))
    with pytest.raises(VocabularyError) as err:
        load_vocabulary("pc459")
    message = str(err.value)
    assert "unknown vocabulary 'pc459'" in message
    assert "voc20, voc20b, pc59, ade150, coco171, synthetic" in message
    assert "pc459.json" in message and str(tmp_path) in message and "DPSEG_VOCAB_DIR" in message


def test_inline_list():
    vocab = load_vocabulary("cat, kitty; dog ;grass")
    assert vocab.entries == ["cat, kitty", "dog", "grass"]
    assert vocab.name == "inline"


def test_a_bare_word_naming_a_file_here_is_one_class_and_says_so(tmp_path, monkeypatch, caplog):
    """The probe's `--vocab fifo` beside a pipe named fifo: still one class (the documented
    rule), with a warning that says how to read the file instead."""
    import os

    monkeypatch.chdir(tmp_path)
    os.mkfifo("fifo")
    (tmp_path / "classes").write_text("cat\ndog\n")
    with caplog.at_level("WARNING", logger="data.vocabulary"):
        assert load_vocabulary("fifo").entries == ["fifo"]
        assert load_vocabulary("classes").entries == ["classes"]
        assert load_vocabulary("dog").entries == ["dog"]
    assert [r.getMessage() for r in caplog.records] == [
        f"vocabulary {name!r} is read as ONE class named so; to read the file of that name, "
        f"give ./{name}"
        for name in ("fifo", "classes")
    ]
    assert load_vocabulary("./classes").entries == ["cat", "dog"]


@pytest.mark.parametrize(
    ("content", "suffix", "match"),
    [
        ("", ".txt", "has no classes"),
        ("[]", ".json", "has no classes"),
        ("cat,, kitty\ncat, kitty\n", ".txt", r"entry 2 \('cat, kitty'\) repeats entry 1"),
        (" , cat\ndog\n", ".txt", r"entry 1 \(' , cat'\) has a blank class name"),
        ('["cat", "Cat"]', ".json", r"entry 2 \('Cat'\) repeats entry 1"),
        ('{"a": 1}', ".json", "holds a JSON dict; expected a list"),
        ('["cat", 3]', ".json", r"entry 2 is 3 \(int\)"),
        ("[cat", ".json", "is not valid JSON"),
    ],
)
def test_malformed_files(tmp_path, content, suffix, match):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(VocabularyError, match=match):
        load_vocabulary(path)


def test_missing_file():
    with pytest.raises(VocabularyError, match="does not exist"):
        load_vocabulary("no/such/file.json")


def test_trailing_newlines_tolerated(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("cat\ndog\n\n\n")
    assert load_vocabulary(path).names == ["cat", "dog"]


def test_round_trip_json_and_text(tmp_path):
    vocab = load_vocabulary("ade150")
    (tmp_path / "a.json").write_text(vocab.to_json())
    (tmp_path / "a.txt").write_text(vocab.to_text())
    assert load_vocabulary(tmp_path / "a.json").classes == vocab.classes
    assert load_vocabulary(tmp_path / "a.txt").classes == vocab.classes


def test_empty_vocabulary_object():
    with pytest.raises(VocabularyError, match="no classes"):
        Vocabulary(name="x", classes=())


def test_cli_vocab_show_and_unknown(tmp_path):
    shown = run_cli("vocab", "voc20", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["classes"][0] == "aeroplane"
    unknown = run_cli("vocab", "ade847", env={"DPSEG_VOCAB_DIR": str(tmp_path)})
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: unknown vocabulary 'ade847'")
    assert "Traceback" not in unknown.stderr


def test_blank_lines_and_a_byte_order_mark_are_read_as_meant(tmp_path):
    text = tmp_path / "classes.txt"
    text.write_bytes("\ufeffperson\n\n# animals\ncat, kitty\n\ndog\n".encode())
    assert load_vocabulary(text).entries == ["person", "cat, kitty", "dog"]
    listed = tmp_path / "classes.json"
    listed.write_bytes('\ufeff["person", "cat"]'.encode())
    assert load_vocabulary(listed).names == ["person", "cat"]


def test_vocab_lists_a_malformed_file_as_invalid(tmp_path):
    from conftest import run_cli

    (tmp_path / "bad.json").write_text('["a", 3]')
    (tmp_path / "good.txt").write_text("x\ny\n")
    result = run_cli("vocab", env={"DPSEG_VOCAB_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "INVALID" in lines["bad"] and "entry 2 is 3" in lines["bad"]
    assert "INVALID" not in lines["good"]


@pytest.mark.parametrize(
    "text, message",
    [("red\x00disc; blue square", "control character"), ("x" * 1001, "more than 1000")],
)
def test_hostile_class_names_are_refused(text, message):
    """A NUL inside a name, or a name of a megabyte (each kept in the bank's zarr.json and
    encoded into every template's prompt)."""
    with pytest.raises(VocabularyError, match=message):
        load_vocabulary(text)
    assert load_vocabulary("red disc;\n blue square").names == ["red disc", "blue square"]


def test_a_vocabulary_path_that_is_a_pipe_or_a_looping_link_is_not_called_missing(tmp_path):
    """Found by a fault probe: both were "does not exist"."""
    import os

    from data.vocabulary import VocabularyError

    os.mkfifo(tmp_path / "pipe.txt")
    (tmp_path / "loop.txt").symlink_to("loop.txt")
    for name in ("pipe.txt", "loop.txt"):
        with pytest.raises(VocabularyError, match="is not a regular file"):
            load_vocabulary(str(tmp_path / name))
    with pytest.raises(VocabularyError, match="does not exist"):
        load_vocabulary(str(tmp_path / "none.txt"))
