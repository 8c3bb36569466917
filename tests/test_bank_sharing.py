"""Sharing prompt banks: push, pull, remote info and training from object stores and HTTP.

Everything runs offline against local stand-ins (tests/servers.py): moto's S3 server on
loopback (reached through s3fs, by subprocesses configured only through ``AWS_*`` variables)
and a read-only HTTP server with byte ranges and no listings, which counts requests. Banks are
built once per module with the tiny presets (8 classes x 2 templates x 1 image, 2 shards); a
bank laid out like ade847 (847 classes x 80 templates, 4 levels) is fabricated with the
format's own writers instead of the generator. Also the bank card (README.md) and the hub
upload plan, without touching the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, TINY, cli_here, race
from servers import MotoS3Server, RangeHTTPServer, s3fs_filesystem
from test_bank import small_config

from data.templates import load_templates
from prompt_bank.build import build_bank
from prompt_bank.format import BankFormatError, BankLayout, create_arrays
from prompt_bank.inspect import bank_info
from prompt_bank.integrity import flush_shard
from prompt_bank.safety import LOCK_KEY
from prompt_bank.seal import seal_bank, sealed_contents
from prompt_bank.share import hub_upload_plan, pull_bank, push_bank, upload_folder
from prompt_bank.store import Bank, open_group

BUCKET = "banks"
URL = f"s3://{BUCKET}/x.zarr"
# the metadata, card and manifests of a 2-shard bank, beside its shard objects
METADATA = {"zarr.json", "README.md", "manifest/shard-00000.json", "manifest/shard-00001.json"}
COMMAND = "python cli.py bank build --out small.zarr --preset tiny --templates imagenet80:2"


# ---------------------------------------------------------------------------------------------
# helpers


def clean_env(**extra: str) -> dict[str, str]:
    """The parent's environment without its AWS_* and storage settings, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") and k not in ("DPSEG_STORAGE_OPTIONS", "DPSEG_CACHE")
    }
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def cli(*args: str, env: dict[str, str], cwd: Path = ROOT, timeout: float = 300):
    """``python cli.py ARGS`` in a fresh process with exactly `env` (no parent AWS_*)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def s3_options(server: MotoS3Server) -> dict:
    """fsspec storage options for the moto server (in-process, uncached)."""
    return {
        "key": server.access_key,
        "secret": server.secret_key,
        "client_kwargs": {"endpoint_url": server.endpoint_url, "region_name": server.region},
        "skip_instance_cache": True,
    }


def arrays_of(location: str, storage_options: dict | None = None) -> dict[str, np.ndarray]:
    bank = Bank.open(location, storage_options)
    return {path: bank.read(path) for path in bank.layout.arrays()}


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for path in a:
        assert a[path].dtype == b[path].dtype, path
        assert np.array_equal(a[path], b[path]), f"{path} differs"  # bit-identical


def bucket_keys(server: MotoS3Server, url: str) -> dict[str, str]:
    """Relative key -> LastModified of every object under `url`."""
    fs = s3fs_filesystem(server)
    base = url.removeprefix("s3://").rstrip("/")
    found = fs.find(base, detail=True)
    return {k[len(base) + 1 :]: str(v["LastModified"]) for k, v in found.items()}


def versions(server: MotoS3Server, url: str) -> dict[str, int]:
    """Relative key -> how many times it was written (the bucket keeps every version); the
    lock every push takes there (build.lock, written and deleted) is left out."""
    client = server.client()
    prefix = url.removeprefix(f"s3://{BUCKET}/").rstrip("/") + "/"
    counts: dict[str, int] = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix=prefix):
        for version in page.get("Versions", []):
            key = version["Key"][len(prefix) :]
            if key != LOCK_KEY:
                counts[key] = counts.get(key, 0) + 1
    return counts


def build(location: Path, **overrides) -> Path:
    config = small_config(
        templates=load_templates("imagenet80:2"),
        images_per_prompt=1,
        classes_per_shard=4,
        batch_size=8,
        command=COMMAND,
        **overrides,
    )
    threads = torch.get_num_threads()
    build_bank(config, location)
    torch.set_num_threads(threads)  # build_bank pins the thread count it records
    return location


def fabricate_ade_like(location: Path, like: Bank) -> Path:
    """A complete, sealed bank laid out like ade847 (847 classes x 80 templates x 1 image, the
    tiny encoder's 4 levels, 16 classes per shard), written by the format's own code."""
    encoder = like.attrs["encoder"]
    layout = BankLayout(
        num_classes=847,
        num_templates=80,
        images_per_prompt=1,
        embed_dim=int(encoder["embed_dim"]),
        level_dims=tuple(encoder["level_dims"]),
        level_dtype="float16",
        image_size=None,
        classes_per_shard=16,
    )
    attrs = {k: v for k, v in like.attrs.items() if k not in ("contents", "provenance")}
    attrs["classes"] = [f"class {i}" for i in range(847)]
    attrs["templates"] = [f"a photo number {i} of a {{}}." for i in range(80)]
    attrs["images_per_prompt"] = 1
    attrs["build"] = {**attrs["build"], "classes_per_shard": 16, "keep_images": False}
    group = open_group(location, mode="w")
    group.attrs.put(attrs)
    create_arrays(group, layout)
    d = layout.embed_dim
    for shard, (k0, k1) in enumerate(layout.shard_ranges()):
        n = k1 - k0
        buffers = {
            "text/embeddings": np.full((n, 80, d), d**-0.5, np.float32),
            "visual/embeddings": np.full((n, 80, 1, d), d**-0.5, np.float32),
            **{
                f"visual/level_{j}": np.full((n, 80, 1, c), 0.01, np.float16)
                for j, c in enumerate(layout.level_dims, start=1)
            },
            "visual/done": np.ones((n, 80, 1), bool),
        }
        flush_shard(group, layout, shard, buffers)
    seal_bank(str(location))
    return location


# ---------------------------------------------------------------------------------------------
# module fixtures: banks built once, servers started once


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """8 classes x 2 templates x 1 image, 2 shards of 4 classes; sealed (complete)."""
    return build(tmp_path_factory.mktemp("small") / "small.zarr")


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Path:
    """The same layout with another seed: another bank (another content key)."""
    return build(tmp_path_factory.mktemp("other") / "other.zarr", seed=1)


@pytest.fixture(scope="module")
def s3():
    with MotoS3Server() as server:
        server.make_bucket(BUCKET)
        server.client().put_bucket_versioning(
            Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"}
        )
        yield server


@pytest.fixture(scope="module")
def s3_env(s3, tmp_path_factory) -> dict[str, str]:
    return clean_env(**s3.env(), DPSEG_CACHE=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def pushed(small, s3, s3_env) -> dict:
    """`small` pushed to URL by the command line; the bucket's keys right after."""
    result = cli("bank", "push", str(small), URL, "--quiet", env=s3_env)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"stdout": result.stdout, "keys": bucket_keys(s3, URL)}


