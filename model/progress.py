"""Lightning's progress as dpseg's one progress bar (``common.progress``): steps against
``max_steps`` with their rate and ETA during ``fit``, images during validation, test and predict.

Lightning's own bars count epochs, which a run bounded by ``max_steps`` does not have ("Epoch
0/-2", no ETA). This one is a :class:`lightning.pytorch.callbacks.ProgressBar` built on its public
hooks only.
"""

from __future__ import annotations

import math

from lightning.pytorch.callbacks import ProgressBar

from common.progress import ProgressBar as Bar


class StepProgressBar(ProgressBar):
    """``fit | bar | step/max_steps | steps/s | loss | elapsed | ETA``; one bar per evaluation."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._train: Bar | None = None
        self._eval: Bar | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    # -- fit ---------------------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if total is None and math.isfinite(trainer.estimated_stepping_batches):
            total = int(trainer.estimated_stepping_batches)
        self._train = Bar("fit", total, unit="steps", enabled=self._enabled, transient=False)
        self._train.__enter__()
        self._train.advance(trainer.global_step)  # a resumed run starts where it stopped

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._train is None:
            return
        done = trainer.global_step - self._train.done
        if done > 0:
            self._train.advance(done)
            loss = self.get_metrics(trainer, pl_module).get("train/loss")
            if loss is not None:
                self._train.update(info=f"loss {float(loss):.3f}")

    def on_train_end(self, trainer, pl_module) -> None:
        if self._train is not None:
            self._train.__exit__(None, None, None)
            self._train = None

    # -- evaluation --------------------------------------------------------------------------

    def _start(self, label: str, total) -> None:
        total = int(total) if math.isfinite(total) else None
        self._eval = Bar(label, total, unit="batches", enabled=self._enabled)
        self._eval.__enter__()

    def _advance(self) -> None:
        if self._eval is not None:
            self._eval.advance()

    def _end(self) -> None:
        if self._eval is not None:
            self._eval.__exit__(None, None, None)
            self._eval = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        if self._train is not None:  # inside fit: a phase of the fit bar, not a second display
            self._val_total, self._val_done = self.total_val_batches, 0
            return
        self._start("validate", self.total_val_batches)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if trainer.sanity_checking:
            return
        if self._train is not None:
            self._val_done += 1
            total = int(self._val_total) if math.isfinite(self._val_total) else "?"
            self._train.update(info=f"validating {self._val_done}/{total}")
            return
        self._advance()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._end()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._end()  # the live displays stop, so the error is printed on a clean line
        self.on_train_end(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._start("test", sum(trainer.num_test_batches))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._advance()

    def on_test_end(self, trainer, pl_module) -> None:
        self._end()

    def on_predict_start(self, trainer, pl_module) -> None:
        self._start("predict", sum(trainer.num_predict_batches))

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._advance()

    def on_predict_end(self, trainer, pl_module) -> None:
        self._end()
