"""The web app: type a vocabulary, upload images, see DPSeg's or VIP's masks (``cli.py app``).

    python cli.py app --model demo_out/model --vip-config configs/vip_toy.yaml   # or make app
    # then open http://127.0.0.1:7860

One Gradio page (``gr.Blocks``):

- **in**: images (one or several), a vocabulary typed freely (``a; b, synonym``, as ``segment
  --vocab``), the method (DPSeg one round, DPSeg two rounds, VIP), a class to explain;
- **out**: each image's overlay, a legend table with each class's colour and area per image, and
  the chosen class's explain maps on the first image (DPSeg: the text, visual and dual-prompt cost
  maps and the model's probability, as ``cli.py explain``; VIP: its probability map);
- classes that the bank lacks are built first with the bank's own generator, their progress shown
  in the page (``common.progress.listen``); an error is one line in the page's status, never a
  traceback (the server logs the traceback of anything that is not a user error).

The models load once, when the page starts; a vocabulary's prompts are reused until it changes.
Served on 127.0.0.1 unless ``--host`` says otherwise (ours: a model server is not for the
network by default).
"""

from __future__ import annotations

import html
import itertools
import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from common.errors import USER_ERRORS, SettingError, one_line
from common.io import save_figure_atomic

log = logging.getLogger(__name__)

Method = Literal["DPSeg, one round", "DPSeg, two rounds", "VIP"]
METHODS: tuple[str, ...] = ("DPSeg, one round", "DPSeg, two rounds", "VIP")


@dataclass
class AppConfig:
    """What ``cli.py app`` serves."""

    model: str | None = None  # DPSeg: a model folder of cli.py model export, or its URL
    ckpt: str | None = None  # DPSeg: a checkpoint of cli.py fit (instead of --model)
    bank: str | None = None  # DPSeg's prompt bank (default: the one the model was trained with)
    vip_config: str | None = None  # VIP: a configs/vip_*.yaml (none: VIP is not offered)
    vocab: str = ""  # the vocabulary the page starts with
    device: str | None = None  # cpu, cuda, cuda:1 (default: cuda when there is one)
    host: str = "127.0.0.1"  # where to listen (0.0.0.0: every interface)
    port: int = 7860  # 0: a free port


@dataclass
class Result:
    """One request's outputs."""

    overlays: list[tuple[np.ndarray, str]]  # (image with its label map blended in, caption)
    legend_html: str  # the classes present: colour, name, area per image
    explain: str | None  # the explain picture's path
    status: str  # one line


