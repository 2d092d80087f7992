"""Training a causal LM (model=lm): the text corpus (split, blocks, tokenizers), perplexity, train -> evaluate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from data.text_corpus import TINY_SHAKESPEARE, FixedBlocks, TextCorpusDataModule, read_corpus, split_text
from helpers.cli import run
from training.causal_lm import CausalLMModule

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n") * 4


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_the_split_is_by_position_and_the_training_part_is_nanogpts(corpus: Path) -> None:
    parts = split_text(TEXT, 0.05, 0.05)
    assert "".join(parts[s] for s in ("train", "val", "test")) == TEXT
    assert len(parts["train"]) == int(len(TEXT) * 0.9) and len(parts["test"]) == len(TEXT) - int(len(TEXT) * 0.95)
    # The embedded corpus is char-rnn's input.txt, and our training part is nanoGPT's train.bin (1,003,854 chars).
    shakespeare = read_corpus(TINY_SHAKESPEARE)
    assert len(shakespeare) == 1_115_394 and shakespeare.startswith("First Citizen:\nBefore we proceed")
    assert len(split_text(shakespeare, 0.05, 0.05)["train"]) == 1_003_854
    # Several files: each is split on its own, then the parts are joined (every file in every split).
    other = corpus.with_name("other.txt")
    other.write_text(TEXT.upper(), encoding="utf-8")
    dm = TextCorpusDataModule(path=[str(corpus), str(other)], block_size=8)
    assert dm.texts["val"] == parts["val"] + split_text(TEXT.upper(), 0.05, 0.05)["val"]


def test_char_tokenizer_round_trip_vocabulary_and_unknown_characters(corpus: Path) -> None:
    dm = TextCorpusDataModule(path=str(corpus), tokenizer="char", block_size=8)
    dm.setup("fit")
    train = split_text(TEXT, 0.05, 0.05)["train"]
    tok = dm.tokenizer
    assert dm.vocab_size == len(set(train)) + 1  # + [UNK]
    assert [tok.id_to_token(i) for i in range(1, dm.vocab_size)] == sorted(set(train))  # nanoGPT's order
    assert torch.equal(dm.ids["train"], torch.tensor([tok.token_to_id(c) for c in train]))  # one id per character
    assert tok.decode(dm.ids["train"].tolist()) == train
    assert tok.encode("Speak, Zeus!").ids[5:7] == [tok.token_to_id(","), tok.token_to_id(" ")]
    assert tok.encode("Zq").ids == [0, 0]  # never seen in training: [UNK], no exception


def test_bpe_tokenizer_round_trips_any_text(corpus: Path) -> None:
    dm = TextCorpusDataModule(path=str(corpus), tokenizer="bpe", bpe_vocab_size=300, block_size=8)
    dm.setup("fit")
    tok = dm.tokenizer
    assert 256 < dm.vocab_size <= 300
    assert len(dm.ids["train"]) < len(split_text(TEXT, 0.05, 0.05)["train"]) / 2  # merges learned
    for text in (TEXT[:200], "Unseen: naïve café, 日本語 and emoji 🎭\n\n  spaces"):  # byte-level: no [UNK]
        assert tok.decode(tok.encode(text).ids) == text


def test_blocks_batches_and_the_tokenizer_in_the_state(corpus: Path) -> None:
    dm = TextCorpusDataModule(path=str(corpus), block_size=16, batch_size=4, eval_batch_size=5, batches_per_epoch=7)
    dm.setup("fit")
    train = dm.train_dataloader()
    batches = list(train)
    assert len(train) == len(batches) == 7
    offsets = []
    for x, y in batches:
        assert x.shape == y.shape == (4, 16)
        assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one token
        ids = dm.ids["train"]
        for row in x:  # each row is a contiguous block of the training ids
            starts = [i for i in range(len(ids) - 16) if torch.equal(ids[i:i + 16], row)]
            assert starts
            offsets.append(starts[0])
    assert len(batches) * 4 == 28 and len(set(offsets)) > 20  # random offsets, not a fixed grid
    # Evaluation: fixed non-overlapping blocks, every target token once (the last partial block is left out).
    val = dm.ids["val"]
    blocks = FixedBlocks(val, 16)
    assert len(blocks) == (len(val) - 1) // 16
    assert torch.equal(torch.cat([blocks[i][1] for i in range(len(blocks))]), val[1:len(blocks) * 16 + 1])
    assert [len(x) for x, _ in dm.val_dataloader()][:1] == [min(5, len(blocks))]
    spread = FixedBlocks(val, 4, limit=3).starts  # max_eval_blocks: evenly spaced blocks of the grid
    assert len(spread) == 3 and spread[0] == 0 and all(s % 4 == 0 for s in spread) and spread[2] > len(val) / 2
    # The tokenizer travels as the data module's state: a module restored from it encodes alike.
    other = TextCorpusDataModule(path=str(corpus), tokenizer="bpe", vocab_size=dm.vocab_size, block_size=16)
    other.load_state_dict(dm.state_dict())
    assert other.prepare_tokenizer().to_str() == dm.tokenizer.to_str() and other.vocab_size == dm.vocab_size


class Bigram(nn.Module):
    """logits[b, t] = table[ids[b, t]]: a net whose loss is easy to write out by hand."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]


