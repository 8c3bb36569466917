"""VIP: training-free segmentation with alias expansion, visual-guided alias selection and
saliency-aware aggregation (docs/vip.md says what is VIP's and what is ours).

- ``aggregation``: the maths (proxy attention, alias weights, logsumexp, background threshold);
- ``dense``: the dense encoders: dino.txt's head with VIP's proxy attention
  (``model.vip.dense.DenseDinoTxt``, VIP's own), or CLIP's image tower with a ClearCLIP / SCLIP /
  proxy last block (ours, an alternative); ``create_dense_encoder`` picks one for a preset;
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