class Segmenters:
    """The loaded predictors and each one's current vocabulary (a lock: one request at a time
    changes them)."""

    def __init__(self, config: AppConfig):
        from model.predictor import Predictor

        self.config = config
        self.lock = threading.Lock()
        self.dpseg = None
        if config.model:
            self.dpseg = Predictor.from_pretrained(config.model, device=config.device)
        elif config.ckpt:
            self.dpseg = Predictor.from_checkpoint(config.ckpt, device=config.device)
        self.vip = None
        if config.vip_config and not Path(config.vip_config).is_file():
            from common.io import special_file_kind

            kind = special_file_kind(config.vip_config, folders=False)
            state = f"is {kind}, not a file" if kind else "does not exist"
            raise SettingError(
                f"--vip-config {config.vip_config!r} {state}; give a VIP config such as "
                "configs/vip_toy.yaml"
            )
        if config.vip_config:
            from model.vip.predictor import VIPPredictor

            self.vip = VIPPredictor.from_config(
                config.vip_config, device=config.device, option="--vip-config"
            )
        self._vocab: dict[str, str] = {}
        self._scratch = tempfile.TemporaryDirectory(prefix="dpseg-app-")  # removed at exit
        self.scratch = Path(self._scratch.name)
        self._counter = itertools.count()

    @property
    def methods(self) -> list[str]:
        return [m for m in METHODS if (self.vip if m == "VIP" else self.dpseg) is not None]

    def predictor(self, method: str, vocab: str, progress=None):
        """The predictor of ``method`` with ``vocab``'s prompts (built when it changed)."""
        if method not in self.methods:
            raise SettingError(f"method {method!r}: this app serves {', '.join(self.methods)}")
        if not vocab.strip():
            raise SettingError("vocabulary: type one or more classes, e.g. 'red disc; cat, kitty'")
        key = "vip" if method == "VIP" else "dpseg"
        predictor = self.vip if key == "vip" else self.dpseg
        if self._vocab.get(key) != vocab:
            self._vocab.pop(key, None)
            if key == "vip":
                predictor.set_vocabulary(vocab)
            else:
                from common.progress import listen

                with listen(progress or (lambda *_: None)):
                    predictor.use_vocabulary(vocab, self.config.bank, progress=False)
            self._vocab[key] = vocab
        if key == "dpseg":
            predictor.set_rounds(2 if method == "DPSeg, two rounds" else 1)
        return predictor

    def run(
        self,
        images: list[np.ndarray],
        names: list[str],
        vocab: str,
        method: str,
        explain: str | None,
        progress=None,
    ) -> Result:
        """Segment ``images`` (RGB uint8) with ``vocab`` by ``method``."""
        from data.preview import class_colours
        from data.transforms import rgb_uint8

        if not images:
            raise SettingError("images: upload one or more images")
        images = [rgb_uint8(im) for im in images]
        with self.lock:
            predictor = self.predictor(method, vocab, progress)
            labels = [predictor.predict(im) for im in images]
            vocabulary = predictor.vocabulary
            explained = None
            if explain:
                explained = self._explain(predictor, method, images[0], explain)
        colours = class_colours(vocabulary.names)
        overlays = [(blend(im, lab, colours), name) for im, lab, name in zip(images, labels, names)]
        table = legend_table(
            vocabulary.names, colours, labels, names, getattr(predictor, "sources", {})
        )
        present = len({int(c) for lab in labels for c in np.unique(lab)})
        status = f"{method}: {len(images)} image(s), {present} of {len(vocabulary)} classes present"
        generated = sum(v == "generated" for v in getattr(predictor, "sources", {}).values())
        if generated:
            status += f"; {generated} class(es) not in the bank, built for this vocabulary"
        return Result(overlays, table, explained, status)

    def _explain(self, predictor, method: str, image: np.ndarray, class_name: str) -> str:
        names = predictor.vocabulary.names
        if class_name not in names:
            raise SettingError(
                f"explain {class_name!r}: not in the vocabulary ({', '.join(names[:10])})"
            )
        out = self.scratch / f"explain-{next(self._counter)}.png"
        if method == "VIP":
            return str(probability_picture(predictor, image, class_name, out))
        from model.explain import write_explanation

        return str(write_explanation(predictor, image, class_name, out))


def blend(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.5):
    """(H, W, 3) uint8: the image with each pixel's class colour blended in."""
    painted = colours[labels].astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + painted * alpha).round().astype(np.uint8)


