"""Contract tests over every preset: names, offline builds, shapes, determinism, fingerprints."""

import json
import os
import subprocess
import sys
import time

import open_clip
import pytest
import torch
from conftest import ROOT, cli_here

from pretrained.backbone import create_clip, create_encoder
from pretrained.families import family_of
from pretrained.fingerprint import (
    check_recorded,
    package_versions,
    recorded_fingerprints,
    state_fingerprint,
    weights_fingerprint,
)
from pretrained.hub import WeightsUnavailableError, local_weights_file
from pretrained.presets import (
    EncoderPreset,
    PresetError,
    get_bank_preset,
    get_encoder_preset,
    get_generator_preset,
    list_presets,
)
from prompt_bank.generator import clip_tokenizer, create_generator

TINY = ("tiny-vit", "tiny-convnext", "tiny-dinotxt", "tiny-sd")
OFFLINE = (*TINY, "toy-convnext", "toy-vit", "toy-dinotxt", "toy-render")  # built with no download

EXPECTED = {
    "encoder": [
        "tiny-vit",
        "tiny-convnext",
        "toy-convnext",
        "toy-vit",
        "tiny-dinotxt",
        "toy-dinotxt",
        "dinotxt-l16",
        "vit-b16-openai",
        "convnext-b-laion",
        "convnext-l-laion",
    ],
    "generator": ["tiny-sd", "tiny-sdxl", "toy-render", "sd15", "sd21", "sd-turbo"],
    "bank": ["paper", "fast", "vit", "tiny", "toy", "toy-vit", "toy-dinotxt"],
}


def build(name):
    return create_generator(name) if name == "tiny-sd" else create_encoder(name)


def test_registry_names():
    for kind, names in EXPECTED.items():
        assert [p.name for p in list_presets(kind)] == names
    assert get_encoder_preset("convnext-b-laion").arch == "convnext_base_w_320"
    assert get_encoder_preset("convnext-b-laion").pretrained == "laion_aesthetic_s13b_b82k"
    assert get_encoder_preset("convnext-l-laion").pretrained == "laion2b_s29b_b131k_ft_soup"
    assert get_generator_preset("sd-turbo").guidance == 0.0
    assert get_generator_preset("sd-turbo").max_steps == 4
    assert (get_bank_preset("paper").generator, get_bank_preset("paper").encoder) == (
        "sd15",
        "convnext-b-laion",
    )
    for bank in list_presets("bank"):  # every bank preset names existing parts
        get_generator_preset(bank.generator)
        get_encoder_preset(bank.encoder)


def test_real_presets_point_at_open_clip_weights():
    assert get_encoder_preset("convnext-b-laion").hub_id == (
        "laion/CLIP-convnext_base_w_320-laion_aesthetic-s13B-b82K"
    )
    for p in list_presets("encoder"):
        if not p.offline and family_of(p).hub_weights:  # dino.txt: two local files, no hub
            assert p.pretrained in open_clip.list_pretrained_tags_by_model(p.arch)


@pytest.mark.parametrize("kind", ["encoder", "generator", "bank"])
def test_unknown_name_lists_known(kind):
    getter = {"encoder": get_encoder_preset, "generator": get_generator_preset}.get(
        kind, get_bank_preset
    )
    with pytest.raises(PresetError, match=f"unknown {kind} preset 'nope'; known {kind} presets: "):
        getter("nope")


def test_turbo_step_range_enforced():
    from dataclasses import replace

    with pytest.raises(PresetError, match=r"steps=8 must be in 1..4"):
        replace(get_generator_preset("sd-turbo"), steps=8)


