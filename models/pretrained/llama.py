"""Llama, Mistral and Qwen2 (Hugging Face `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`)
-> models.lm.CausalLM.

One layout for the three: RMSNorm, rotary ("half" pairs, rope_theta, the linear and llama3 frequency rules),
grouped-query attention, SwiGLU (gate and up stacked into the zoo's one fc1), no biases but Qwen2's q/k/v and
whatever attention_bias / mlp_bias a Llama config turns on; Mistral's sliding_window is CausalLM's attn_window.
A folder with config.json, weights (one file or safetensors shards) and tokenizer.json, or an hf: id.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from models.pretrained import Converted, hf_generation, hf_tokenizer, read_json, read_weights
from models.pretrained.source import Source
from utils.errors import FileFormatError, MissingFileError

FAMILIES = ("llama", "mistral", "qwen2")
NORMS = {"norm1": "input_layernorm", "norm2": "post_attention_layernorm"}


def accepts(src: Source, config: dict) -> bool:
    return config.get("model_type") in FAMILIES


def rope_options(config: dict[str, Any], spec: str) -> tuple[float, dict[str, Any] | None]:
    """(rope_base, rope_scaling) from either config layout: rope_theta + rope_scaling (transformers 4) or
    rope_parameters (transformers 5)."""
    params = dict(config.get("rope_parameters") or {})
    scaling = dict(config.get("rope_scaling") or params)
    base = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if float(params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))) != 1.0:
        raise FileFormatError(f"pretrained={spec!r}: partial_rotary_factor is not supported (whole heads rotate)")
    if kind == "default":
        return base, None
    if kind == "linear":
        return base, {"rope_type": "linear", "factor": float(scaling["factor"])}
    if kind == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        return base, {"rope_type": "llama3", **{k: scaling[k] for k in keys}}
    raise FileFormatError(f"pretrained={spec!r}: rope_type={kind!r} is not supported (default, linear, llama3)")


def lm_kwargs(config: dict[str, Any], spec: str) -> dict[str, Any]:
    """A Llama / Mistral / Qwen2 config (as a dict) -> CausalLM arguments."""
    dim, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    if config.get("head_dim") not in (None, dim // heads):
        raise FileFormatError(f"pretrained={spec!r}: head_dim={config['head_dim']} is not hidden_size / "
                              f"num_attention_heads = {dim // heads} (the zoo's heads split the width)")
    if config.get("hidden_act", "silu") not in ("silu", "swish"):
        raise FileFormatError(f"pretrained={spec!r}: hidden_act={config['hidden_act']!r}: the gated feed-forward "
                              f"is SiLU only")
    window = config.get("sliding_window")
    if config.get("model_type") == "qwen2":  # Qwen2 windows only when told, and only some layers
        if config.get("use_sliding_window"):
            raise FileFormatError(f"pretrained={spec!r}: use_sliding_window=true is not supported for Qwen2")
        window = None
    base, scaling = rope_options(config, spec)
    attention_bias = bool(config.get("attention_bias", config.get("model_type") == "qwen2"))
    mlp_bias = bool(config.get("mlp_bias", False))
    o_bias = attention_bias and config.get("model_type") != "qwen2"  # Qwen2: q/k/v biases only
    return dict(vocab_size=int(config["vocab_size"]), block_size=int(config.get("max_position_embeddings", 2048)),
                dim=dim, depth=int(config["num_hidden_layers"]), num_heads=heads,
                num_kv_heads=int(config.get("num_key_value_heads") or heads),
                ffn_dim=int(config["intermediate_size"]), ffn="swiglu", act="silu",
                norm="rmsnorm", norm_eps=float(config.get("rms_norm_eps", 1e-6)), positions="rotary",
                rope_base=base, rope_scaling=scaling, bias=o_bias or mlp_bias, qkv_bias=attention_bias,
                attn_window=None if window is None else int(window),
                tie_embeddings=bool(config.get("tie_word_embeddings", False)))


def map_weights(ref: dict[str, Tensor], kwargs: dict[str, Any]) -> dict[str, Tensor]:
    """LlamaForCausalLM-layout state dict -> CausalLM state dict. With `bias` on, a bias the reference lacks
    (Llama's attention_bias without mlp_bias, or the reverse) is zero: the same sum. No rotary table: as in
    transformers, CausalLM computes it from rope_base and rope_scaling."""
    ref = {k.removeprefix("model."): v for k, v in ref.items()}
    embed = ref["embed_tokens.weight"]
    out = {"tok_embed.weight": embed, "norm.weight": ref["norm.weight"],
           "head.weight": embed if kwargs["tie_embeddings"] else ref.get("lm_head.weight", embed)}

    def bias(key: str, width: int) -> Tensor:
        return ref.get(key, torch.zeros(width, dtype=embed.dtype))

    for i in range(kwargs["depth"]):
        z, r = f"blocks.{i}.", f"layers.{i}."
        att, mlp = f"{r}self_attn.", f"{r}mlp."
        qkv = [f"{att}{n}_proj" for n in "qkv"]
        out[f"{z}attn.qkv.weight"] = torch.cat([ref[f"{n}.weight"] for n in qkv])  # the core's q, k, v order
        out[f"{z}attn.proj.weight"] = ref[f"{att}o_proj.weight"]
        out[f"{z}mlp.fc1.weight"] = torch.cat([ref[f"{mlp}gate_proj.weight"], ref[f"{mlp}up_proj.weight"]])
        out[f"{z}mlp.fc2.weight"] = ref[f"{mlp}down_proj.weight"]
        if kwargs["qkv_bias"]:
            out[f"{z}attn.qkv.bias"] = torch.cat([bias(f"{n}.bias", ref[f"{n}.weight"].shape[0]) for n in qkv])
        if kwargs["bias"]:
            width = kwargs["ffn_dim"]
            out[f"{z}attn.proj.bias"] = bias(f"{att}o_proj.bias", kwargs["dim"])
            out[f"{z}mlp.fc1.bias"] = torch.cat([bias(f"{mlp}gate_proj.bias", width),
                                                 bias(f"{mlp}up_proj.bias", width)])
            out[f"{z}mlp.fc2.bias"] = bias(f"{mlp}down_proj.bias", kwargs["dim"])
        for zoo, theirs in NORMS.items():
            out[f"{z}{zoo}.weight"] = ref[f"{r}{theirs}.weight"]
    return out


def convert(source: Source) -> Converted:
    """A Llama / Mistral / Qwen2 source -> Converted: CausalLM config and weights, the tokenizer (its BOS rule
    kept) and generation_config's settings."""
    config_file = source.file("config.json")
    if config_file is None:
        raise MissingFileError(f"pretrained={source.spec!r}: {source.path} has no config.json")
    config = read_json(config_file)
    kwargs = lm_kwargs(config, source.spec)
    state = map_weights(read_weights(source), kwargs)
    return Converted({"_target_": "models.lm.CausalLM", **kwargs}, state, {"modality": "text"},
                     tokenizer=hf_tokenizer(source), module=hf_generation(source, config))
