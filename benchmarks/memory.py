"""Peak memory for the benchmarks: CUDA's allocator counters, or the process's RSS on CPU.

On CPU the high-water mark is reset through ``/proc/self/clear_refs`` and read from ``VmHWM``
(``/proc/self/status``), not from ``ru_maxrss``: in a child process Linux folds the parent's RSS
at the spawn into ``ru_maxrss``, so a child started by a process holding a model would report at
least the parent's RSS.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch


def reset_peak(device: torch.device) -> bool:
    """Reset the peak counter; False where the CPU high-water mark cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
        return True
    except OSError:
        return False


def _proc_status_mb(field: str) -> float | None:
    """A ``/proc/self/status`` field (VmRSS, VmHWM) in MB; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    return None


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max_memory_allocated; CPU: the process's RSS high-water mark (VmHWM).

    Not ``ru_maxrss`` in the child: Linux folds the parent's RSS at the spawn into it (the
    high-water mark of the address space replaced by exec), so a child started by a process
    holding a model reports at least the parent's RSS, and /proc/self/clear_refs cannot reset it.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _proc_status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def current_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    rss = _proc_status_mb("VmRSS")
    return rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
