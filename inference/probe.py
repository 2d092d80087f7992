"""Probes on frozen features: what a network's head reads (its pooled features) for every example of
a split, then k nearest neighbours or a logistic regression (scikit-learn) fitted on train, scored on test.

    train = pooled_features(net, dm.split_dataloader("train"))   # (features (N, dim), labels (N,))
    acc = probe_accuracy({"name": "knn", "k": 20, "metric": "cosine"}, train, test)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from tqdm import tqdm

from inference.load import load_source
from utils.build import build_datamodule
from utils.errors import UserError

PROBES = ("knn", "linear")


def pooled_features(net: nn.Module, batches: Iterable[Any], desc: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """(features (N, dim), labels (N,)) over (inputs, labels) batches: the network's own `pooled_features(x)`
    where it has one (Whisper: the mean of its encoder's output), else the input of its `head` (class token or
    mean of patches, after its norm), whatever the head is (a backbone's nn.Identity too).
    A progress bar (`desc`, on stderr) counts the batches: a large split takes minutes on a CPU."""
    own = getattr(net, "pooled_features", None)
    head = getattr(net, "head", None)
    if own is None and not isinstance(head, nn.Module):
        raise UserError(f"probe: a {type(net).__name__} has no `head` whose input would be its features")
    kept: list[torch.Tensor] = []
    hook = None if own is not None else head.register_forward_pre_hook(
        lambda module, args: kept.append(args[0].detach().float()))
    labels = []
    try:
        with torch.no_grad():
            for x, y in tqdm(batches, desc=desc, unit="batch", leave=False):
                if own is not None:
                    kept.append(own(x).float())
                else:
                    net(x)
                labels.append(torch.as_tensor(y))
    finally:
        if hook is not None:
            hook.remove()
    if not kept:
        raise UserError("probe: the split holds no examples")
    return torch.cat(kept).cpu().numpy(), torch.cat(labels).cpu().numpy()


def knn(k: int, metric: str = "cosine", weights: str = "uniform") -> Any:
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=k, metric=metric, weights=weights, algorithm="brute")


def check_probe(settings: Mapping[str, Any]) -> None:
    """The probe's settings checked before any feature is computed (that can take an hour): a UserError naming
    the key for a bad one."""
    name = settings.get("name")
    if name not in PROBES:
        raise UserError(f"probe.name={name!r}: expected one of {', '.join(PROBES)}")
    k = settings.get("k", 20)
    if name == "knn" and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise UserError(f"probe.k={k!r}: expected an integer >= 1 (neighbours that vote)")


def probe_accuracy(settings: Mapping[str, Any], train: tuple[np.ndarray, np.ndarray],
                   test: tuple[np.ndarray, np.ndarray]) -> float:
    """Test accuracy of a probe fitted on the train features. settings: configs/probe/<name>.yaml
    (knn: k, metric, weights; linear: C, max_iter); a bad value is a UserError naming its key."""
    check_probe(settings)
    name = settings.get("name")
    if name == "knn":
        model = knn(min(int(settings.get("k", 20)), len(train[1])), str(settings.get("metric", "cosine")),
                    str(settings.get("weights", "uniform")))
    else:  # linear
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        model = make_pipeline(StandardScaler(), LogisticRegression(C=float(settings.get("C", 1.0)),
                                                                   max_iter=int(settings.get("max_iter", 1000))))
    try:
        model.fit(*train)
    except ValueError as err:  # e.g. an unknown metric, one class only
        raise UserError(f"probe={name}: {err}") from None
    return float((model.predict(test[0]) == test[1]).mean())


def source_with_data(spec: str, data: DictConfig | None, paths: DictConfig | None,
                     notes: list[str] | None = None) -> tuple[nn.Module, L.LightningDataModule]:
    """A pretrained source's network (eval mode) and the data module of `data` (configs/data/<name>.yaml),
    prepared as the source prepares its own inputs: images in its channels, and its size, mean and std where
    the data config leaves them null; audio at its sample rate. A changed setting is said in `notes`."""
    if not isinstance(data, DictConfig):
        raise UserError(f"probe with pretrained={spec!r} needs data to probe on: data=image_folder "
                        "data.root=<folder of class sub-folders>, data=fashion_mnist, or data=fsdd "
                        "data.root=<recordings> for a speech source")
    predictor = load_source(spec)
    if predictor.modality not in ("image", "audio"):
        raise UserError(f"probe: pretrained={spec!r} reads {predictor.modality}; probes read images or audio clips")
    pre = predictor.preprocess or {}
    cfg = OmegaConf.merge(predictor.cfg, {"data": data, "paths": paths or {}})
    if predictor.modality == "audio":
        return predictor.net.eval(), _audio_data(spec, cfg, pre, notes)
    if "sample_rate" in cfg.data:
        raise UserError(f"probe: pretrained={spec!r} reads images; data={cfg.data.get('dataset')!r} is audio "
                        "(data=image_folder, fashion_mnist, mnist, cifar10)")
    with open_dict(cfg):
        if "in_chans" in cfg.data and cfg.data.in_chans != pre["in_chans"]:
            if notes is not None:
                notes.append(f"data.in_chans={cfg.data.in_chans} -> {pre['in_chans']}: the images are converted "
                             f"to what pretrained={spec} reads")
            cfg.data.in_chans = pre["in_chans"]
        for key in ("image_size", "mean", "std"):
            if key in cfg.data and cfg.data[key] is None:
                cfg.data[key] = pre[key]
    return predictor.net.eval(), build_datamodule(cfg)


def _audio_data(spec: str, cfg: DictConfig, pre: Mapping[str, Any], notes: list[str] | None) -> L.LightningDataModule:
    """The audio data module of cfg.data at the source's sample rate (a speech source heard 16 kHz only)."""
    if "sample_rate" not in cfg.data:
        raise UserError(f"probe: pretrained={spec!r} reads audio; data={cfg.data.get('dataset')!r} is not audio "
                        "(data=fsdd, keywords, speech_commands, audio_folder)")
    rate = int(pre["sample_rate"])
    if cfg.data.sample_rate != rate:
        if notes is not None:
            notes.append(f"data.sample_rate={cfg.data.sample_rate} -> {rate}: the clips are resampled to what "
                         f"pretrained={spec} hears")
        with open_dict(cfg):
            cfg.data.sample_rate = rate
    return build_datamodule(cfg)


def split_features(net: nn.Module, dm: L.LightningDataModule, split: str) -> tuple[np.ndarray, np.ndarray]:
    """pooled_features of one split of an image or audio data module (its `split_dataloader`)."""
    if not hasattr(dm, "split_dataloader"):
        raise UserError(f"probe: {type(dm).__name__} gives no plain split loaders; probes read image data "
                        "(data=image_folder, fashion_mnist, mnist, cifar10) or audio clips (data=fsdd, keywords, "
                        "speech_commands, audio_folder)")
    dm.setup("fit")
    return pooled_features(net, dm.split_dataloader(split), desc=f"{split} features")
