"""GPT-2 (Hugging Face `GPT2LMHeadModel` / `GPT2Model`, e.g. openai-community/gpt2) -> models.lm.CausalLM.

A folder with config.json, model.safetensors (or pytorch_model.bin) and tokenizer.json, or an hf: id in the
local hub cache. GPT-2's Conv1D layers store their weights as (in, out): the map transposes them (nanoGPT's
list). Learned positions, LayerNorm, the tanh GELU and the tied head are options of CausalLM.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from models.pretrained import Converted, hf_activation, hf_generation, hf_tokenizer, read_json, read_weights
from models.pretrained.source import Source
from utils.errors import FileFormatError, MissingFileError

# zoo block part <- GPT-2 layer part; all Conv1D, so every weight is transposed.
LAYER = {"attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
NORMS = {"norm1": "ln_1", "norm2": "ln_2"}


def accepts(src: Source, config: dict) -> bool:
    return config.get("model_type") == "gpt2"


def lm_kwargs(config: dict[str, Any], spec: str) -> dict[str, Any]:
    """A GPT2Config (as a dict) -> CausalLM arguments; refuses the variants CausalLM does not express."""
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if config.get(key):
            raise FileFormatError(f"pretrained={spec!r}: {key}=true is not supported (plain GPT-2 attention only)")
    if not config.get("scale_attn_weights", True):
        raise FileFormatError(f"pretrained={spec!r}: scale_attn_weights=false is not supported")
    dim = int(config["n_embd"])
    return dict(vocab_size=int(config["vocab_size"]), block_size=int(config["n_positions"]), dim=dim,
                depth=int(config["n_layer"]), num_heads=int(config["n_head"]),
                ffn_dim=int(config.get("n_inner") or 4 * dim), ffn="mlp",
                act=hf_activation({"hidden_act": config.get("activation_function", "gelu_new")}, spec),
                norm="layernorm", norm_eps=float(config.get("layer_norm_epsilon", 1e-5)), positions="learned",
                bias=True, tie_embeddings=bool(config.get("tie_word_embeddings", True)))


def map_weights(ref: dict[str, Tensor], depth: int, tied: bool) -> dict[str, Tensor]:
    """GPT2LMHeadModel state dict (with or without the `transformer.` prefix) -> CausalLM state dict."""
    head = ref.get("lm_head.weight")
    ref = {k.removeprefix("transformer."): v for k, v in ref.items()}
    out = {"tok_embed.weight": ref["wte.weight"], "pos_embed.weight": ref["wpe.weight"],
           "norm.weight": ref["ln_f.weight"], "norm.bias": ref["ln_f.bias"],
           "head.weight": ref["wte.weight"] if tied or head is None else head}
    for i in range(depth):
        z, r = f"blocks.{i}.", f"h.{i}."
        for zoo, theirs in LAYER.items():
            out[f"{z}{zoo}.weight"] = ref[f"{r}{theirs}.weight"].t().contiguous()  # Conv1D: (in, out)
            out[f"{z}{zoo}.bias"] = ref[f"{r}{theirs}.bias"]
        for zoo, theirs in NORMS.items():
            for kind in ("weight", "bias"):
                out[f"{z}{zoo}.{kind}"] = ref[f"{r}{theirs}.{kind}"]
    return out


def convert(source: Source) -> Converted:
    """A GPT-2 source -> Converted: CausalLM config and weights, the tokenizer, generation_config's settings."""
    config_file = source.file("config.json")
    if config_file is None:
        raise MissingFileError(f"pretrained={source.spec!r}: {source.path} has no config.json")
    config = read_json(config_file)
    kwargs = lm_kwargs(config, source.spec)
    state = map_weights(read_weights(source), kwargs["depth"], kwargs["tie_embeddings"])
    return Converted({"_target_": "models.lm.CausalLM", **kwargs}, state, {"modality": "text"},
                     tokenizer=hf_tokenizer(source), module=hf_generation(source, config))
