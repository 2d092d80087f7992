"""Hugging Face ASTForAudioClassification -> models.audio.AudioSpectrogramTransformer with its Kaldi fbank front
end (the feature extractor's arguments, mean / std and max_length), class + distillation tokens, MLP head."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from models.pretrained import Converted, hf_block, hf_encoder, hf_labels, read_json, read_weights
from models.pretrained.source import Source
from utils.errors import UserError

PREFIX = "audio_spectrogram_transformer."


def accepts(src: Source, config: dict[str, Any]) -> bool:
    return config.get("model_type") == "audio-spectrogram-transformer"


def net_config(config: dict[str, Any], fe: dict[str, Any], spec: str) -> dict[str, Any]:
    if fe.get("max_length", config["max_length"]) != config["max_length"]:
        raise UserError(f"pretrained={spec!r}: feature extractor max_length {fe['max_length']} != the model's "
                        f"{config['max_length']}")
    normalize = fe.get("do_normalize", True)
    rate = int(fe.get("sampling_rate", 16000))
    return {
        "_target_": "models.audio.AudioSpectrogramTransformer",
        "sample_rate": rate,
        "clip_seconds": config["max_length"] / 100,  # 10 ms frames
        "n_mels": int(config["num_mel_bins"]),
        "frontend": "kaldi_fbank",
        "max_frames": int(config["max_length"]),
        "window_type": "hanning",
        "norm_mean": float(fe.get("mean", -4.2677393)) if normalize else 0.0,
        "norm_std": float(fe.get("std", 4.5689974)) * 2 if normalize else 1.0,  # the extractor divides by std * 2
        "freq_mask": 0, "time_mask": 0, "num_masks": 0,
        "stem": "patch",
        "patch_size": int(config["patch_size"]),
        "patch_stride": [int(config["frequency_stride"]), int(config["time_stride"])],
        "pool": "cls",  # with the distillation token: the mean of the two tokens
        "class_token": True,
        "dist_token": True,
        "token_pos": True,
        "fc_norm": True,
        "final_norm": True,
        **hf_encoder(config, spec, 1e-12),
    }


def map_weights(state: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    emb = PREFIX + "embeddings."
    pos = state[emb + "position_embeddings"]
    out = {
        "cls_token": state[emb + "cls_token"],
        "dist_token": state[emb + "distillation_token"],
        "prefix_pos": pos[:, :2],
        "pos_embed.weight": pos[:, 2:],
        "patch_embed.proj.weight": state[emb + "patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state[emb + "patch_embeddings.projection.bias"],
        "encoder.norm.weight": state[PREFIX + "layernorm.weight"],
        "encoder.norm.bias": state[PREFIX + "layernorm.bias"],
        "fc_norm.weight": state["classifier.layernorm.weight"],
        "fc_norm.bias": state["classifier.layernorm.bias"],
        "head.weight": state["classifier.dense.weight"],
        "head.bias": state["classifier.dense.bias"],
    }
    for i in range(depth):
        out.update(hf_block(state, f"{PREFIX}encoder.layer.{i}.", f"encoder.blocks.{i}."))
    return out


def convert(src: Source) -> Converted:
    config = read_json(src.file("config.json"))
    fe = read_json(src.file("preprocessor_config.json"))
    net = net_config(config, fe, src.spec)
    state = map_weights(read_weights(src), net["depth"])
    preprocess = {
        "modality": "audio",
        "sample_rate": net["sample_rate"],
        "clip_seconds": net["clip_seconds"],
        "fbank": {"sample_frequency": net["sample_rate"], "window_type": "hanning", "num_mel_bins": net["n_mels"]},
        "max_length": net["max_frames"],
        "mean": fe.get("mean"), "std": fe.get("std"), "do_normalize": fe.get("do_normalize", True),
        "class_names": hf_labels(config),
    }
    return Converted(net, state, preprocess)
