"""What every layer shares (docs/design.md §8.0): user errors and the one-line path
(``errors``), config validation (``settings``), progress bars (``progress``), optional packages
(``optional``), atomic file writes (``io``) and interruption handling (``signals``). It imports
nothing of the project."""
