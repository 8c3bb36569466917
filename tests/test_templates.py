import pytest
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from data.templates import SINGLE_TEMPLATE, TemplateError, load_templates


def test_imagenet80_is_open_clips_list():
    templates = load_templates("imagenet80")
    assert len(templates) == 80
    assert [t.format("dog") for t in templates] == [t("dog") for t in OPENAI_IMAGENET_TEMPLATES]
    assert templates[0] == "a bad photo of a {}."


def test_single_and_prefix():
    assert load_templates("single") == [SINGLE_TEMPLATE] == ["A photo of a {} in the scene."]
    assert load_templates("imagenet80:10") == load_templates("imagenet80")[:10]


@pytest.mark.parametrize("spec", ["imagenet80:0", "imagenet80:81", "imagenet80:x"])
def test_bad_prefix_count(spec):
    with pytest.raises(TemplateError, match="must be 1 to 80"):
        load_templates(spec)


def test_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a photo of a {}.\n\nthere is a {} here.\n")
    assert load_templates(path) == ["a photo of a {}.", "there is a {} here."]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("a photo of a cat.\n", r"template 1 .* must contain '\{\}' exactly once"),
        ("a {} and a {}\n", "exactly once"),
        ("a {} {0}\n", "not a valid format string"),
        ("\n\n", "are empty"),
        ("a {}\na {}\n", "repeat 'a {}'"),
    ],
)
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "t.txt"
    path.write_text(content)
    with pytest.raises(TemplateError, match=match):
        load_templates(path)


def test_unknown_name():
    with pytest.raises(TemplateError, match=r"unknown templates 'imagenet81'.*imagenet80, single"):
        load_templates("imagenet81")


@pytest.mark.parametrize("kind", ["pipe", "folder", "device"])
def test_a_templates_path_that_is_not_a_file_is_named_for_what_it_is(tmp_path, kind):
    """Found by the probe: a pipe was "unknown templates" (and read, it would block)."""
    import os

    path = tmp_path / "templates.txt"
    {
        "pipe": lambda: os.mkfifo(path),
        "folder": path.mkdir,
        "device": lambda: path.symlink_to("/dev/zero"),
    }[kind]()
    what = {
        "pipe": "a pipe",
        "folder": "a folder",
        "device": "a device, socket or other special file",
    }
    with pytest.raises(TemplateError, match=f"templates file '{path}' is {what[kind]}, not a file"):
        load_templates(path)
