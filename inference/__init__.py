"""Inference: load a run or a pretrained source as one Predictor, read inputs, predict once per input."""
