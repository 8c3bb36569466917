"""Visual-guided alias selection (docs/design.md §3): keep the aliases the images agree with.

Each alias is scored on unlabeled images of the target data, in place of its class's canonical
name (the other classes keep theirs), by three figures:

- **activation**: the fraction of patches where its class's probability (softmax over the K
  classes of ``logit_scale x cos``) is >= ``threshold``: its region;
- **agreement**: how well its probability map m survives a random walk on the image's own patch
  affinity (``pretrained.proxy_attention.proxy_attention``, rows sum to 1): the correlation of m and
  ``m' = A^steps m`` over the image's patches, averaged over the images. A map that follows
  objects is stable under propagation; scattered or leaking activations are not. A flat map
  (no variation over the image) says nothing about where its class is and scores 0 on that
  image (a soft IoU of m and m', our first measure, gave a flat map the best score, 1);
- **entropy**: the mean class entropy (nats) of the softmax over classes inside its region: a
  confident alias separates its class from the others.

The canonical name is always kept; an alias is kept when it has a region, and beats the
canonical name on both agreement (higher) and entropy (lower). When the canonical name never
activates (no region: its entropy is undefined), nothing supports a comparison and its aliases
are dropped (ours, conservative; before, every alias that activated passed the entropy test
against an infinite entropy). :func:`write_alias_file` writes the kept aliases in VIP's text
format with every score as a comment line (``#``, which ``data.vocabulary`` skips).

All of the above is ours: VIP's paper describes the selection in words only, and its code
ships the selected alias files, not the selection. Third-party notes (unconfirmed) report a
rule with a cosine pre-filter of 0.7 between an alias's and its canonical name's text
embeddings, a region threshold of 0.4, an affinity from the backbone's attention, and scores
taken only over images where the region is not empty; ``SelectionConfig.reported()`` sets all
four (``prefilter``, ``threshold``, ``affinity="attention"``: the backbone's last-block attention
among patches, per head a softmax over the patch keys, then heads averaged, for dino.txt;
``nonempty_only``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from common.errors import SettingError, check_device, check_output_file
from common.progress import ProgressBar
from data.transforms import image_tensor
from pretrained.proxy_attention import proxy_attention

AFFINITIES = ("proxy", "attention")


@dataclass
class SelectionConfig:
    """How aliases are scored."""

    threshold: float = 0.5  # activation region: class probability >= this (reported: 0.4)
    steps: int = 2  # random-walk steps of the propagation
    logit_scale: float = 40.0  # as VIP's inference
    proxy_beta: float = 1.5  # the affinity: proxy attention's shift and scale
    proxy_gamma: float = 0.5
    prefilter: float | None = None  # drop an alias whose text cosine with its canonical name
    # is below this before any image is seen (reported: 0.7)
    nonempty_only: bool = False  # agreement over the images where the alias has a region only
    # (reported); else over every image
    affinity: str = "proxy"  # the random walk's affinity: "proxy" (ours: the proxy attention of
    # the dense features) or "attention" (reported: the backbone's last-block attention among
    # patches, a softmax over patch keys per head, heads averaged; dino.txt only)

    def __post_init__(self) -> None:
        # SettingError (a ValueError): one line naming the one bad option, its value, the range
        if not 0 < self.threshold < 1:
            raise SettingError(
                f"--threshold {self.threshold}: must be in (0, 1), a class probability "
                "(ours 0.5, reported 0.4)"
            )
        if self.steps < 1:
            raise SettingError(f"--steps {self.steps}: must be >= 1 random-walk steps (ours 2)")
        if not self.logit_scale > 0:
            raise SettingError(f"--logit-scale {self.logit_scale}: must be > 0 (VIP's 40)")
        if self.prefilter is not None and not -1 <= self.prefilter <= 1:
            raise SettingError(
                f"--prefilter {self.prefilter}: prefilter must be a cosine in [-1, 1] "
                "(reported 0.7), or left out"
            )
        if self.affinity not in AFFINITIES:
            raise SettingError(f"--affinity {self.affinity!r}: use one of {', '.join(AFFINITIES)}")

    @classmethod
    def reported(cls, **overrides) -> SelectionConfig:
        """The settings third-party notes report for VIP's selection (unconfirmed): pre-filter
        0.7, threshold 0.4, figures over non-empty regions only, the backbone's attention as the
        affinity."""
        reported = {
            "threshold": 0.4,
            "prefilter": 0.7,
            "nonempty_only": True,
            "affinity": "attention",
        }
        return cls(**{**reported, **overrides})


@dataclass
class AliasScore:
    """One alias's figures over the images seen."""

    alias: str
    owner: int  # its class
    canonical: bool
    activation: float  # mean fraction of patches in its region
    agreement: float  # correlation of its map and the propagated map (higher: better)
    entropy: float  # mean class entropy in its region, nats (lower: better; inf: no region)
    kept: bool = False
    reason: str = ""  # why it was dropped (empty when kept)


