"""Real 2-process DDP on CPU (gloo) through the command line (a real subprocess, which Lightning re-launches),
against one process with the same global batch (train.py run in this process).

Why the two runs see the same data and compute the same thing:
* training batches in a fixed order (data.shuffle=false): Lightning would give DDP a shuffling
  DistributedSampler (another permutation than the single process's seeded RandomSampler), so the image
  data module then hands it a non-shuffling one: rank r takes samples r, r+2, r+4, ... and step k of ranks
  0 and 1 together holds exactly samples 32k .. 32k+31, the single process's k-th batch of 32;
* no augmentation (the random affine draws from each process's own RNG);
* the patch stem (model.net.stem=patch): the default conv stem has BatchNorm, whose batch statistics
  would be per process (16 images, not 32) and cannot be synced on CPU (SyncBatchNorm is GPU-only).
Each process averages its loss over 16 samples and DDP averages the gradients: the gradient of the mean
over all 32, on which gradient clipping and AdamW then act. Validation and test sets (500 samples,
divisible by 2: no padded duplicates) are dealt the same way, and epoch metrics are synced (sync_dist /
torchmetrics), so they are means over the same samples too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from helpers.cli import run, run_cli
from utils.checkpoint import load_checkpoint

TINY = ["threads=1", "model.net.stem=patch", "model.net.depth=1", "model.net.dim=32", "trainer.max_epochs=2", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "trainer.log_every_n_steps=1",
        "data.augment=false", "data.shuffle=false",
        # the final weights, whatever val/acc did (Lightning 2.6 refreshes last.ckpt only with a new best)
        "keep_epoch_checkpoints=1"]


def test_ddp_two_processes_equal_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    ddp_dir, one_dir = tmp_path / "ddp", tmp_path / "single"
    ddp = run_cli("train.py", *TINY, "trainer=ddp", "data.batch_size=16", f"hydra.run.dir={ddp_dir}")
    run("train.py", *TINY, "data.batch_size=32", f"hydra.run.dir={one_dir}")

    # Two processes ran (the child logs under its own job name) and wrote into ONE run directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]
    assert (ddp_dir / "train_node0_rank1.log").is_file()
    # Rank-0-only writing: the launch config once (children get hydra.output_subdir=null), metrics.json
    # once (the child's train() skips it), rank 0's CSV log only (as many rows as the single run's),
    # two checkpoints that load.
    assert [p.relative_to(ddp_dir).as_posix() for p in ddp_dir.rglob("config.yaml")] == [".hydra/config.yaml"]
    assert (ddp.stdout + ddp.stderr).count("Metrics written to") == 1
    assert sorted(p.name for p in (ddp_dir / "checkpoints").iterdir()) == ["best.ckpt", "epoch001.ckpt", "last.ckpt"]
    csv_ddp, csv_one = ((d / "csv" / "metrics.csv").read_text().splitlines() for d in (ddp_dir, one_dir))
    assert len(csv_ddp) == len(csv_one) and csv_ddp[0] == csv_one[0]

    a = load_checkpoint(ddp_dir / "checkpoints" / "epoch001.ckpt")
    b = load_checkpoint(one_dir / "checkpoints" / "epoch001.ckpt")
    assert a["global_step"] == b["global_step"] == 8  # 2 epochs x 4 steps of the same global batch
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, w in b["state_dict"].items():  # AdamW moves weights by ~1e-2 in 8 steps at lr 2e-3
        torch.testing.assert_close(a["state_dict"][name], w, rtol=1e-4, atol=1e-5, msg=name)

    ma = json.loads((ddp_dir / "metrics.json").read_text())
    mb = json.loads((one_dir / "metrics.json").read_text())
    for key in ("train/loss_epoch", "val/loss", "val/acc", "test/loss", "test/acc"):
        assert abs(ma[key] - mb[key]) < 1e-4, (key, ma[key], mb[key])
    # and training did move: the two epochs' mean losses differ (the comparison is not of untouched weights)
    head = csv_one[0].split(",")
    losses = [float(r.split(",")[head.index("train/loss_epoch")]) for r in csv_one[1:]
              if r.split(",")[head.index("train/loss_epoch")]]
    assert len(losses) == 2 and abs(losses[0] - losses[1]) > 1e-3, losses


def test_translator_under_ddp_scores_the_whole_test_set(tmp_path: Path) -> None:
    """The translator's bucketing batch sampler takes Lightning's DistributedSampler: each process trains
    on its share, and the test BLEU (a corpus score) is computed over the outputs of both processes.
    Evaluating the same checkpoint in one process must give the same corpus scores."""
    import math

    data_dir = f"paths.data_dir={tmp_path / 'datasets'}"
    tiny = ["model=translator", "threads=1", "data.num_pairs=1500", "data.bpe_vocab_size=200", "model.net.dim=32",
            "model.net.encoder_depth=1", "model.net.decoder_depth=1", "model.max_new_tokens=12", "model.beam_size=1",
            "trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1", data_dir]
    ddp_dir = tmp_path / "ddp"
    run_cli("train.py", *tiny, "trainer=ddp", f"hydra.run.dir={ddp_dir}")
    run("evaluate.py", f"ckpt_path={ddp_dir}", data_dir, f"hydra.run.dir={tmp_path / 'ev'}")  # one process
    trained = json.loads((ddp_dir / "metrics.json").read_text())
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    from data.text import TranslationDataModule

    n_test = len(TranslationDataModule(root=str(tmp_path / "datasets"), num_pairs=1500).splits["test"])
    assert trained["test/sentences"] == evaluated["test/sentences"] == n_test > 20  # both shares, once each
    # The two runs batch (so pad, so round) the sentences differently; on some CPU a last-bit difference
    # could flip one greedy token of this barely trained model: allow about one token's worth.
    for key, tol in (("test/bleu", 1.0), ("test/chrf", 1.0), ("test/exact", 100 / n_test)):
        assert math.isclose(trained[key], evaluated[key], abs_tol=tol), (key, trained[key], evaluated[key])
    assert trained["test/chrf"] > 0  # a score over real output, not an empty corpus


def test_ddp_test_accuracy_counts_each_image_once(tmp_path: Path) -> None:
    """500 test images on 3 processes: Lightning's DistributedSampler would score 501 (one repeat); the data
    module's unrepeated shares (167, 167, 166) score each image once, so the DDP test metrics equal one
    process evaluating the same checkpoint."""
    ddp_dir = tmp_path / "ddp"
    run_cli("train.py", *TINY, "trainer=ddp", "trainer.devices=3", "trainer.max_epochs=1", "data.batch_size=16",
            "trainer.limit_test_batches=1.0", f"hydra.run.dir={ddp_dir}")
    run("evaluate.py", f"ckpt_path={ddp_dir}", "threads=1", f"hydra.run.dir={tmp_path / 'ev'}")
    trained = json.loads((ddp_dir / "metrics.json").read_text())
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert abs(trained["test/acc"] - evaluated["test/acc"]) < 1e-6, (trained["test/acc"], evaluated["test/acc"])
    assert abs(trained["test/loss"] - evaluated["test/loss"]) < 1e-5
