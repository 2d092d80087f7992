"""Pretrained models from other libraries, loaded into the zoo's own models (docs/pretrained.md).

One small file per source family maps a reference config to a zoo model, its weights and its input
preparation; `source.py` finds the files (timm:, hf:, a local folder or file) without the network.

    conv = convert("timm:vit_small_patch16_224")   # -> Converted(net config, zoo state_dict, preprocessing)
    net = conv.build()                            # the zoo's VisionTransformer with the reference's weights
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.network import network_class
from models.pretrained.source import Source, resolve
from models.tokenizer import load_tokenizer
from utils.errors import UserError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


@dataclass
class Converted:
    """What a converter returns: the zoo network's config (`_target_` + keyword arguments), its state_dict,
    and the input preparation and class names that travel with the weights (plain data, stored in checkpoints)."""

    net: dict[str, Any]
    state: dict[str, Tensor]
    preprocess: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None  # a text family's tokenizer, serialised as checkpoints carry it
    module: dict[str, Any] = field(default_factory=dict)  # LightningModule arguments (Marian's decoding rules)

    @property
    def modality(self) -> str:
        return str(self.preprocess["modality"])

    def build(self) -> nn.Module:
        """The zoo network with the converted weights (strict: every tensor mapped, none left over)."""
        kwargs = dict(self.net)
        net = network_class(str(kwargs.pop("_target_")))(**kwargs)
        net.load_state_dict(self.state, strict=True)
        return net.eval()

    def load_tokenizer(self) -> Any:
        """The tokenizer of a text family (None for the others)."""
        return None if self.tokenizer is None else load_tokenizer(self.tokenizer, zoo_specials=False)


def read_json(path: Path | None) -> dict[str, Any]:
    return json.loads(path.read_text()) if path is not None else {}


def read_weights(src: Source) -> dict[str, Tensor]:
    """The reference state_dict from a folder (model.safetensors / pytorch_model.bin, or the shards a
    model.safetensors.index.json lists) or a weights file."""
    index = src.file("model.safetensors.index.json")
    if index is not None and src.file("model.safetensors") is None:
        from safetensors.torch import load_file

        shards = sorted(set(read_json(index)["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(str(src.path / shard)).items()}
    path = src.path if src.path.is_file() else next((src.file(n) for n in WEIGHT_FILES if src.file(n)), None)
    if path is None:
        raise UserError(f"pretrained={src.spec!r}: no weights in {src.path} (expected one of {', '.join(WEIGHT_FILES)})")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    for key in ("state_dict", "model"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "silu": "silu",
                  "swish": "silu", "relu": "relu"}


def hf_activation(config: dict[str, Any], spec: str) -> str:
    act = config.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise UserError(f"pretrained={spec!r}: hidden_act={act!r} is not one of the zoo's activations "
                        f"({', '.join(HF_ACTIVATIONS)})")
    return HF_ACTIVATIONS[act]


def hf_encoder(config: dict[str, Any], spec: str, eps: float) -> dict[str, Any]:
    """The zoo network arguments every HF ViT-style config gives the same way: classes, width, depth, heads,
    MLP ratio, biases, the blocks' LayerNorm eps (`eps` when the config has none) and activation."""
    return {
        "num_classes": len(config.get("id2label") or {}) or 2,
        "dim": int(config["hidden_size"]),
        "depth": int(config["num_hidden_layers"]),
        "num_heads": int(config["num_attention_heads"]),
        "mlp_ratio": config["intermediate_size"] / config["hidden_size"],
        "qkv_bias": bool(config.get("qkv_bias", True)),
        "norm_eps": float(config.get("layer_norm_eps", eps)),
        "act": hf_activation(config, spec),
    }


# A Hugging Face ViT-style layer (`...layer.<i>.`, the names the hub files keep) -> the zoo's EncoderBlock.
HF_LAYER = {"attention.output.dense": "attn.proj", "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
            "layernorm_before": "norm1", "layernorm_after": "norm2"}


