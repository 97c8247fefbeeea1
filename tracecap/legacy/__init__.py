"""Reviving 2017-era models: old semantics, old files, old numbers.

Each idea has its own module here (compatibility with PyTorch 0.1-0.3 semantics, Torch7
networks, rebuilding whole-module checkpoints); this package only gathers their public names.
"""