@pytest.fixture(scope="module")
def served(small, tmp_path_factory):
    """An HTTP server over a folder with `small` (small.zarr) and an ade847-like bank."""
    root = tmp_path_factory.mktemp("http")
    shutil.copytree(small, root / "small.zarr")
    fabricate_ade_like(root / "ade.zarr", Bank.open(small))
    with RangeHTTPServer(root) as server:
        yield server


# ---------------------------------------------------------------------------------------------
# S3


def test_push_uploads_every_object_with_metadata_card_and_manifests(small, pushed):
    contents = sealed_contents(Bank.open(small))
    keys = set(pushed["keys"])
    assert keys >= METADATA
    objects = {k for k, h in contents["objects"].items() if h is not None}
    assert objects and objects <= keys
    assert keys == set(hub_upload_plan(small))  # every file of the bank, no more
    assert "pushed" in pushed["stdout"] and contents["content_key"][:16] in pushed["stdout"]


def test_second_push_of_the_same_bank_uploads_nothing(small, s3, s3_env, pushed):
    result = cli("bank", "push", str(small), URL, "--quiet", env=s3_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "already holds this bank" in result.stdout
    written = versions(s3, URL)
    assert set(written) == set(pushed["keys"])
    assert set(written.values()) == {1}, written  # nothing written twice


def test_push_of_another_bank_to_the_same_url_is_refused(small, other, s3, s3_env, pushed):
    result = cli("bank", "push", str(other), URL, "--quiet", env=s3_env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert URL in result.stderr and "another bank" in result.stderr
    assert "Traceback" not in result.stderr
    written = versions(s3, URL)
    assert set(written) == set(pushed["keys"]) and set(written.values()) == {1}, written
    remote = json.loads(s3fs_filesystem(s3).cat_file(f"{BUCKET}/x.zarr/zarr.json"))
    local = sealed_contents(Bank.open(small))
    assert remote["attributes"]["contents"]["content_key"] == local["content_key"]


def test_info_of_an_s3_bank(small, s3_env, pushed):
    result = cli("bank", "info", URL, "--json", env=s3_env)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout)
    local = bank_info(Bank.open(small))
    assert info["location"] == URL
    assert info["complete"] is True and info["sealed"] is True
    for key in ("complete", "sealed", "content_key", "classes", "templates", "items_total"):
        assert info[key] == local[key], key
    assert info["content_key"] is not None


def test_pull_from_s3_is_bit_identical_and_verifies(small, s3_env, pushed, tmp_path):
    to = tmp_path / "pulled.zarr"
    result = cli("bank", "pull", URL, "--to", str(to), "--quiet", env=s3_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "every object checked" in result.stdout
    assert_same_arrays(arrays_of(str(to)), arrays_of(str(small)))
    assert sealed_contents(Bank.open(to)) == sealed_contents(Bank.open(small))
    verify = cli("bank", "verify", str(to), env=s3_env)
    assert verify.returncode == 0, verify.stdout + verify.stderr[-3000:]


def test_pull_into_the_cache_is_keyed_by_content(small, s3_env, pushed, tmp_path):
    env = {**s3_env, "DPSEG_CACHE": str(tmp_path / "cache")}
    key = sealed_contents(Bank.open(small))["content_key"]
    first = cli("bank", "pull", URL, "--quiet", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "already here" not in first.stdout
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [key]
    assert first.stdout.startswith(str(tmp_path / "cache" / key))
    assert_same_arrays(arrays_of(str(tmp_path / "cache" / key)), arrays_of(str(small)))
    second = cli("bank", "pull", URL, "--quiet", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "already here" in second.stdout and key[:16] in second.stdout
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [key]


def test_pull_of_a_damaged_remote_object_fails_and_leaves_nothing(small, s3, s3_env, tmp_path):
    url = f"s3://{BUCKET}/damaged.zarr"
    upload_folder(small, url, s3_options(s3))
    objects = sealed_contents(Bank.open(small))["objects"]
    victim = next(k for k, h in objects.items() if k.startswith("visual/embeddings/c/1/") and h)
    source = next(k for k, h in objects.items() if k.startswith("visual/embeddings/c/0/") and h)
    fs = s3fs_filesystem(s3)
    # another shard's bytes: it decodes, only its hash tells
    fs.pipe_file(f"{BUCKET}/damaged.zarr/{victim}", (small / source).read_bytes())
    to = tmp_path / "pulled.zarr"
    result = cli("bank", "pull", url, "--to", str(to), "--quiet", env=s3_env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"object {victim}" in result.stderr and "damaged" in result.stderr
    assert "Traceback" not in result.stderr
    assert not to.exists()
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_fit_reads_its_banks_from_s3(world, s3, s3_env, tmp_path, capfd, monkeypatch):
    url = f"s3://{BUCKET}/world.zarr"
    upload_folder(world / "bank.zarr", url, s3_options(s3))
    overlay = {
        "data": {
            "train": {"dataset": "synthetic:train", "bank": url},
            "val": [{"dataset": "synthetic", "bank": url}],
            "test": [{"dataset": "synthetic", "bank": url}],
        }
    }
    (tmp_path / "s3.yaml").write_text(yaml.safe_dump(overlay))
    # in this process (a fresh one adds 7 s of imports), with exactly s3_env
    for key in set(os.environ) - set(s3_env):
        monkeypatch.delenv(key)
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    configs = [str(TINY), str(world / "overlay.yaml"), str(tmp_path / "s3.yaml")]
    args = [a for config in configs for a in ("--config", config)]
    result = cli_here(capfd, monkeypatch, "fit", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpts = sorted(tmp_path.glob("runs/dpseg/version_*/checkpoints/last.ckpt"))
    assert ckpts, result.stderr[-3000:]
    (config,) = tmp_path.glob("runs/dpseg/version_*/config.yaml")
    data = yaml.safe_load(config.read_text())["data"]
    assert data["train"]["bank"] == url and data["val"][0]["bank"] == url
    # the prompts came from the s3 bank: the checkpoint records where
    checkpoint = torch.load(ckpts[-1], map_location="cpu", weights_only=False)
    assert checkpoint["dpseg"]["banks"]["synthetic:train"]["location"] == url
    assert checkpoint["dpseg"]["banks"]["synthetic"]["location"] == url


# ---------------------------------------------------------------------------------------------
# HTTP (read-only, no listing)


def test_info_of_an_ade847_like_bank_over_http_is_one_request(served, monkeypatch):
    monkeypatch.delenv("DPSEG_STORAGE_OPTIONS", raising=False)
    url = f"{served.url}/ade.zarr"
    served.reset()
    info = bank_info(Bank.open(url))
    requests = served.requests
    assert len(requests) <= 3, requests
    assert ("GET", "/ade.zarr/zarr.json") in requests
    assert all(path.endswith("zarr.json") for _, path in requests), requests  # no array data
    assert info["classes"] == 847 and len(info["templates"]) == 80
    assert info["images_per_prompt"] == 1
    assert info["arrays"]["visual/level_4"]["shape"] == [847, 80, 1, 320]
    assert info["complete"] is True and info["sealed"] is True
    assert info["items_total"] == 847 * 80 and info["shards"] == 53


def test_cli_info_over_http(served):
    result = cli("bank", "info", f"{served.url}/ade.zarr", env=clean_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "classes    847: class 0" in result.stdout
    assert "complete, sealed" in result.stdout and "53/53 shards" in result.stdout


def test_pull_over_plain_http_without_listing(small, served, tmp_path, monkeypatch):
    monkeypatch.delenv("DPSEG_STORAGE_OPTIONS", raising=False)
    served.reset()
    result = pull_bank(f"{served.url}/small.zarr", str(tmp_path / "pulled.zarr"), progress=False)
    assert result["downloaded"] > 0
    assert_same_arrays(arrays_of(str(tmp_path / "pulled.zarr")), arrays_of(str(small)))
    pulled = sealed_contents(Bank.open(tmp_path / "pulled.zarr"))
    assert pulled["content_key"] == result["content_key"]
    # every request named an object of the bank: no directory (listing) was asked for
    paths = {p for _, p in served.requests}
    assert paths and all(p.startswith("/small.zarr/") for p in paths)
    assert all((small / p.removeprefix("/small.zarr/")).is_file() for p in paths), paths


def test_array_reads_over_http_equal_the_local_arrays(small, served, monkeypatch):
    monkeypatch.delenv("DPSEG_STORAGE_OPTIONS", raising=False)
    remote, local = Bank.open(f"{served.url}/small.zarr"), Bank.open(small)
    assert np.array_equal(remote.read("visual/embeddings"), local.read("visual/embeddings"))
    part = np.array([1, 6])  # classes in both shards: partial shard reads by range
    assert np.array_equal(remote.read("visual/level_2", part), local.read("visual/level_2", part))


@pytest.fixture
def flaky(served, monkeypatch):
    """`served`, whose faults are cleared after the test; retries pause 1 ms, not 0.5 s."""
    import common.retry

    monkeypatch.setattr(common.retry, "BACKOFF_S", 0.001)
    monkeypatch.delenv("DPSEG_STORAGE_OPTIONS", raising=False)
    served.reset()
    yield served
    served.fail(None)


@pytest.mark.parametrize("fault", ["500", "reset", "short"])
def test_pull_over_http_asks_again_after_a_transient_fault(small, flaky, tmp_path, fault):
    """The probe: one HTTP 500, one reset connection or one body cut short ended a pull in a
    traceback. Each shard object now fails once and is asked again (common.retry)."""
    flaky.fail(fault, times=1)
    result = pull_bank(f"{flaky.url}/small.zarr", str(tmp_path / "pulled.zarr"), progress=False)
    assert_same_arrays(arrays_of(str(tmp_path / "pulled.zarr")), arrays_of(str(small)))
    assert result["content_key"] == sealed_contents(Bank.open(small))["content_key"]
    shard_gets = [p for m, p in flaky.requests if m == "GET" and "/c/" in p]
    assert len(shard_gets) == 2 * len(set(shard_gets)) > 0  # each failed once, then arrived


def test_pull_verify_and_info_over_a_failing_server_end_in_one_line(
    flaky, tmp_path, cli_in_process
):
    """The probe: a server that keeps failing gave tracebacks to `bank pull` and to `bank
    verify` (which reads the remote bank object by object); now one line each, exit 2, naming
    the URL, and a pull leaves nothing behind."""
    from test_user_errors import one_error_line

    from common.retry import RETRIES

    url = f"{flaky.url}/small.zarr"
    for fault in ("500", "short"):
        flaky.fail(fault)
        flaky.reset()
        pulled = cli_in_process("bank", "pull", url, "--to", str(tmp_path / "p.zarr"), "--quiet")
        assert pulled.returncode == 2
        line = one_error_line(pulled.stderr)
        said = {  # aiohttp's text for a cut body was the repr of its parser's error (a probe)
            "500": "ClientResponseError: HTTP 500 Internal Server Error",
            "short": "a reply's body ended before the length the server announced (the "
            "connection was cut, tried ",
        }[fault]
        assert line.startswith(f"error: bank pull from {url}: {said}") and "network" in line, line
        assert "<" not in line, line  # no repr
        assert list(tmp_path.iterdir()) == []  # no staging folder, no half bank
        gets = [p for m, p in flaky.requests if m == "GET" and "/c/" in p]
        # asked again, then given up; aiohttp itself asks once more when a kept-alive connection
        # was cut under it (a fresh-clone CI of 771de4a counted 5 GETs of one object)
        assert RETRIES + 1 <= max(gets.count(p) for p in gets) <= 2 * (RETRIES + 1), gets
        flaky.reset()
        verified = cli_in_process("bank", "verify", url)
        assert verified.returncode == 2
        line = one_error_line(verified.stderr, only=False)
        opened = {"500": " (ClientResponseError: HTTP 500", "short": ": a reply's body ended"}
        assert line.startswith(f"error: bank verify: a request to {url} failed{opened[fault]}")
        assert "the server or the network kept failing; try again later" in line


def test_storage_options_the_client_refuses_are_named_not_read_as_damage(
    flaky, tmp_path, cli_in_process
):
    """Probe 6: an option aiohttp does not take was reported as "its root zarr.json is damaged:
    delete the bank and rebuild", for a bank that was whole."""
    from test_user_errors import one_error_line

    url = f"{flaky.url}/small.zarr"
    result = cli_in_process(
        "bank", "info", url, env={"DPSEG_STORAGE_OPTIONS": '{"nonsense_option": 1}'}
    )
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert line.startswith("error: $DPSEG_STORAGE_OPTIONS (keys nonsense_option): the store")
    assert "fix or remove them" in line and "damaged" not in line
    pulled = cli_in_process(
        "bank", "pull", url, "--to", str(tmp_path / "p.zarr"), "--storage-options",
        '{"timeout": "abc"}', env={"DPSEG_STORAGE_OPTIONS": ""},
    )  # fmt: skip
    assert pulled.returncode == 2
    line = one_error_line(pulled.stderr)
    assert line.startswith("error: --storage-options (keys timeout): the store"), line
    assert not (tmp_path / "p.zarr").exists()


def test_a_redirect_loop_is_named(flaky, cli_in_process):
    """Probe 6: a server redirecting to itself was "0, message=''"."""
    from test_user_errors import one_error_line

    flaky.fail("redirect", match="zarr.json")
    result = cli_in_process("bank", "info", f"{flaky.url}/small.zarr")
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "too many redirects (the server redirects in a loop) at http://" in line, line


# ---------------------------------------------------------------------------------------------
# the card and the hub


def test_card_of_a_built_bank(small):
    card = (small / "README.md").read_text()
    attrs = Bank.open(small).attrs
    assert card.startswith("---\nlicense: apache-2.0\n")
    assert "tiny-sd" in card and "tiny-convnext" in card
    assert attrs["generator"]["fingerprint"] in card and attrs["encoder"]["fingerprint"] in card
    assert attrs["contents"]["content_key"] in card
    assert f"- command: `{COMMAND}`" in card
    for i, template in enumerate(attrs["templates"]):
        assert f"{i}. `{template}`" in card
    for i, name in enumerate(attrs["classes"]):
        assert f"\n{i}. {name}\n" in card


@pytest.mark.parametrize("recorded", [True, False])  # a bank of today / from before the record
def test_card_of_an_sd_turbo_bank_says_non_commercial(small, recorded):
    from pretrained.presets import get_generator_preset
    from prompt_bank.card import bank_card

    attrs = Bank.open(small).attrs
    generator = {**attrs["generator"], "preset": "sd-turbo"}
    generator.pop("license", None)
    if recorded:  # what a build with sd-turbo records
        generator["license"] = get_generator_preset("sd-turbo").license
    attrs["generator"] = generator
    card = bank_card(attrs)
    front = card.split("---")[1]
    assert "license: other" in front and "license_name: sai-nc-community" in front
    assert "non-commercial" in card.lower()
    assert "license: apache-2.0" not in card


def test_hub_upload_plan_leaves_out_the_build_lock(small, tmp_path):
    bank = tmp_path / "bank.zarr"
    shutil.copytree(small, bank)
    (bank / "build.lock").write_text("{}")
    plan = hub_upload_plan(bank)
    objects = {k for k, h in sealed_contents(Bank.open(bank))["objects"].items() if h}
    assert set(plan) >= METADATA
    assert objects <= set(plan)
    assert "build.lock" not in plan


def test_push_to_a_hub_model_repo_is_refused_before_any_request(small, tmp_path, monkeypatch):
    import huggingface_hub

    from prompt_bank.share import push_bank

    class NoNetwork:
        def __init__(self, *args, **kwargs):
            raise AssertionError("push reached the hub client")

    monkeypatch.setattr(huggingface_hub, "HfApi", NoNetwork)
    with pytest.raises(BankFormatError, match="hf://datasets/ORG/NAME"):
        push_bank(str(small), "hf://models/x", progress=False)
    empty = tmp_path / "hub"
    empty.mkdir()
    with RangeHTTPServer(empty) as hub:  # any request the command made would land here
        env = clean_env(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"))
        result = cli("bank", "push", str(small), "hf://models/x", "--quiet", env=env)
        assert hub.requests == []
    assert result.returncode == 2, result.stderr[-3000:]
    assert "hf://datasets/ORG/NAME" in result.stderr and "Traceback" not in result.stderr


def test_push_again_finds_a_same_size_damaged_object_by_its_etag(small, s3, s3_env):
    """A second push over S3 compares each object's ETag (its MD5) with the local bytes, so an
    object damaged there with the same size is found and sent again, and nothing else is."""
    url = f"s3://{BUCKET}/etag.zarr"
    first = cli("bank", "push", str(small), url, "--quiet", env=s3_env)
    assert first.returncode == 0, first.stderr[-3000:]
    plan = hub_upload_plan(small)
    victim = next(f for f in plan if f.startswith("visual/embeddings/c/"))
    size = (small / victim).stat().st_size
    key = f"etag.zarr/{victim}"
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=b"\x00" * size)  # same size, other bytes
    again = cli("bank", "push", str(small), url, "--quiet", env=s3_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "held this bank damaged: 1 files" in again.stdout, again.stdout
    written = versions(s3, url)
    assert written[victim] == 3  # pushed, damaged, repaired
    assert {k for k, n in written.items() if n != 1} == {victim}  # nothing else written again
    repaired = s3fs_filesystem(s3).cat_file(f"{BUCKET}/{key}")
    assert repaired == (small / victim).read_bytes()


@pytest.mark.parametrize(
    ("verdicts", "differ", "to_read"),
    [
        ({"a": True, "b": False, "c": None}, ["b"], ["c"]),  # MD5 ETags: a mismatch is real
        ({"a": False, "b": False}, [], ["a", "b"]),  # none matches (SSE-KMS): read, not resend
        ({"a": None}, [], ["a"]),  # multipart ETags or none (file://)
        ({}, [], []),
    ],
)
def test_etags_that_are_not_md5s_send_objects_to_be_read_not_uploaded(verdicts, differ, to_read):
    """moto's ETags are always MD5s, so the SSE-KMS case (32 hex digits, not the MD5) is the
    verdicts it gives: none matches."""
    from prompt_bank.share import judge_by_etags

    assert judge_by_etags(verdicts) == (differ, to_read)


@pytest.mark.parametrize("where", ["file", "s3"])
def test_two_pushes_of_different_banks_to_one_url_never_both_succeed(
    small, other, s3, tmp_path, where
):
    """Probe 11: two pushes of different banks to one URL both said "pushed" and left the other
    bank, a mix of both, or a root with both writers' bytes. A push holds the URL's lock
    (build.lock) while it writes: one push wins, the other is refused in one line."""
    from prompt_bank.format import BankMismatchError

    for trial in range(3):
        if where == "file":
            url, options = f"file://{tmp_path / f'race{trial}.zarr'}", None
        else:
            url, options = f"s3://{BUCKET}/race{trial}.zarr", s3_options(s3)
        winner, pushed, lost = race(
            lambda bank, url=url, options=options: push_bank(
                str(bank), url, options, progress=False
            ),
            small,
            other,
            (BankMismatchError,),
        )
        assert "being pushed to" in str(lost) or "holds another bank" in str(lost), lost
        there = Bank.open(url, options)
        assert there.seal["content_key"] == pushed["content_key"]
        assert np.array_equal(
            there.read("visual/embeddings"), Bank.open(winner).read("visual/embeddings")
        )