def legend_table(
    names: list[str],
    colours: np.ndarray,
    labels: list[np.ndarray],
    image_names: list[str],
    sources: dict[str, str],
) -> str:
    """HTML: one row per class present in some image (largest first): its colour, name, prompt
    source and area (% of pixels) in each image."""
    k = len(names)
    areas = np.stack([np.bincount(lab.ravel(), minlength=k)[:k] / lab.size for lab in labels])
    order = [int(c) for c in np.argsort(-areas.sum(0), kind="stable") if areas[:, c].sum() > 0]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in image_names)
    rows = []
    for c in order:
        r, g, b = (int(v) for v in colours[c])
        cells = "".join(f"<td>{100 * a:.1f}%</td>" for a in areas[:, c])
        rows.append(
            f'<tr class="legend-row"><td><span style="display:inline-block;width:1em;height:1em;'
            f'background:rgb({r},{g},{b})"></span></td><td class="legend-name">'
            f"{html.escape(names[c])}</td><td>{html.escape(sources.get(names[c], ''))}</td>"
            f"{cells}</tr>"
        )
    return (
        '<table id="legend"><thead><tr><th></th><th>class</th><th>prompts</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def probability_picture(predictor, image: np.ndarray, class_name: str, out: Path) -> Path:
    """VIP's explain: the image and the class's probability (softmax over the vocabulary)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = predictor.vocabulary.names.index(class_name)
    probability = predictor.logits(image).softmax(0)[c].cpu().numpy()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    axes[0].imshow(image)
    axes[0].set_title("image")
    shown = axes[1].imshow(probability, cmap="magma", vmin=0, vmax=1)
    axes[1].set_title(f"VIP: P({class_name})")
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.01)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure_atomic(fig, out, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out


def build_page(segmenters: Segmenters):
    """The Gradio page (``gr.Blocks``) over ``segmenters``."""
    import gradio as gr

    from data.datasets import read_image

    def segment(files, vocab, method, explain, progress=gr.Progress()):  # noqa: B008 (Gradio's API)
        def report(label: str, done: int, total: int | None) -> None:
            progress((done, total) if total else None, desc=f"building prompts: {label}")

        try:
            paths = [f if isinstance(f, str) else f.name for f in files or []]
            images = [read_image(p) for p in paths]
            result = segmenters.run(
                images, [Path(p).name for p in paths], vocab or "", method, explain or None, report
            )
        except USER_ERRORS as e:
            return [], "", None, f"error: {one_line(e)}"
        except Exception as e:  # a bug: the traceback goes to the server's log, one line here
            log.exception("the app's request failed")
            return [], "", None, f"error: {type(e).__name__}: {one_line(e)[:300]} (see the log)"
        return result.overlays, result.legend_html, result.explain, result.status

    methods = segmenters.methods
    with gr.Blocks(title="dpseg") as page:
        gr.Markdown(
            "# dpseg\nOpen-vocabulary segmentation: type the classes (`;` between classes, `,` "
            "before synonyms), upload images, choose the method."
        )
        with gr.Row():
            with gr.Column():
                files = gr.File(
                    label="images", file_count="multiple", file_types=["image"], elem_id="images"
                )
                vocab = gr.Textbox(
                    label="vocabulary",
                    value=segmenters.config.vocab,
                    placeholder="red disc; blue square, box; background",
                    elem_id="vocab",
                )
                method = gr.Radio(methods, value=methods[0], label="method", elem_id="method")
                explain = gr.Textbox(label="explain this class (optional)", elem_id="explain")
                run = gr.Button("segment", variant="primary", elem_id="run")
            with gr.Column():
                status = gr.Textbox(label="status", interactive=False, elem_id="status")
                overlays = gr.Gallery(label="overlays", elem_id="overlays", columns=2, format="png")
                legend = gr.HTML(elem_id="legend-box")
                explained = gr.Image(label="explain", type="filepath", elem_id="explained")
        run.click(segment, [files, vocab, method, explain], [overlays, legend, explained, status])
    return page


def check_port(host: str, port: int) -> int:
    """The port to serve on: ``port`` if it is free on ``host`` (refused in one line if not),
    a free one for 0. Checked before any model loads."""
    import socket

    if not 0 <= port <= 65535:
        raise SettingError(f"--port {port}: give 1 to 65535, or 0 for a free port")
    import errno

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
                raise SettingError(  # the host is not a name or an address of this machine
                    f"--host {host!r}: cannot listen there ({e.strerror}); give an address of "
                    "this machine: 127.0.0.1 (this machine only, the default) or 0.0.0.0 (every "
                    "interface)"
                ) from None
            raise SettingError(
                f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); give another "
                "port, or --port 0 for a free one"
            ) from None
        return probe.getsockname()[1]


def serve(config: AppConfig, block: bool = True):
    """Load the models, then serve the page; returns Gradio's app object when not ``block``."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls out of the machine
    port = check_port(config.host, config.port)
    segmenters = Segmenters(config)
    if not segmenters.methods:
        raise SettingError("app: give --model or --ckpt (DPSeg), or --vip-config (VIP)")
    page = build_page(segmenters)
    page.queue(default_concurrency_limit=1)
    page.launch(
        server_name=config.host,
        server_port=port,
        share=False,
        prevent_thread_lock=not block,
        show_error=False,
        quiet=True,
        max_file_size="50mb",
    )
    return page
