"""``cli.py fit|validate|test|predict``: LightningCLI over a method's module and SegmentationData.

The method is the model's class, chosen as LightningCLI documents it (subclass mode):
``model.class_path`` in a config or ``--model CLASS`` on the command line, any subclass of
``model.evaluation.SegmentationModule``. The default is ``model.lightning.DPSegModule``
(trained), so a DPSeg config gives its settings under ``model:`` directly; VIP's configs say
``class_path: model.vip.lightning.VIPModule`` (training-free: validate, test and predict only)
with its settings under ``init_args:``. A new method is one module file (docs/design.md §8.11).

DPSeg's arguments that must agree are linked, not repeated: the number of templates comes from
the banks (``data.num_templates`` -> ``model.num_templates``) and a ViT's input size from the
training crop (``data.crop`` -> ``model.image_size``), for any method whose module takes them.
The encoder is given once (``model.encoder``); every bank is checked against it by weight
fingerprint when prompts load.
"""

from __future__ import annotations

import logging
import pickle
import re
import signal
import threading
import warnings
from pathlib import Path

import torch
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from common.config_files import config_file_error, option_type_error
from common.errors import SettingError, UserError
from common.optional import available
from common.signals import stopped
from model.checkpoint import (
    LIGHTNING_SHORTHANDS,
    CheckpointError,
    check_checkpoint,
    reading_failed,
)
from model.data_module import SegmentationData

DEFAULT_METHOD = "model.lightning.DPSegModule"
METHOD_LOGS = "{method}"
"""The default loggers' ``name``: replaced by the chosen module's ``method_name`` (runs/dpseg,
runs/vip); a name the user gives is kept."""
log = logging.getLogger(__name__)


def trainer_defaults() -> dict:
    """TensorBoard (where the ``tensorboard`` extra is installed) + CSV loggers in
    runs/<method>/version_N."""
    kinds = ("TensorBoardLogger", "CSVLogger") if available("tensorboard") else ("CSVLogger",)
    return {
        "logger": [
            {
                "class_path": f"lightning.pytorch.loggers.{kind}",
                "init_args": {"save_dir": "runs", "name": METHOD_LOGS},
            }
            for kind in kinds
        ],
    }


CALLBACKS = [
    {"class_path": "model.progress.StepProgressBar"},
    {
        "class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
        "init_args": {"logging_interval": "step"},
    },
    {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {
            "save_last": True,
            "monitor": "val/mIoU",
            "mode": "max",
            "filename": "step{step}-miou{val/mIoU:.4f}",
            "auto_insert_metric_name": False,
        },
    },
]


