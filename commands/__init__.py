"""The commands of ``cli.py``, one module per group; ``cli.commands()`` assembles the tree.

    options.py   Command, options from a settings dataclass's fields, --config, our logging
    segment.py   segment, explain
    presets.py   presets, presets pretrain
    vocab.py     vocab
    bank.py      bank build|info|verify|repair|merge|subset|push|pull|gallery
    vip.py       vip select-aliases
    data.py      data synthetic|toy|stats|prepare, eval-masks

A module imports only the standard library and ``commands.options`` when it loads, so ``-h``
answers at once; each command imports what it needs when it runs. fit/validate/test/predict are
LightningCLI's (``model/lightning_cli.py``), run by ``cli.lightning_main``.
"""
