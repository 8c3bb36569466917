"""The frozen pretrained parts that the bank builder and both methods share: named presets of
encoders and generators (``presets``), weights from the hub or a local path (``hub``), the toy
presets' committed weights (``bundled_weights``, ``toy_pretrain``), portable random weights
(``portable_init``), fingerprints (``fingerprint``), and the encoders themselves: open_clip
(``backbone``) and dino.txt (``dinotxt``).

Imports go one way: ``cli -> model -> prompt_bank -> pretrained -> data`` (docs/design.md §8).
"""