def hf_block(state: dict[str, Tensor], src: str, dst: str, names: dict[str, str] | None = None) -> dict[str, Tensor]:
    """One HF layer's weights under prefix `src` as a zoo block's under `dst`: query / key / value stacked into
    the one qkv projection (a missing key bias, VideoMAE's, is zero: a constant per query row, which softmax
    ignores), the rest renamed by HF_LAYER (and `names`, for the extra parts of a family's layer)."""
    out: dict[str, Tensor] = {}
    att = f"{src}attention.attention."
    q, k, v = (state[f"{att}{n}.weight"] for n in ("query", "key", "value"))
    out[f"{dst}attn.qkv.weight"] = torch.cat([q, k, v])
    if f"{att}query.bias" in state:
        out[f"{dst}attn.qkv.bias"] = torch.cat([state[f"{att}{n}.bias"] for n in ("query", "key", "value")])
    elif f"{att}q_bias" in state:
        out[f"{dst}attn.qkv.bias"] = torch.cat([state[f"{att}q_bias"], torch.zeros_like(state[f"{att}v_bias"]),
                                                state[f"{att}v_bias"]])
    for hf, zoo in {**HF_LAYER, **(names or {})}.items():
        for part in ("weight", "bias"):
            if f"{src}{hf}.{part}" in state:
                out[f"{dst}{zoo}.{part}"] = state[f"{src}{hf}.{part}"]
    return out


def hf_tokenizer(src: Source) -> str:
    """A Hugging Face text model's tokenizer.json, serialised as checkpoints carry it. Its post-processor stays:
    `encode(text)` adds what the reference adds (Llama's BOS), `add_special_tokens=False` nothing."""
    path = src.file("tokenizer.json")
    if path is None:
        raise UserError(f"pretrained={src.spec!r}: {src.path} has no tokenizer.json (the zoo reads tokenizers "
                        f"with the `tokenizers` library; a tokenizer.model alone is not read)")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer.to_str()


def hf_generation(src: Source, config: dict[str, Any]) -> dict[str, Any]:
    """The decoding settings of generation_config.json (over config.json's ids), as models.generate takes
    them: eos_ids, pad_id (the pad, else the first EOS, else 0, as HF pads ended rows), bos_id,
    temperature (0 = greedy unless do_sample), top_k, top_p, max_new_tokens (None: the caller's)."""
    gen = {**config, **read_json(src.file("generation_config.json"))}
    eos = gen.get("eos_token_id")
    eos_ids = [] if eos is None else [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    pad = gen.get("pad_token_id")
    sample = bool(gen.get("do_sample", False))
    return {"bos_id": gen.get("bos_token_id"), "eos_ids": eos_ids,
            "pad_id": int(pad if pad is not None else eos_ids[0] if eos_ids else 0),
            "temperature": float(gen.get("temperature") or 1.0) if sample else 0.0,
            "top_k": int(gen.get("top_k", 50) or 0) if sample else None,
            "top_p": float(gen.get("top_p") or 1.0) if sample else None,
            "max_new_tokens": gen.get("max_new_tokens")}


def hf_labels(config: dict[str, Any]) -> list[str]:
    """Class names from a HF config's id2label (the defaults LABEL_<i> kept: they are all there is)."""
    id2label = config.get("id2label") or {}
    return [str(id2label.get(str(i), id2label.get(i, f"class {i}"))) for i in range(len(id2label))]


def converters() -> list[str]:
    """The converter modules of this package (one per source family; each says which sources it `accepts`; the
    others, such as `source`, are helpers)."""
    names = (m.name for m in pkgutil.iter_modules(__path__))
    return sorted(n for n in names if hasattr(importlib.import_module(f"models.pretrained.{n}"), "accepts"))


def family(src: Source) -> str:
    """Which converter reads this source: the first module of this package whose `accepts(src, config)` is true
    (a new family is a new file here, with no table to edit)."""
    config = {} if src.path.is_file() else read_json(src.file("config.json"))
    for name in converters():
        if importlib.import_module(f"models.pretrained.{name}").accepts(src, config):
            return name
    what = config.get("model_type") or "folder without a config.json"
    raise UserError(f"pretrained={src.spec!r}: cannot convert a {what} ({src.path}); the zoo converts: "
                    f"{', '.join(converters())} (docs/pretrained.md)")


def convert(spec: str, *, trust_pickle: bool = False) -> Converted:
    """Resolve a source offline and convert it (the reference library reads configs; nothing of it runs later).
    trust_pickle: the user trusts the source's pickles (only fair-esm's .pt files need it; docs/pretrained.md)."""
    src = replace(resolve(spec), trust_pickle=bool(trust_pickle))
    return importlib.import_module(f"models.pretrained.{family(src)}").convert(src)
