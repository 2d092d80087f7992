"""Which process of a multi-process launch this is, read from the launcher's environment variables:
the run-directory guard and the first files of a run are decided before Lightning's Trainer knows ranks.

Launchers and what they set in each process (docs/launching.md):
* Lightning's own launcher (`trainer.devices=N`): the command you start is local rank 0; it re-runs the script
  for local ranks 1..N-1 with LOCAL_RANK / NODE_RANK set. On node k > 0 you start it with NODE_RANK=k.
* torchrun: RANK, LOCAL_RANK, GROUP_RANK (the node) in every process, rank 0 included.
* SLURM `srun`: SLURM_PROCID (global rank), SLURM_LOCALID, SLURM_NODEID in every task. An interactive
  `salloc` shell also has SLURM_PROCID=0, and Lightning's launcher may run inside it: LOCAL_RANK then wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchRank:
    """Where a process sits: node index and rank on that node."""

    node: int
    local: int

    @property
    def tag(self) -> str:
        """Unique per process of a launch; names its log file (several nodes may share one run directory)."""
        return f"node{self.node}_rank{self.local}"


def worker_rank(environ: Mapping[str, str]) -> LaunchRank | None:
    """None for the process that launched the run (rank 0 of node 0, or a plain single process): the one
    that checks the run directory and writes its config. Any other process gets its LaunchRank."""
    def number(*names: str) -> int:
        for name in names:
            if environ.get(name, "").strip():
                return int(environ[name])
        return 0

    if "LOCAL_RANK" in environ or "RANK" in environ:  # Lightning's launcher or torchrun started this process
        node, local = number("NODE_RANK", "GROUP_RANK"), number("LOCAL_RANK")
        first = number("RANK") == 0 and (node, local) == (0, 0)
    elif "SLURM_PROCID" in environ:  # an srun task (or an salloc shell: SLURM_PROCID=0 only)
        node, local = number("SLURM_NODEID"), number("SLURM_LOCALID")
        first = number("SLURM_PROCID") == 0
    else:  # the main process of node k under Lightning's launcher (NODE_RANK=k), or a plain run
        node, local = number("NODE_RANK", "GROUP_RANK"), 0
        first = node == 0
    return None if first else LaunchRank(node, local)
