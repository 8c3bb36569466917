"""The app's picture for the README: serve a model, segment an image in Chromium, save the page.

    python -m app.screenshot --model demo_out/model --image demo_out/datasets/toy/images/test/000000.jpg \
        --vocab "red disc; blue square; green triangle; yellow ring; background" --out docs/app.png
"""

from __future__ import annotations

import argparse

from app.browser import segment_in_browser
from app.page import AppConfig, serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--vip-config", default="configs/vip_toy.yaml")
    parser.add_argument("--image", nargs="+", required=True)
    parser.add_argument("--vocab", required=True)
    parser.add_argument("--explain", default=None)
    parser.add_argument("--method", default=None)
    parser.add_argument("--out", default="docs/app.png")
    args = parser.parse_args()
    config = AppConfig(
        model=args.model,
        vip_config=args.vip_config,
        port=0,  # a free port
    )
    page = serve(config, block=False)
    try:
        result = segment_in_browser(
            page.local_url, args.image, args.vocab, args.method, args.explain, args.out
        )
    finally:
        page.close()
    print(f"{args.out}: {result['status']}; legend {', '.join(result['names'])}")


if __name__ == "__main__":
    main()