class AliasSelector:
    """Accumulates alias scores image by image; :meth:`scores` decides.

    Args:
        owner: (A,) class of each alias; ``canonical`` (K,) the index of each class's canonical
            alias (its first).
    """

    def __init__(
        self,
        aliases: list[str],
        owner: torch.Tensor,
        config: SelectionConfig,
        text_cosine: torch.Tensor | None = None,
    ):
        self.aliases = list(aliases)
        self.owner = owner.long().cpu()
        self.num_classes = int(self.owner.max()) + 1
        first = {}
        for a, k in enumerate(self.owner.tolist()):
            first.setdefault(k, a)
        if sorted(first) != list(range(self.num_classes)):
            raise ValueError("every class needs at least one alias (owner must cover 0..K-1)")
        self.canonical = torch.tensor([first[k] for k in range(self.num_classes)])
        self.config = config
        a = len(self.aliases)
        # (A,) each alias's text cosine with its canonical name (for the pre-filter)
        self.text_cosine = None if text_cosine is None else text_cosine.double().cpu()
        self._agreement = torch.zeros(a, dtype=torch.float64)  # summed per-image correlations
        self._counted = torch.zeros(a, dtype=torch.float64)  # images they were summed over
        self._entropy = torch.zeros(a, dtype=torch.float64)
        self._region = torch.zeros(a, dtype=torch.float64)
        self._patches = 0
        self.images = 0

    @torch.no_grad()
    def update(
        self, features: torch.Tensor, queries: torch.Tensor, affinity: torch.Tensor | None = None
    ) -> None:
        """features (B, N, D) dense patch features of B images; queries (A, D) alias queries;
        ``affinity`` (B, N, N) rows summing to 1, required with ``affinity="attention"``
        (default: the proxy attention of the features)."""
        if features.ndim != 3 or queries.ndim != 2 or features.shape[-1] != queries.shape[-1]:
            raise ValueError(
                f"features {tuple(features.shape)} must be (B, N, D) and queries "
                f"{tuple(queries.shape)} (A, D) with the same D"
            )
        f = F.normalize(features.float(), dim=-1)
        q = F.normalize(queries.float().to(f.device), dim=-1)
        if affinity is None:
            if self.config.affinity != "proxy":
                raise ValueError(
                    f"affinity={self.config.affinity!r}: pass the (B, N, N) affinity to update()"
                )
            affinity = proxy_attention(f, self.config.proxy_beta, self.config.proxy_gamma)
        elif affinity.shape != (f.shape[0], f.shape[1], f.shape[1]):
            raise ValueError(
                f"affinity {tuple(affinity.shape)} must be (B, N, N) for features {tuple(f.shape)}"
            )
        for i in range(f.shape[0]):
            prob, entropy = self._substituted(self.config.logit_scale * f[i] @ q.T)  # (N, A)
            propagated = prob
            for _ in range(self.config.steps):
                propagated = affinity[i].double() @ propagated
            region = prob >= self.config.threshold
            has_region = region.any(dim=0)  # (A,)
            counted = has_region if self.config.nonempty_only else torch.ones_like(has_region)
            self._agreement += (_correlation(prob, propagated) * counted).cpu()
            self._counted += counted.cpu()
            self._entropy += (entropy * region).sum(0).cpu()
            self._region += region.sum(0).cpu()
            self._patches += prob.shape[0]
            self.images += 1

    def _substituted(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, A) alias logits -> per alias a, with a in place of its class's canonical name:
        its class's probability (N, A) and the entropy over classes (N, A), in float64."""
        x = logits.double()
        owner, canon = self.owner.to(x.device), self.canonical.to(x.device)
        top = x.max(dim=1, keepdim=True).values
        e = (x - top).exp()  # (N, A), shifted so the largest is 1
        ec, lc = e[:, canon], (x - top)[:, canon]  # (N, K) the canonical names
        # sums over the other classes, without subtracting a dominant term (cancellation)
        others = _sum_of_others(ec)[:, owner]  # (N, A)
        others_weighted = _sum_of_others(ec * lc)[:, owner]
        z = others + e
        prob = e / z
        entropy = z.log() - (others_weighted + e * (x - top)) / z
        return prob, entropy

    def scores(self) -> list[AliasScore]:
        """Every alias's figures, ``kept`` decided against its class's canonical name."""
        if self.images == 0:
            raise ValueError("no image was scored: call update() with at least one image")
        agreement = (self._agreement / self._counted.clamp(min=1)).tolist()
        entropy = [
            e / r if r > 0 else math.inf
            for e, r in zip(self._entropy.tolist(), self._region.tolist())
        ]
        activation = (self._region / self._patches).tolist()
        canon = self.canonical.tolist()
        out = []
        for a, alias in enumerate(self.aliases):
            c = canon[self.owner[a]]
            reason = "" if a == c else self._drop_reason(a, c, agreement, entropy)
            out.append(
                AliasScore(
                    alias,
                    int(self.owner[a]),
                    a == c,
                    activation[a],
                    agreement[a],
                    entropy[a],
                    not reason,
                    reason,
                )
            )
        return out

    def _drop_reason(self, a: int, c: int, agreement: list, entropy: list) -> str:
        """Why alias ``a`` is not kept against its canonical name ``c`` ('' if kept)."""
        prefilter, cosine = self.config.prefilter, self.text_cosine
        if prefilter is not None and cosine is not None and cosine[a] < prefilter:
            return f"text cosine with the canonical name {cosine[a]:.2f} < {prefilter}"
        if math.isinf(entropy[a]):
            return "no region"
        if math.isinf(entropy[c]):
            return "the canonical name has no region: nothing to compare with"
        if agreement[a] <= agreement[c]:
            return "agreement not above the canonical name's"
        if entropy[a] >= entropy[c]:
            return "entropy not below the canonical name's"
        return ""


