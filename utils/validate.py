"""Validation at the door: a run's config, checked before any data is read, weights loaded or model built,
and checkpoints checked against the model they are loaded into. Every refusal is a one-line UserError
that names the config key (model.net.num_heads=0), the value, and what was expected.

Here are the rules no constructor can know: run, trainer, optimizer and data keys, and the links between
model and data keys. The network's own rules live in its constructor (models/checks.py): `check_network`
builds it once on the meta device, so they fire before any data is read, named `model.net.<key>`.
A key that is no parameter of the network class is refused too (instead of a TypeError inside Hydra).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

import hydra
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from models.attention import SDPA_BACKENDS
from models.checks import is_int as _is_int
from models.checks import is_number as _is_number
from models.checks import show as _show
from utils.errors import UserError
from utils.recipes import set_by

UNKNOWN = object()  # a value not known yet (data facts filled by the data module, unresolvable interpolations)

# --- one rule per kind of value -----------------------------------------------------------------------


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


# The optimizer (model.optimizer.*); the LightningModule (model.*) and the network check their own arguments.
OPTIMIZER_RULES: dict[str, Callable[[Any], str | None]] = {
    "lr": non_negative_number,
    "weight_decay": non_negative_number,
    "eps": positive_number,
    "momentum": number_in(0, 1),
    "betas": lambda v: None if isinstance(v, (list, tuple)) and len(v) == 2 and all(
        _is_number(b) and 0 <= b < 1 for b in v) else "expected [beta1, beta2], each in [0, 1)",
}

def sdpa_backends(v: Any) -> str | None:
    good = (isinstance(v, (list, tuple, ListConfig)) and len(v) > 0 and len(set(v)) == len(v)
            and all(b in SDPA_BACKENDS for b in v))
    return None if good else f"expected a list of the SDPA backends allowed to run, from {', '.join(SDPA_BACKENDS)}"


# Top-level keys of train.yaml / evaluate.yaml / export.yaml, and the trainer's most used ones.
RUN_RULES: dict[str, Callable[[Any], str | None]] = {
    "threads": optional(int_at_least(1)),
    "matmul_precision": optional(one_of("highest", "high", "medium")),
    "sdpa_backends": optional(sdpa_backends),
    "seed": optional(lambda v: None if _is_int(v) else "expected an integer"),
    "keep_epoch_checkpoints": int_at_least(0),
    "average_last": optional(int_at_least(1)),
    "save_attention": int_at_least(0),
    "contacts": boolean,
    "contacts_train": int_at_least(1, " (training chains the contact regression is fitted on)"),
    "contacts_eval": int_at_least(1, " (test chains the contacts are scored on)"),
    "contacts_C": positive_number,
    "overwrite": boolean,
    "test": boolean,
    "opset": int_at_least(7),
    "atol": non_negative_number,
    "format": one_of("onnx", "safetensors", "both"),
}


# Keys of any data config (the data modules check the rest when built; these are read lazily).
DATA_RULES: dict[str, Callable[[Any], str | None]] = {
    **{k: int_at_least(1) for k in ("batch_size", "eval_batch_size", "image_size", "num_frames", "sample_rate",
                                    "max_len", "block_size", "batches_per_epoch")},
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
    mine, theirs = _select(cfg, "model.net.alphabet"), _select(cfg, "data.alphabet")
    if UNKNOWN not in (mine, theirs) and mine != theirs:  # a protein model: ids of another alphabet mean other residues
        raise UserError(f"model.net.alphabet={mine} but data.alphabet={theirs}: the model must read the ids the data "
                        f"gives; set both to the same alphabet")
    net_len, data_len = _select(cfg, "model.net.max_len"), _select(cfg, "data.max_len")
    if UNKNOWN not in (net_len, data_len) and _is_int(net_len) and _is_int(data_len) and net_len < data_len:
        raise UserError(f"model.net.max_len={net_len} is shorter than data.max_len={data_len}: the data's sentences "
                        f"would not fit the model's position table")
    net_block, data_block = _select(cfg, "model.net.block_size"), _select(cfg, "data.block_size")
    if UNKNOWN not in (net_block, data_block) and _is_int(net_block) and _is_int(data_block) and net_block < data_block:
        raise UserError(f"model.net.block_size={net_block} is shorter than data.block_size={data_block}: the model "
                        f"would be trained on blocks longer than the context it takes")


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
    "num_nodes": int_at_least(1, " (machines, each running trainer.devices processes)"),
    "gradient_clip_val": optional(non_negative_number),
    "fast_dev_run": lambda v: None if isinstance(v, bool) or _is_int(v) and v >= 0 else "expected true, false or "
                                                                                        "a number of batches >= 0",
    **{k: _batches for k in ("limit_train_batches", "limit_val_batches", "limit_test_batches")},
}

# ModelParallelStrategy's mesh. trainer=fsdp2 sizes it from trainer.devices, which may also be -1 or "auto"
# (Lightning's "auto" here means one data-parallel rank per node: nothing sharded); the LightningModules'
# configure_model shards over the data-parallel dimension only, so there is no tensor parallelism to size.
STRATEGY_RULES: dict[str, Callable[[Any], str | None]] = {
    "data_parallel_size": lambda v: None if _is_int(v) and v >= 1 else (
        "expected a number of processes >= 1 (trainer=fsdp2 sizes its mesh from trainer.devices: give "
        "trainer.devices as a number)"),
    "tensor_parallel_size": lambda v: None if v == 1 else "expected 1 (the zoo shards data-parallel only)",
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


def _check(node: DictConfig, prefix: str, rules: dict[str, Callable[[Any], str | None]]) -> None:
    """Apply `rules` to the keys of `node` that have one."""
    for key in map(str, node):
        rule = rules.get(key)
        if rule is None:
            continue
        value = _value(node, key)
        if value is UNKNOWN or (value is None and key in PLACEHOLDERS):
            continue
        problem = rule(value)
        if problem:
            raise UserError(f"{prefix}{key}={_show(value)}{_source(node, key)}: {problem}")


def _source(node: DictConfig, key: str) -> str:
    """' (from data.max_len)' when node[key] is an interpolation, so the message names the key the user set."""
    try:
        raw = node._get_node(key)._value()  # the unresolved value
    except Exception:  # noqa: BLE001 - only a nicety for the message
        return ""
    if isinstance(raw, str) and raw.startswith("${") and raw.endswith("}") and raw.count("${") == 1:
        return f" (from {raw[2:-1]})"
    return ""


# The data facts, null until the data module says (utils.build.DATA_FACTS), and stand-ins for them in the
# meta build: a valid number of classes, and a vocabulary large enough for any special token id a config names.
PLACEHOLDERS = {"num_classes": 2, "vocab_size": 1 << 20}


# --- the checks ------------------------------------------------------------------------------------


def check_run_config(cfg: DictConfig) -> None:
    """Top-level keys and trainer.*, for train.py / evaluate.py / export.py."""
    _check(cfg, "", RUN_RULES)
    if isinstance(cfg.get("trainer"), DictConfig):
        _check(cfg.trainer, "trainer.", TRAINER_RULES)
        if isinstance(cfg.trainer.get("strategy"), DictConfig):
            _check(cfg.trainer.strategy, "trainer.strategy.", STRATEGY_RULES)


def check_model_config(cfg: DictConfig) -> None:
    """model.*, model.optimizer.*, model.net.* (built once on the meta device, see check_network) and data.*,
    with the model keys that must equal data keys. Values not known yet (num_classes before the data module
    has counted the classes) get a placeholder here; the real build checks them when known."""
    model = cfg.get("model")
    if not isinstance(model, DictConfig):
        return
    optimizer = model.get("optimizer")
    if isinstance(optimizer, DictConfig):
        _check(optimizer, "model.optimizer.", OPTIMIZER_RULES)
        if isinstance(optimizer.get("_target_"), str):
            _locate(optimizer._target_, "model.optimizer._target_")
    check_network(cfg)
    if isinstance(cfg.get("data"), DictConfig):
        _check(cfg.data, "data.", DATA_RULES)
        check_model_fits_data_sizes(cfg)


def check_network(cfg: DictConfig) -> None:
    """Build cfg.model.net, then the LightningModule around it, once on the meta device (no memory, no
    weights, milliseconds): their constructors' checks fire now, before any data is read, as
    `UserError("model.net.<key>=<value>: ...")` / `UserError("model.<key>=<value>: ...")`."""
    model = cfg.get("model")
    net = model.get("net") if isinstance(model, DictConfig) else None
    if isinstance(net, DictConfig):
        built = check_net_config(net, "model.net.")
        if built is not None:
            check_module_config(model, built)


def check_module_config(model: DictConfig, net: torch.nn.Module) -> None:
    """The LightningModule of `model` (its keys but `net`, `optimizer`) built around a meta `net`."""
    cls = _locate(model._target_, "model._target_") if isinstance(model.get("_target_"), str) else None
    if cls is None:
        return
    try:
        kwargs = OmegaConf.to_container(model, resolve=True)
    except (MissingMandatoryValue, InterpolationResolutionError):
        return  # a key points at what is not known yet: the real build names it later
    kwargs = {k: v for k, v in kwargs.items() if k not in ("_target_", "net", "optimizer")}
    for fact, placeholder in PLACEHOLDERS.items():
        if fact in kwargs and kwargs[fact] is None:
            kwargs[fact] = placeholder
    params = inspect.signature(cls.__init__).parameters
    try:
        with torch.device("meta"):
            cls(net=net, optimizer=None, **{k: v for k, v in kwargs.items() if k in params})
    except ValueError as err:
        raise UserError("model." + _with_source(str(err), model, kwargs)) from None


def check_net_config(net: DictConfig, prefix: str = "model.net.") -> torch.nn.Module | None:
    """Every key a parameter of the `_target_` class, then the class built on the meta device (returned;
    None when a value is not known yet)."""
    cls = _network_class(net, prefix)
    if cls is None:
        return
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in map(str, net) if k != "_target_" and k not in params]
    if unknown and not takes_any:
        names = [n for n in params if n != "self"]
        key = f"{prefix}{unknown[0]}"
        origin = set_by(key)  # a key the user never typed: say which pulled-in file set it
        where = f" (set by {origin}, which this composition pulled in, not on the command line)" \
            if origin else ""
        raise UserError(f"{key} is not a parameter of {cls.__name__}{where}; its parameters are: {', '.join(names)}")
    try:
        kwargs = OmegaConf.to_container(net, resolve=True)
    except (MissingMandatoryValue, InterpolationResolutionError):
        return  # a key points at what is not known yet (model=vit data=bible): the build names it later
    for fact, placeholder in PLACEHOLDERS.items():
        if fact in kwargs and kwargs[fact] is None:
            kwargs[fact] = placeholder
    try:
        with torch.device("meta"):
            return hydra.utils.instantiate(kwargs)
    except InstantiationException as err:
        if not isinstance(err.__cause__, ValueError):
            raise
        raise UserError(prefix + _with_source(str(err.__cause__), net, kwargs)) from None


def _with_source(message: str, net: DictConfig, values: dict[str, Any]) -> str:
    """'clip_seconds=0.01 (from data.clip_seconds): ...' when the message starts with a key of `net` that is
    an interpolation, so it names the key the user set."""
    key = message.split("=", 1)[0]
    head = f"{key}={_show(values[key])}" if key in values else None
    if head is None or not message.startswith(head):
        return message
    return head + _source(net, key) + message[len(head):]


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
