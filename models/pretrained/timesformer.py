"""Hugging Face TimesformerForVideoClassification -> models.video.VideoTransformer with divided space-time
blocks: its `temporal_dense` projection, the class token that joins every frame's spatial attention (its outputs
averaged over frames), learned space and time tables, the class token read after the final LayerNorm."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from models.pretrained import Converted, hf_encoder, read_json, read_weights
from models.pretrained.source import Source
from models.pretrained.videomae import video_preprocess
from utils.errors import UserError

PREFIX = "timesformer."
# The divided layer's parts beyond a ViT layer (HF names under `encoder.layer.<i>.` -> the zoo's block).
TEMPORAL = {"temporal_layernorm": "norm_time", "temporal_dense": "temporal_proj",
            "temporal_attention.output.dense": "attn_time.proj", "layernorm_before": "norm_space",
            "attention.output.dense": "attn_space.proj", "layernorm_after": "norm_mlp"}


def accepts(src: Source, config: dict[str, Any]) -> bool:
    return config.get("model_type") == "timesformer"


def net_config(config: dict[str, Any], spec: str) -> dict[str, Any]:
    if config.get("attention_type", "divided_space_time") != "divided_space_time":
        raise UserError(f"pretrained={spec!r}: attention_type={config['attention_type']!r}; the zoo converts "
                        "TimeSformer's divided_space_time")
    return {
        "_target_": "models.video.VideoTransformer",
        "img_size": int(config["image_size"]),
        "num_frames": int(config["num_frames"]),
        "patch_size": int(config["patch_size"]),
        "in_chans": int(config.get("num_channels", 3)),
        "attention": "divided",
        "stem": "patch",
        "pos_init": "normal",
        "pos_init_std": 0.02,
        "class_token": True,
        "token_pos": True,
        "pool": "cls",
        "temporal_proj": True,
        **hf_encoder(config, spec, 1e-6),
    }


def map_weights(state: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    emb = PREFIX + "embeddings."
    pos = state[emb + "position_embeddings"]
    out = {"patch_embed.proj.weight": state[emb + "patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": state[emb + "patch_embeddings.projection.bias"],
           "cls_token": state[emb + "cls_token"], "prefix_pos": pos[:, :1], "pos_embed.weight": pos[:, 1:],
           "time_embed.weight": state[emb + "time_embeddings"],
           "norm.weight": state[PREFIX + "layernorm.weight"], "norm.bias": state[PREFIX + "layernorm.bias"],
           "head.weight": state["classifier.weight"], "head.bias": state["classifier.bias"]}
    for i in range(depth):
        layer = f"{PREFIX}encoder.layer.{i}."
        for hf, zoo in (("temporal_attention.attention.qkv", "attn_time.qkv"), ("attention.attention.qkv", "attn_space.qkv")):
            for part in ("weight", "bias"):
                if f"{layer}{hf}.{part}" in state:
                    out[f"blocks.{i}.{zoo}.{part}"] = state[f"{layer}{hf}.{part}"]
        for hf, zoo in {**TEMPORAL, "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}.items():
            for part in ("weight", "bias"):
                out[f"blocks.{i}.{zoo}.{part}"] = state[f"{layer}{hf}.{part}"]
    return out


def convert(src: Source) -> Converted:
    config = read_json(src.file("config.json"))
    net = net_config(config, src.spec)
    preprocess = video_preprocess(config, read_json(src.file("preprocessor_config.json")))
    return Converted(net, map_weights(read_weights(src), net["depth"]), preprocess)
