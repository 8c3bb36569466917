"""Rehearsal of the real loading paths without the real weights (``make rehearse``).

Folders in the Hugging Face hub's own file layout, holding a model's published configuration
files and random weights at its real sizes, placed in a local hub cache, so that the code that
loads a download runs unchanged (``HF_HOME``, offline mode).
"""
