"""What every zoo network tells the rest of the house (export, predict, the explorer), so that none of them
keeps a table of the networks: its name, the kind of input it takes, which attention layers to show, and how
it exports to ONNX."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn
from torch.export import Dim


@dataclass
class OnnxSpec:
    """How one network is exported: the module traced, named example inputs, and which axes are dynamic."""

    module: nn.Module
    input_names: list[str]
    example: tuple[Tensor, ...]
    dynamic_shapes: tuple[dict[int, Dim], ...]
    dynamic: dict[str, list[str]] = field(default_factory=dict)  # input name -> its dynamic axes, for humans
    output_names: list[str] = field(default_factory=lambda: ["logits"])


class Network(nn.Module):
    """What every zoo network tells the rest of the house (export, predict, explorer).

    name: the config group (configs/model/<name>.yaml) and the exported file's name.
    modality: the kind of input, as the data configs say it: image | audio | video | text | tokens | protein.
    attention_layers: globs of the MultiHeadAttention modules the explorer and the maps show.
    task: what a prediction is: "classify" (logits over classes), "generate" (decoded text), "embed"
        (contextual vectors), "complete" (a prompt continued), "transcribe" (speech -> text), "unmask" (masked residues
        predicted back: a protein language model); it chooses the LightningModule a pretrained source predicts through.
    """

    name: ClassVar[str]
    modality: ClassVar[str]
    attention_layers: ClassVar[tuple[str, ...]] = ("encoder.blocks.*.attn",)
    task: ClassVar[str] = "classify"

    @classmethod
    def adopt(cls, net: dict, state: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]] | None:
        """Another network's converted config and state (a pretrained source converts to its own family) ->
        this network's, when this one is built from a part of it (a classifier on Whisper's encoder); None: not."""
        return None

    def onnx_spec(self) -> OnnxSpec:
        """Example inputs at the training shape, batch 2 (torch.export specialises axes of size 0 and 1),
        and the axes that stay dynamic."""
        raise NotImplementedError(f"{type(self).__name__} does not say how it exports to ONNX")


def network_class(target: str) -> type[Network]:
    """The zoo network class `target` names ("models.vit.VisionTransformer"), or a ValueError."""
    module, _, name = target.rpartition(".")
    cls = None
    if module.startswith("models.") and name.isidentifier():
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, Network) and cls is not Network):
        raise ValueError(f"unknown network _target_ {target!r}; expected a zoo network class "
                         f"(a models.Network subclass, e.g. models.vit.VisionTransformer)")
    return cls


__all__ = ["Network", "OnnxSpec", "network_class"]
