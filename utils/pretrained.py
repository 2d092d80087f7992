"""`pretrained=<source>`: a timm / Hugging Face model converted (models/pretrained) into this run's network.

Before the data module is built, the source's architecture replaces `model.net` and its input preparation is
stored as `preprocess` (and fills the data keys left null, e.g. the normalisation of an image folder);
after the network is built, the converted weights are loaded into it: the head is replaced when the data has
other classes, position tables are resized to the data's size. A run built from a zoo checkpoint already has
`preprocess`, so evaluate / predict / export / resume never go back to the source.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import replace

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from models.network import network_class
from models.pretrained import Converted, convert
from utils.errors import UserError

log = logging.getLogger(__name__)

_CONVERTED: dict[str, Converted] = {}  # between apply_pretrained (config) and load_pretrained (weights)
# Training choices a run may set on top of the source's architecture (regularisation, augmentation).
KEEP = ("drop", "attn_drop", "drop_path", "freq_mask", "time_mask", "num_masks")
DATA_KEYS = ("image_size", "in_chans", "mean", "std", "sample_rate", "clip_seconds", "num_frames")
SIZES = ("image_size", "sample_rate", "clip_seconds", "num_frames")  # null only means something with a source


def apply_pretrained(cfg: DictConfig) -> None:
    """`pretrained` set and not converted yet: fill model.net, `preprocess` and null data keys."""
    model = cfg.get("model")
    spec = cfg.get("pretrained")
    data = cfg.get("data")
    if not spec:
        unset = [k for k in SIZES if isinstance(data, DictConfig) and k in data and data[k] is None]
        if unset:
            raise UserError(f"data.{unset[0]} is null, which means 'the pretrained model's': give the source, "
                            "pretrained=timm:<name> | hf:<repo id> | a folder (docs/pretrained.md), "
                            f"or set data.{unset[0]}")
        return
    if cfg.get("preprocess") is not None or not isinstance(model, DictConfig):
        return
    conv = convert(str(spec), trust_pickle=bool(cfg.get("trust_pickle") or False))
    ours, theirs = network_class(str(model.net._target_)), network_class(str(conv.net["_target_"]))
    adopted = None if ours is theirs else ours.adopt(conv.net, conv.state)
    if adopted is not None:  # this network is built from a part of the source's (models/network.py `adopt`)
        conv = replace(conv, net=adopted[0], state=adopted[1], tokenizer=None, module={})
    elif ours is not theirs:
        raise UserError(f"pretrained={spec!r} converts to a {theirs.__name__} ({theirs.modality} data), but "
                        f"model={ours.name} builds a {ours.__name__}; use model={theirs.name}")
    net = dict(conv.net)
    params = inspect.signature(network_class(net["_target_"]).__init__).parameters
    old = model.get("net")
    if isinstance(old, DictConfig):
        net.update({k: old[k] for k in KEEP if k in old and k in params})
    with open_dict(cfg):
        if isinstance(data, DictConfig):
            for key in DATA_KEYS:
                if key in data and data[key] is None and key in conv.preprocess:
                    data[key] = conv.preprocess[key]
            # The data decides the classes and the input size (the position tables are resized to it).
            for net_key, data_key in (("num_classes", "num_classes"), ("img_size", "image_size"),
                                      ("num_frames", "num_frames")):
                if net_key in net and data_key in data:
                    net[net_key] = f"${{data.{data_key}}}"
        model.net = OmegaConf.create(net)
        cfg.preprocess = conv.preprocess
        # The source's own LightningModule settings (Marian's decoding rules); the run keeps its validation
        # decoding budget (beam_size, max_new_tokens).
        model.update({k: v for k, v in conv.module.items() if k not in ("beam_size", "max_new_tokens")})
    _CONVERTED[str(spec)] = conv


def pretrained_tokenizer(cfg: DictConfig) -> str | None:
    """The tokenizer of the source apply_pretrained just converted for this config (a text family), or None."""
    conv = _CONVERTED.get(str(cfg.get("pretrained")))
    return None if conv is None else conv.tokenizer


def load_pretrained(net: nn.Module, cfg: DictConfig) -> None:
    """Load the weights apply_pretrained converted for this config into the freshly built network."""
    conv = _CONVERTED.pop(str(cfg.get("pretrained")), None)
    if conv is None:
        return
    net.load_state_dict(fit_state(conv, net), strict=False)


def fit_state(conv: Converted, net: nn.Module) -> dict[str, Tensor]:
    """The converted weights reshaped for `net`: a head for other classes stays freshly initialised, position
    tables are resized (bicubic in space, linear in time, as the models do for other inputs)."""
    own = net.state_dict()
    state, fresh, reference = {}, [], None
    for key, value in conv.state.items():
        if key not in own:
            raise UserError(f"pretrained weight {key} has no place in {type(net).__name__}")
        if own[key].shape == value.shape:
            state[key] = value
        elif key.startswith(("head.", "head_dist.")):
            fresh.append(key)
        elif key.endswith(("pos_embed.weight", "time_embed.weight")):
            reference = reference or conv.build()
            state[key] = _resized(reference, net, key)
        else:
            raise UserError(f"pretrained weight {key} {tuple(value.shape)} does not fit {type(net).__name__}'s "
                            f"{tuple(own[key].shape)}")
    # A backbone without head (num_classes=0): the run's classes get a fresh one.
    fresh += [k for k in own if k.startswith(("head.", "head_dist.")) and k not in conv.state]
    missing = [k for k in own if k not in state and k not in fresh]
    if missing:
        raise UserError(f"pretrained weights lack {len(missing)} tensor(s) of {type(net).__name__} (first: {missing[0]})")
    if fresh:
        was = conv.net.get("num_classes")
        log.info(f"Pretrained head {'replaced' if was else 'new'} for {int(own[fresh[0]].shape[0])} classes"
                 + (f" (was {was})" if was else ""))
    return state


@torch.no_grad()
def _resized(reference: nn.Module, net: nn.Module, key: str) -> Tensor:
    module = key.rsplit(".", 1)[0]
    old, new = reference.get_submodule(module), net.get_submodule(module)
    size = getattr(new, "grid_size", None) or getattr(new, "num_frames")
    log.info(f"Pretrained {module} resized from {getattr(old, 'grid_size', None) or old.num_frames} to {size}")
    return old(size).reshape(new.weight.shape)
