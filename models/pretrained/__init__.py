"""Pretrained models from other libraries, loaded into the zoo's own models (docs/pretrained.md).

One small file per source family maps a reference config to a zoo model, its weights and its input
preparation; `source.py` finds the files (timm:, hf:, a local folder or file) without the network.
"""
