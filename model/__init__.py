"""Networks: every named preset (``presets``), the open_clip backbone, weights and fingerprints;
the DPSeg cost volume, decoder and VIP follow the method figure (DESIGN §2, §3, §8)."""
