"""Where a training step's memory goes, measured inside ``cli.py fit`` (a Lightning callback).

    cli.py fit ... --trainer.callbacks+=rehearsal.memory.StepMemory \\
                   --trainer.callbacks.init_args.out step_memory.json

Parameters, gradients and AdamW's state are counted exactly from their tensors; activations
(and the step's temporaries) are the process's peak resident memory during the first step less
what it held when the step began (CPU: ``VmHWM`` reset through ``/proc/self/clear_refs``; CUDA:
the allocator's peak).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.memory import current_memory_mb, peak_memory_mb, reset_peak


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class StepMemory(Callback):
    """Writes the first training step's memory breakdown (MB) to ``out`` as JSON."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.start_mb: float | None = None
        self.done = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.done:
            self.device = pl_module.device
            reset_peak(self.device)
            self.start_mb = current_memory_mb(self.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.done:
            return
        self.done = True
        peak = peak_memory_mb(self.device)
        params = list(pl_module.parameters())
        trainable = [p for p in params if p.requires_grad]
        state = [
            v
            for s in trainer.optimizers[0].state.values()
            for v in s.values()
            if torch.is_tensor(v) and v.numel() > 1
        ]
        encoder = getattr(pl_module, "prompt_encoder", None)  # DPSeg's frozen CLIP (not a child)
        frozen = list(encoder.parameters()) if encoder is not None else []
        mb = 2**20
        report = {
            "parameters_mb": _bytes(params) / mb,
            "trainable_parameters": sum(p.numel() for p in trainable),
            "frozen_prompt_encoder_mb": _bytes(frozen) / mb,
            "buffers_mb": _bytes(pl_module.buffers()) / mb,
            "gradients_mb": _bytes(trainable) / mb,
            "optimizer_state_mb": _bytes(state) / mb,
            "step_start_mb": self.start_mb,
            "peak_mb": peak,
            "activations_and_temporaries_mb": peak - self.start_mb,
            "batch_size": len(batch["image"]) if "image" in batch else None,
            "device": str(self.device),
        }
        self.out.write_text(json.dumps(report, indent=2))
