"""Regenerate ``fingerprints.json``: the sha256 of every offline preset's weights.

Run after a deliberate upgrade of torch, timm, open_clip, diffusers or transformers that changes
initialisation, and say so in the change: banks and checkpoints built with the old tiny presets
will then be refused (their fingerprints differ).

    .venv/bin/python tests/golden/regenerate.py
"""

import json
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from model.backbone import create_clip  # noqa: E402
from prompt_bank.generator import create_generator  # noqa: E402

PACKAGES = ("torch", "timm", "open_clip_torch", "diffusers", "transformers")

if __name__ == "__main__":
    fingerprints = {
        "tiny-vit": create_clip("tiny-vit").fingerprint,
        "tiny-convnext": create_clip("tiny-convnext").fingerprint,
        "tiny-sd": create_generator("tiny-sd").fingerprint,
    }
    record = {"fingerprints": fingerprints, "versions": {p: version(p) for p in PACKAGES}}
    out = Path(__file__).with_name("fingerprints.json")
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
