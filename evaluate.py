"""Evaluate a checkpoint on its test set: `python evaluate.py ckpt_path=<file.ckpt | run dir>`.

`save_attention=N` also draws the attention of the first N test examples into <run dir>/attention/
(the same pictures as `predict.py --attention-dir`). `average_last=N` evaluates the average of the weights of the run's last N epoch checkpoints
(checkpoints/epoch*.ckpt, kept by `keep_epoch_checkpoints` at training time).

`probe=knn` (or `linear`) measures frozen features instead: fitted on the train split, scored on the test
split, `test/knn_acc` in metrics.json; of a run on its own data, or of a pretrained source on `data=`:
`python evaluate.py pretrained=<source> probe=knn data=image_folder data.root=<folder>` (docs/probe.md).

`contacts=true` reads contacts from a protein model's attention (Rao et al. 2020, docs/protein_contacts.md): the
contact regression fitted on `contacts_train` training chains of known structure, precision at L, L/2, L/5 on
`contacts_eval` test chains beside three baselines, `contacts/...` in metrics.json, the fitted head in
contact_head.safetensors: `python evaluate.py ckpt_path=<run> contacts=true data=protein_structures` (or
`pretrained=pkg:antiberty` instead of ckpt_path).

The model and data are rebuilt from the training config stored in the checkpoint (no overrides to
re-type); metrics are printed and written to metrics.json in this evaluation's own run directory, never
into the run being evaluated (utils/rundir.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, open_dict

from inference.complete import Sampling, context_of, prompt_ids
from inference.contacts import require_contact_model, require_structures, rule, run_contacts, save_contact_head
from inference.inputs import input_kind, slug
from inference.load import from_run, load_source
from inference.predictor import Predictor, test_examples
from inference.probe import check_probe, probe_accuracy, source_with_data, split_features
from inference.protein import protein_lines
from utils.build import build_datamodule, build_trainer, output_dir, write_metrics
from utils.checkpoint import average_checkpoints, resolve_checkpoint
from utils.errors import UserError, note, run_hydra, user_errors
from utils.restore import restore
from utils.validate import check_run_config
from viz.explorer import page
from viz.pictures import draw

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    check_run_config(cfg)  # this command's own keys (average_last, save_attention, ...); the run's come below
    measurement = "contacts=true" if cfg.get("contacts") else (f"probe={cfg.probe.name}" if cfg.get("probe") is not
                                                               None else None)
    if cfg.get("contacts") and cfg.get("probe") is not None:
        raise UserError(f"contacts=true and probe={cfg.probe.name}: one measurement at a time; leave one out")
    for key in ("save_attention", "average_last"):
        if measurement and cfg.get(key):
            raise UserError(f"{key}={cfg.get(key)} is not read with {measurement}; leave one of the two out "
                            f"(`python evaluate.py ckpt_path=<run> {key}={cfg.get(key)}` runs a run's own test step)")
    if cfg.get("contacts"):
        return contacts(cfg)
    if cfg.get("probe") is not None:
        return probe(cfg)
    for key in ("pretrained", "data"):
        if cfg.get(key):
            raise UserError(f"{key}= is read by probes only (probe=knn | linear); a run is evaluated on its own "
                            "data: evaluate.py ckpt_path=<run>")
    # Evaluation-time choices (trainer, loggers, paths, seed, threads, kernel) come from evaluate.yaml; what the
    # model is and which data it was trained on come from the training run.
    runtime = {key: cfg.get(key) for key in ("trainer", "logger", "paths", "seed", "threads", "attention_kernel")}
    runtime["callbacks"] = None
    state = None
    if cfg.get("average_last"):
        state, used = average_checkpoints(resolve_checkpoint(cfg.ckpt_path), int(cfg.average_last))
        log.info(f"Averaged the weights of {len(used)} checkpoints: {', '.join(p.name for p in used)}")
    run = restore(cfg.ckpt_path, runtime=runtime, state=state)
    train_cfg, ckpt_file, module, datamodule = run.cfg, run.ckpt_file, run.module, run.datamodule
    trainer = build_trainer(train_cfg)
    log.info(f"Evaluating {ckpt_file}")
    trainer.test(module, datamodule=datamodule)
    metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    if not trainer.is_global_zero:  # multi-process evaluation: rank 0 writes the files
        return {k: float(v) for k, v in metrics.items()}
    run_dir = output_dir()
    clean = write_metrics(run_dir / "metrics.json", metrics)
    print(f"Checkpoint: {ckpt_file}\nMetrics: {clean}\nWritten to {run_dir / 'metrics.json'}")
    if cfg.get("save_attention"):
        lines = save_test_pictures(from_run(run), int(cfg.save_attention), run_dir / "attention")
        print("Attention pictures of the first test examples:\n" + "\n".join(lines))
    return clean


def probe(cfg: DictConfig) -> dict[str, float]:
    """`probe=knn | linear`: fit the probe on the frozen pooled features of the train split of a run's own
    data (ckpt_path=) or of `data=` (pretrained=), score it on the test split: test/<name>_acc."""
    check_probe(cfg.probe)
    spec = cfg.get("pretrained")
    notes: list[str] = []
    if spec:
        net, dm = source_with_data(str(spec), cfg.get("data"), cfg.get("paths"), notes)
        what = f"pretrained={spec}"
    else:
        runtime = {key: cfg.get(key) for key in ("trainer", "logger", "paths", "seed", "threads")}
        run = restore(cfg.ckpt_path, runtime={**runtime, "callbacks": None})
        net, dm, what = run.module.net.eval(), run.datamodule, str(run.ckpt_file)
    for line in notes:
        note(line)
    train, test = split_features(net, dm, "train"), split_features(net, dm, "test")
    name = str(cfg.probe.name)
    acc = probe_accuracy(cfg.probe, train, test)
    run_dir = output_dir()
    clean = write_metrics(run_dir / "metrics.json", {f"test/{name}_acc": acc})
    print(f"{what}: {name} probe on {train[0].shape[1]} frozen features, {len(train[1])} train / "
          f"{len(test[1])} test examples\nMetrics: {clean}\nWritten to {run_dir / 'metrics.json'}")
    return clean


def contacts(cfg: DictConfig) -> dict[str, float]:
    """`contacts=true`: the contact regression of Rao et al. fitted on the structures of `data=` (or the run's own
    data) and scored on its test chains beside the random, separation and residue-pair baselines
    (inference/contacts.py)."""
    if cfg.get("probe") is not None:
        raise UserError(f"contacts=true and probe={cfg.probe.name}: one measurement at a time; leave one out")
    net, dm, what, data_name = contact_model_and_data(cfg)
    notes: list[str] = []
    C = float(cfg.get("contacts_C", 0.15))
    result = run_contacts(net, dm, train=int(cfg.get("contacts_train", 20)),
                          evaluate=int(cfg.get("contacts_eval", 500)), seed=int(cfg.get("seed") or 0), notes=notes, C=C)
    for line in notes:
        note(line)
    run_dir = output_dir()
    clean = write_metrics(run_dir / "metrics.json", result.metrics())
    save_contact_head(net, run_dir / "contact_head.safetensors", what, C)
    print(f"{what}: contacts from attention on {data_name}, fitted on {result.train_chains} train chains, "
          f"scored on {result.eval_chains} test chains\n{rule(C)}\nPrecision (%) at L, L/2, L/5:\n{result.table()}\n"
          f"Written to {run_dir / 'metrics.json'} (contacts/...) and {run_dir / 'contact_head.safetensors'}")
    return clean


def contact_model_and_data(cfg: DictConfig) -> tuple[torch.nn.Module, Any, str, str]:
    """(network, data module, what the network is, what the data is) for contacts=true: a run (ckpt_path=) or a
    source (pretrained=), on `data=` or, for a run, its own data; each checked before the next is loaded."""
    spec = cfg.get("pretrained")
    data = cfg.get("data") if isinstance(cfg.get("data"), DictConfig) else None
    if spec:
        if data is None:
            raise UserError(f"contacts=true with pretrained={spec!r} needs chains of known structure: "
                            "data=protein_structures")
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        predictor = load_source(str(spec))
        net, what, run_cfg, dm = predictor.net.eval(), f"pretrained={spec}", predictor.cfg, None
    else:
        runtime = {key: cfg.get(key) for key in ("trainer", "logger", "paths", "seed", "threads", "attention_kernel")}
        run = restore(cfg.ckpt_path, data=data is None, runtime={**runtime, "callbacks": None})
        net, what, run_cfg, dm = run.module.net.eval(), str(run.ckpt_file), run.cfg, run.datamodule
    require_contact_model(net, what)
    data_name = "the run's own data"
    if data is not None:
        with open_dict(run_cfg):  # the structures replace whatever the model was trained on
            run_cfg.data, run_cfg.paths = data, cfg.get("paths") or {}
        dm, data_name = build_datamodule(run_cfg), f"data={data_choice(data)}"
    require_structures(dm, data_name)
    return net, dm, what, data_name


def data_choice(data: DictConfig) -> str:
    """The data config's name as the user chose it (data=protein_structures), else its class."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return str(HydraConfig.get().runtime.choices.get("data") or data.get("_target_"))
    except ValueError:  # Hydra not initialised (called from Python)
        return str(data.get("_target_"))