@pytest.mark.parametrize(
    "name, strides", [("tiny-vit", [8] * 4), ("tiny-convnext", [4, 8, 16, 32])]
)
def test_tiny_encoder_contract(name, strides):
    """ConvNeXt: a true pyramid (docs/design.md §2.2); ViT: one stride (patch 8)."""
    built = create_clip(name)
    model = built.model
    assert not model.training
    images = torch.randn(2, 3, 128, 128)
    out = model.visual.forward_intermediates(images)
    levels = [out["image_intermediates"][i] for i in built.preset.levels]
    assert [128 // f.shape[-1] for f in levels] == strides
    emb = model.encode_image(images)
    text = model.encode_text(open_clip.tokenize(["a red disc", "a green square"]))
    assert emb.shape == (2, 64) and text.shape == (2, 64)
    assert torch.isfinite(emb).all() and torch.isfinite(text).all()


def test_tiny_sd_generates_images():
    built = create_generator("tiny-sd")
    pipe = built.pipeline
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    images = pipe(
        prompt=["a red disc", "a green square", "a blue triangle"],
        num_inference_steps=built.preset.steps,
        guidance_scale=built.preset.guidance,
        generator=generators,
        output_type="pt",
    ).images
    assert images.shape == (3, 3, 64, 64)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert images.std() > 0.01  # not a constant picture
    again = pipe(
        prompt=["a red disc"],
        num_inference_steps=2,
        generator=[torch.Generator().manual_seed(0)],
        output_type="pt",
    ).images
    # One seeded generator per item: the same picture alone or in a batch, up to float rounding
    # (CPU kernels round differently for other batch sizes: bit-identity needs fixed batches).
    torch.testing.assert_close(again[0], images[0], atol=1e-4, rtol=0)


def test_tokenizer_matches_open_clip():
    ours, theirs = clip_tokenizer(), open_clip.SimpleTokenizer()
    for text in ["A photo of a red disc in the scene.", "itap of the hot-dog's café, 1984!"]:
        assert ours(text).input_ids == [49406, *theirs.encode(text), 49407]
    assert len(ours) == 49408 and ours.model_max_length == 77


def test_build_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = [build(n).fingerprint for n in TINY]
    assert torch.equal(torch.rand(3), expected)
    assert [build(n).fingerprint for n in TINY] == first


FINGERPRINTS_SCRIPT = (
    "import json, torch; from pretrained.backbone import create_encoder;"
    "from prompt_bank.generator import create_generator;"
    "print(torch.backends.cpu.get_cpu_capability(), json.dumps({"
    "**{n: create_generator(n).fingerprint for n in ('tiny-sd', 'toy-render')},"
    "**{n: create_encoder(n).fingerprint for n in ('tiny-vit', 'tiny-convnext', 'toy-convnext',"
    " 'toy-vit', 'tiny-dinotxt', 'toy-dinotxt')}}))"
)


@pytest.mark.parametrize(("capability", "threads"), [(None, "2"), ("default", "1"), ("avx2", "2")])
def test_fingerprints_are_recorded_ones_under_every_cpu_kernel(capability, threads):
    """Same name and seed, same bits: in a fresh process, whichever CPU kernels torch picks
    (AVX-512, AVX2, scalar) and however many threads it runs."""
    recorded = recorded_fingerprints()
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    env["OMP_NUM_THREADS"] = threads
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    fresh = subprocess.run(
        [sys.executable, "-c", FINGERPRINTS_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    kernel, found = fresh.stdout.strip().splitlines()[-1].split(" ", 1)
    if capability is not None:  # torch honours the setting (a CPU without AVX2 runs lower)
        assert kernel in {"DEFAULT", capability.upper()}
    found = json.loads(found)
    mismatches = [check_recorded(n, f) for n, f in found.items()]
    assert found == {n: recorded["fingerprints"][n] for n in OFFLINE}, mismatches
    assert "WARNING" not in fresh.stderr  # built as recorded: nothing to warn about


def test_a_changed_fingerprint_is_one_line_naming_preset_fingerprints_and_versions(
    monkeypatch, caplog
):
    recorded = recorded_fingerprints()
    expected = recorded["fingerprints"]["tiny-convnext"]
    assert check_recorded("tiny-convnext", expected) is None
    line = check_recorded("tiny-convnext", "ce57886f" + "0" * 56)
    assert "\n" not in line
    assert "'tiny-convnext'" in line and expected[:12] in line and "ce57886f0000" in line
    assert "package versions are the same" in line  # this machine recorded them
    assert "refused" in line
    other = {**recorded["packages"], "torch": "2.0.0"}
    monkeypatch.setitem(recorded, "packages", other)
    line = check_recorded("tiny-convnext", "ce57886f" + "0" * 56)
    assert f"torch 2.0.0 there, {package_versions()['torch']} here" in line
    monkeypatch.setitem(recorded["fingerprints"], "tiny-vit", "0" * 64)
    with caplog.at_level("WARNING", logger="pretrained.fingerprint"):
        create_clip("tiny-vit")
    assert [r.message for r in caplog.records if "'tiny-vit'" in r.message]


def test_tiny_builds_in_seconds():
    start = time.perf_counter()
    for name in TINY:
        build(name)
    assert time.perf_counter() - start < 30  # generous bound for a loaded 2-core CI machine


def test_fingerprint_sensitivity():
    model = create_clip("tiny-vit").model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    base = state_fingerprint(state)
    assert state_fingerprint(dict(reversed(list(state.items())))) == base  # order-free
    key = next(iter(state))
    state[key].view(-1)[0] += 1e-6
    assert state_fingerprint(state) != base  # one value
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert state_fingerprint({k: v.to(torch.bfloat16) for k, v in state.items()}) != base  # dtype
    assert weights_fingerprint(model) != weights_fingerprint(model, prefixes=("other",))  # names


def test_local_weights_file_for_a_pretrained_preset(tmp_path, monkeypatch):
    """A pretrained preset given a local file loads it (the path users take offline)."""
    tiny = create_clip("tiny-vit")
    weights = tmp_path / "snapshot" / "open_clip_model.safetensors"
    weights.parent.mkdir()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(weights))
    config = tmp_path / "dpseg-test-arch.json"
    config.write_text(json.dumps(tiny.preset.model_cfg))
    open_clip.add_model_config(config)
    preset = EncoderPreset(
        name="test-local",
        family="vit",
        arch="dpseg-test-arch",
        pretrained="not-a-hub-tag",
        image_size=128,
        levels=(0, 1, 2, 3),
        description="test",
    )
    for given in (weights, weights.parent):  # the file, or the folder holding it
        built = create_clip(preset, weights=given)
        assert built.fingerprint == tiny.fingerprint
        assert built.weights == str(weights)


def test_local_weights_errors(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        local_weights_file(tmp_path / "nope.bin", ("a.bin",), "--encoder-weights")
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(WeightsUnavailableError, match=r"folder without any of a.bin.*readme.txt"):
        local_weights_file(tmp_path, ("a.bin",), "--encoder-weights")
    with pytest.raises(ValueError, match="has random weights"):
        create_clip("tiny-vit", weights=tmp_path)


OFFLINE_SCRIPT = """
import sys, time
from pretrained.backbone import create_clip
from prompt_bank.generator import create_generator
from pretrained.hub import WeightsUnavailableError
start = time.perf_counter()
try:
    (create_clip if sys.argv[1] == "encoder" else create_generator)(sys.argv[2])
except WeightsUnavailableError as e:
    print(f"{time.perf_counter() - start:.2f}")
    print(e)
"""


@pytest.mark.parametrize(
    "env",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
    ids=["hf-offline", "unreachable-endpoint"],
)
@pytest.mark.parametrize(
    ("kind", "name", "model_id", "option"),
    [
        (
            "encoder",
            "convnext-b-laion",
            "laion/CLIP-convnext_base_w_320-laion_aesthetic-s13B-b82K",
            "--encoder-weights",
        ),
        ("generator", "sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "--generator-weights"),
    ],
)
def test_real_preset_offline_fails_fast_and_clearly(tmp_path, env, kind, name, model_id, option):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HTTP", "http"))}
    clean.update(env, HF_HOME=str(tmp_path))  # an empty cache
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, kind, name],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr
    assert float(lines[0]) < 15, "must not retry for a minute"
    message = "\n".join(lines[1:])
    assert model_id in message and option in message and "PRESET=tiny" in message
    assert "Traceback" not in result.stderr


def test_cli_presets_lists_everything(capsys, monkeypatch):
    result = cli_here(capsys, monkeypatch, "presets", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == [n for names in EXPECTED.values() for n in names]
    needs = {r["name"]: r["needs"] for r in rows}
    assert needs["tiny-convnext"].startswith("nothing")
    assert "laion/CLIP-convnext_large_d_320" in needs["convnext-l-laion"]
    text = cli_here(capsys, monkeypatch, "presets", "--fingerprints")
    assert text.returncode == 0, text.stderr
    recorded = recorded_fingerprints()["fingerprints"]
    for name in OFFLINE:
        assert f"sha256: {recorded[name]} (as recorded;" in text.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", [p.name for p in list_presets("encoder") if not p.offline])
def test_real_encoder_loads_pretrained_weights(name):
    """With the weights at hand (-m slow): they load, and differ from the random architecture."""
    built = create_clip(name)
    assert built.weights == built.preset.hub_id
    assert built.fingerprint != create_clip(name, random_weights=True).fingerprint