class SaveConfigToLogs(SaveConfigCallback):
    """config.yaml beside the run's logs; a run without loggers (``--trainer.logger false``)
    writes none, rather than into the working directory (its results' ``.run.json`` records the
    settings)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.loggers:
            super().setup(trainer, pl_module, stage)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnInterrupt(Callback):
    """Ctrl-C (SIGINT) or SIGTERM (a scheduler's preemption) during ``fit`` stops training at the
    end of the step in progress and saves ``interrupted.ckpt`` beside the run's checkpoints, to
    resume from (a second signal stops at once, as Lightning does). In validate/test/predict it
    only records the interruption. Either way ``cli.py`` then ends in one line (``SegmentationCLI``),
    exit status 128 + the signal (``common.signals.stopped``)."""

    def __init__(self):
        self.signal: str | None = None  # the signal's name once one came to this process
        self.stopping = False  # any rank got one: every rank stops at the same step
        self.saved: Path | None = None
        self._previous = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}

    def _on_signal(self, signum, frame) -> None:
        if self.signal is not None:  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def _check(self, trainer) -> None:
        # one rank's signal stops every rank after the same step (a scalar all-reduce per step
        # under DDP, as EarlyStopping's; a plain bool in one process)
        if trainer.strategy.reduce_boolean_decision(self.signal is not None, all=False):
            self.stopping = trainer.should_stop = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._check(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._check(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.stopping:
            return
        checkpoints = trainer.checkpoint_callback
        folder = (
            Path(checkpoints.dirpath)
            if checkpoints and checkpoints.dirpath
            else Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
        )
        self.saved = (folder / "interrupted.ckpt").absolute()
        trainer.save_checkpoint(self.saved)  # every rank calls it (a barrier); rank 0 writes

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) and self.signal is None:
            self.signal = "SIGINT"
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            # Lightning stops fit after the step in progress on SIGTERM (a scheduler's
            # preemption; every rank at the same step) by raising this: the state is whole
            self.signal = self.signal or "SIGTERM"
            self.stopping = True
            self.on_train_end(trainer, pl_module)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous is not None:
            for s, handler in self._previous.items():
                signal.signal(s, handler)
            self._previous = None


class SegmentationCLI(LightningCLI):
    """LightningCLI with the method chosen by ``model.class_path`` (DPSeg by default), a checked
    ``--ckpt_path``, one line for every user error and Ctrl-C / SIGTERM handling."""

    def init_parser(self, **kwargs):
        """Every parser (the root's and each subcommand's) raises its errors, which
        :meth:`parse_arguments` turns into one line (a --config file's mistake) or the usage."""
        parser = super().init_parser(**kwargs)
        parser.exit_on_error = False
        self.parsers = [*getattr(self, "parsers", []), parser]
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults(
            {"model": {"class_path": DEFAULT_METHOD}, "trainer.callbacks": CALLBACKS}
        )
        # links into a method's arguments apply to the methods that take them (DPSeg)
        parser.link_arguments("data.crop", "model.init_args.image_size")
        parser.link_arguments(
            "data.num_templates", "model.init_args.num_templates", apply_on="instantiate"
        )

    def parse_arguments(self, parser, args) -> None:
        # Lightning torch.loads --ckpt_path right after this (its hyperparameters): a file that
        # is not a checkpoint ends here in one line (model/checkpoint.py), not in torch's
        # unpickling error, and a torch file that is not Lightning's not in a KeyError once the
        # run has started. A setting a --config file may not have is one line naming the file
        # (common/config_files.py); a mistake on the command line keeps the usage text.
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as e:
            error = option_type_error(list(args), str(args[0]), str(e), given_only=True)
            error = error or config_file_error(list(args), str(args[0]), str(e))
            if error is None:  # the usage of the subcommand's parser, as jsonargparse prints it
                own = [p for p in self.parsers if p.prog.endswith(f" {args[0]}")] or [parser]
                own[0].exit_on_error = True
                own[0].error(str(e))
            raise error from None
        subcommand = self.config.get("subcommand")
        seed = self.config[subcommand].get("seed_everything") if subcommand else None
        if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed < 2**32:
            raise SettingError(  # Lightning's seed_everything: numpy's uint32 range
                f"--seed_everything {seed}: give a seed from 0 to {2**32 - 1} (or true: random)"
            )
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        self.given_network = _network_settings(self.config[subcommand]) if subcommand else {}
        try:
            if ckpt and str(ckpt) not in LIGHTNING_SHORTHANDS and "://" not in str(ckpt):
                check_checkpoint(ckpt, "--ckpt_path")
                content = torch.load(ckpt, weights_only=True, map_location="cpu", mmap=True)
                if not isinstance(content, dict) or "pytorch-lightning_version" not in content:
                    raise KeyError("no 'pytorch-lightning_version': a torch file, not Lightning's")
        except (pickle.UnpicklingError, EOFError, KeyError) as e:  # an archive, not a checkpoint
            raise reading_failed(e, ckpt, "--ckpt_path") from None

    def before_instantiate_classes(self) -> None:
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        name_method_logs(config)
        share_logger_version(config)
        if subcommand:  # the checkpoint's network replaced what the config or command gave
            given = self.given_network
            for key, value in _network_settings(self.config[subcommand]).items():
                if key in given and given[key] != value:
                    log.warning(
                        "--model.%s %s is replaced by the checkpoint's %s: a checkpoint fixes "
                        "the network it holds (drop the setting, or fit a model with it)",
                        key,
                        given[key],
                        value,
                    )

    def fit(self, model, **kwargs) -> None:
        if not model.trainable:
            raise SettingError(
                f"{type(model).__name__} is training-free: use cli.py test (or validate, "
                "predict) with this config"
            )
        try:
            self._run_trainer("fit", model=model, **kwargs)
        except SIGTERMException:
            if self.interruption.saved is None:
                raise
        checkpoints = self.trainer.checkpoint_callback
        if self.trainer.is_global_zero and checkpoints is not None and checkpoints.dirpath:
            # only the checkpoints that exist: a SIGTERM stops fit before last.ckpt is written
            # (a probe found "(last.ckpt)" named beside a folder holding interrupted.ckpt only)
            folder, best = Path(checkpoints.dirpath), checkpoints.best_model_path
            names = ["last.ckpt"] if (folder / "last.ckpt").is_file() else []
            names += [f"best {Path(best).name}"] if best and Path(best).is_file() else []
            if names:
                print(
                    f"fit: {self.trainer.global_step} steps; checkpoints in {folder} "
                    f"({', '.join(names)})",
                    flush=True,
                )
        stop = self.interruption
        if stop.saved is not None:
            raise stopped(
                stop.signal,
                f"fit interrupted by {stop.signal or 'a signal to another rank'} at step "
                f"{self.trainer.global_step}: the model, "
                f"optimizer and loop state are saved in {stop.saved}; resume with the same "
                f"command and --ckpt_path {stop.saved}",
            )

    def _run_trainer(self, name: str, **kwargs) -> None:
        """``trainer.<name>(**kwargs)``; Lightning's exit after a Ctrl-C it caught (a second one
        in fit, any in validate/test/predict) becomes one line. A run that fails before it made
        anything (no step trained, no checkpoint) leaves no runs/<method>/version_N behind."""
        made = _folders_to_be_made(self.trainer)
        try:
            self._run_trainer_once(name, **kwargs)
        except BaseException:
            if self.trainer.is_global_zero and (name != "fit" or self.trainer.global_step == 0):
                _remove_unless_checkpointed(made)
            raise

    def _run_trainer_once(self, name: str, **kwargs) -> None:
        try:
            getattr(self.trainer, name)(**kwargs)
        except SystemExit as e:
            if e.code == 1 and self.interruption.signal is not None:
                lost = (
                    "stopped at once: nothing since the last checkpoint was saved"
                    if name == "fit"
                    else "no results were written"
                )
                raise stopped(
                    self.interruption.signal,
                    f"{name} interrupted by {self.interruption.signal}: {lost}; run the same "
                    "command again",
                ) from None
            raise

    def validate(self, **kwargs) -> None:
        self._run_trainer("validate", **kwargs)

    def test(self, **kwargs) -> None:
        self._run_trainer("test", **kwargs)

    def predict(self, **kwargs) -> None:
        self._run_trainer("predict", **kwargs)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as e:  # a user error inside jsonargparse's instantiation: its line
            user_error = user_error_within(e)
            if user_error is None:
                raise
            raise self._said_of_the_checkpoint(user_error) from None

    def _said_of_the_checkpoint(self, error: UserError) -> UserError:
        """An encoder error said of what gave the encoder: --ckpt_path's hyper-parameters, or
        ``--model.encoder`` (the option's name here; the other commands' is ``--encoder``)."""
        from pretrained.errors import PresetError, recorded_encoder_error

        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        ckpt = config.get("ckpt_path")
        encoder = _network_settings(config).get("encoder")
        if not isinstance(error, PresetError):
            return error
        if not ckpt or self.given_network.get("encoder") == encoder:  # the option's name here
            return PresetError(re.sub(r"^--encoder ", "--model.encoder ", str(error)))
        reason = recorded_encoder_error(error, f"--ckpt_path {str(ckpt)!r}")
        return CheckpointError(f"{reason}; use the checkpoint as cli.py fit wrote it")

    def instantiate_trainer(self, **kwargs):
        # A feature turned off drops our default callback that needs it (Lightning refuses a
        # progress bar with the bar disabled, a learning-rate monitor without a logger, a
        # ModelCheckpoint without checkpointing).
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_config = config.get("trainer", {})
        for flag, needs_it in (
            ("enable_progress_bar", ProgressBar),
            ("logger", LearningRateMonitor),
            ("enable_checkpointing", ModelCheckpoint),
        ):
            if trainer_config.get(flag) is False:
                trainer_config["callbacks"] = [
                    c for c in trainer_config.get("callbacks") or [] if not isinstance(c, needs_it)
                ]
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except MisconfigurationException as e:  # a trainer setting Lightning refuses
            from common.errors import one_line

            raise SettingError(f"a --trainer setting: {one_line(e)}") from None
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's own
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        self.interruption = StopOnInterrupt()
        trainer.callbacks.append(self.interruption)
        if self.subcommand == "fit":
            self.interruption.install()
        return trainer


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with a local checkpoint written beside its place and
    renamed (ours; ``common.io.write_atomic``): fsspec's transaction wrote it in the system's
    temporary folder and then copied it over, so a full disk left a truncated ``last.ckpt`` and
    an error naming a /tmp file (found by a probe). Remote paths go to Lightning's own writer."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if "://" in str(path) or storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        import io

        from common.io import write_atomic

        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(path), buffer.getvalue())


def _folders_to_be_made(trainer) -> list[Path]:
    """The topmost folder of each logger's run folder (runs/dpseg/version_N) that does not exist
    yet: the ones this run will make."""
    made = []
    for logger in trainer.loggers:
        folder = Path(logger.log_dir) if logger.log_dir else None
        if folder is None or folder.exists():
            continue
        while not folder.parent.exists():
            folder = folder.parent
        made.append(folder)
    return made


def _remove_unless_checkpointed(folders: list[Path]) -> None:
    """Remove the folders a failed run made (its config.yaml and empty logs), unless a checkpoint
    was saved in one (those are the run's work)."""
    import shutil

    for folder in folders:
        if folder.is_dir() and not any(folder.rglob("*.ckpt")):
            shutil.rmtree(folder, ignore_errors=True)


def method_class(config) -> type | None:
    """The module class that ``model.class_path`` names (None when it cannot be imported: the
    parser says so)."""
    import importlib

    model = config.get("model")
    path = str(model.get("class_path", "")) if model is not None and hasattr(model, "get") else ""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None) if module else None
    except ImportError:
        return None


