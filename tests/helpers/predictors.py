"""Predictors built around a test's own tiny network, so that its Prediction comes from the real path
(inference.predictor.Predictor.predict), as predict.py and app.py make theirs."""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch
from torch import nn

from inference.predictor import Predictor

NAMES = [f"class {i}" for i in range(5)]


class Tok:
    """A tokenizer of "t<id>" words: "t5 t6" <-> [5, 6] (with the offsets `source_ids` reads)."""

    id_to_token = staticmethod(lambda i: f"t{i}")

    @staticmethod
    def encode(sentence: str, add_special_tokens: bool = False) -> SimpleNamespace:
        found = list(re.finditer(r"t(\d+)", sentence))
        return SimpleNamespace(ids=[int(m.group(1)) for m in found], offsets=[m.span() for m in found])

    @staticmethod
    def decode(ids: list[int], skip_special_tokens: bool = False) -> str:
        return " ".join(f"t{i}" for i in ids)


def sentence(ids: torch.Tensor | list[int]) -> str:
    """The sentence Tok reads as these ids."""
    return " ".join(f"t{int(i)}" for i in ids)


def classifier(net: nn.Module, class_names: list[str] = NAMES) -> Predictor:
    """A classifier's Predictor: its inputs normalised with mean 0.5, std 0.5 per channel (what its
    pictures show of them)."""
    channels = getattr(getattr(net, "patch_embed", None), "in_chans", 1)
    pre = {"mean": [0.5] * channels, "std": [0.5] * channels}
    return Predictor(net.eval(), None, "test", preprocess=pre, class_names=list(class_names))


class Decoded(nn.Module):
    """A translator's module that decodes every source to the given ids (the test chooses the output
    its maps are of; Predictor._generate cuts it at EOS as it cuts a real decoding)."""

    def __init__(self, out: list[int]) -> None:
        super().__init__()
        self.out = list(out)

    def decode_ids(self, src: torch.Tensor, beam_size: int | None = None) -> torch.Tensor:
        return torch.tensor([self.out] * len(src))


def translator(net: nn.Module, out: list[int]) -> Predictor:
    """A translator's Predictor (tokenizer Tok) that translates into `out`."""
    return Predictor(net.eval(), Decoded(out), "test", tokenizer=Tok())
