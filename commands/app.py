"""``app``: the web app (``app.page``): a vocabulary, images, DPSeg or VIP, masks in the browser."""

from __future__ import annotations

import argparse

from commands.options import Command, add_fields


def cmd_app(args: argparse.Namespace) -> None:
    from app.page import AppConfig, serve
    from common.optional import require

    require("gradio", "the web app (cli.py app)")
    config = AppConfig(**{k: getattr(args, k) for k in AppConfig.__dataclass_fields__})
    if config.model and config.ckpt:
        from common.errors import SettingError

        raise SettingError(f"--model {config.model!r} and --ckpt {config.ckpt!r}: give one of them")
    if config.vocab.strip():  # the page's starting vocabulary: its mistake said now, not later
        from data.vocabulary import load_vocabulary

        load_vocabulary(config.vocab)
    if config.bank:  # the bank opened (and checked against its seal) before serving
        from prompt_bank.store import Bank

        Bank.open(config.bank)
    page = serve(config, block=False)
    print(f"serving on {page.local_url} (Ctrl-C stops it)", flush=True)
    import time

    from common.signals import Interrupted

    try:
        while True:  # the server runs in its threads; Ctrl-C or SIGTERM stops it cleanly
            time.sleep(0.5)
    except (Interrupted, KeyboardInterrupt):
        page.close()
        print("app stopped", flush=True)


def _app_options(p) -> None:
    from app.page import AppConfig

    add_fields(p, AppConfig)


COMMANDS = {
    "app": Command(
        "the web app: type a vocabulary, upload images, see DPSeg's or VIP's masks (Gradio)",
        _app_options,
        cmd_app,
    )
}
