"""Building a prompt bank: batched Stable Diffusion -> frozen CLIP encoder -> Zarr
(docs/bank_format.md).

The work is a fixed plan: classes are split into shards of ``classes_per_shard``; the items
``(p, n)`` of one class are taken in order and cut into batches of ``batch_size`` (the last one
may be short), and a class's text prompts go through the text encoder on their own. A batch's
bits depend on its composition, the device, the dtype and (on CPU) the thread count; all of them
are recorded in the bank and reused on resume and by every rank, and since a batch never mixes
classes, an item's bits do not depend on the classes around it: a merged or subset bank equals a
direct build of its classes (format v2; v1 batched across classes). Each item's Stable Diffusion
noise comes from its own generator, seeded from (base seed, class, template index, image index).

A rank owns whole shards (shard i goes to rank ``i % world_size``). Results are buffered per
shard and flushed every ``flush_seconds``, at the shard's end, and when SIGINT or SIGTERM
arrives, by the manifest protocol of prompt_bank/integrity.py: a kill at any moment loses at
most the unflushed batches, never leaves a flag without its data, and any damage found on resume
(a missing, truncated, swapped or stale object) drops that shard, which is built again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import torch

from common.errors import SettingError, printable
from common.progress import ProgressBar
from data.vocabulary import Vocabulary
from pretrained.fingerprint import package_versions
from pretrained.presets import get_bank_preset
from prompt_bank.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    BankFormatError,
    BankLayout,
    BankMismatchError,
    create_arrays,
    validate_group,
)
from prompt_bank.integrity import check_shard, drop_shard, flush_shard, settle_manifest
from prompt_bank.safety import (
    BankLockError,
    Interrupted,
    build_lock,
    check_output,
    interruptible,
)
from prompt_bank.store import open_group

DEFAULT_BATCH_SIZE = 8
DEFAULT_CLASSES_PER_SHARD = 16
TEXT_CHUNK = 256  # prompts per text-encoder forward


def item_seed(base_seed: int, class_entry: str, template_index: int, image_index: int) -> int:
    """The Stable Diffusion seed of one item, independent of batch, rank and resume.

    The class is identified by its full entry (all synonyms), so two classes that share a
    canonical name (ADE-847's two "pot"s) still get different images.
    """
    key = f"{base_seed}\x1f{class_entry}\x1f{template_index}\x1f{image_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


def class_batches(
    k: int, num_templates: int, images_per_prompt: int, batch_size: int
) -> list[list[tuple[int, int, int]]]:
    """The batches of class k: its items (k, p, n) in order, cut every `batch_size`."""
    items = [(k, p, n) for p in range(num_templates) for n in range(images_per_prompt)]
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def shard_batches(
    k0: int, k1: int, num_templates: int, images_per_prompt: int, batch_size: int
) -> list[list[tuple[int, int, int]]]:
    """The batch plan of shard [k0, k1): each class's batches, classes in order."""
    return [
        batch
        for k in range(k0, k1)
        for batch in class_batches(k, num_templates, images_per_prompt, batch_size)
    ]


@dataclass
class BuildConfig:
    """What to build; every field that changes the bank's content is recorded in it."""

    vocabulary: Vocabulary
    templates: list[str]
    images_per_prompt: int = 1  # N images per (class, template)
    generator: str = "tiny-sd"  # generator preset
    encoder: str = "tiny-convnext"  # encoder preset
    generator_weights: str | None = None  # local diffusers folder instead of the hub
    encoder_weights: str | None = None  # local CLIP weights instead of the hub
    random_weights: bool = False  # real architectures, random weights (speed checks only)
    seed: int = 0  # base seed of every item's seed
    steps: int | None = None  # override the preset's denoising steps
    guidance: float | None = None  # override the preset's guidance scale
    resolution: int | None = None  # override the generator's square image side (px, x 8)
    batch_size: int | None = None  # items per batch; None = the bank's own, or 8 for a new one
    classes_per_shard: int = DEFAULT_CLASSES_PER_SHARD  # classes per shard (a unit of storage)
    keep_images: bool = False  # also store the generated images (visual/images)
    level_dtype: str = "float16"  # dtype of visual/level_<j>
    device: str | None = None  # "cpu", "cuda"; None = cuda when available
    cpu_threads: int | None = None  # CPU only: threads (recorded; bits depend on it)
    flush_seconds: float = 60.0  # write buffered results at least this often (0: every batch)
    progress: bool = True
    command: str | None = None  # the command line, recorded in the bank and its card

    def __post_init__(self) -> None:
        # A 0 is refused, never read as "the default" (None is the default): SettingError is a
        # user error (one line, exit status 2) and a ValueError.
        for option, value in (
            ("images-per-prompt", self.images_per_prompt),
            ("batch-size", self.batch_size),
            ("classes-per-shard", self.classes_per_shard),
            ("steps", self.steps),
            ("cpu-threads", self.cpu_threads),
        ):
            if value is not None and value < 1:
                default = " (leave it out for the default)" if option in OPTIONAL else ""
                raise SettingError(f"--{option} {value}: must be >= 1{default}")
        for option, value, most in (
            ("images-per-prompt", self.images_per_prompt, 1000),
            ("resolution", self.resolution, 2048),
            ("steps", self.steps, 1000),
            ("cpu-threads", self.cpu_threads, 1024),
        ):  # ours: far above any use, below what runs out of memory before a line is said
            if value is not None and value > most:
                raise SettingError(f"--{option} {value}: must be <= {most}")
        if self.flush_seconds < 0:
            raise SettingError(
                f"--flush-seconds {self.flush_seconds}: must be >= 0 (0: after every batch)"
            )
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise SettingError(
                f"--resolution {self.resolution}: must be a multiple of 8 (the VAE downsamples "
                "by 8; leave it out for the generator's own)"
            )
        if self.guidance is not None and not self.guidance >= 0:
            raise SettingError(
                f"--guidance {self.guidance}: the classifier-free guidance scale must be >= 0 "
                "(<= 1: no guidance; leave it out for the preset's)"
            )


OPTIONAL = ("batch-size", "steps", "cpu-threads")
"""BuildConfig's options whose default (None) comes from the preset, the bank or the machine."""


@dataclass
class BuildSummary:
    location: str
    items_done: int  # items computed by this run (all ranks)
    items_total: int
    seconds: float
    bytes_stored: int
    skipped_shards: int = 0
    rank_items: list[int] = field(default_factory=list)
    phases: str = ""  # rank 0's time shares: generation, encoding, storage

    def line(self) -> str:
        rate = self.items_done / self.seconds if self.seconds > 0 else 0.0
        ranks = ""
        if len(self.rank_items) > 1:
            ranks = (
                f" by {len(self.rank_items)} processes ({' + '.join(map(str, self.rank_items))})"
            )
        return (
            f"bank {printable(self.location)}: {self.items_done} items built{ranks} ({self.items_total} in "
            f"the bank, {self.skipped_shards} shards already complete) in {self.seconds:.1f} s, "
            f"{rate:.2f} items/s, {self.bytes_stored / 1e6:.2f} MB stored"
            + (f"; time: {self.phases}" if self.phases else "")
        )


def resolve_preset(preset: str | None, generator: str | None, encoder: str | None):
    """(generator, encoder) from a bank preset, with either part overridable."""
    bank = get_bank_preset(preset or "paper")
    return generator or bank.generator, encoder or bank.encoder


class Stopwatch:
    """Seconds spent per phase (generation, encoding, storage); waits for CUDA to be honest."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def shares(self) -> str:
        total = sum(self.seconds.values()) or 1.0
        return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in self.seconds.items())


class BankModels:
    """The generator pipeline and the frozen encoder, placed on the build device."""

    def __init__(self, config: BuildConfig, device: torch.device):
        from pretrained.backbone import clip_tokenizer_for, create_encoder, text_encoder_for
        from pretrained.names import resolve_encoder, resolve_generator, with_sampling
        from prompt_bank.generator import conditioning_for, create_generator

        self.device = device
        # both names first: a typo in either ends before any weights load
        generator = with_sampling(resolve_generator(config.generator), config.resolution)
        encoder = resolve_encoder(config.encoder)
        gen = create_generator(
            generator, weights=config.generator_weights, random_weights=config.random_weights
        )
        enc = create_encoder(
            encoder, weights=config.encoder_weights, random_weights=config.random_weights
        )
        self.gen, self.enc = gen, enc
        self.steps = gen.preset.steps if config.steps is None else config.steps
        self.guidance = gen.preset.guidance if config.guidance is None else config.guidance
        if not 1 <= self.steps <= gen.preset.max_steps:
            raise SettingError(
                f"--steps {self.steps} is out of range for generator {gen.preset.name!r} "
                f"(1..{gen.preset.max_steps})"
            )
        cuda = device.type == "cuda"
        self.rendered = gen.preset.kind == "toy-render"  # prompts drawn directly, no diffusion
        self.dtype = torch.float16 if cuda and not self.rendered else torch.float32
        self.pipe = gen.pipeline.to(device)
        if self.dtype != torch.float32:
            from diffusers.utils import logging as diffusers_logging

            level = diffusers_logging.get_verbosity()
            diffusers_logging.set_verbosity_error()  # its fp32-module advice is for from_pretrained
            self.pipe.to(torch_dtype=self.dtype)
            diffusers_logging.set_verbosity(level)
        self.encoder = text_encoder_for(enc).to(device).eval()
        if cuda:  # channels_last speeds up the convolutions; bits stay fixed per batch shape
            if not self.rendered:
                self.pipe.unet.to(memory_format=torch.channels_last)
                self.pipe.vae.to(memory_format=torch.channels_last)
            self.encoder.to(memory_format=torch.channels_last)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
        self.tokenizer = clip_tokenizer_for(enc.preset)
        self.level_dims = tuple(self.encoder.level_dims())
        self.height, self.width = gen.preset.height, gen.preset.width
        self.conditioning = None if self.rendered else conditioning_for(gen.preset)
        self.timer = Stopwatch(device)

    def attrs(self, config: BuildConfig) -> tuple[dict, dict]:
        g, e = self.gen, self.enc
        generator = {
            "preset": g.preset.name,
            "model_id": g.preset.model_id,
            "revision": g.preset.revision,
            "family": g.preset.family,
            "license": g.preset.license,
            "scheduler": "none" if self.rendered else type(self.pipe.scheduler).__name__,
            "steps": self.steps,
            "guidance": self.guidance,
            "height": self.height,
            "width": self.width,
            "base_seed": config.seed,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device_type": self.device.type,
            "fingerprint": g.fingerprint,
        }
        encoder = {
            "preset": e.preset.name,
            "arch": e.preset.arch,
            "pretrained": e.preset.pretrained,
            "revision": e.preset.revision,
            "license": e.preset.license,
            "image_size": e.preset.image_size,
            "levels": list(e.preset.levels),
            "embed_dim": self.encoder.embed_dim,
            "level_dims": list(self.level_dims),
            "autocast": "bfloat16" if self.device.type == "cuda" else None,
            "fingerprint": e.fingerprint,
        }
        return generator, encoder

    @torch.inference_mode()
    def text_embeddings(self, classes: list, templates: list[str]) -> np.ndarray:
        """(K_s, P, D): per class and template, synonyms averaged then renormalised (§2.1)."""
        with self.autocast:  # fixed chunks bound memory and keep the bits independent of K
            emb = self.encoder.encode_class_texts(classes, templates, self.tokenizer, TEXT_CHUNK)
        return emb.cpu().numpy()

    @torch.inference_mode()
    def prompt_embeds(self, prompts: list[str]) -> list:
        """What the generator is conditioned on, one row per prompt: the pipeline family's
        prompt embeddings (``prompt_bank.generator.conditioning_for``), or the prompts
        themselves for the toy renderer."""
        if self.rendered:
            return list(prompts)
        chunks = [prompts[i : i + TEXT_CHUNK] for i in range(0, len(prompts), TEXT_CHUNK)]
        return [row for c in chunks for row in self.conditioning.encode(self.pipe, c, self.device)]

    @torch.inference_mode()
    def generate_and_encode(self, conditions: list, seeds: list[int]):
        """B conditions (rows of :meth:`prompt_embeds`) -> images (B, 3, H, W) in [0, 1] and
        their encoding."""
        if self.rendered:
            with self.timer("generation"):
                images = self.pipe.render(conditions, seeds).to(self.device)
            with self.timer("encoding"), self.autocast:
                encoding = self.encoder.encode_images(images)
            return images, encoding
        kwargs = self.conditioning.call_kwargs(self.pipe, conditions, self.guidance, self.device)
        with self.timer("generation"):
            images = self.pipe(
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                height=self.height,
                width=self.width,
                generator=[torch.Generator(self.device).manual_seed(s) for s in seeds],
                output_type="pt",
                **kwargs,
            ).images
        with self.timer("encoding"), self.autocast:
            encoding = self.encoder.encode_images(images.float())
        return images, encoding


# Model records added to banks of this format later (information, not settings): a bank
# without them resumes.
RECORDED_SINCE = ("family", "license", "revision")


def _check_resume(stored: dict, expected: dict, location: str) -> None:
    """Refuse to resume with other settings; say exactly what differs."""
    differences = []
    for key in ("classes", "templates", "images_per_prompt"):
        if stored.get(key) != expected[key]:
            if key == "classes":
                a, b = stored.get(key) or [], expected[key]
                first = next(
                    (i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))
                )
                differences.append(
                    f"vocabulary: stored {len(a)} classes, now {len(b)}; first difference at "
                    f"class {first}: {a[first] if first < len(a) else None!r} vs "
                    f"{b[first] if first < len(b) else None!r}"
                )
            elif key == "templates":
                differences.append(
                    f"templates: stored {len(stored.get(key) or [])}, now {len(expected[key])}"
                )
            else:
                differences.append(f"{key}: stored {stored.get(key)}, now {expected[key]}")
    for section in ("generator", "encoder", "build"):
        old, new = stored.get(section) or {}, expected[section]
        for key in sorted(set(old) | set(new)):
            if key in RECORDED_SINCE and key not in old:  # a bank older than the record
                continue
            if old.get(key) != new.get(key):
                differences.append(
                    f"{section}.{key}: stored {old.get(key)!r}, now {new.get(key)!r}"
                )
    if differences:
        raise BankMismatchError(
            f"{location} was started with other settings, so resuming would mix two banks: "
            + "; ".join(differences)
            + ". Rerun with the original settings, or write to another --out"
        )


def config_from_bank(
    attrs: dict,
    generator_weights: str | None = None,
    encoder_weights: str | None = None,
    progress: bool = True,
    device: str | None = None,
) -> BuildConfig:
    """The build settings a bank records (to repair it, or rebuild items to verify them)."""
    g, e, b = attrs["generator"], attrs["encoder"], attrs["build"]
    return BuildConfig(
        vocabulary=Vocabulary.from_entries(attrs["classes"], name="bank", allow_duplicates=True),
        templates=list(attrs["templates"]),
        images_per_prompt=int(attrs["images_per_prompt"]),
        generator=g["preset"],
        encoder=e["preset"],
        generator_weights=generator_weights,
        encoder_weights=encoder_weights,
        seed=int(g["base_seed"]),
        steps=g["steps"],
        guidance=g["guidance"],
        resolution=g.get("height"),
        batch_size=b["batch_size"],
        classes_per_shard=b["classes_per_shard"],
        keep_images=bool(b["keep_images"]),
        level_dtype=b["level_dtype"],
        device=device or g.get("device_type"),
        cpu_threads=b.get("cpu_threads"),
        progress=progress,
        command=attrs.get("command"),
    )


def _distributed_state(device: str | None):
    from accelerate import PartialState

    use_cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    if device not in (None, "cpu", "cuda"):
        raise SettingError(f"--device {device!r}: use cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise SettingError("--device cuda: no CUDA device is visible; use --device cpu")
    return PartialState(cpu=use_cpu)


def _rank0_then_share(state, work) -> None:
    """Run `work` on rank 0; if it raises, every rank raises (our user errors as themselves,
    anything else as a RuntimeError naming rank 0's), rather than the other ranks waiting at a
    barrier for a rank that has given up."""
    error = None
    if state.is_main_process:
        try:
            work()
        except Exception as e:
            error = e
    if state.num_processes > 1:
        import torch.distributed as dist

        box = [None if error is None else (type(error).__name__, str(error))]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None and error is None:
            kinds = {c.__name__: c for c in (BankFormatError, BankMismatchError, BankLockError)}
            name, message = box[0]
            if name in kinds:
                raise kinds[name](message)
            raise RuntimeError(f"rank 0 failed with {name}: {message}")
    if error is not None:
        raise error


def build_bank(config: BuildConfig, location: str | os.PathLike) -> BuildSummary:
    """Build, resume or repair the bank at `location`; every rank of a launch calls this.

    SIGINT and SIGTERM raise :class:`Interrupted` at any point (loading models included),
    after the items finished so far are flushed: the command ends in one line.

    Raises:
        BankFormatError: `location` holds something that is not a dpseg bank (left untouched),
            or a v1 bank (which cannot be resumed).
        BankMismatchError: the bank was started with other settings.
        BankLockError: another process is building it.
        Interrupted: SIGINT/SIGTERM; the finished items were flushed first.
    """
    with interruptible():
        return _build_bank(config, str(location))


def _build_bank(config: BuildConfig, location: str) -> BuildSummary:
    """build_bank's work (signals already turned into Interrupted)."""
    state = _distributed_state(config.device)
    rank, world = state.process_index, state.num_processes
    device = state.device if state.device.type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False  # the same kernels for the same batch shapes
        torch.backends.cudnn.deterministic = True
    # Before any model is built: refuse a foreign --out at once.
    _rank0_then_share(state, lambda: check_output(location))

    # The batch plan and thread count: the bank's own when resuming, else from the config.
    existing = None
    try:
        existing = dict(open_group(location, mode="r").attrs).get("build")
    except Exception:
        existing = None
    batch_size = config.batch_size or (existing or {}).get("batch_size") or DEFAULT_BATCH_SIZE
    cpu_threads = None
    if device.type == "cpu":
        cpu_threads = (
            config.cpu_threads or (existing or {}).get("cpu_threads") or torch.get_num_threads()
        )
        torch.set_num_threads(cpu_threads)

    with state.main_process_first():  # rank 0 fills the weights cache; the others then read it
        models = BankModels(config, device)
    generator_attrs, encoder_attrs = models.attrs(config)
    expected = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "classes": config.vocabulary.entries,
        "templates": list(config.templates),
        "images_per_prompt": config.images_per_prompt,
        "generator": generator_attrs,
        "encoder": encoder_attrs,
        "build": {
            "batch_size": batch_size,
            "classes_per_shard": config.classes_per_shard,
            "cpu_threads": cpu_threads,
            "keep_images": config.keep_images,
            "level_dtype": config.level_dtype,
        },
    }
    layout = BankLayout(
        num_classes=len(config.vocabulary),
        num_templates=len(config.templates),
        images_per_prompt=config.images_per_prompt,
        embed_dim=encoder_attrs["embed_dim"],
        level_dims=models.level_dims,
        level_dtype=config.level_dtype,
        image_size=(models.gen.preset.height, models.gen.preset.width)
        if config.keep_images
        else None,
        classes_per_shard=config.classes_per_shard,
    )
    with contextlib.ExitStack() as held:

        def start() -> None:
            """Rank 0: mark the location as a bank, take the lock, create what is missing."""
            group = open_group(location, mode="a")
            if "format" not in group.attrs:  # the marker first: ours from now on
                group.attrs.update({"format": FORMAT_NAME, "format_version": FORMAT_VERSION})
            held.enter_context(build_lock(group.store, location, config.command))
            attrs = dict(group.attrs)
            if "classes" in attrs and attrs.get("format_version") != FORMAT_VERSION:
                raise BankFormatError(
                    f"{location} is a format v{attrs.get('format_version')} bank, which this "
                    f"dpseg reads but cannot resume or repair (v{FORMAT_VERSION} batches items "
                    "otherwise); build it again into another --out"
                )
            if "classes" not in attrs:
                # Arrays first, the full attributes last: a build killed in between starts
                # again here.
                from importlib.metadata import version

                create_arrays(group, layout, overwrite=True)
                group.attrs.update(
                    {
                        **expected,
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "builder": {
                            "name": "dpseg",
                            "version": version("dpseg"),
                            "packages": package_versions(),
                        },
                        "command": config.command,
                    }
                )
            _check_seal(group, location)
            _check_resume(dict(group.attrs), expected, location)

        _rank0_then_share(state, start)
        state.wait_for_everyone()
        group = open_group(location, mode="r+")
        _check_resume(dict(group.attrs), expected, location)
        validate_group(group, location)
        # what the bank was sealed with (a complete bank, or one whose repair was interrupted):
        # shards that differ are rebuilt
        attrs = dict(group.attrs)
        sealed = (attrs.get("contents") or attrs.get("previous_contents") or {}).get("objects")

        shards = list(range(len(layout.shard_ranges())))[rank::world]
        total_items = sum(
            (k1 - k0) * layout.num_templates * layout.images_per_prompt
            for k0, k1 in (layout.shard_ranges()[i] for i in shards)
        )
        start_time = time.perf_counter()
        built, skipped = 0, 0
        label = "bank items" if world == 1 else f"bank items (rank 0 of {world})"
        progress = ProgressBar(
            label, total_items, unit="items", enabled=config.progress and rank == 0, transient=False
        )
        try:
            with progress as bar:
                for shard in shards:
                    n_built, complete = _build_shard(
                        group, layout, config, models, batch_size, shard, bar, sealed
                    )
                    built += n_built
                    skipped += complete
            state.wait_for_everyone()
            counts = _gather_counts(state, [built, skipped])
            summary = BuildSummary(
                location=location,
                items_done=int(sum(c[0] for c in counts)),
                items_total=layout.num_classes * layout.num_templates * layout.images_per_prompt,
                seconds=time.perf_counter() - start_time,
                bytes_stored=0,
                skipped_shards=int(sum(c[1] for c in counts)),
                rank_items=[int(c[0]) for c in counts],
                phases=models.timer.shares() if built else "",
            )
            if rank == 0:
                from prompt_bank.seal import seal_bank

                summary.bytes_stored = seal_bank(location)
        except Interrupted as e:  # the shard being built has added its own finished items
            e.saved += built
            raise
    return summary


def _gather_counts(state, values: list[int]) -> list[list[int]]:
    if state.num_processes == 1:
        return [values]
    import torch.distributed as dist

    out: list = [None] * state.num_processes
    dist.all_gather_object(out, values)
    return out


def _check_seal(group, location) -> None:
    """Refuse to build on a sealed bank whose attributes no longer give its content key (the
    root zarr.json was edited after sealing: its recorded settings cannot be trusted)."""
    from prompt_bank.seal import sealed_contents
    from prompt_bank.store import Bank

    if "contents" in group.attrs and "classes" in group.attrs:
        sealed_contents(Bank(str(location), group, validate_group(group, location)))


def _build_shard(
    group, layout, config, models, batch_size, shard, bar, sealed: dict | None = None
) -> tuple[int, int]:
    """Compute the missing items of one shard, rebuilding it if it is damaged, or if it is
    complete but its objects are not the ones ``sealed`` records (key -> sha256: copied in
    from another bank with their manifest); returns (items computed, 1 if it was already
    complete).

    A partial shard is not compared with ``sealed``: under a seal, only an interrupted repair
    leaves one (its rebuild in progress), and its finished items are kept (ours; a partial
    shard copied in with its manifest would be kept too: docs/bank_format.md, "What the seal
    does not vouch for")."""
    from prompt_bank.seal import seal_disagreements, unseal

    k0, k1 = layout.shard_ranges()[shard]
    found = check_shard(group, layout, shard)
    differ = (
        seal_disagreements({"objects": sealed}, found.hashes)
        if sealed and found.status == "complete"
        else []
    )
    if differ and not found.damaged:
        found.problems.append(
            f"objects {', '.join(differ[:3])}{' ...' if len(differ) > 3 else ''} are not the "
            "ones the bank was sealed with"
        )
    if found.status == "complete":
        if not found.settled:  # killed after its last flush wrote the flags: settle it
            settle_manifest(group.store, found)
        bar.advance(int(found.done.size))
        return 0, 1
    unseal(group)  # the bank changes: its sealed contents no longer hold
    if found.damaged:
        bar.log(
            f"shard {shard} (classes {k0}-{k1 - 1}) is damaged, rebuilding it: "
            + "; ".join(found.problems)
        )
        drop_shard(group, layout, shard)
    if found.status in ("damaged", "empty"):  # nothing to keep: start clean
        buffers = {
            path: np.zeros((k1 - k0, *shape[1:]), dtype=dtype)
            for path, (shape, dtype) in layout.arrays().items()
        }
    else:
        buffers = found.data
    computed = 0
    try:
        classes = list(config.vocabulary.classes[k0:k1])
        buffers["text/embeddings"][:] = np.concatenate(
            [models.text_embeddings([c], config.templates) for c in classes]  # one class at once
        )
        embed_of = shard_prompt_embeds(models, config, k0, k1)
        done = buffers["visual/done"]
        last_flush = time.perf_counter()
        for batch in shard_batches(
            k0, k1, layout.num_templates, layout.images_per_prompt, batch_size
        ):
            if all(done[k - k0, p, n] for k, p, n in batch):
                bar.advance(len(batch))
                continue
            values = compute_batch(
                models, config, embed_of, batch, keep_images="visual/images" in buffers
            )
            for i, (k, p, n) in enumerate(batch):
                for path, rows in values.items():
                    buffers[path][k - k0, p, n] = rows[i]
                done[k - k0, p, n] = True
            computed += len(batch)
            bar.advance(len(batch))
            if time.perf_counter() - last_flush >= config.flush_seconds:
                with models.timer("storage"):
                    flush_shard(group, layout, shard, buffers)
                last_flush = time.perf_counter()
        with models.timer("storage"):
            flush_shard(group, layout, shard, buffers)
    except Interrupted as e:  # save what is finished (done flags are set per finished batch)
        if computed:
            flush_shard(group, layout, shard, buffers)
        e.saved += computed
        raise
    return computed, 0


def compute_batch(models, config, embed_of: dict, batch: list, keep_images: bool) -> dict:
    """Generate and encode one batch of items (k, p, n); returns per array path (B, ...) rows."""
    seeds = [item_seed(config.seed, config.vocabulary.entries[k], p, n) for k, p, n in batch]
    images, encoding = models.generate_and_encode([embed_of[(k, p)] for k, p, _ in batch], seeds)
    values = {"visual/embeddings": encoding.embedding.cpu().numpy()}
    for j, level in enumerate(encoding.pooled_levels(), start=1):
        values[f"visual/level_{j}"] = level.float().cpu().numpy()
    if keep_images:
        pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
        values["visual/images"] = pixels.permute(0, 2, 3, 1).cpu().numpy()
    return values


def shard_prompt_embeds(models, config, k0: int, k1: int) -> dict:
    """Stable Diffusion prompt embeddings of every (class, template) of a shard, computed once,
    one class per forward (so they do not depend on the shard's other classes)."""
    out = {}
    for k in range(k0, k1):
        # The canonical (first) synonym goes to Stable Diffusion (ours).
        prompts = [t.format(config.vocabulary[k].name) for t in config.templates]
        embeds = models.prompt_embeds(prompts)
        out.update({(k, p): embeds[p] for p in range(len(prompts))})
    return out