def test_perplexity_is_exp_of_the_mean_token_loss_computed_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    table = torch.randn(5, 5, generator=g, dtype=torch.float64)
    x = torch.randint(0, 5, (7, 3), generator=g)
    y = torch.randint(0, 5, (7, 3), generator=g)
    # Batches of 4 and 3 blocks: the mean is over tokens, not a mean of the two batch means.
    loader = DataLoader(list(zip(x, y)), batch_size=4)
    module = CausalLMModule(Bigram(table), optimizer=None)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    metrics = trainer.test(module, dataloaders=loader, verbose=False)[0]
    losses = []
    for b in range(7):
        for t in range(3):
            row = table[x[b, t]].tolist()
            losses.append(math.log(sum(math.exp(v) for v in row)) - row[y[b, t]])
    loss = sum(losses) / len(losses)
    assert metrics["test/loss"] == pytest.approx(loss, rel=1e-6)
    assert metrics["test/perplexity"] == pytest.approx(math.exp(loss), rel=1e-6)


def test_embeddings_norms_and_biases_get_no_weight_decay() -> None:
    net = nn.ModuleDict({"embed": nn.Embedding(5, 4), "proj": nn.Linear(4, 4), "norm": nn.LayerNorm(4)})
    module = CausalLMModule(net, optimizer=None)
    assert module.decays == {"embed.weight": False, "proj.weight": True, "proj.bias": False, "norm.weight": False,
                             "norm.bias": False}


LM_TINY = ["model=lm", "threads=1", "trainer.max_epochs=2", "data.batches_per_epoch=3", "data.block_size=16",
           "data.batch_size=4", "data.eval_batch_size=8", "trainer.limit_val_batches=2", "model.net.dim=32",
           "model.net.depth=1", "logger=csv", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]


def test_train_then_evaluate_from_the_run_directory(corpus: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run("train.py", *LM_TINY, f"data.path={corpus}", f"hydra.run.dir={run_dir}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"train/loss", "val/loss", "val/perplexity", "test/loss", "test/perplexity"} <= set(metrics)
    assert metrics["val/perplexity"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-5)
    assert (run_dir / "tokenizer.json").is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()
    # Nothing re-typed: the checkpoint carries the config and the tokenizer; the test split is read again.
    ev = tmp_path / "eval"
    run("evaluate.py", f"ckpt_path={run_dir}", "threads=1", f"hydra.run.dir={ev}")
    evaluated = json.loads((ev / "metrics.json").read_text())
    assert evaluated["test/perplexity"] == pytest.approx(math.exp(evaluated["test/loss"]), rel=1e-6)
    assert evaluated["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)
    assert 1 < evaluated["test/perplexity"] < 66  # below the uniform guess over the vocabulary
