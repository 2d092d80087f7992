"""timm ViT / DeiT (class token or average pooling, fc_norm, no class token, no_embed_class, DeiT distilled)
-> models.vit.VisionTransformer. timm builds its model on the meta device only to read the architecture."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from models.pretrained import Converted, read_json, read_weights
from models.pretrained.source import Source
from utils.errors import UserError

ACTIVATIONS = {"GELU": "gelu", "SiLU": "silu", "ReLU": "relu", "QuickGELU": None, "GELUTanh": "gelu_tanh"}


def accepts(src: Source, config: dict[str, Any]) -> bool:
    """timm: ids, a bare weights file, and folders whose config.json names a timm architecture."""
    return src.kind == "timm" or src.path.is_file() or "architecture" in config


def reference_model(src: Source) -> tuple[Any, dict[str, Any]]:
    """The timm model (meta tensors: no memory, no init) described by the source, and its config.json."""
    import timm

    config = read_json(src.file("config.json"))
    if src.path.is_file():
        raise UserError(f"pretrained={src.spec!r}: a bare weights file does not say which timm architecture it is; "
                        "give the folder with its config.json (timm's save_for_hf / the hub snapshot)")
    arch = config.get("architecture")
    if not arch:
        raise UserError(f"pretrained={src.spec!r}: {src.path / 'config.json'} names no timm 'architecture'")
    args = dict(config.get("model_args") or {})
    args.setdefault("num_classes", config.get("num_classes", 1000))
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, **args)
    model.pretrained_cfg = {**model.pretrained_cfg, **(config.get("pretrained_cfg") or {})}
    return model, config


def net_config(m: Any, spec: str) -> dict[str, Any]:
    """The zoo VisionTransformer arguments of a timm VisionTransformer, refusing what the zoo does not have."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    if not isinstance(m, TimmViT):
        raise UserError(f"pretrained={spec!r} is a timm {type(m).__name__}; the zoo converts timm VisionTransformer "
                        "(vit_*, deit_*) models")
    block = m.blocks[0]
    unsupported = [name for name, present in (
        ("register tokens", getattr(m, "reg_token", None) is not None),
        ("norm_pre (pre_norm)", not isinstance(m.norm_pre, torch.nn.Identity)),
        ("layer scale (init_values)", not isinstance(block.ls1, torch.nn.Identity)),
        ("qk_norm", not isinstance(block.attn.q_norm, torch.nn.Identity)),
        ("patch embedding norm", not isinstance(m.patch_embed.norm, torch.nn.Identity)),
        ("patch embedding without bias", m.patch_embed.proj.bias is None),
        (f"global_pool={m.global_pool!r}", m.global_pool not in ("token", "avg")),
    ) if present]
    act = ACTIVATIONS.get(type(block.mlp.act).__name__)
    if type(block.mlp.act).__name__ == "GELU" and getattr(block.mlp.act, "approximate", "none") == "tanh":
        act = "gelu_tanh"
    if act is None:
        unsupported.append(f"activation {type(block.mlp.act).__name__}")
    if type(block).__name__ != "Block":
        unsupported.append(f"block type {type(block).__name__}")
    if unsupported:
        raise UserError(f"pretrained={spec!r}: this timm ViT has {', '.join(unsupported)}, which the zoo's ViT "
                        "does not have (yet)")
    dim = m.embed_dim
    dist = getattr(m, "dist_token", None) is not None
    return {
        "_target_": "models.vit.VisionTransformer",
        "img_size": int(m.patch_embed.img_size[0]),
        "patch_size": int(m.patch_embed.patch_size[0]),
        "in_chans": int(m.patch_embed.proj.in_channels),
        "num_classes": int(m.num_classes),
        "dim": int(dim),
        "depth": len(m.blocks),
        "num_heads": int(block.attn.num_heads),
        "mlp_ratio": block.mlp.fc1.out_features / dim,
        "qkv_bias": block.attn.qkv.bias is not None,
        "pool": "cls" if m.global_pool == "token" else "mean",
        "stem": "patch",
        "class_token": bool(m.has_class_token),
        "dist_token": dist,
        "token_pos": bool(m.num_prefix_tokens and not m.no_embed_class),
        "fc_norm": not isinstance(m.fc_norm, torch.nn.Identity),
        "norm_eps": float(block.norm1.eps),
        "act": act,
    }


def map_weights(state: dict[str, Tensor], net: dict[str, Any]) -> dict[str, Tensor]:
    """timm state_dict -> zoo state_dict: names only, plus splitting pos_embed into prefix and patch rows."""
    out: dict[str, Tensor] = {}
    prefix = int(net["class_token"]) + int(net["dist_token"])
    for key, value in state.items():
        if key == "pos_embed":
            if net["token_pos"]:
                out["prefix_pos"], value = value[:, :prefix], value[:, prefix:]
            out["pos_embed.weight"] = value
        elif key.startswith("blocks."):
            out["encoder." + key] = value
        elif key.startswith("norm."):
            out["encoder." + key] = value
        else:  # patch_embed.proj.*, cls_token, dist_token, fc_norm.*, head.*, head_dist.*
            out[key] = value
    return out


def preprocess(m: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Input preparation (timm's pretrained_cfg) and class names (the config's, or ImageNet's for its heads)."""
    cfg = m.pretrained_cfg
    _, h, w = cfg.get("input_size", (3, 224, 224))
    names = config.get("label_names") or cfg.get("label_names")
    if isinstance(names, dict):
        names = [names[str(i)] if str(i) in names else names.get(i, f"class {i}") for i in range(m.num_classes)]
    if not names:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(cfg) if m.num_classes in (1000, 1001, 11821, 21841, 21843) else None
        if subset:
            names = ImageNetInfo(subset).label_descriptions(as_dict=False)
            names = [n.split(",")[0] for n in names]  # "tench, Tinca tinca" -> "tench"
    return {
        "modality": "image",
        "image_size": int(h),
        "in_chans": int(m.patch_embed.proj.in_channels),
        "mean": [float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))],
        "std": [float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))],
        "interpolation": str(cfg.get("interpolation", "bicubic")),
        "crop_pct": float(cfg.get("crop_pct", 0.875)),
        "crop_mode": str(cfg.get("crop_mode", "center")),
        "class_names": [str(n) for n in names] if names else [],
    }


def convert(src: Source) -> Converted:
    m, config = reference_model(src)
    net = net_config(m, src.spec)
    expected = set(m.state_dict())
    state = {k: v for k, v in read_weights(src).items() if k in expected}  # (timm keeps no buffers here)
    missing = sorted(expected - set(state))
    if missing:
        raise UserError(f"pretrained={src.spec!r}: the weights lack {len(missing)} tensor(s) of {config.get('architecture')} "
                        f"(first: {missing[0]})")
    return Converted(net, map_weights(state, net), preprocess(m, config))
