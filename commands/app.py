"""``app``: the web app (``app.page``): a vocabulary, images, DPSeg or VIP, masks in the browser."""

from __future__ import annotations

import argparse

from commands.options import Command, add_fields


def cmd_app(args: argparse.Namespace) -> None:
    from app.page import AppConfig, serve
    from data.optional import require

    require("gradio", "the web app (cli.py app)")
    config = AppConfig(**{k: getattr(args, k) for k in AppConfig.__dataclass_fields__})
    if config.model and config.ckpt:
        from data.errors import SettingError

        raise SettingError(f"--model {config.model!r} and --ckpt {config.ckpt!r}: give one of them")
    print(f"serving on http://{config.host}:{config.port} (Ctrl-C stops it)", flush=True)
    serve(config)


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