def name_method_logs(config) -> None:
    """The default loggers' folder name (``METHOD_LOGS``) becomes the method's: runs/dpseg,
    runs/vip."""
    cls = method_class(config)
    loggers = (config.get("trainer") or {}).get("logger")
    if cls is None or not isinstance(loggers, list):
        return
    for spec in loggers:
        args = spec.get("init_args") if hasattr(spec, "get") else None
        if args is not None and args.get("name") == METHOD_LOGS:
            args["name"] = getattr(cls, "method_name", cls.__name__.lower())


def share_logger_version(config) -> None:
    """Every logger of a run in one folder (runs/dpseg/version_N): loggers pick their version
    independently, and the first one's folder exists (config.yaml) before the others look. So
    where several loggers give no version, all get the first one's next version (its public
    ``version``, computed from the folders there; nothing is created)."""
    import importlib
    import inspect

    loggers = (config.get("trainer") or {}).get("logger")
    if not isinstance(loggers, list) or len(loggers) < 2:
        return
    classes = []
    for spec in loggers:
        module, _, name = str(spec.get("class_path", "")).rpartition(".")
        cls = getattr(importlib.import_module(module), name, None) if module else None
        args = spec.get("init_args")
        if cls is None or args is None or "version" not in inspect.signature(cls).parameters:
            return  # a logger that takes no version: each keeps its own
        if args.get("version") is not None:
            return  # the user chose
        classes.append(cls)
    first = dict(loggers[0].get("init_args") or {})
    version = classes[0](**{k: first[k] for k in ("save_dir", "name") if k in first}).version
    for spec in loggers:
        spec["init_args"]["version"] = version


