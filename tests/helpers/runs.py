"""Tiny runs: trained in this process (train.py's `train`), of the four kinds for the pictures and the app, and
a sample input file for each classifier."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import train as train_script
from helpers.cli import restored_globals, run
from helpers.config import ROOT, compose_config

# One epoch of two batches, one small layer: a run that predict.py, evaluate.py and the app can load.
TINY_RUN = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1", "model.net.depth=1", "model.net.dim=32"]
TRANSLATOR = ["model=translator", "data.num_pairs=1500", "data.bpe_vocab_size=200", "model.net.dim=32",
              "model.net.encoder_depth=1", "model.net.decoder_depth=1", "model.max_new_tokens=12",
              "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
              "trainer.limit_test_batches=1"]


def sample_file(model: str, folder: Path) -> Path:
    """A random input file for model=vit (PNG), audio (WAV) or video (MP4)."""
    from viz.samples import write_mp4, write_png, write_wav

    g = torch.Generator().manual_seed(0)
    if model == "vit":
        return write_png(torch.randint(0, 256, (1, 40, 30), generator=g, dtype=torch.uint8), folder / "x.png")
    if model == "audio":
        return write_wav(torch.randn(12000, generator=g) * 0.1, 16000, folder / "x.wav")
    return write_mp4(torch.randint(0, 256, (1, 10, 32, 32), generator=g, dtype=torch.uint8), folder / "x.mp4")


class TinyRuns(dict):
    """model -> run directory (vit, audio, video: TINY_RUN; translator: TRANSLATOR), trained on first use
    with train.py in this process. Shared: tests read a run and write their outputs elsewhere."""

    def __init__(self, base: Path) -> None:
        super().__init__()
        self.base = base

    def __missing__(self, model: str) -> Path:
        folder = self.base / model
        if model == "translator":
            run("train.py", *TRANSLATOR, f"paths.data_dir={self.base / 'datasets'}", f"hydra.run.dir={folder}")
        else:
            run("train.py", f"model={model}", *TINY_RUN, f"hydra.run.dir={folder}")
        self[model] = folder
        return folder


# Two epochs of three batches, one small layer: seconds per run, yet every stateful piece (optimizer,
# schedule, samplers, augmentation, checkpoints) goes through an epoch boundary.
TINY = ["threads=1", "trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "model.net.dim=32", "logger=csv", "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false"]
SMALL = {"vit": ["model.net.depth=1"], "audio": ["model.net.depth=1"], "video": ["model.net.depth=1"],
         "translator": ["data.num_pairs=1000", "data.bpe_vocab_size=200", "model.net.encoder_depth=1",
                        "model.net.decoder_depth=1", "model.beam_size=1", "data.eval_batch_size=16"],
         "sequence": ["model.net.depth=1", "data.train_size=96", "data.val_size=16", "data.test_size=16",
                      "data.min_length=20", "data.max_length=120", "model.net.attn_window=8"],
         "lm": ["model.net.depth=1", "data.block_size=16", "data.batch_size=4", "data.eval_batch_size=16"],
         # The first 300 UniProt examples (Debian's mmseqs2-examples; split by mmseqs2, cached under datasets/).
         "protein": ["model.net.depth=1", "model.net.num_heads=2", "model.net.ffn_dim=64", "data.max_sequences=300",
                     "data.max_len=64", "data.batch_size=4", "data.eval_batch_size=16"],
         "whisper_classifier": ["model.net.encoder_depth=1", "model.net.num_heads=2"]}
# model=whisper fine-tunes a source (it has no from-scratch recipe): a tiny random Whisper and 24 noise recordings
# with transcripts, written once per test session (whisper_overrides).
WHISPER = ["data.batch_size=4", "model.max_new_tokens=8"]
# What a model's default data needs from the system (Debian packages), so its tests skip, not fail, without it.
SYSTEM_DATA = {"protein": (Path("/usr/share/doc/mmseqs2/example-data/DB.fasta.gz"), "mmseqs")}


@functools.cache
def whisper_overrides() -> list[str]:
    """pretrained= a tiny random Whisper, data.root= a folder of (wav, txt) pairs: what model=whisper trains on here."""
    from helpers.whisper_tiny import make_tiny_whisper, write_pairs

    base = Path(tempfile.mkdtemp(prefix="whisper_runs_"))
    return [f"pretrained={make_tiny_whisper(base / 'tiny', std=0.2)}", f"data.root={write_pairs(base / 'pairs')}",
            *WHISPER]


def small(model: str) -> list[str]:
    """The overrides that make `model`'s tiny run small (and, for whisper, give it a source and data)."""
    return whisper_overrides() if model == "whisper" else SMALL[model]


def system_data_missing(model: str) -> str | None:
    """Why `model`'s default data cannot be read on this machine (a reason for pytest.skip), or None."""
    import shutil

    if model not in SYSTEM_DATA:
        return None
    path, tool = SYSTEM_DATA[model]
    if not path.is_file() or shutil.which(tool) is None:
        return f"needs {path} and {tool} (apt-get install mmseqs2 mmseqs2-examples)"
    return None


def train_in_process(model: str, out: Path, *overrides: str) -> dict[str, float]:
    """`python train.py model=<model> <TINY> ...` without a new interpreter (seconds instead of ~15 s)."""
    import pytest

    if (missing := system_data_missing(model)) is not None:
        pytest.skip(missing)
    cfg = compose_config("train", [f"model={model}", *TINY, *small(model), *overrides], out)
    with open_dict(cfg):
        cfg.paths.data_dir = str(ROOT / "datasets")  # the generated datasets cached there, as the CLI uses
        cfg.hydra.runtime.output_dir = str(out)
    out.mkdir(parents=True, exist_ok=True)
    with restored_globals():
        HydraConfig.instance().set_config(cfg)
        return train_script.train(cfg)
