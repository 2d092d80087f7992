"""Attention maps from chosen layers: AttentionRecorder, select_attention_layers, attention_maps."""

from __future__ import annotations

import fnmatch

import torch
from torch import Tensor, nn

from models.attention.core import MultiHeadAttention


class AttentionRecorder:
    """Collect attention maps from chosen layers while the model runs as usual.

        with AttentionRecorder(model, layers=["decoder.*.cross_attn"], average_heads=True) as rec:
            logits = model(src, tgt_in)
        rec.maps  # {module_name: (B, T, S)}; per head (B, H, T, S) without average_heads

    layers: None (all), or entries that are an index into the model's attention layers in
        module order (negative counts from the end), a module name, or a glob over names.
    heads: keep only these head indices (None = all); average_heads: mean over the kept heads.
    Each map is the layer's last call (for a cached decoder: its last step). A chosen layer computes
    its output and its map in one explicit pass (no second QK^T), so with the explicit kernel the
    output is the same bit for bit, and with the fused kernel it differs only by float rounding
    (<= 1e-5 on the zoo's float32 models, tested); layers not chosen run their usual kernel.

    reuse: keep one buffer per layer from one `with` block to the next and compute each float32 map in
    it (where no gradient is needed; grown when a longer input needs more), instead of fresh memory at
    every call. Each call of a layer overwrites its map (also a map taken by `collect()` inside the
    block, e.g. after each step of a cached decoder), and so does the next block: clone what you keep
    (weights a caller asks for with need_weights=True stay its own; a recorder opened inside the block
    leaves this one's buffers and state as they were).
    For a loop that reads the maps and drops them (contacts of many sequences, a benchmark): fresh
    memory costs a page fault per 4 KB at first touch, most of the maps' cost on a small CPU
    (docs/protein.md#speed).

    Raises:
        ValueError: no attention layer in the model, a layer index out of range or a name that
            matches none, or heads empty or not below every chosen layer's head count.
    """

    def __init__(self, model: nn.Module, layers: list[int | str] | None = None,
                 heads: list[int] | None = None, average_heads: bool = False, reuse: bool = False) -> None:
        self.modules = dict(select_attention_layers(model, layers))
        self.buffers: dict[str, Tensor] | None = {} if reuse else None
        if heads is not None:
            num = {m.num_heads for m in self.modules.values()}
            bad = [h for h in heads if not all(-n <= h < n for n in num)]
            if bad or not heads:
                raise ValueError(f"heads={list(heads)}: expected a non-empty list of head indices "
                                 f"below {min(num)}")
        self.heads = heads
        self.average_heads = average_heads
        self.maps: dict[str, Tensor] = {}

    def __enter__(self) -> AttentionRecorder:
        # What the layers held before (an enclosing recorder's state), given back on exit.
        self._saved = {name: (m.store_weights, m.last_weights, m.weights_buffer) for name, m in self.modules.items()}
        for name, m in self.modules.items():
            buffer = None if self.buffers is None else self.buffers.get(name, torch.empty(0))
            m.store_weights, m.last_weights, m.weights_buffer = True, None, buffer
        return self

    def collect(self) -> dict[str, Tensor]:
        maps = {}
        for name, m in self.modules.items():
            w = m.last_weights
            if w is None:
                continue
            if self.heads is not None:
                w = w[:, list(self.heads)]
            maps[name] = w.mean(dim=1) if self.average_heads else w
        self.maps = maps
        return maps

    def __exit__(self, *exc: object) -> None:
        self.collect()
        for name, m in self.modules.items():
            if self.buffers is not None and m.weights_buffer is not None:
                self.buffers[name] = m.weights_buffer
            m.store_weights, m.last_weights, m.weights_buffer = self._saved[name]


def select_attention_layers(model: nn.Module, layers: list[int | str] | None
                            ) -> list[tuple[str, MultiHeadAttention]]:
    """(name, module) of the model's attention layers picked by index, name or glob (None = all).

    Raises:
        ValueError: the model has no MultiHeadAttention, an index is out of range, or a name / glob
            matches no layer.
    """
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)]
    if not named:
        raise ValueError(f"{type(model).__name__} has no MultiHeadAttention layers to record")
    if layers is None:
        return named
    chosen: dict[str, MultiHeadAttention] = {}
    for layer in layers:
        if isinstance(layer, int):
            if not -len(named) <= layer < len(named):
                raise ValueError(f"layer index {layer} out of range for {len(named)} attention "
                                 f"layers")
            chosen.setdefault(*named[layer])
            continue
        hits = [(n, m) for n, m in named if fnmatch.fnmatchcase(n, str(layer))]
        if not hits:
            known = [n for n, _ in named]
            raise ValueError(f"no attention layer matches {layer!r}; known: {known}")
        for n, m in hits:
            chosen.setdefault(n, m)
    return list(chosen.items())


def attention_maps(model: nn.Module, *inputs: object, layers: list[int | str] | None = None,
                   heads: list[int] | None = None, average_heads: bool = False,
                   **kwargs: object) -> tuple[object, dict[str, Tensor]]:
    """Run `model(*inputs, **kwargs)` once and return (its output, {layer name: attention map}).

    The one way to ask any model of the zoo for its attention: see AttentionRecorder for the
    arguments, shapes, and how the output relates to the one without recording.
    """
    with AttentionRecorder(model, layers, heads, average_heads) as rec:
        out = model(*inputs, **kwargs)
    return out, rec.maps
