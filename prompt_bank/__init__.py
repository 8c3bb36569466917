"""The offline half of DPSeg: Stable Diffusion images per (class, template), encoded by a frozen
CLIP image encoder and stored in a shareable Zarr bank (docs/design.md §1, §4)."""
