"""ListOps (data/listops.py) against an independent evaluator and the paper's constraints, and the sequence
classifier's padding invariance; one tiny training run through experiment=listops."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch

from data.listops import CLS_ID, PAD_ID, VOCAB, ListOpsDataModule, ListOpsSpec, evaluate, generate
from models.sequence import SequenceClassifier


def test_evaluator_on_hand_written_expressions() -> None:
    cases = {"[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]": 5, "[SM 9 9 [SM 5 5 5 ] ]": 3,
             "[MED 1 2 3 4 ]": 2, "[MIN [MAX 1 9 ] 8 ]": 8, "7": 7}
    for text, value in cases.items():
        assert evaluate(text.split()) == value
    assert int(statistics.median([1, 2, 3, 4])) == 2  # the median of an even count rounds down, as in LRA
    with pytest.raises(ValueError, match="unbalanced"):
        evaluate("[MAX 1 2".split())


def test_generated_sets_follow_the_spec() -> None:
    spec = ListOpsSpec(train_size=60, val_size=10, test_size=10, min_length=100, max_length=400, seed=3)
    arrays = generate(spec, progress=False)
    for split, size in (("train", 60), ("val", 10), ("test", 10)):
        tokens, offsets, labels = (arrays[f"{split}_{k}"] for k in ("tokens", "offsets", "labels"))
        assert len(labels) == size and offsets[-1] == len(tokens)
        for i in range(size):
            seq = tokens[offsets[i]: offsets[i + 1]]
            assert seq[0] == CLS_ID and 100 < len(seq) - 1 < 400
            assert evaluate([VOCAB[t] for t in seq[1:]]) == labels[i]  # the label is the expression's value
    again = generate(spec, progress=False)
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)  # seeded
    seqs = {arrays["train_tokens"][a:b].tobytes() for a, b in zip(arrays["train_offsets"], arrays["train_offsets"][1:])}
    test = {arrays["test_tokens"][a:b].tobytes() for a, b in zip(arrays["test_offsets"], arrays["test_offsets"][1:])}
    assert not seqs & test


def test_classifier_ignores_padding_and_windowed_equals_dense_for_short_inputs() -> None:
    torch.manual_seed(0)
    net = SequenceClassifier(len(VOCAB), 10, 300, dim=32, depth=2, attn_window=8, attn_global=1).eval()
    ids = torch.randint(2, len(VOCAB), (2, 90))
    ids[:, 0] = CLS_ID
    padded = torch.cat([ids, torch.full((2, 37), PAD_ID)], 1)
    torch.testing.assert_close(net(ids), net(padded), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="longer than max_len=300"):
        net(torch.ones(1, 301, dtype=torch.long))


def test_listops_trains_through_the_experiment_config(tmp_path) -> None:
    from helpers.cli import run

    folder = tmp_path / "run"
    result = run("train.py", "experiment=listops", "data.train_size=48", "data.val_size=16", "data.test_size=16",
                 "data.min_length=20", "data.max_length=200", "trainer.max_epochs=1", "threads=1",
                 f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={folder}")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0.0 <= metrics["test/acc"] <= 1.0, result.stdout[-2000:]
    dm = ListOpsDataModule(root=str(tmp_path / "data"), train_size=48, val_size=16, test_size=16, min_length=20,
                           max_length=200)
    dm.setup()
    batches = list(dm.train_dataloader())
    assert sorted(len(y) for _, y in batches) == [16, 32]
    for ids, labels in batches:
        assert ids.dtype == torch.long and len(ids) == len(labels) and bool((ids[:, 0] == CLS_ID).all())
        lengths = ids.ne(PAD_ID).sum(1)
        assert ids.shape[1] == lengths.max()  # padded to the longest of the batch, no more
