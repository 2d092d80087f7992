"""Export a trained network to ONNX (for onnxruntime) and to safetensors (weights + config, no pickle).

    net, config, extras = load_network("outputs/train/runs/<run>")     # from a checkpoint or run directory
    export_onnx(net, "vit.onnx", config=config)                         # dynamic batch (and lengths, see below)
    export_safetensors(net, "vit.safetensors", config)                  # state_dict + config as JSON metadata
    net = load_safetensors("vit.safetensors")                           # rebuilt without unpickling anything

Each network says what its graph takes (`Network.onnx_spec()` in its own file: input names, example inputs at the
training shape, dynamic axes; docs/export.md lists them), so this file names no model.

Lengths and resolutions other than training's take a Python branch in the models (resize the position
table or not); torch.export traces one branch per graph, so only the axes whose whole range stays on one
branch are dynamic. Attention exports on the fused path (SDPA); the exporter lowers it to
MatMul / Softmax / MatMul for opset 18, the same math as the explicit kernel.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from models.attention import fused_attn
from models.network import OnnxSpec, network_class
from utils.build import datamodule_state
from utils.errors import UserError
from utils.restore import restore

log = logging.getLogger(__name__)

FORMATS = ("onnx", "safetensors", "both")
CONFIG_KEY, TIED_KEY, TOKENIZER_KEY = "zoo_config", "zoo_tied", "zoo_tokenizer"  # metadata keys in both formats
PREPROCESS_KEY = "zoo_preprocess"  # a pretrained source's preprocessing (utils/pretrained.py), JSON
DEFAULT_OPSET = 18  # onnxruntime 1.x runs it everywhere; the exporter's lowering of SDPA is plain ops here


# --- building networks -----------------------------------------------------------------------------

def build_network(config: dict[str, Any]) -> nn.Module:
    """The network a config (`model.net` of a run, resolved, with `_target_`) describes, freshly initialised.

    A `_target_` read from a file handed to us must not name an arbitrary callable: only a `Network` subclass
    defined in the zoo's `models` package is built.
    """
    if not isinstance(config, dict) or "_target_" not in config:
        raise ValueError(f"a network config must be a dict with '_target_', got {str(config)[:200]!r}")
    kwargs = dict(config)
    target = str(kwargs.pop("_target_"))
    return network_class(target)(**kwargs)


def load_network(ckpt_path: str | Path) -> tuple[nn.Module, dict[str, Any], dict[str, str]]:
    """(network in eval mode, its resolved config, extras) from a checkpoint file or run directory.

    Extras are strings worth shipping with the weights: the translator's tokenizer (JSON), a pretrained
    source's preprocessing. No data module is built (the dataset need not be on this machine): the facts
    it would decide come from the trained output layer (utils/restore.py).
    """
    run = restore(ckpt_path, data=False, switches=False)
    config = OmegaConf.to_container(run.cfg.model.net, resolve=True)
    extras: dict[str, str] = {}
    dm_state = datamodule_state(run.ckpt, run.cfg) if "data" in run.cfg and "_target_" in run.cfg.data else None
    if dm_state and isinstance(dm_state.get("tokenizer"), str):
        extras[TOKENIZER_KEY] = dm_state["tokenizer"]
    if run.cfg.get("preprocess") is not None:  # a pretrained source's input preparation and class names
        extras[PREPROCESS_KEY] = json.dumps(OmegaConf.to_container(run.cfg.preprocess, resolve=True))
    return run.module.net.eval(), config, extras  # type: ignore[return-value]


# --- ONNX ------------------------------------------------------------------------------------------

def export_onnx(net: nn.Module, path: str | Path, *, config: dict[str, Any] | None = None,
                extras: dict[str, str] | None = None, opset: int = DEFAULT_OPSET, fused: bool = True) -> OnnxSpec:
    """Write `net` (eval mode) to an ONNX file with torch.onnx's dynamo exporter; returns what was exported.

    `fused=False` exports the explicit attention kernel instead of SDPA (same math; for runtimes
    whose lowering of SDPA misbehaves). The config and extras go into the file's metadata_props.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net.eval()
    spec = net.onnx_spec()
    with fused_attn(fused), torch.no_grad(), warnings.catch_warnings():
        # The translator's two inputs share one batch Dim; the exporter notes that it names the axis once.
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape constraints")
        program = torch.onnx.export(spec.module, spec.example, dynamo=True, input_names=spec.input_names,
                                    output_names=spec.output_names, dynamic_shapes=spec.dynamic_shapes,
                                    opset_version=opset, verbose=False)
    props = {"zoo_model": net.name, "zoo_dynamic_axes": json.dumps(spec.dynamic)}
    if config is not None:
        props[CONFIG_KEY] = json.dumps(config)
    props.update(extras or {})
    program.model.metadata_props.update(props)
    program.save(str(path))
    return spec


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session on `threads` threads (default: torch's, so both share the cores alike)."""
    import onnxruntime as ort  # only export / verification needs it, not training

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, names: list[str], inputs: tuple[Tensor, ...]) -> Tensor:
    """The graph's first output on named inputs."""
    return torch.from_numpy(session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0])


