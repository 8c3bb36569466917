"""VIP's proxy attention: a patch attention built from the image's own feature similarity.

It lives here, beside the encoders, because the dino.txt bank encoder
(``pretrained.dinotxt.DinoTxtEncoder``) pools its visual prompt through the same proxy head as
VIP's pixels (docs/design.md §3); VIP's aggregation (``model.vip.aggregation``) re-exports it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def proxy_attention(features: torch.Tensor, beta: float = 1.5, gamma: float = 0.5) -> torch.Tensor:
    """Attention from the image's own patch self-similarity: (B, N, C) -> (B, N, N), rows sum to 1.

    S = cos(f_i, f_j); S' = (S - beta * mean(S)) * gamma with the mean over the image's whole
    matrix; entries <= 0 are masked before the softmax over j. A row with every entry masked
    (all its similarities below beta times the mean) would be NaN, as in the reference code;
    here it attends to its own patch alone.
    """
    f = F.normalize(features.float(), dim=-1)
    s = f @ f.transpose(1, 2)  # (B, N, N)
    s = (s - beta * s.mean(dim=(1, 2), keepdim=True)) * gamma
    masked = s <= 0
    empty = masked.all(dim=-1, keepdim=True)  # (B, N, 1): rows that would be NaN
    eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device).expand_as(masked)
    masked = torch.where(empty, ~eye, masked)
    return s.masked_fill(masked, float("-inf")).softmax(dim=-1)
