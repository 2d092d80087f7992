"""Make the old checkpoints that tests/test_old_checkpoints.py loads: one tiny run per model family.

Run it on commit c302640 only: the files stand for checkpoints that users trained before the
package layout changed, so that layout's code must make them; made by a later commit they would
test nothing. The script is newer than that commit, so copy it into a checkout of it:

    git worktree add /tmp/c302640 c302640
    mkdir -p /tmp/c302640/tests/data/old_checkpoints
    cp tests/data/old_checkpoints/make.py /tmp/c302640/tests/data/old_checkpoints/
    (cd /tmp/c302640 && OMP_NUM_THREADS=1 python tests/data/old_checkpoints/make.py)
    cp /tmp/c302640/tests/data/old_checkpoints/*.{ckpt,pt} tests/data/old_checkpoints/

For each family it trains two steps of a tiny network with train.py (separate process, as a user
would), copies the run's checkpoints/best.ckpt to <family>.ckpt, and saves <family>.pt:
{"input": ..., "output": ..., "kernel": "explicit"}, the network's output on a seeded input computed
now, with the explicit attention kernel on one thread so that the comparison can be bit for bit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from models.attention import fused_attn  # noqa: E402
from utils.build import build_module  # noqa: E402
from utils.checkpoint import load_checkpoint, run_config  # noqa: E402
from utils.export import load_network  # noqa: E402

KERNEL = "explicit"  # the fused kernel is free to change its reduction order between torch builds

TINY = ["trainer.limit_train_batches=2", "trainer.max_epochs=1", "+trainer.max_steps=2",
        "trainer.limit_val_batches=1", "test=false", "threads=1", "model.net.num_heads=2"]
# Per family: overrides that keep the checkpoint small (< 1 MB) and the data quick to build.
RUNS: dict[str, list[str]] = {
    "vit": ["model=vit", "model.net.dim=16", "model.net.depth=1",
            "model.net.stem_channels=[4,8,8]"],
    "audio": ["model=audio", "model.net.dim=16", "model.net.depth=1", "model.net.n_mels=16",
              "data.train_per_class=2", "data.val_per_class=1", "data.test_per_class=1",
              "data.batch_size=8"],
    "video": ["model=video", "model.net.dim=16", "model.net.depth=1",
              "model.net.stem_channels=[4,8,8]", "data.epoch_clips=16", "data.batch_size=4"],
    "translator": ["model=translator", "model.net.dim=16", "model.net.encoder_depth=1",
                   "model.net.decoder_depth=1", "data.num_pairs=300", "data.bpe_vocab_size=120",
                   "data.max_len=16", "data.batch_size=8", "data.eval_batch_size=8"],
    "sequence": ["model=sequence", "model.net.dim=16", "model.net.depth=1",
                 "model.net.attn_window=8", "data.train_size=32", "data.val_size=8",
                 "data.test_size=8", "data.min_length=20", "data.max_length=48",
                 "data.max_depth=3", "data.batch_size=8", "data.eval_batch_size=8"],
}


def train(family: str, work: Path) -> Path:
    run_dir = work / family
    args = [sys.executable, "train.py", *RUNS[family], *TINY, f"hydra.run.dir={run_dir}",
            f"paths.data_dir={work / 'datasets'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(args, cwd=ROOT, env=env, check=True, capture_output=True)
    return run_dir / "checkpoints" / "best.ckpt"


def network(ckpt_file: Path) -> torch.nn.Module:
    """The trained network: the export loader where it knows the family, else evaluate.py's."""
    try:
        return load_network(ckpt_file)[0]
    except ValueError:  # load_network refuses models.sequence.SequenceClassifier at this commit
        ckpt = load_checkpoint(ckpt_file)
        module = build_module(run_config(ckpt_file, ckpt))
        module.load_state_dict(ckpt["state_dict"])
        return module.net.eval()


def example(family: str, net: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    """A seeded input of the trained shape, with padding where the ids are padded."""
    torch.manual_seed(0)
    if family == "vit":
        return (torch.randn(2, 1, 28, 28),)
    if family == "audio":
        return (0.1 * torch.randn(2, 16000),)
    if family == "video":
        return (torch.randn(2, 1, 8, 32, 32),)
    if family == "translator":
        vocab = net.vocab_size  # the tokenizer's, below bpe_vocab_size
        src = torch.randint(4, vocab, (2, 10))
        src[1, 7:] = 0  # PAD_ID
        tgt_in = torch.randint(4, vocab, (2, 6))
        tgt_in[:, 0] = 2  # BOS_ID
        return src, tgt_in
    ids = torch.randint(1, 17, (2, 40))  # ListOps: 17 ids, 0 = padding
    ids[1, 30:] = 0
    return (ids,)


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for family in RUNS:
            ckpt_file = train(family, Path(tmp))
            shutil.copyfile(ckpt_file, HERE / f"{family}.ckpt")
            net = network(HERE / f"{family}.ckpt")
            inputs = example(family, net)
            with torch.no_grad(), fused_attn(KERNEL):
                output = net(*inputs)
            torch.save({"input": inputs, "output": output, "kernel": KERNEL}, HERE / f"{family}.pt")
            size = (HERE / f"{family}.ckpt").stat().st_size
            print(f"{family}: {size / 1024:.0f} KiB checkpoint, output {tuple(output.shape)}")


if __name__ == "__main__":
    main()