class _DropTips(logging.Filter):
    """Lightning's advertisements ("💡 Tip: ... litlogger / litmodels"), which no user asked for."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith("💡 Tip")


def quiet_lightning() -> None:
    """Lightning's messages that say nothing about the run (ours): its tips, the CSV logger's
    "Experiment logs directory ... exists and is not empty" (config.yaml is written there
    first, so it shows on every fresh run) and a pytree deprecation inside Lightning."""
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    for name in ("lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _DropTips) for f in handler.filters):
                handler.addFilter(_DropTips())


def make_cli(argv: list[str], run: bool = True) -> LightningCLI:
    """The CLI over ``argv`` (``["fit", "--config", ...]``; without a subcommand when run=False)."""
    quiet_lightning()
    # the methods imported, so that --model takes their short names (DPSegModule, VIPModule)
    import model.lightning
    import model.vip.lightning  # noqa: F401
    from model.evaluation import SegmentationModule

    with warnings.catch_warnings():  # args given from Python (tests) on purpose
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return SegmentationCLI(
            SegmentationModule,
            SegmentationData,
            subclass_mode_model=True,
            args=argv,
            run=run,
            trainer_defaults=trainer_defaults(),
            save_config_callback=SaveConfigToLogs,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "cli.py"},
        )


def _network_settings(config) -> dict[str, object]:
    """The model settings a checkpoint's hyper-parameters fix: the encoder, its input size and
    DPSegConfig's fields (``dpseg.prompt_mode``, ...), flat; VIP has none of them."""
    model = config.get("model")
    model = model.get("init_args") if model is not None and hasattr(model, "get") else None
    if model is None or not hasattr(model, "get"):
        return {}
    out = {key: model.get(key) for key in ("encoder", "image_size") if key in model}
    dpseg = model.get("dpseg")
    if dpseg is not None and hasattr(dpseg, "items"):
        out.update({f"dpseg.{k}": v for k, v in dpseg.items() if k != "class_chunk"})
    return out


def user_error_within(error: BaseException) -> UserError | None:
    """The user error (a config dataclass's SettingError, a module's PresetError, ...) that
    jsonargparse folded into its "Does not validate against any of the Union subtypes" while
    instantiating the model: the first UserError down the exception's cause chain, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def main(argv: list[str]) -> None:
    make_cli(argv)