def _correlation(m: torch.Tensor, n: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """(N, A), (N, A) -> (A,) Pearson correlation over the N patches; 0 where either map is
    flat (variance below ``eps``)."""
    dm, dn = m - m.mean(dim=0), n - n.mean(dim=0)
    var_m, var_n = (dm * dm).sum(dim=0), (dn * dn).sum(dim=0)
    flat = (var_m < eps) | (var_n < eps)
    corr = (dm * dn).sum(dim=0) / (var_m * var_n).clamp(min=eps * eps).sqrt()
    return corr.masked_fill(flat, 0.0)


def _sum_of_others(x: torch.Tensor) -> torch.Tensor:
    """(N, K) -> (N, K): entry k is the sum over j != k, as prefix + suffix sums."""
    prefix = F.pad(x.cumsum(dim=1)[:, :-1], (1, 0))
    suffix = F.pad(x.flip(1).cumsum(dim=1)[:, :-1], (1, 0)).flip(1)
    return prefix + suffix


def _figures(s: AliasScore) -> str:
    return f"agreement {s.agreement:.3f}, entropy {s.entropy:.3f}, activation {s.activation:.3f}"


def write_alias_file(scores: list[AliasScore], path: str | Path, header: list[str]) -> Path:
    """The kept aliases, one class per line (canonical first), each line preceded by comment
    lines with the scores of all of the class's aliases."""
    check_output_file(path, "--out", example="aliases.txt")
    path = Path(path)
    by_class: dict[int, list[AliasScore]] = {}
    for s in scores:
        by_class.setdefault(s.owner, []).append(s)
    lines = [f"# {h}" for h in header]
    for k in sorted(by_class):
        for s in by_class[k]:
            verdict = "canonical" if s.canonical else ("kept" if s.kept else f"dropped: {s.reason}")
            lines.append(f"# class {k} {s.alias!r}: {_figures(s)} ({verdict})")
        lines.append(", ".join(s.alias for s in by_class[k] if s.kept))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written file left behind
        raise
    return path


# ---------------------------------------------------------------------------------------------
# the command: cli.py vip select-aliases


def selection_images(data: str, root: str | None, limit: int | None) -> list[Path]:
    """Image paths of a dataset (its evaluated split; the image folder when labels are absent)
    or of a folder of images, at most ``limit``, in a fixed order."""
    from data.catalog import DATASETS, DatasetError, datasets_root, get_dataset_spec
    from data.datasets import SegmentationFolder
    from model.predictor import expand_images

    if data not in DATASETS:
        if not Path(data).exists():
            raise DatasetError(
                f"--data {data!r} is neither a dataset ({', '.join(DATASETS)}) nor a folder or "
                "file of images"
            )
        paths = expand_images([data])
    else:
        spec = get_dataset_spec(data)
        try:
            paths = [f.image for f in SegmentationFolder(spec, root, on_bad_sample="skip").files]
        except DatasetError:  # unlabeled: every image of its folder
            folder = spec.image_root(datasets_root(root))
            if not folder.is_dir():
                raise
            paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in spec.image_suffixes)
    if not paths:
        raise DatasetError(f"--data {data!r}: no image found")
    return paths[:limit] if limit else paths


def _square(path: Path, size: int) -> torch.Tensor:
    """(3, size, size) in [0, 1]: short side resized to ``size``, centre crop."""
    from data.datasets import read_image
    from data.transforms import resize_short_side

    image = image_tensor(read_image(path))
    x = resize_short_side(image, size)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[:, top : top + size, left : left + size]


