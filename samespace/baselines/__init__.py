"""Baselines that SameSpace is compared with, one module per family (hashes: imagededup's four
perceptual hashes)."""
