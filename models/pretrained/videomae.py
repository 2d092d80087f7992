"""Hugging Face VideoMAEForVideoClassification -> models.video.VideoTransformer with joint space-time blocks:
tubelets of 2 frames x 16 x 16, the fixed sin/cos table, query / value biases (no key bias), mean pooling +
fc_norm (LayerNorm eps 1e-5, the blocks' 1e-12)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from models.pretrained import Converted, hf_block, hf_encoder, hf_labels, read_json, read_weights
from models.pretrained.source import Source
from utils.errors import UserError

PREFIX = "videomae."


def accepts(src: Source, config: dict[str, Any]) -> bool:
    return config.get("model_type") == "videomae"


def net_config(config: dict[str, Any], spec: str) -> dict[str, Any]:
    if not config.get("use_mean_pooling", True):
        raise UserError(f"pretrained={spec!r}: VideoMAE without mean pooling (it reads its first patch token) is "
                        "not converted; the classification checkpoints use mean pooling")
    size, patch = config["image_size"], config["patch_size"]
    if not isinstance(size, int) or not isinstance(patch, int):
        raise UserError(f"pretrained={spec!r}: image_size {size} / patch_size {patch}: square ones are converted")
    return {
        "_target_": "models.video.VideoTransformer",
        "img_size": size,
        "num_frames": int(config["num_frames"]),
        "patch_size": patch,
        "in_chans": int(config.get("num_channels", 3)),
        "attention": "joint",
        "stem": "tubelet",
        "tubelet_size": int(config.get("tubelet_size", 2)),
        "pos": "sincos_fixed",
        "fc_norm": True,
        "fc_norm_eps": 1e-5,  # VideoMAE's fc_norm is a plain nn.LayerNorm
        **hf_encoder(config, spec, 1e-12),
    }


def map_weights(state: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    proj = PREFIX + "embeddings.patch_embeddings.projection."
    out = {"patch_embed.proj.weight": state[proj + "weight"], "patch_embed.proj.bias": state[proj + "bias"],
           "norm.weight": state["fc_norm.weight"], "norm.bias": state["fc_norm.bias"],
           "head.weight": state["classifier.weight"], "head.bias": state["classifier.bias"]}
    for i in range(depth):
        out.update(hf_block(state, f"{PREFIX}encoder.layer.{i}.", f"blocks.{i}."))
    return out


def video_preprocess(config: dict[str, Any], processor: dict[str, Any]) -> dict[str, Any]:
    """Frames, size and normalisation of a VideoMAEImageProcessor (VideoMAE and TimeSformer use it)."""
    crop = processor.get("crop_size") or {}
    size = int(crop.get("height", config["image_size"])) if isinstance(crop, dict) else int(crop)
    return {
        "modality": "video",
        "num_frames": int(config["num_frames"]),
        "image_size": size,
        "in_chans": int(config.get("num_channels", 3)),
        "mean": [float(v) for v in processor.get("image_mean", (0.485, 0.456, 0.406))],
        "std": [float(v) for v in processor.get("image_std", (0.229, 0.224, 0.225))],
        "class_names": hf_labels(config),
    }


def convert(src: Source) -> Converted:
    config = read_json(src.file("config.json"))
    net = net_config(config, src.spec)
    preprocess = video_preprocess(config, read_json(src.file("preprocessor_config.json")))
    return Converted(net, map_weights(read_weights(src), net["depth"]), preprocess)
