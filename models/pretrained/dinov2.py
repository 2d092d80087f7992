"""Hugging Face DINOv2 (Dinov2Model, Dinov2ForImageClassification, Dinov2WithRegistersModel and its classifier)
-> models.vit.VisionTransformer: patch 14, layer scale, SwiGLU for the giant sizes, register tokens, the
position table resized as transformers does; a backbone has no head (forward gives the pooler output), a
classifier reads the class token beside the patch mean (pool="cls_mean")."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from models.pretrained import Converted, hf_activation, hf_block, hf_labels, read_json, read_weights
from models.pretrained.source import Source
from utils.errors import UserError

MODEL_TYPES = ("dinov2", "dinov2_with_registers")
# A Dinov2Layer's parts that hf_block does not already map (its norms and MLP have their own names).
LAYER = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
         "mlp.weights_in": "mlp.fc1", "mlp.weights_out": "mlp.fc2"}
# PIL's resample codes in the image processor config -> torchvision's interpolation names.
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def accepts(src: Source, config: dict[str, Any]) -> bool:
    return config.get("model_type") in MODEL_TYPES


def prefix_of(state: dict[str, Tensor], spec: str) -> str:
    """The weights' prefix: "" for a saved Dinov2Model, "dinov2." / "dinov2_with_registers." for a classifier."""
    for key in state:
        if key.endswith("embeddings.cls_token"):
            return key[: -len("embeddings.cls_token")]
    raise UserError(f"pretrained={spec!r}: the weights hold no DINOv2 embeddings (no '*embeddings.cls_token')")


def net_config(config: dict[str, Any], state: dict[str, Tensor], spec: str) -> dict[str, Any]:
    size, patch = config.get("image_size", 224), config.get("patch_size", 14)
    if not isinstance(size, int) or not isinstance(patch, int):
        raise UserError(f"pretrained={spec!r}: image_size {size} / patch_size {patch}: square ones are converted")
    head = state.get("classifier.weight")
    return {
        "_target_": "models.vit.VisionTransformer",
        "img_size": size,
        "patch_size": patch,
        "in_chans": int(config.get("num_channels", 3)),
        "num_classes": 0 if head is None else int(head.shape[0]),
        "dim": int(config["hidden_size"]),
        "depth": int(config["num_hidden_layers"]),
        "num_heads": int(config["num_attention_heads"]),
        "mlp_ratio": float(config.get("mlp_ratio", 4)),
        "qkv_bias": bool(config.get("qkv_bias", True)),
        "pool": "cls" if head is None else "cls_mean",
        "stem": "patch",
        "class_token": True,
        "token_pos": True,  # the class token's row of position_embeddings
        "norm_eps": float(config.get("layer_norm_eps", 1e-6)),
        "act": hf_activation(config, spec),
        "layer_scale": float(config.get("layerscale_value", 1.0)),
        "ffn": "swiglu" if config.get("use_swiglu_ffn") else "mlp",
        "num_registers": int(config.get("num_register_tokens", 0)),
        "pos_antialias": config.get("model_type") == "dinov2_with_registers",  # its interpolate_pos_encoding
    }


def map_weights(state: dict[str, Tensor], net: dict[str, Any], prefix: str) -> dict[str, Tensor]:
    """HF state_dict -> zoo state_dict: names only, and the position table split into class and patch rows
    (the mask token, used only in pre-training, is left out)."""
    emb = prefix + "embeddings."
    pos = state[emb + "position_embeddings"]
    out = {
        "cls_token": state[emb + "cls_token"],
        "prefix_pos": pos[:, :1],
        "pos_embed.weight": pos[:, 1:],
        "patch_embed.proj.weight": state[emb + "patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state[emb + "patch_embeddings.projection.bias"],
        "encoder.norm.weight": state[prefix + "layernorm.weight"],
        "encoder.norm.bias": state[prefix + "layernorm.bias"],
    }
    if net["num_registers"]:
        out["reg_token"] = state[emb + "register_tokens"]
    if net["num_classes"]:
        out["head.weight"] = state["classifier.weight"]
        out["head.bias"] = state["classifier.bias"]
    for i in range(net["depth"]):
        src, dst = f"{prefix}encoder.layer.{i}.", f"encoder.blocks.{i}."
        out.update(hf_block(state, src, dst, LAYER))
        out[dst + "ls1.gamma"] = state[src + "layer_scale1.lambda1"]
        out[dst + "ls2.gamma"] = state[src + "layer_scale2.lambda1"]
    return out


def preprocess(config: dict[str, Any], processor: dict[str, Any], classes: int) -> dict[str, Any]:
    """The image processor's evaluation transform (shorter side to `size`, centre crop; DINOv2's hub
    processors: 256 / 224, bicubic, ImageNet mean / std), and class names for a classifier."""
    crop = processor.get("crop_size") or {"height": 224}
    crop = int(crop.get("height", 224)) if isinstance(crop, dict) else int(crop)
    size = processor.get("size") or {"shortest_edge": 256}
    size = int(size.get("shortest_edge", size.get("height", 256))) if isinstance(size, dict) else int(size)
    if not processor.get("do_center_crop", True):
        crop = size
    return {
        "modality": "image",
        "image_size": crop,
        "in_chans": int(config.get("num_channels", 3)),
        "mean": [float(v) for v in processor.get("image_mean", (0.485, 0.456, 0.406))],
        "std": [float(v) for v in processor.get("image_std", (0.229, 0.224, 0.225))],
        "interpolation": RESAMPLE.get(int(processor.get("resample", 3)), "bicubic"),
        "crop_pct": crop / size,
        "crop_mode": "center",
        "class_names": hf_labels(config) if classes else [],
    }


def convert(src: Source) -> Converted:
    config = read_json(src.file("config.json"))
    state = read_weights(src)
    prefix = prefix_of(state, src.spec)
    net = net_config(config, state, src.spec)
    pre = preprocess(config, read_json(src.file("preprocessor_config.json")), net["num_classes"])
    return Converted(net, map_weights(state, net, prefix), pre)
