"""Vocabularies, prompt templates, datasets in the detectron2 layout, and pictures (DESIGN §5)."""