def check_selection_arguments(
    out: str | Path, limit: int | None, size: int, batch_size: int, device: str | None
) -> None:
    """select-aliases' options checked before any work: one line naming the bad option."""
    if limit is not None and limit < 0:
        raise SettingError(f"--limit {limit}: must be >= 0 images (0: all)")
    if size < 1:
        raise SettingError(f"--size {size}: must be >= 1 pixels (default 336)")
    if batch_size < 1:
        raise SettingError(f"--batch-size {batch_size}: must be >= 1 images (default 8)")
    check_device(device)
    check_output_file(out, "--out", example="aliases.txt")


def select_aliases(
    data: str,
    vocabulary,
    out: str | Path,
    encoder: str = "dinotxt-l16",
    encoder_weights: str | None = None,
    attention: str | None = None,
    templates: str = "seg",
    config: SelectionConfig | None = None,
    root: str | None = None,
    limit: int | None = 200,
    size: int = 336,
    batch_size: int = 8,
    device: str | None = None,
    progress: bool = True,
) -> tuple[Path, list[AliasScore]]:
    """Score every alias of ``vocabulary`` on images of ``data``; write the kept ones to ``out``."""
    import time

    from data.templates import load_templates
    from data.vocabulary import load_vocabulary
    from model.vip.dense import create_dense_encoder
    from model.vip.segmenter import encode_aliases
    from pretrained.backbone import clip_tokenizer_for, create_encoder, text_encoder_for

    config = config or SelectionConfig()
    check_selection_arguments(out, limit, size, batch_size, device)  # before any work
    vocab = load_vocabulary(vocabulary)
    paths = selection_images(data, root, limit)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    built = create_encoder(encoder, weights=encoder_weights)
    built.model.to(device)
    template_list = load_templates(templates)
    queries = encode_aliases(
        text_encoder_for(built).to(device), vocab, template_list, clip_tokenizer_for(built.preset)
    )
    dense = create_dense_encoder(built, attention, config.proxy_beta, config.proxy_gamma)
    attention = dense.attention
    if size < dense.patch_size:
        raise SettingError(
            f"--size {size}: smaller than {encoder!r}'s {dense.patch_size}-pixel patches; use "
            f">= {dense.patch_size} (default 336)"
        )
    if config.affinity == "attention" and not hasattr(dense, "features_and_attention"):
        from pretrained.presets import PresetError

        raise PresetError(
            f"affinity 'attention' (the reported rule's backbone attention) is implemented for "
            f"dino.txt encoders; {encoder!r} is a CLIP: pass --affinity proxy"
        )
    unit = torch.nn.functional.normalize(queries.embeddings().float(), dim=-1)  # (A, D)
    first = {}
    for a, k in enumerate(queries.owner.tolist()):
        first.setdefault(k, a)
    canonical = torch.tensor([first[k] for k in queries.owner.tolist()])
    text_cosine = (unit * unit[canonical]).sum(dim=-1)  # (A,) cosine with the canonical name
    selector = AliasSelector(queries.aliases, queries.owner, config, text_cosine)
    start = time.perf_counter()
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    scoring = ProgressBar("scoring aliases", len(paths), unit="images", enabled=progress)
    with scoring as bar, torch.inference_mode():
        for batch in batches:
            images = torch.stack([_square(p, size) for p in batch]).to(device)
            if config.affinity == "attention":  # one pass gives both
                features, affinity = dense.features_and_attention(images)  # (B, D, h, w), (B,N,N)
            else:
                features, affinity = dense(images), None
            selector.update(
                features.flatten(2).transpose(1, 2), queries.embeddings().to(device), affinity
            )
            bar.advance(len(batch))
    scores = selector.scores()
    kept = sum(s.kept and not s.canonical for s in scores)
    header = [
        f"dpseg vip select-aliases: {len(paths)} images of {data}, vocabulary {vocab.source}",
        f"encoder {encoder} (attention {attention}), templates {templates}, {size} px, "
        f"threshold {config.threshold}, {config.steps} random-walk steps, logit scale "
        f"{config.logit_scale}, text pre-filter {config.prefilter}, affinity {config.affinity}, "
        "agreement over "
        f"{'images where the alias has a region' if config.nonempty_only else 'every image'}, "
        f"{time.perf_counter() - start:.1f} s",
        f"an alias is kept when it has a region, and its agreement is higher and its entropy "
        f"lower than its class's canonical name: {kept} of {len(scores) - len(vocab)} aliases "
        "kept",
        "canonical name first, aliases comma-separated (VIP's cls_*.txt format)",
    ]
    return write_alias_file(scores, out, header), scores
