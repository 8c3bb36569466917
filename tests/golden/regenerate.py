"""Rewrite ``pretrained/recorded_fingerprints.json``: the sha256 of every offline preset's weights.

The offline presets' weights are drawn portably (``pretrained/portable_init.py``): the same bits on
every CPU and thread count, so this changes only when an architecture, a preset's seed, the
portable draw or a package's module layout (parameter names) changes. Run it after such a
deliberate change and say so in the commit: banks and checkpoints built with the old weights
will then be refused (their fingerprints differ).

    .venv/bin/python tests/golden/regenerate.py
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pretrained.backbone import create_encoder  # noqa: E402
from pretrained.fingerprint import RECORDED, package_versions  # noqa: E402
from pretrained.presets import list_presets  # noqa: E402
from prompt_bank.generator import create_generator  # noqa: E402

if __name__ == "__main__":
    fingerprints = {
        p.name: (
            create_encoder(p) if type(p).__name__ == "EncoderPreset" else create_generator(p)
        ).fingerprint
        for p in [*list_presets("encoder"), *list_presets("generator")]
        if p.offline
    }
    record = {"fingerprints": fingerprints, "packages": package_versions()}
    RECORDED.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
