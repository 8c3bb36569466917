"""Vocabularies, prompt templates, datasets in the detectron2 layout, and pictures (docs/design.md §5)."""
