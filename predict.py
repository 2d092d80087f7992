"""Use a trained model from the command line.

    python predict.py outputs/train/runs/<time> "Monday, March 3, 2025"      # translate a sentence
    python predict.py path/to/best.ckpt sentences.txt --beam-size 1           # one sentence a line, greedy

The first argument is a checkpoint file or a run directory (its best.ckpt); the model, its
tokenizer and its decoding settings come from the checkpoint, so nothing is re-typed.
Translation is supported now; the classifiers (image / audio / video) come with issue 6.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, open_dict

from models.seq2seq import Seq2SeqModule
from models.tokenizer import load_tokenizer
from utils.build import datamodule_state
from utils.checkpoint import load_checkpoint, resolve_checkpoint, run_config


def load_translator(ckpt_path: str | Path) -> Seq2SeqModule:
    """A Seq2SeqModule with weights and tokenizer from a checkpoint, in eval mode."""
    ckpt_file = resolve_checkpoint(ckpt_path)
    ckpt = load_checkpoint(ckpt_file)
    cfg: DictConfig = run_config(ckpt_file, ckpt)
    if not str(cfg.model._target_).endswith("Seq2SeqModule"):
        raise ValueError(f"{ckpt_file} is a {cfg.model._target_} checkpoint; predict.py translates with "
                         f"translator checkpoints only for now")
    state = datamodule_state(ckpt, cfg)
    if not state or "tokenizer" not in state:
        raise ValueError(f"{ckpt_file} carries no tokenizer (expected the data module state in the checkpoint)")
    tokenizer = load_tokenizer(state["tokenizer"])
    with open_dict(cfg):
        cfg.data.vocab_size = tokenizer.get_vocab_size()
    module: Seq2SeqModule = hydra.utils.instantiate(cfg.model)
    module.load_state_dict(ckpt["state_dict"])
    module.tokenizer = tokenizer
    return module.eval()


def read_inputs(items: list[str]) -> list[str]:
    """Each item is a sentence, or a .txt file with one sentence a line."""
    sentences = []
    for item in items:
        path = Path(item)
        if path.suffix == ".txt" and path.is_file():
            sentences += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            sentences.append(item)
    return sentences


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt_path", help="checkpoint file or run directory")
    parser.add_argument("inputs", nargs="+", help="sentences to translate, or .txt files with one sentence a line")
    parser.add_argument("--beam-size", type=int, default=None, help="beam width (1 = greedy); default: the model's")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        module = load_translator(args.ckpt_path)
        sentences = read_inputs(args.inputs)
        translations = module.translate(sentences, beam_size=args.beam_size)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for src, out in zip(sentences, translations):
        print(f"{src}\t{out}" if len(sentences) > 1 else out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
