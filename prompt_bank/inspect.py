"""What a bank holds (``cli.py bank info``) and a contact sheet of its images (``bank gallery``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.io import save_image_atomic
from pretrained.presets import PresetError, get_encoder_preset, get_generator_preset
from prompt_bank.store import Bank


def weights_note(kind: str, record: dict, stored: str | None) -> str:
    """Where a bank's model's weights came from, in words: the recorded hub id or tag, the
    project's committed file (toy presets), no weights (toy renderer), or random weights."""
    if stored:
        return stored
    try:
        preset = (get_encoder_preset if kind == "encoder" else get_generator_preset)(
            record["preset"]
        )
    except PresetError:  # a preset this version does not know: say what the bank says
        return "random weights"
    if getattr(preset, "bundled", None):
        return f"trained weights pretrained/weights/{preset.bundled}"
    if getattr(preset, "kind", None) == "toy-render":
        return "drawn from the prompt, no weights"
    return "random weights"


def bank_info(bank: Bank) -> dict:
    """Classes, templates, shapes, generator, encoder, size and completeness, as plain JSON.

    A sealed bank answers from its root metadata alone (one request for a remote bank); an
    unsealed one is read: its done flags, and the size of every object.
    """
    from prompt_bank.seal import sealed_contents

    layout, attrs = bank.layout, bank.attrs
    shards = layout.shard_ranges()
    contents = sealed_contents(bank)
    if contents is not None:
        items, shards_done, size = contents["items"], len(shards), contents["bytes"]
        total = items
    else:
        done = bank.done()
        items, total = int(done.sum()), int(done.size)
        shards_done = sum(bool(done[a:b].all()) for a, b in shards)
        size = bank.nbytes_stored()
    return {
        "location": bank.location,
        "format_version": attrs["format_version"],
        "classes": len(attrs["classes"]),
        "class_names": attrs["classes"],
        "templates": attrs["templates"],
        "images_per_prompt": layout.images_per_prompt,
        "arrays": {p: {"shape": list(s), "dtype": d} for p, (s, d) in layout.arrays().items()},
        "generator": attrs["generator"],
        "encoder": attrs["encoder"],
        "build": attrs["build"],
        "created": attrs["created"],
        "builder": attrs["builder"],
        "items_done": items,
        "items_total": total,
        "shards_complete": shards_done,
        "shards": len(shards),
        "complete": items == total,
        "bytes_stored": size,
        "sealed": contents is not None,
        "content_key": contents["content_key"] if contents else None,
        "command": attrs.get("command"),
        "provenance": [
            {k: v for k, v in p.items() if k != "rows"} | {"classes": len(p["rows"])}
            for p in (attrs["provenance"] if isinstance(attrs.get("provenance"), list) else [])
            if isinstance(p, dict) and isinstance(p.get("rows"), list)  # (not sealed: shown as is)
        ],
    }


def prompt_agreement(bank: Bank) -> dict:
    """Do the visual prompts carry class information? Per class, its mean visual prompt (over
    templates and images) against every class's mean text prompt: the share of classes whose
    nearest text prompt is their own (retrieval), the mean cosine of a class's two prompts, and
    the mean cosine between different classes' visual (and text) prompts. Reads every
    embedding (each shard once, checked: a damaged one is a BankFormatError); only done items
    count."""
    data = bank.read_rows(paths=["visual/done", "text/embeddings", "visual/embeddings"])
    done = data["visual/done"]
    text = np.asarray(data["text/embeddings"], dtype=np.float64)  # (K, P, D)
    visual = np.asarray(data["visual/embeddings"], dtype=np.float64)  # (K, P, N, D)
    weights = done[..., None].astype(np.float64)

    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    t = unit(text.mean(axis=1))
    v = unit((visual * weights).sum(axis=(1, 2)) / np.maximum(weights.sum(axis=(1, 2)), 1))
    scores = v @ t.T  # (K, K)
    nearest = scores.argmax(axis=1)
    k = len(t)
    off = ~np.eye(k, dtype=bool)
    names = [c.split(",")[0] for c in bank.classes]
    return {
        "retrieval": float((nearest == np.arange(k)).mean()),
        "retrieved": int((nearest == np.arange(k)).sum()),
        "classes": k,
        "own_cosine": float(np.diag(scores).mean()),
        "visual_between_classes": float((v @ v.T)[off].mean()) if k > 1 else float("nan"),
        "text_between_classes": float((t @ t.T)[off].mean()) if k > 1 else float("nan"),
        "misses": [(names[i], names[j]) for i, j in enumerate(nearest) if i != j],
    }


