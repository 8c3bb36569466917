"""The two methods' networks, following the method figures: DPSeg's cost volume, decoder and
two-round inference; VIP (``model.vip``); their LightningModules, the data module that pairs
datasets with banks, and the predictors (docs/design.md §2, §3). The frozen encoders they build on
live in ``pretrained``."""
