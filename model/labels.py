"""Class ids from class scores: the argmax over the class axis, computed with ``max``.

``torch.max(dim).indices`` and ``torch.argmax(dim)`` give the same ids (the first on ties, NaN
wins), but on CPU ``max`` over a non-last axis is faster for up to a few hundred classes
(``benchmarks/label_maps.py``, torch 2.14, Xeon AVX-512, 1-2 threads: 2.0-2.5x for (150, 512,
512) scores, 5-14x for K = 8, 1.6x at K = 459) and about 10% slower from K = 600 on (0.88-0.90x
at K = 847, where a label map is a small share of a forward). Before, round II of
``benchmarks/inference_cost.py`` spent 11% of its time in ``argmax``. Every label map of dpseg
(round II's detection, predictions, metrics) goes through here.
"""

from __future__ import annotations

import torch


def class_labels(scores: torch.Tensor, dim: int) -> torch.Tensor:
    """scores with K classes along ``dim`` -> int64 ids with that axis removed, equal to
    ``scores.argmax(dim)``."""
    return scores.max(dim=dim).indices
