"""Validation at the door: a run's config, checked before any data is read, weights loaded or model built,
and checkpoints checked against the model they are loaded into. Every refusal is a one-line UserError
that names the config key (model.net.num_heads=0), the value, and what was expected.

The rules go by parameter name, so they follow the network classes as those gain options: a key that
is no parameter of the class is refused too (instead of a TypeError deep inside Hydra's instantiate).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from utils.errors import UserError

UNKNOWN = object()  # a value not known yet (data facts filled by the data module, unresolvable interpolations)

# --- one rule per kind of value -----------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def int_at_least(low: int, what: str = "") -> Callable[[Any], str | None]:
    def rule(v: Any) -> str | None:
        return None if _is_int(v) and v >= low else f"expected an integer >= {low}{what}"
    return rule


def number_in(low: float, high: float, high_open: bool = True, low_open: bool = False) -> Callable[[Any], str | None]:
    def rule(v: Any) -> str | None:
        ok = _is_number(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        return None if ok else f"expected a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return rule


def positive_number(v: Any) -> str | None:
    return None if _is_number(v) and v > 0 else "expected a number > 0"


def non_negative_number(v: Any) -> str | None:
    return None if _is_number(v) and v >= 0 else "expected a number >= 0"


def one_of(*choices: Any) -> Callable[[Any], str | None]:
    def rule(v: Any) -> str | None:
        return None if v in choices else f"expected one of {', '.join(map(str, choices))}"
    return rule


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "expected true or false"


def optional(rule: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def opt(v: Any) -> str | None:
        problem = rule(v)
        return None if v is None or problem is None else f"{problem}, or null"
    return opt


def size_or_pair(v: Any) -> str | None:
    """A patch size: one integer >= 1, or [height, width] of such integers."""
    if _is_int(v) and v >= 1:
        return None
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(x) and x >= 1 for x in v):
        return None
    return "expected an integer >= 1 or [height, width] of integers >= 1"


def positive_int_list(v: Any) -> str | None:
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(x) and x >= 1 for x in v)
    return None if ok else "expected a list of integers >= 1, or null"


def low_high(v: Any) -> str | None:
    ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v) and 0 < v[0] <= v[1]
    return None if ok else "expected [low, high] with 0 < low <= high, or null"


# Network constructor arguments, by name (any of the zoo's networks).
NET_RULES: dict[str, Callable[[Any], str | None]] = {
    **{k: int_at_least(1) for k in ("dim", "depth", "num_heads", "encoder_depth", "decoder_depth", "img_size",
                                    "num_frames", "max_len", "n_mels", "n_fft", "hop_length", "sample_rate")},
    "in_chans": int_at_least(1, " (1 = grayscale, 3 = RGB)"),
    "num_classes": int_at_least(2, " (classes to tell apart)"),
    "vocab_size": int_at_least(6, " (the tokenizer's 4 special tokens and text)"),
    "num_kv_heads": optional(int_at_least(1)),
    "attn_window": optional(int_at_least(1, " (positions each token sees)")),
    **{k: int_at_least(0) for k in ("attn_global", "freq_mask", "time_mask", "num_masks")},
    **{k: number_in(0, 1) for k in ("drop", "attn_drop", "drop_path")},
    **{k: positive_number for k in ("mlp_ratio", "clip_seconds", "norm_std", "pos_init_std")},
    "norm_mean": lambda v: None if _is_number(v) else "expected a number",
    "f_min": non_negative_number,
    "f_max": optional(positive_number),
    "qkv_bias": boolean,
    "tie_embeddings": boolean,
    "pool": one_of("cls", "mean"),
    "frontend": one_of("logmel", "kaldi_fbank"),
    "stem": one_of("patch", "conv", "tubelet"),
    "positions": one_of("sinusoidal", "learned"),
    "pos_time": one_of("crop", "resize"),
    "pos_init": one_of("sincos", "normal"),
    "attention": one_of("divided", "joint"),
    "patch_size": size_or_pair,
    "patch_stride": optional(size_or_pair),
    "stem_channels": optional(positive_int_list),
    "warp_range": optional(low_high),
}

# The LightningModule around the network (model.*), and the optimizer (model.optimizer.*).
MODULE_RULES: dict[str, Callable[[Any], str | None]] = {
    "warmup_fraction": number_in(0, 1),
    "min_lr_ratio": number_in(0, 1, high_open=False),
    "label_smoothing": number_in(0, 1),
    "beam_size": int_at_least(1),
    "length_penalty": non_negative_number,
    "max_new_tokens": int_at_least(1),
    "compile": boolean,
    "grad_checkpointing": boolean,
    "tta_flip": boolean,
    "num_classes": int_at_least(2, " (classes to tell apart)"),
}
OPTIMIZER_RULES: dict[str, Callable[[Any], str | None]] = {
    "lr": non_negative_number,
    "weight_decay": non_negative_number,
    "eps": positive_number,
    "momentum": number_in(0, 1),
    "betas": lambda v: None if isinstance(v, (list, tuple)) and len(v) == 2 and all(
        _is_number(b) and 0 <= b < 1 for b in v) else "expected [beta1, beta2], each in [0, 1)",
}

# Top-level keys of train.yaml / evaluate.yaml / export.yaml, and the trainer's most used ones.
RUN_RULES: dict[str, Callable[[Any], str | None]] = {
    "threads": optional(int_at_least(1)),
    "seed": optional(lambda v: None if _is_int(v) else "expected an integer"),
    "keep_epoch_checkpoints": int_at_least(0),
    "average_last": optional(int_at_least(1)),
    "save_attention": int_at_least(0),
    "overwrite": boolean,
    "test": boolean,
    "opset": int_at_least(7),
    "atol": non_negative_number,
    "format": one_of("onnx", "safetensors", "both"),
}


# Keys of any data config (the data modules check the rest when built; these are read lazily).
DATA_RULES: dict[str, Callable[[Any], str | None]] = {
    **{k: int_at_least(1) for k in ("batch_size", "eval_batch_size", "image_size", "num_frames", "sample_rate",
                                    "max_len")},
    "num_workers": int_at_least(0),
    "bpe_vocab_size": int_at_least(6, " (the tokenizer's 4 special tokens and text)"),
    "clip_seconds": positive_number,
}

# A model key that must equal a data key (by default it is an interpolation of it; an override can break that).
LINKED = (("model.net.in_chans", "data.in_chans"), ("model.net.sample_rate", "data.sample_rate"),
          ("model.net.img_size", "data.image_size"), ("model.net.num_frames", "data.num_frames"),
          ("model.net.num_classes", "data.num_classes"), ("model.num_classes", "data.num_classes"),
          ("model.net.vocab_size", "data.vocab_size"))


def _select(cfg: DictConfig, key: str) -> Any:
    try:
        value = OmegaConf.select(cfg, key, default=UNKNOWN)
    except (MissingMandatoryValue, InterpolationResolutionError):
        return UNKNOWN
    return UNKNOWN if value is None else value


def check_model_fits_data_sizes(cfg: DictConfig) -> None:
    """The model takes what the data gives: channels, sample rate, image size, frames, classes, vocabulary."""
    for model_key, data_key in LINKED:
        mine, theirs = _select(cfg, model_key), _select(cfg, data_key)
        if UNKNOWN not in (mine, theirs) and mine != theirs:
            raise UserError(f"{model_key}={mine} but {data_key}={theirs}: the model must take what the data gives; "
                            f"set {data_key} instead (by default {model_key} follows it)")
    net_len, data_len = _select(cfg, "model.net.max_len"), _select(cfg, "data.max_len")
    if UNKNOWN not in (net_len, data_len) and _is_int(net_len) and _is_int(data_len) and net_len < data_len:
        raise UserError(f"model.net.max_len={net_len} is shorter than data.max_len={data_len}: the data's sentences "
                        f"would not fit the model's position table")


def _batches(v: Any) -> str | None:
    """Lightning's limit_*_batches: a count (int >= 0) or a fraction (float in [0, 1])."""
    if _is_int(v) and v >= 0 or isinstance(v, float) and 0 <= v <= 1:
        return None
    return "expected a number of batches (an integer >= 0) or a fraction in [0.0, 1.0]"


