"""Loaders under DDP without starting processes (data/distributed.py): each rank's sampler built with
num_replicas=2 and rank 0 / 1, checked against the one-process draw and against what Lightning does with it."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.trainer.states import RunningStage
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, TensorDataset

from data.distributed import EpochSubsetSampler, eval_sampler, loader_options
from data.images import ImageDataModule
from data.video import VideoDataModule


def _ranks(dataset, world: int, **kwargs) -> list[list[int]]:
    return [list(EpochSubsetSampler(dataset, num_replicas=world, rank=r, generator=torch.Generator().manual_seed(7),
                                    **kwargs)) for r in range(world)]


@pytest.mark.parametrize("num_samples", [16, 100, 130])  # a subset, the whole set, more than the set
def test_one_process_draws_exactly_what_random_sampler_draws(num_samples: int) -> None:
    data = TensorDataset(torch.arange(100))
    reference = list(RandomSampler(data, num_samples=num_samples, generator=torch.Generator().manual_seed(7)))
    assert _ranks(data, 1, num_samples=num_samples) == [reference]


def test_two_ranks_share_one_epoch_subset_without_overlap() -> None:
    data = TensorDataset(torch.arange(100))
    one = _ranks(data, 1, num_samples=32)[0]
    a, b = _ranks(data, 2, num_samples=32)
    assert len(a) == len(b) == 16 and not set(a) & set(b)
    assert sorted(a + b) == sorted(one)  # the same 32 clips a single process trains on, split in two
    assert a == one[0::2] and b == one[1::2]
    assert _ranks(data, 3, num_samples=32)[0].__len__() == 11  # 32 / 3 rounded up: equal shares


def test_lightning_keeps_the_epoch_sampler_under_ddp_and_replaces_a_random_sampler() -> None:
    trainer = L.Trainer(accelerator="cpu", strategy="ddp", devices=2, logger=False, enable_checkpointing=False)
    data = TensorDataset(torch.arange(100))
    ours = DataLoader(data, batch_size=4, sampler=EpochSubsetSampler(
        data, num_samples=32, num_replicas=2, rank=1, generator=torch.Generator().manual_seed(0)))
    assert trainer._data_connector._prepare_dataloader(ours, shuffle=True, mode=RunningStage.TRAINING) is ours
    plain = DataLoader(data, batch_size=4, sampler=RandomSampler(data, num_samples=32))
    replaced = trainer._data_connector._prepare_dataloader(plain, shuffle=True, mode=RunningStage.TRAINING)
    assert type(replaced.sampler) is DistributedSampler and len(replaced.sampler) == 50  # the whole split / 2


def test_video_epoch_clips_are_shared_among_ranks_and_reseeded_per_epoch() -> None:
    dm = VideoDataModule(epoch_clips=20, seed=3)
    dm.train_dataset = TensorDataset(torch.arange(60))
    epochs = []
    for epoch in (0, 1):
        shares = []
        for rank in (0, 1):
            dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, strategy=None)
            loader = dm.train_dataloader()
            loader.sampler.generator.manual_seed(1000 + epoch)  # as utils.faults.EpochSeed does, alike on all ranks
            shares.append(list(loader.sampler))
        assert len(shares[0]) == len(shares[1]) == 10 and not set(shares[0]) & set(shares[1])
        epochs.append(set(shares[0] + shares[1]))
    assert epochs[0] != epochs[1]  # a new subset each epoch


def test_eval_shares_count_each_sample_once() -> None:
    data = TensorDataset(torch.arange(5))
    shares = [list(eval_sampler(data, SimpleNamespace(world_size=2, global_rank=r))) for r in (0, 1)]
    assert shares == [[0, 2, 4], [1, 3]]  # Lightning's DistributedSampler would give [0, 2, 4], [1, 3, 0]
    assert eval_sampler(data, None) is None and eval_sampler(data, SimpleNamespace(world_size=1)) is None


def test_image_eval_loader_under_ddp_is_kept_by_lightning() -> None:
    trainer = L.Trainer(accelerator="cpu", strategy="ddp", devices=2, logger=False, enable_checkpointing=False)
    dm = ImageDataModule(dataset="mnist")
    dm.val_dataset = TensorDataset(torch.zeros(5, 1, 28, 28, dtype=torch.uint8), torch.arange(5))
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1, strategy=None)
    loader = dm.val_dataloader()
    assert trainer._data_connector._prepare_dataloader(loader, shuffle=False, mode=RunningStage.VALIDATING) is loader
    assert [len(b[1]) for b in loader] == [2]  # samples 1 and 3, no repeat of sample 1


def test_pinned_memory_only_for_a_gpu_and_workers_kept_alive() -> None:
    cuda = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    cpu = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    assert loader_options(4, cuda) == {"num_workers": 4, "persistent_workers": True, "pin_memory": True}
    assert loader_options(0, cpu) == {"num_workers": 0, "persistent_workers": False, "pin_memory": False}
    assert loader_options(0, None)["pin_memory"] is False


def _epoch_seed_draws(rank: int, epoch: int = 3) -> tuple[float, list[int], float]:
    """(global RNG draw, sampler draw, augmentation draw) of DDP process `rank` at `epoch` under EpochSeed."""
    from data.audio import AudioBatch
    from utils.faults import EpochSeed

    data = TensorDataset(torch.arange(50))
    loader = DataLoader(data, batch_size=5, collate_fn=AudioBatch(2, torch.Generator()),
                        sampler=EpochSubsetSampler(data, num_samples=10, num_replicas=2, rank=rank,
                                                   generator=torch.Generator()),
                        generator=torch.Generator())  # as EpochSeed's loader has: generators 0, 1, 2
    callback = EpochSeed(seed=42)
    callback.trainer = SimpleNamespace(global_rank=rank)
    callback._seed_loader(loader, epoch)
    callback.on_train_epoch_start(SimpleNamespace(global_rank=rank, current_epoch=epoch), None)
    return torch.rand(1).item(), list(loader.sampler), torch.rand(1, generator=loader.collate_fn.generator).item()


def test_ranks_draw_their_own_augmentation_but_share_the_epoch_subset() -> None:
    import numpy as np

    def one_process_seed(*keys: int) -> int:  # the seed a 1-process run has always used, written out
        return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))

    (rand0, share0, aug0), (rand1, share1, aug1) = _epoch_seed_draws(0), _epoch_seed_draws(1)
    # rank 0 is exactly the single-process run: global RNG from (seed, epoch), augmentation from (seed, epoch, i)
    torch.manual_seed(one_process_seed(42, 3) % 2**31)
    assert rand0 == torch.rand(1).item()
    assert aug0 == torch.rand(1, generator=torch.Generator().manual_seed(one_process_seed(42, 3, 2))).item()
    assert rand1 != rand0 and aug1 != aug0  # dropout / augmentation differ on rank 1
    assert len(share0) == len(share1) == 5 and not set(share0) & set(share1)  # one subset, split: same draw
    assert _epoch_seed_draws(1) == (rand1, share1, aug1)  # and each rank is reproducible
