"""``cli.py fit|validate|test|predict``: LightningCLI over DPSegModule and SegmentationData.

Arguments that must agree are linked, not repeated: the number of templates comes from the banks
(``data.num_templates`` -> ``model.num_templates``) and a ViT's input size from the training crop
(``data.crop`` -> ``model.image_size``). The encoder is given once (``model.encoder``); every bank
is checked against it by weight fingerprint when prompts are loaded.
"""

from __future__ import annotations

import warnings

from lightning.pytorch.cli import LightningCLI

from data.module import SegmentationData
from model.lightning import DPSegModule

TRAINER_DEFAULTS = {
    "logger": [
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
         "init_args": {"save_dir": "runs", "name": "dpseg"}},
        {"class_path": "lightning.pytorch.loggers.CSVLogger",
         "init_args": {"save_dir": "runs", "name": "dpseg"}},
    ],
}  # fmt: skip

CALLBACKS = [
        {"class_path": "lightning.pytorch.callbacks.RichProgressBar"},
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
         "init_args": {"logging_interval": "step"}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"save_last": True, "monitor": "val/mIoU", "mode": "max",
                       "filename": "step{step}-miou{val/mIoU:.4f}",
                       "auto_insert_metric_name": False}},
    ]  # fmt: skip


class DPSegCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"trainer.callbacks": CALLBACKS})  # shown by --print_config
        parser.link_arguments("data.crop", "model.image_size")
        parser.link_arguments("data.num_templates", "model.num_templates", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        # Every logger of a run in one folder (runs/dpseg/version_N): loggers pick their version
        # independently, and the first one's folder exists (config.yaml) before the others look.
        loggers = trainer.loggers
        if len(loggers) > 1 and all(getattr(lg, "_version", 0) is None for lg in loggers):
            version = loggers[0].version
            for lg in loggers[1:]:
                lg._version = version
        return trainer


def make_cli(argv: list[str], run: bool = True) -> DPSegCLI:
    """The CLI over ``argv`` (``["fit", "--config", ...]``; without a subcommand when run=False)."""
    with warnings.catch_warnings():  # args given from Python (tests) on purpose
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return DPSegCLI(
            DPSegModule,
            SegmentationData,
            args=argv,
            run=run,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "cli.py"},
        )


def main(argv: list[str]) -> None:
    make_cli(argv)