TRAINER_RULES: dict[str, Callable[[Any], str | None]] = {
    "max_epochs": optional(int_at_least(-1, " (-1 = no limit)")),
    "min_epochs": optional(int_at_least(0)),
    "check_val_every_n_epoch": optional(int_at_least(1)),
    "log_every_n_steps": int_at_least(1),
    "accumulate_grad_batches": int_at_least(1),
    "gradient_clip_val": optional(non_negative_number),
    "fast_dev_run": lambda v: None if isinstance(v, bool) or _is_int(v) and v >= 0 else "expected true, false or "
                                                                                        "a number of batches >= 0",
    **{k: _batches for k in ("limit_train_batches", "limit_val_batches", "limit_test_batches")},
}


# --- reading values --------------------------------------------------------------------------------


def _value(node: DictConfig, key: str) -> Any:
    """The resolved plain value of node[key], or UNKNOWN (unset, or pointing at something not known yet)."""
    try:
        value = node[key]
    except (MissingMandatoryValue, InterpolationResolutionError):
        return UNKNOWN
    if isinstance(value, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(value, resolve=True)
        except (MissingMandatoryValue, InterpolationResolutionError):
            return UNKNOWN
    return value


def _check(node: DictConfig, prefix: str, rules: dict[str, Callable[[Any], str | None]],
           every_key: bool = False) -> dict[str, Any]:
    """Apply `rules` to the keys of `node` that have one; returns their values (every key's with every_key)."""
    values: dict[str, Any] = {}
    for key in map(str, node):
        rule = rules.get(key)
        if rule is None and not every_key:
            continue
        value = values[key] = _value(node, key)
        if rule is None or value is UNKNOWN or (value is None and key in DATA_FILLED):
            continue
        problem = rule(value)
        if problem:
            raise UserError(f"{prefix}{key}={_show(value)}{_source(node, key)}: {problem}")
    return values


def _source(node: DictConfig, key: str) -> str:
    """' (from data.max_len)' when node[key] is an interpolation, so the message names the key the user set."""
    try:
        raw = node._get_node(key)._value()  # the unresolved value
    except Exception:  # noqa: BLE001 - only a nicety for the message
        return ""
    if isinstance(raw, str) and raw.startswith("${") and raw.endswith("}") and raw.count("${") == 1:
        return f" (from {raw[2:-1]})"
    return ""


DATA_FILLED = ("num_classes", "vocab_size")  # null until the data module says (utils.build.DATA_FACTS)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


# --- the checks ------------------------------------------------------------------------------------


def check_run_config(cfg: DictConfig) -> None:
    """Top-level keys and trainer.*, for train.py / evaluate.py / export.py."""
    _check(cfg, "", RUN_RULES)
    if isinstance(cfg.get("trainer"), DictConfig):
        _check(cfg.trainer, "trainer.", TRAINER_RULES)


def check_model_config(cfg: DictConfig) -> None:
    """model.*, model.optimizer.* and model.net.*: types, ranges, choices, divisibility, and that every
    model.net key is a parameter of the network class. Values not known yet (num_classes before the data
    module has counted the classes) are skipped here and checked when known."""
    model = cfg.get("model")
    if not isinstance(model, DictConfig):
        return
    _check(model, "model.", MODULE_RULES)
    optimizer = model.get("optimizer")
    if isinstance(optimizer, DictConfig):
        _check(optimizer, "model.optimizer.", OPTIMIZER_RULES)
        if isinstance(optimizer.get("_target_"), str):
            _locate(optimizer._target_, "model.optimizer._target_")
    net = model.get("net")
    if isinstance(net, DictConfig):
        check_net_config(net, "model.net.")
    if isinstance(cfg.get("data"), DictConfig):
        _check(cfg.data, "data.", DATA_RULES)
        check_model_fits_data_sizes(cfg)


def check_net_config(net: DictConfig, prefix: str = "model.net.") -> None:
    cls = _network_class(net, prefix)
    values = {k: v for k, v in _check(net, prefix, NET_RULES, every_key=True).items() if k != "_target_"}
    if cls is not None:
        params = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        unknown = [k for k in values if k not in params]
        if unknown and not takes_any:
            names = [n for n in params if n != "self"]
            raise UserError(f"{prefix}{unknown[0]} is not a parameter of {cls.__name__}; its parameters are: "
                            f"{', '.join(names)}")
    _check_relations({k: v for k, v in values.items() if v is not UNKNOWN and v is not None}, prefix,
                     cls.__name__ if cls is not None else "the network")


def _network_class(net: DictConfig, prefix: str) -> type | None:
    target = net.get("_target_")
    return _locate(target, f"{prefix}_target_") if isinstance(target, str) else None


def _locate(target: str, key: str) -> Any:
    """The class or function a `_target_` names, or a UserError naming the key."""
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise UserError(f"{key}={target!r}: no such class or function ({type(err).__name__}: {err})") from None


def _check_relations(v: dict[str, Any], prefix: str, name: str) -> None:
    """Rules between keys: divisibility, patches that fit the input, frequency ranges."""
    heads, kv = v.get("num_heads"), v.get("num_kv_heads")
    if "dim" in v and heads and v["dim"] % heads:
        raise UserError(f"{prefix}dim={v['dim']} is not divisible by {prefix}num_heads={heads}: each head gets "
                        f"dim / num_heads channels (e.g. dim={heads * max(1, round(v['dim'] / heads))})")
    if heads and kv and (kv > heads or heads % kv):
        raise UserError(f"{prefix}num_kv_heads={kv} must divide {prefix}num_heads={heads} (grouped-query "
                        f"attention shares each key/value head among num_heads / num_kv_heads query heads)")
    if v.get("attn_global") and v.get("attn_window") is None:
        raise UserError(f"{prefix}attn_global={v['attn_global']} needs {prefix}attn_window (without a window every "
                        f"token already sees every token)")
    patch, stem = v.get("patch_size"), v.get("stem")
    if stem == "conv" and patch is not None:
        if not _is_int(patch) or patch < 2 or patch & (patch - 1):
            raise UserError(f"{prefix}patch_size={patch}: the conv stem ({prefix}stem=conv) needs one power of 2 "
                            f">= 2 (2, 4, 8, 16, ...); or use {prefix}stem=patch")
        channels = v.get("stem_channels")
        if channels is not None and len(channels) != patch.bit_length() - 1:
            raise UserError(f"{prefix}stem_channels={channels}: patch_size={patch} takes {patch.bit_length() - 1} "
                            f"stride-2 convs, so {patch.bit_length() - 1} widths (or null)")
    if "img_size" in v and patch is not None:
        for p in ([patch] * 2 if _is_int(patch) else patch):
            if p > v["img_size"]:
                raise UserError(f"{prefix}patch_size={patch} is larger than the image ({prefix}img_size="
                                f"{v['img_size']}): the model would see no patch")
    stride = v.get("patch_stride")
    if stride is not None and patch is not None:
        sizes, strides = ([patch] * 2 if _is_int(patch) else patch), ([stride] * 2 if _is_int(stride) else stride)
        if any(s > p for s, p in zip(strides, sizes)):
            raise UserError(f"{prefix}patch_stride={stride} is larger than {prefix}patch_size={patch}: pixels between "
                            f"patches would be skipped")
    if "n_mels" in v and patch is not None and not _is_int(patch) and patch[0] > v["n_mels"]:
        raise UserError(f"{prefix}patch_size={patch}: {patch[0]} mel bins per patch, but {prefix}n_mels={v['n_mels']}")
    rate = v.get("sample_rate")
    if rate and "f_min" in v:
        top = v.get("f_max") or rate / 2
        if not v["f_min"] < top <= rate / 2:
            raise UserError(f"{prefix}f_min={v['f_min']}, f_max={v.get('f_max')}: expected f_min < f_max <= "
                            f"sample_rate / 2 = {rate / 2:g} Hz")
    if "n_fft" in v and "n_mels" in v and v["n_mels"] > v["n_fft"] // 2 + 1:
        raise UserError(f"{prefix}n_mels={v['n_mels']} is more mel bands than the {v['n_fft'] // 2 + 1} frequency "
                        f"bins of {prefix}n_fft={v['n_fft']}: some bands would be empty")


# --- checkpoints against models ----------------------------------------------------------------------


def net_target(config: Any) -> str:
    """'models.vit.VisionTransformer' from a run config (dict or DictConfig), or '?'."""
    try:
        return str(config["model"]["net"]["_target_"])
    except (KeyError, TypeError):
        return "?"


def _net_values(config: Any) -> dict[str, Any]:
    try:
        net = config["model"]["net"]
    except (KeyError, TypeError):
        return {}
    net = net if isinstance(net, DictConfig) else OmegaConf.create(net)
    return {str(k): _value(net, str(k)) for k in net}


def check_weights_fit(model: torch.nn.Module, state: dict[str, torch.Tensor], ckpt_file: Any,
                      cfg: Any = None, ckpt_cfg: Any = None) -> None:
    """Refuse, in one line naming both, weights that do not fit `model` (another network class, or other
    sizes) instead of PyTorch's wall of `size mismatch for net...` lines. `cfg` is the config the model
    was built from, `ckpt_cfg` the one stored in the checkpoint (either may be None)."""
    poisoned = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if poisoned:
        raise UserError(f"checkpoint {ckpt_file} holds NaN or infinite weights ({len(poisoned)} tensor(s), first: "
                        f"{poisoned[0]}); it cannot give meaningful predictions")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if not (missing or unexpected or shapes):
        return
    ours, theirs = (net_target(cfg) if cfg is not None else "?"), (net_target(ckpt_cfg) if ckpt_cfg is not None else "?")
    if ours == "?":
        ours = type(getattr(model, "net", model)).__name__
    parts = []
    if theirs != "?" and theirs != ours:
        parts.append(f"the checkpoint holds a {theirs}, the config builds a {ours}")
    else:
        mine, other = _net_values(cfg) if cfg is not None else {}, _net_values(ckpt_cfg) if ckpt_cfg is not None else {}
        differ = [f"{k}={other[k]} in the checkpoint, {mine[k]} in the config" for k in mine
                  if k in other and other[k] != mine[k] and UNKNOWN not in (mine[k], other[k])]
        parts.append(f"both are {ours}" + (f" but model.net.{'; '.join(differ)}" if differ else ""))
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} tensor(s) differ in shape (first: {k} {tuple(state[k].shape)} in the checkpoint, "
                     f"{tuple(own[k].shape)} in the model)")
    if missing:
        parts.append(f"{len(missing)} missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    raise UserError(f"checkpoint {ckpt_file} does not fit the model of this run: {'; '.join(parts)}")


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], ckpt_file: Any, cfg: Any = None,
                 ckpt_cfg: Any = None) -> None:
    """check_weights_fit, then load_state_dict."""
    check_weights_fit(model, state, ckpt_file, cfg, ckpt_cfg)
    model.load_state_dict(state)
