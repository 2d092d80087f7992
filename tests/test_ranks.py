"""Which process launched a run (utils/ranks.py), for every launcher's environment, and what the run-directory
guard does with the others: no refusal, no .hydra/ of their own, one log file per process."""

from __future__ import annotations

from pathlib import Path

import pytest

from utils.ranks import LaunchRank, worker_rank

# (launcher, environment of one process, expected): the variables each launcher really sets (utils/ranks.py).
LAUNCHES = [
    ("plain single process", {}, None),
    ("Lightning launcher, main process of node 0 (set after launch)", {"NODE_RANK": "0", "LOCAL_RANK": "0",
                                                                       "WORLD_SIZE": "2"}, None),
    ("Lightning launcher, child on node 0", {"NODE_RANK": "0", "LOCAL_RANK": "1", "WORLD_SIZE": "2"},
     LaunchRank(0, 1)),
    ("Lightning launcher, main process of node 1 (before launch)", {"NODE_RANK": "1"}, LaunchRank(1, 0)),
    ("Lightning launcher, child on node 1", {"NODE_RANK": "1", "LOCAL_RANK": "3"}, LaunchRank(1, 3)),
    ("torchrun rank 0", {"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0", "WORLD_SIZE": "16"}, None),
    ("torchrun rank 3 on node 0", {"RANK": "3", "LOCAL_RANK": "3", "GROUP_RANK": "0"}, LaunchRank(0, 3)),
    ("torchrun rank 8, first on node 1", {"RANK": "8", "LOCAL_RANK": "0", "GROUP_RANK": "1"}, LaunchRank(1, 0)),
    ("torchrun node 1 before rendezvous (GROUP_RANK only)", {"GROUP_RANK": "1"}, LaunchRank(1, 0)),
    ("srun task 0", {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NTASKS": "16"}, None),
    ("srun task 5 on node 0", {"SLURM_PROCID": "5", "SLURM_LOCALID": "5", "SLURM_NODEID": "0"}, LaunchRank(0, 5)),
    ("srun task 9 on node 1", {"SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NODEID": "1"}, LaunchRank(1, 1)),
    ("salloc shell (interactive)", {"SLURM_PROCID": "0", "SLURM_JOB_ID": "77"}, None),
    ("Lightning launcher child inside salloc", {"SLURM_PROCID": "0", "NODE_RANK": "0", "LOCAL_RANK": "1"},
     LaunchRank(0, 1)),
]


@pytest.mark.parametrize(("environ", "expected"), [c[1:] for c in LAUNCHES], ids=[c[0] for c in LAUNCHES])
def test_only_rank_0_of_node_0_is_the_launching_process(environ: dict[str, str], expected: LaunchRank | None) -> None:
    assert worker_rank(environ) == expected


def test_every_process_of_a_two_node_launch_gets_its_own_log_name() -> None:
    torchrun = [{"RANK": str(8 * n + r), "LOCAL_RANK": str(r), "GROUP_RANK": str(n)} for n in (0, 1) for r in range(8)]
    srun = [{"SLURM_PROCID": str(8 * n + r), "SLURM_LOCALID": str(r), "SLURM_NODEID": str(n)}
            for n in (0, 1) for r in range(8)]
    for launch in (torchrun, srun):
        ranks = [worker_rank(env) for env in launch]
        assert ranks[0] is None and len({r.tag for r in ranks[1:]}) == 15


def _guarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]):
    from helpers.config import compose_config
    from utils.rundir import RunDirGuard

    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    cfg = compose_config("train", [f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    RunDirGuard().on_run_start(cfg)
    return cfg


@pytest.mark.parametrize("environ", [{"RANK": "9", "LOCAL_RANK": "1", "GROUP_RANK": "1"},
                                     {"SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NODEID": "1"}],
                         ids=["torchrun", "srun"])
def test_other_processes_write_no_config_and_their_own_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           environ: dict[str, str]) -> None:
    # rank 0 already started the run here: a worker must neither refuse the directory nor clean it
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    cfg = _guarded(tmp_path, monkeypatch, environ)
    assert cfg.hydra.output_subdir is None  # Hydra writes no .hydra/ for it
    assert cfg.hydra.job.name == "train_node1_rank1"  # the log file: train_node1_rank1.log
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_the_launching_process_keeps_the_config_and_the_other_processes_logs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # torchrun / srun start every process at once: a worker's log may exist before rank 0 checks the directory.
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_node0_rank1.log").write_text("started\n")
    (run / "train.log").write_text("an earlier launch that failed\n")
    cfg = _guarded(tmp_path, monkeypatch, {"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"})
    assert cfg.hydra.output_subdir == ".hydra" and "rank" not in cfg.hydra.job.name
    assert sorted(p.name for p in run.iterdir()) == ["train_node0_rank1.log"]


def test_gpu_ddp_preset_builds_an_nccl_ddp_strategy_and_num_nodes_is_a_key(tmp_path: Path) -> None:
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import DDPStrategy

    from helpers.config import compose_config

    cfg = compose_config("train", ["trainer=ddp_gpu", "trainer.num_nodes=2"], tmp_path)
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, DDPStrategy) and strategy._process_group_backend == "nccl"
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision) == ("gpu", -1, "bf16-mixed")
    assert cfg.trainer.num_nodes == 2 and compose_config("train", [], tmp_path).trainer.num_nodes == 1
