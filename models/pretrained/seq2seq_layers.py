"""The encoder / decoder layers of transformers' BART-style encoder-decoders (Marian, Whisper) -> the zoo's blocks."""

from __future__ import annotations

import torch


def map_layers(ref: dict[str, torch.Tensor], out: dict[str, torch.Tensor], encoder_depth: int,
               decoder_depth: int, *, key_bias: bool = True) -> None:
    """Adds every layer's weights of `ref` (transformers' names, without the model prefix) to `out` under the
    zoo's names: `encoder.blocks.i` (EncoderBlock) and `decoder.i` (DecoderBlock). `key_bias=False`: the
    reference's key projection has no bias (Whisper): a zero one is stacked in the core's qkv bias, where any
    constant would change nothing (softmax removes a score added to a whole row)."""

    def attn(zoo: str, theirs: str) -> None:
        # The core's one qkv projection: q, k, v stacked in that order.
        out[f"{zoo}.qkv.weight"] = torch.cat([ref[f"{theirs}.{n}_proj.weight"] for n in "qkv"])
        q_bias, v_bias = ref[f"{theirs}.q_proj.bias"], ref[f"{theirs}.v_proj.bias"]
        k_bias = ref[f"{theirs}.k_proj.bias"] if key_bias else torch.zeros_like(q_bias)
        out[f"{zoo}.qkv.bias"] = torch.cat([q_bias, k_bias, v_bias])
        out[f"{zoo}.proj.weight"] = ref[f"{theirs}.out_proj.weight"]
        out[f"{zoo}.proj.bias"] = ref[f"{theirs}.out_proj.bias"]

    for i in range(encoder_depth):
        z, r = f"encoder.blocks.{i}", f"encoder.layers.{i}"
        attn(f"{z}.attn", f"{r}.self_attn")
        copy(ref, out, [(f"{z}.norm1", f"{r}.self_attn_layer_norm"), (f"{z}.mlp.fc1", f"{r}.fc1"),
                        (f"{z}.mlp.fc2", f"{r}.fc2"), (f"{z}.norm2", f"{r}.final_layer_norm")])
    for i in range(decoder_depth):
        z, r = f"decoder.{i}", f"decoder.layers.{i}"
        attn(f"{z}.self_attn", f"{r}.self_attn")
        attn(f"{z}.cross_attn", f"{r}.encoder_attn")
        copy(ref, out, [(f"{z}.norm1", f"{r}.self_attn_layer_norm"), (f"{z}.norm2", f"{r}.encoder_attn_layer_norm"),
                        (f"{z}.mlp.fc1", f"{r}.fc1"), (f"{z}.mlp.fc2", f"{r}.fc2"),
                        (f"{z}.norm3", f"{r}.final_layer_norm")])


def copy(ref: dict[str, torch.Tensor], out: dict[str, torch.Tensor], pairs: list[tuple[str, str]]) -> None:
    """out[zoo.weight / .bias] = ref[theirs.weight / .bias] for each (zoo, theirs) pair."""
    for zoo, theirs in pairs:
        for kind in ("weight", "bias"):
            out[f"{zoo}.{kind}"] = ref[f"{theirs}.{kind}"]
