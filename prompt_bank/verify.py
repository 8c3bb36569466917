"""``cli.py bank verify``: schema, readable chunks, finite and normalised values, completeness,
and optionally a rebuild of random items compared with what is stored."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from common.errors import printable
from pretrained.fingerprint import fingerprint_mismatch
from prompt_bank.format import REFETCH, BankFormatError
from prompt_bank.integrity import check_shard, mend_advice
from prompt_bank.seal import sealed_contents
from prompt_bank.store import Bank, is_url

NORM_TOLERANCE = 1e-3  # |norm - 1| allowed for stored embeddings (float32 normalisation)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    location: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def lines(self) -> list[str]:
        out = [f"{'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}" for c in self.checks]
        verdict = "verified" if self.ok else "FAILED verification"
        out.append(f"bank {printable(self.location)}: {verdict}")  # a newline in a path (a probe)
        return out


def _check_shards(bank: Bank, report: VerifyReport) -> dict[str, np.ndarray] | None:
    """Every shard against its manifest, decoded once; every problem named with its repair."""
    legacy = bank.attrs["format_version"] < 2
    states = [
        check_shard(bank.group, bank.layout, i, legacy=legacy)
        for i in range(len(bank.layout.shard_ranges()))
    ]
    problems = [f"shard {s.index}: {p}" for s in states for p in s.problems]
    repair = mend_advice(bank.location)
    what = (
        "every object decodes and passes its checksum (format v1: no manifest to compare with)"
        if legacy
        else "every object exists, decodes and matches its manifest's sha256; done flags agree "
        "with the data"
    )
    report.add(
        "objects", not problems, what if not problems else "; ".join(problems) + f" ({repair})"
    )
    try:
        sealed = sealed_contents(bank)
    except BankFormatError as e:
        report.add("sealed contents", False, str(e))
        sealed = None
    if sealed is not None and not problems:
        stored = {k: v for s in states for k, v in s.hashes.items()}
        stale = sorted(k for k, v in sealed["objects"].items() if stored.get(k) != v)
        report.add(
            "sealed contents",
            not stale,
            f"content key {sealed['content_key'][:16]}, {len(sealed['objects'])} objects as sealed"
            if not stale
            else f"{len(stale)} objects differ from zarr.json's contents ({', '.join(stale[:3])}) "
            f"({repair})",
        )
    if sealed is not None and not problems:  # what repair and pull read must be the seal's
        from prompt_bank.seal import manifest_disagreement

        wrong = manifest_disagreement(bank.group, bank.layout, sealed)
        report.add(
            "manifests",
            wrong is None,
            "agree with the seal" if wrong is None else f"{wrong} (edited or damaged: {REFETCH})",
        )
    if sealed is not None and not is_url(bank.location):  # the card, which no hash covers
        from prompt_bank.card import card_problem

        wrong = card_problem(bank.location, dict(bank.attrs))
        report.add(
            "card",
            wrong is None,
            "README.md is the card the attributes give"
            if wrong is None
            else f"{wrong} (python cli.py bank repair {bank.location} writes it again)",
        )
    if problems:
        return None
    return {
        path: np.concatenate([s.data[path] for s in states])
        for path in bank.layout.arrays()
        if path != "visual/images"
    }


def verify_bank(
    bank: Bank,
    regenerate: int = 0,
    seed: int = 0,
    tolerance: float = 0.0,
    generator_weights: str | None = None,
    encoder_weights: str | None = None,
) -> VerifyReport:
    """Check a bank (already schema-validated by ``Bank.open``)."""
    report = VerifyReport(bank.location)
    report.add(
        "schema",
        True,
        f"format v{bank.attrs['format_version']}, arrays {', '.join(bank.layout.arrays())}",
    )
    data = _check_shards(bank, report)
    if data is None:
        return report
    done = data["visual/done"]
    report.add(
        "complete",
        bool(done.all()),
        f"{int(done.sum())}/{done.size} items done"
        + ("" if done.all() else " (resume with the same bank build command)"),
    )
    bad_values = [
        f"{p}: {int((~np.isfinite(v.astype(np.float32))).sum())} non-finite values"
        for p, v in data.items()
        if v.dtype != bool and not np.isfinite(v.astype(np.float32)).all()
    ]
    report.add("finite", not bad_values, "; ".join(bad_values) or "no NaN or Inf")
    norms = []
    for path, mask in (("text/embeddings", None), ("visual/embeddings", done)):
        n = np.linalg.norm(data[path].astype(np.float64), axis=-1)
        n = n[mask] if mask is not None else n.reshape(-1)
        worst = float(np.abs(n - 1).max()) if n.size else 0.0
        norms.append((path, worst))
    off = [f"{p} max |norm-1| = {w:.2e}" for p, w in norms if w > NORM_TOLERANCE]
    report.add(
        "normalised",
        not off,
        "; ".join(off) or ", ".join(f"{p} max |norm-1| = {w:.1e}" for p, w in norms),
    )
    if regenerate:
        _regenerate(
            bank, data, report, regenerate, seed, tolerance, generator_weights, encoder_weights
        )
    return report


def _regenerate(bank, data, report, count, seed, tolerance, generator_weights, encoder_weights):
    """Rebuild `count` random done items with the recorded plan and compare."""
    import torch

    from prompt_bank.build import (
        BankModels,
        compute_batch,
        config_from_bank,
        shard_batches,
        shard_prompt_embeds,
    )

    attrs = bank.attrs
    done = data["visual/done"]
    candidates = np.argwhere(done)
    if not len(candidates):
        report.add("regenerate", False, "no done items to regenerate")
        return
    rng = np.random.default_rng(seed)
    picks = [
        tuple(int(i) for i in candidates[j])
        for j in rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    ]

    g, e, b = attrs["generator"], attrs["encoder"], attrs["build"]
    config = config_from_bank(attrs, generator_weights, encoder_weights, progress=False)
    device = torch.device(
        "cuda" if g["device_type"] == "cuda" and torch.cuda.is_available() else "cpu"
    )
    if device.type != g["device_type"]:
        report.add(
            "regenerate",
            False,
            f"the bank was built on {g['device_type']}; this machine has no {g['device_type']} device, so bits cannot match",
        )
        return
    if device.type == "cpu" and b.get("cpu_threads"):
        torch.set_num_threads(int(b["cpu_threads"]))
    models = BankModels(config, device)
    packages = attrs.get("builder", {}).get("packages")
    for kind, built, recorded, option in (
        ("generator", models.gen, g, "--generator-weights"),
        ("encoder", models.enc, e, "--encoder-weights"),
    ):
        if built.fingerprint != recorded["fingerprint"]:
            mismatch = fingerprint_mismatch(
                f"the bank's {kind}",
                recorded["preset"],
                recorded["fingerprint"],
                built.preset.name,
                built.fingerprint,
                packages,
            )
            report.add("regenerate", False, f"{mismatch}; pass the bank's weights with {option}")
            return
    layout, worst, details = bank.layout, 0.0, []
    prompt_cache: dict = {}
    keep = "visual/images" in layout.arrays()
    for k, p, n in picks:
        k0, k1 = next((a, z) for a, z in layout.shard_ranges() if a <= k < z)
        batch = next(
            bt
            for bt in shard_batches(
                k0, k1, layout.num_templates, layout.images_per_prompt, b["batch_size"]
            )
            if (k, p, n) in bt
        )
        if (k0, k1) not in prompt_cache:  # once per shard, however many of its items are picked
            prompt_cache[(k0, k1)] = shard_prompt_embeds(models, config, k0, k1)
        values = compute_batch(models, config, prompt_cache[(k0, k1)], batch, keep)
        i = batch.index((k, p, n))
        diffs = {}
        for path, rows in values.items():
            stored = data[path][k, p, n] if path in data else np.asarray(bank.array(path)[k, p, n])
            fresh = rows[i].astype(stored.dtype)  # levels are stored in float16 or float32
            diffs[path] = float(np.abs(fresh.astype(np.float64) - stored.astype(np.float64)).max())
        item_worst = max(diffs.values())
        worst = max(worst, item_worst)
        details.append(f"({k},{p},{n}) max diff {item_worst:.2e}")
    report.add(
        "regenerate",
        worst <= tolerance,
        f"{len(picks)} items rebuilt, max abs diff {worst:.2e} (tolerance {tolerance:g}): "
        + ", ".join(details),
    )
