"""VIP: training-free segmentation with alias expansion, visual-guided alias selection and
saliency-aware aggregation (``../shared/seeds/vip.txt``, DESIGN §3).

- ``aggregation``: the maths (proxy attention, alias weights, logsumexp, background threshold);
- ``dense``: CLIP's image tower as a dense encoder (ClearCLIP / SCLIP / proxy last block);
- ``segmenter``: alias queries and the segmenter over them (optionally with a bank's visual
  prompts);
- ``selection``: visual-guided alias selection (``cli.py vip select-aliases``);
- ``lightning``: ``VIPModule`` for ``cli.py test|predict --config configs/vip_*.yaml``.
"""

from model.vip.aggregation import (
    VIPConfig,
    aggregate_aliases,
    alias_weights,
    assign_labels,
    proxy_attention,
)

__all__ = ["VIPConfig", "aggregate_aliases", "alias_weights", "assign_labels", "proxy_attention"]