def continuation_length(predictor: Predictor, prompt: str, reference: str) -> int:
    """How far save_attention continues a language model's test prompt: as many tokens as the reference holds, at
    most what the context leaves after the prompt (a BOS included), so that the pictures show the prompt too (100
    new tokens would push it out of the maps)."""
    tok, context = predictor.tokenizer, context_of(predictor.net)
    room = context - len(prompt_ids(tok, prompt, context))
    return max(1, min(len(tok.encode(reference, add_special_tokens=False).ids), room))


def save_test_pictures(predictor: Predictor, n: int, out_dir: Path) -> list[str]:
    """Attention pictures (PNG) and the explorer page (test<i>.html) of the first n test examples in out_dir,
    each drawn from one prediction; returns one printable line each."""
    input_kind(predictor.modality, f"save_attention: this {type(predictor.net).__name__}")  # e.g. ListOps: none
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    examples = test_examples(predictor, n)
    if not examples:
        raise UserError(f"save_attention={n}: the run's test split holds no example to draw")
    if len(examples) < n:
        note(f"save_attention={n}: the test split holds {len(examples)} example(s); all of them drawn")
    for i, (x, label, name) in enumerate(examples):
        notes: list[str] = []
        sampling = Sampling(max_new_tokens=continuation_length(predictor, x, label)) if predictor.task == "complete" \
            else None
        # a transcriber's words too: its page highlights them as the audio plays (as predict.py --words --html)
        p = predictor.predict(x, maps=True, words=predictor.task == "transcribe", notes=notes, sampling=sampling)
        for line in notes:
            note(f"save_attention: test example {i}: {line}")
        if predictor.task == "unmask":  # a protein: its pseudo-perplexity; the page shows its contact maps
            paths = draw(p, out_dir, f"test{i:03d}_{slug(name)}")
            known = "true contacts known" if p.true_contacts is not None else "no structure"
            lines.append(", ".join(protein_lines(p)[:2]) + f" ({known})")  # predict.py's first two lines
            title = name
        elif p.text is not None:
            paths = draw(p, out_dir, f"test{i:03d}_{slug(name)}")
            lines.append(f"{name} -> {p.text} (reference: {label})")
            title = f"{name} -> {p.text}"
        else:
            paths = draw(p, out_dir, f"test{i:03d}", label=label)
            lines.append(f"{name} (label {label}): " + ", ".join(f"{c} {q:.1%}" for c, q in p.top[:3]))
            title = f"{name} (label {label})"
        paths.append(out_dir / f"test{i:03d}.html")
        paths[-1].write_text(page(p, title), encoding="utf-8")
        lines += [f"  {path}" for path in paths]
    return lines


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
@user_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    run_hydra(main, path_key="ckpt_path")  # `python evaluate.py RUN_DIR` works too