def format_agreement(a: dict) -> str:
    misses = ", ".join(f"{x} -> {y}" for x, y in a["misses"][:6])
    more = f" (+{len(a['misses']) - 6})" if len(a["misses"]) > 6 else ""
    return (
        f"prompts    visual -> text retrieval {a['retrieved']}/{a['classes']} classes "
        f"({100 * a['retrieval']:.0f}%); cos(V_k, T_k) {a['own_cosine']:.3f}; between classes: "
        f"visual {a['visual_between_classes']:.3f}, text {a['text_between_classes']:.3f}"
        + (f"\n           nearest text of another class: {misses}{more}" if misses else "")
    )


def format_info(info: dict) -> str:
    g, e = info["generator"], info["encoder"]
    names = info["class_names"]
    shown = ", ".join(n.split(",")[0] for n in names[:8]) + (", ..." if len(names) > 8 else "")
    levels = ", ".join(
        f"{p.split('/')[-1]} {a['shape'][-1]} {a['dtype']}"
        for p, a in info["arrays"].items()
        if p.startswith("visual/level_")
    )
    images = info["arrays"].get("visual/images")
    state = (
        ("complete, sealed" if info["sealed"] else "complete")
        if info["complete"]
        else f"INCOMPLETE: resume with `python cli.py bank repair {info['location']}`, or the "
        "same bank build command"
    )
    return "\n".join(
        [
            f"bank       {info['location']} (format v{info['format_version']}, {state})",
            f"classes    {info['classes']}: {shown}",
            f"templates  {len(info['templates'])}: {info['templates'][0]!r}"
            + (", ..." if len(info["templates"]) > 1 else ""),
            f"images     {info['images_per_prompt']} per prompt"
            + (f", kept at {images['shape'][3]}x{images['shape'][4]}" if images else ", not kept"),
            f"generator  {g['preset']} ({weights_note('generator', g, g['model_id'])}), {g['scheduler']}, "
            f"{g['steps']} steps, guidance {g['guidance']}, {g['height']}x{g['width']}, "
            f"seed {g['base_seed']}, {g['dtype']} on {g['device_type']}",
            f"encoder    {e['preset']} ({e['arch']}, {weights_note('encoder', e, e['pretrained'])}), "
            f"{e['image_size']} px, embed {e['embed_dim']}, levels {e['levels']}",
            f"arrays     text/embeddings {info['arrays']['text/embeddings']['shape']}, "
            f"visual/embeddings {info['arrays']['visual/embeddings']['shape']}; {levels}",
            f"done       {info['items_done']}/{info['items_total']} items, "
            f"{info['shards_complete']}/{info['shards']} shards",
            f"size       {info['bytes_stored'] / 1e6:.2f} MB stored",
            f"fingerprints generator {g['fingerprint'][:16]}…, encoder {e['fingerprint'][:16]}…",
            f"created    {info['created']} by {info['builder'].get('name')} "
            f"{info['builder'].get('version')}",
        ]
        + ([f"content    {info['content_key']}"] if info["content_key"] else [])
        + [
            f"from       {p['location']} ({p['classes']} classes, built {p.get('created')})"
            for p in info["provenance"]
        ]
        + ([format_agreement(info["prompts"])] if "prompts" in info else [])
    )


def write_gallery(bank: Bank, out: str | Path, max_classes: int = 32, max_columns: int = 8) -> Path:
    """A contact sheet: one row per class (its name on the left), stored images along the row."""
    from PIL import Image, ImageDraw, ImageFont

    if bank.layout.image_size is None:
        from common.errors import SettingError

        raise SettingError(
            f"bank {bank.location} kept no images; rebuild it with --keep-images to get a gallery"
        )
    layout = bank.layout
    k = min(layout.num_classes, max_classes)
    # the shards of the classes shown, each read once and checked (damage: BankFormatError)
    data = bank.read_rows(slice(0, k), ["visual/done", "visual/images"])
    done, stored = data["visual/done"], data["visual/images"]
    h, w = layout.image_size
    columns = [(p, n) for p in range(layout.num_templates) for n in range(layout.images_per_prompt)]
    columns = columns[:max_columns]
    label_w = 160
    sheet = Image.new("RGB", (label_w + w * len(columns), h * k), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for row in range(k):
        name = bank.classes[row].split(",")[0]
        draw.text((4, row * h + h // 2 - 6), f"{row} {name}"[:26], fill="black", font=font)
        for col, (p, n) in enumerate(columns):
            if done[row, p, n]:
                tile = Image.fromarray(stored[row, p, n])
            else:  # not built yet: a grey tile
                tile = Image.new("RGB", (w, h), (200, 200, 200))
            sheet.paste(tile, (label_w + col * w, row * h))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image_atomic(sheet, out)
    return out
