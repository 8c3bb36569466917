"""VIP's twelve benchmark configs against the reference settings table of docs/vip.md (and that
table against the facts sheet in ../shared/reference/vip_settings.md, where it exists)."""

from __future__ import annotations

import re

import pytest
import yaml

from data.templates import load_templates
from tests.conftest import ROOT, SHARED

DOC = ROOT / "docs" / "vip.md"
REFERENCE = SHARED / "reference" / "vip_settings.md"
PROTOCOLS = {
    "short 336": "vip",
    "short 448": "vip:448",
    "short 560": "vip:560",
    "fit 448x448": "vip-fit:448",
}


def markdown_table(text: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose first header cell is ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    headers = [h.strip() for h in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(headers, (c.strip() for c in line.strip("|").split("|")))))
    return rows


SETTINGS = markdown_table(DOC.read_text(encoding="utf-8"), "config")


def test_the_table_has_the_twelve_rows_of_vips_paper_and_code():
    assert [r["config"] for r in SETTINGS] == [
        "voc21",
        "voc20",
        "pc60",
        "pc59",
        "coco_object",
        "coco_stuff",
        "cityscapes",
        "ade150",
        "potsdam",
        "vaihingen",
        "isaid",
        "vdd",
    ]
    named = {p.stem for p in (ROOT / "configs").glob("vip_*.yaml")}
    assert named == {f"vip_{r['config']}" for r in SETTINGS} | {
        "vip_tiny",
        "vip_tiny_dinotxt",
        "vip_toy",
        "vip_toy_dinotxt",
    }
    assert {p.stem for p in (ROOT / "configs" / "vip_clip").glob("*.yaml")} == {
        f"vip_{r['config']}" for r in SETTINGS
    }


@pytest.mark.parametrize("clip", [False, True], ids=["dinotxt", "clip"])
@pytest.mark.parametrize("row", SETTINGS, ids=lambda r: r["config"])
def test_every_config_holds_the_reference_values(row, clip):
    folder = ROOT / "configs" / ("vip_clip" if clip else "")
    config = yaml.safe_load((folder / f"vip_{row['config']}.yaml").read_text())
    assert config["model"]["class_path"] == "model.vip.lightning.VIPModule"
    model = config["model"]["init_args"]
    vip = model["vip"]
    if clip:
        assert (model["encoder"], model["attention"]) == ("vit-b16-openai", "clear")
    else:
        assert (model["encoder"], model["attention"]) == ("dinotxt-l16", "proxy")
    assert model["templates"] == row["templates"]
    assert model["test_protocol"] == row["protocol"]
    assert vip["logit_scale"] == 40.0
    assert vip["tau"] == float(row["tau"])
    assert vip["alias_scale"] == pytest.approx(1 / float(row["tem"]), rel=1e-12)
    assert vip["prob_thd"] == float(row["prob_thd"])
    assert vip["background"] == row["background"]
    if row["background"] == "class":
        assert vip["background_id"] == int(row["bg_idx"])
    else:
        assert "background_id" not in vip and row["bg_idx"] == "–"
    assert model["vocabularies"] == {row["dataset"]: row["alias file"]}
    assert config["data"]["test"] == [{"dataset": row["dataset"]}]
    assert model.get("allow_duplicate_classes", False) == (row["config"] == "ade150")


def test_configs_build_their_settings():
    """The values are valid for the code that reads them: templates, protocols, datasets."""
    from data.catalog import get_dataset_spec
    from data.transforms import get_test_protocol
    from model.vip.aggregation import VIPConfig

    assert len(load_templates("seg")) == 6 and len(load_templates("city")) == 10
    for row in SETTINGS:
        config = yaml.safe_load((ROOT / "configs" / f"vip_{row['config']}.yaml").read_text())
        VIPConfig(**config["model"]["init_args"]["vip"])
        get_test_protocol(config["model"]["init_args"]["test_protocol"])
        spec = get_dataset_spec(row["dataset"])
        if row["background"] == "class":
            assert 0 <= int(row["bg_idx"]) < spec.num_classes


@pytest.fixture(scope="module")
def reference() -> str:
    if not REFERENCE.is_file():
        pytest.skip(f"{REFERENCE} is absent (the facts sheet lives beside the repository)")
    return REFERENCE.read_text(encoding="utf-8")


def test_the_table_matches_the_reference_facts_sheet(reference):
    facts = markdown_table(reference, "benchmark")
    assert len(facts) == len(SETTINGS)
    for ours, theirs in zip(SETTINGS, facts):
        where = f"{ours['config']} / {theirs['benchmark']}"
        assert f"{ours['alias file']}.txt" == theirs["alias file"], where
        assert ours["templates"] == theirs["templates"], where
        assert float(ours["prob_thd"]) == float(theirs["prob_thd"]), where
        assert (ours["background"] == "class") == (theirs["background"] == "yes"), where
        if ours["background"] == "class":
            assert ours["bg_idx"] == theirs["bg_idx"].split()[0], where
        assert float(ours["tau"]) == float(theirs["tau"]), where
        assert float(ours["tem"]) == float(theirs["tem"]), where
        assert ours["protocol"] == PROTOCOLS[theirs["resize"]], where


def test_vips_template_sets_are_the_reference_strings(reference):
    for name in ("seg", "city"):
        block = re.search(rf"^{name} \(\d+[^)]*\):\n((?:    .+\n)+)", reference, re.MULTILINE)
        assert block is not None, name
        strings = [line.strip() for line in block.group(1).splitlines()]
        assert load_templates(name) == strings, name


@pytest.mark.parametrize(
    ("name", "queries"), [("potsdam", 10), ("vaihingen", 10), ("iSAID", 17), ("vdd", 7)]
)
def test_alias_files_are_split_as_the_reference_splits_them(name, queries):
    """VIP's reference splits an alias line on ", ": "farmland,forest area" is one alias. The
    query counts are the reference's (splitting on "," gave 11, 11, 20 and 9)."""
    import inspect

    from data.vocabulary import load_vocabulary
    from model.vip.lightning import VIPModule

    path = SHARED / "vocab" / "vip" / f"cls_{name}.txt"
    if not path.is_file():
        pytest.skip(f"{path} is not here")
    separator = inspect.signature(VIPModule).parameters["alias_separator"].default
    vocabulary = load_vocabulary(path, separator=separator)
    assert sum(len(c.synonyms) for c in vocabulary) == queries


def test_vips_protocols_resize_without_antialiasing_as_cv2_does():
    import torch
    import torch.nn.functional as F

    from data.transforms import get_test_protocol

    image = torch.rand(3, 400, 1000)
    for name in ("vip", "vip:448", "vip-fit:448"):
        protocol = get_test_protocol(name)
        seen: list = []
        protocol(lambda windows, seen=seen: seen.append(windows) or windows[:, :1], image)
        short = protocol.short_side / 400 if name != "vip-fit:448" else 448 / 1000
        size = (round(400 * short), round(1000 * short))
        plain = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        assert not protocol.antialias
        torch.testing.assert_close(seen[0][0], plain[:, :336, :336], rtol=0, atol=0)
    assert get_test_protocol("catseg").antialias  # DPSeg's protocols keep antialiasing