def probe_inputs(net: nn.Module, spec: OnnxSpec) -> list[tuple[Tensor, ...]]:
    """Inputs at other batch sizes (1, 3) and, where dynamic, shorter lengths than the example's."""
    probes = []
    for batch, shrink in ((1, 0), (3, 1)):
        inputs = []
        for name, x in zip(spec.input_names, spec.example):
            shape = list(x.shape)
            shape[0] = batch
            if shrink and len(spec.dynamic.get(name, [])) > 1:
                shape[1] = max(shape[1] * 2 // 3, getattr(net, "min_samples", 1))
            if x.is_floating_point():
                inputs.append(torch.randn(shape))
            else:
                inputs.append(torch.randint(int(x.min()), int(x.max()) + 1, shape))
        probes.append(tuple(inputs))
    return probes


def verify_onnx(net: nn.Module, path: str | Path, spec: OnnxSpec, inputs: list[tuple[Tensor, ...]] | None = None) -> float:
    """Largest |ONNX - PyTorch| over the probe inputs (PyTorch on the module that was traced)."""
    session = onnx_session(path)
    worst = 0.0
    with torch.no_grad():
        for x in inputs or probe_inputs(net, spec):
            ref = spec.module(*x)
            out = run_onnx(session, spec.input_names, x)
            if out.shape != ref.shape:
                raise RuntimeError(f"ONNX output shape {tuple(out.shape)} != PyTorch {tuple(ref.shape)} for inputs "
                                   f"{[tuple(t.shape) for t in x]}")
            worst = max(worst, float((out - ref).abs().max()))
    return worst


# --- safetensors -----------------------------------------------------------------------------------

def _storage_key(t: Tensor) -> tuple[int, int, tuple[int, ...], tuple[int, ...]]:
    return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride())


def export_safetensors(net: nn.Module, path: str | Path, config: dict[str, Any],
                       extras: dict[str, str] | None = None) -> Path:
    """Write the network's state_dict with the config (JSON) in the metadata.

    safetensors refuses tensors that share memory; tied weights (the translator's embedding =
    output layer) are written once and their other names listed under `zoo_tied`; rebuilding the
    network from its config ties them again.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    tied: dict[str, str] = {}
    first: dict[tuple, str] = {}
    for name, t in net.state_dict().items():
        key = _storage_key(t)
        if key in first:
            tied[name] = first[key]
            continue
        first[key] = name
        tensors[name] = t.detach().contiguous()
    metadata = {"format": "pt", "zoo_model": net.name, CONFIG_KEY: json.dumps(config),
                TIED_KEY: json.dumps(tied), **(extras or {})}
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"safetensors file {str(p)!r} does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # header too large / not JSON / truncated
        raise ValueError(f"{str(p)!r} is not a readable safetensors file ({type(err).__name__}: {str(err)[:200]})") from err


def load_safetensors(path: str | Path) -> nn.Module:
    """Rebuild the network of an `export_safetensors` file (eval mode). Nothing is unpickled: the
    config is JSON and only zoo networks (models.Network subclasses) can be built."""
    from safetensors.torch import load_file

    meta = read_safetensors_metadata(path)
    if CONFIG_KEY not in meta:
        raise ValueError(f"{str(path)!r} has no {CONFIG_KEY!r} metadata; expected a file written by export_safetensors")
    net = build_network(json.loads(meta[CONFIG_KEY]))
    tied: dict[str, str] = json.loads(meta.get(TIED_KEY, "{}"))
    missing, unexpected = net.load_state_dict(load_file(str(path)), strict=False)
    if unexpected or set(missing) != set(tied):
        raise ValueError(f"{str(path)!r} does not match the network its config builds: missing "
                         f"{sorted(set(missing) - set(tied))}, unexpected {sorted(unexpected)}")
    state = net.state_dict()
    for alias, source in tied.items():  # the weights of an alias were loaded only if the config re-tied it
        if _storage_key(state[alias]) != _storage_key(state[source]):
            raise ValueError(f"{str(path)!r}: {alias!r} was saved tied to {source!r}, but the rebuilt network does "
                             f"not tie them (check tie_embeddings in its config)")
    return net.eval()


# --- the command -----------------------------------------------------------------------------------

def export_checkpoint(ckpt_path: str | Path, out: str | Path, fmt: str = "both", *, opset: int = DEFAULT_OPSET,
                      fused: bool = True, verify: bool = True, atol: float = 1e-4) -> dict[str, Any]:
    """Export a checkpoint (file or run directory) into directory `out` as <model>.onnx / <model>.safetensors.

    With `verify`, the ONNX file is run in onnxruntime at two batch sizes (and a shorter length where
    that axis is dynamic) and must match PyTorch within `atol`. Returns the paths and the measured
    difference.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    net, config, extras = load_network(ckpt_path)
    name, out = net.name, Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"out={out}: cannot create the folder ({err.strerror or err})") from err
    result: dict[str, Any] = {"model": name}
    if fmt in ("onnx", "both"):
        path = out / f"{name}.onnx"
        spec = export_onnx(net, path, config=config, extras=extras, opset=opset, fused=fused)
        result.update(onnx=path, dynamic_axes=spec.dynamic)
        if verify:
            diff = verify_onnx(net, path, spec)
            result["onnx_max_abs_diff"] = diff
            if not diff <= atol:
                raise RuntimeError(f"{path}: onnxruntime differs from PyTorch by {diff:.3g} > atol={atol:g}")
    if fmt in ("safetensors", "both"):
        path = export_safetensors(net, out / f"{name}.safetensors", config, extras)
        result["safetensors"] = path
    if TOKENIZER_KEY in extras:  # ONNX takes token ids: ship the tokenizer that makes them beside it
        (out / "tokenizer.json").write_text(extras[TOKENIZER_KEY], encoding="utf-8")
        result["tokenizer"] = out / "tokenizer.json"
    return result
