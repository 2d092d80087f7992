"""Sharded training: the FSDP1 strategy, FSDP2 per-block sharding, gradient clipping and full-weight loading.

FSDP1 (`trainer=fsdp`, Lightning's FSDPStrategy) wraps the LightningModule after `configure_model`;
FSDP2 (`trainer=fsdp2`, Lightning's ModelParallelStrategy) leaves the sharding to `configure_model`,
which calls `shard_blocks` here. Both run on CPU with gloo (tests/test_sharding.py) and GPUs with NCCL.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy as LightningFSDPStrategy
from torch import nn
from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, MixedPrecision, StateDictType
from torch.distributed.tensor import DTensor

from training.switches import CHECKPOINTED_BLOCKS

# The 16-bit compute dtype of each mixed trainer precision; the rest stays float32 (see below).
LOW_PRECISION = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class FSDPStrategy(LightningFSDPStrategy):
    """Lightning's FSDPStrategy (FSDP1) with float32 gradient reduction and buffers under mixed precision.

    Lightning's own policy for `bf16-mixed` is bf16 for parameters, reduction AND buffers: the audio front
    ends' mel banks and windows and the sinusoidal position tables would be rounded to 8 bits of mantissa
    (and a float32 @ bf16 matmul raises). Here parameters and compute follow the trainer precision, while
    gradients are summed across processes and buffers kept in float32. `32-true` stays all float32.
    An explicit `mixed_precision=` still wins.

    Also runs on CPU (gloo): Lightning refuses its own class off CUDA and passes no device to FSDP there,
    although torch's FSDP runs on CPU when told so; the tests train on 2 CPU processes with it.
    """

    def _setup_model(self, model: nn.Module) -> nn.Module:
        root = getattr(self, "_root", None)
        if root is not None and root.module is model:
            # A later stage (test after fit): Lightning hands back the bare module, whose blocks are still
            # wrapped, so it would skip the root unit, and the root's own parameters stay flat shards.
            return root
        if self.root_device.type != "cpu" or any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            self._root = super()._setup_model(model)
        else:  # Lightning's own wrapping, with the device named (FSDP otherwise looks for an accelerator)
            self._root = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                                  mixed_precision=self.mixed_precision_config,
                                                  sharding_strategy=self.sharding_strategy,
                                                  device_id=self.root_device, **self.kwargs)
        return self._root

    @property
    def mixed_precision_config(self) -> MixedPrecision | None:
        if self.mixed_precision:
            return self.mixed_precision
        low = LOW_PRECISION.get(str(self.precision_plugin.precision))
        if low is None:
            return super().mixed_precision_config
        return MixedPrecision(param_dtype=low, reduce_dtype=torch.float32, buffer_dtype=torch.float32)


def clip_gradients(module: L.LightningModule, optimizer: torch.optim.Optimizer, clip_val: float | None,
                   algorithm: str | None) -> None:
    """`configure_gradient_clipping` of every LightningModule here: norm clipping also under FSDP1.

    FSDP1's root holds shards: the global norm needs its `clip_grad_norm_` (a collective), which Lightning's
    FSDP precision plugin cannot reach and so refuses. FSDP2's gradients are DTensors, for which
    torch.nn.utils.clip_grad_norm_ (Lightning's default path) already computes the global norm.
    """
    root = module.trainer.strategy.model
    if clip_val and isinstance(root, FullyShardedDataParallel) and algorithm in (None, "norm"):
        root.clip_grad_norm_(clip_val)
        return
    module.clip_gradients(optimizer, gradient_clip_val=clip_val, gradient_clip_algorithm=algorithm)


def load_full_state_dict(trainer: L.Trainer, module: L.LightningModule, state_dict: dict[str, Any]) -> None:
    """Load a full (unsharded) state dict into `module` as the trainer's strategy holds it.

    Under FSDP1 the module's own parameters are flat shards of the root unit (a plain load_state_dict
    would be a size mismatch); under FSDP2 they are DTensors. Every process passes the full dict.
    """
    root = trainer.strategy.model
    if isinstance(root, FullyShardedDataParallel):
        with FullyShardedDataParallel.state_dict_type(root, StateDictType.FULL_STATE_DICT,
                                                      FullStateDictConfig(rank0_only=False)):
            root.load_state_dict(state_dict)
        return
    if any(isinstance(p, DTensor) for p in module.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(module, state_dict, options=StateDictOptions(full_state_dict=True))
        return
    module.load_state_dict(state_dict)


def shard_blocks(module: L.LightningModule, net: nn.Module) -> None:
    """FSDP2 (`configure_model` under ModelParallelStrategy): `fully_shard` each transformer block, then the
    net, over the data-parallel mesh.

    Parameters and compute in the trainer's 16-bit dtype under mixed precision, reduction in float32;
    FSDP2 never casts buffers, so position tables and mel banks stay float32. Does nothing outside
    ModelParallelStrategy and on a second call (Lightning calls configure_model for fit and for test).
    """
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mesh = getattr(module, "_device_mesh", None)  # set by ModelParallelStrategy before configure_model
    if mesh is None or isinstance(net, FSDPModule):
        return
    low = LOW_PRECISION.get(str(module.trainer.precision))
    policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32 if low else None)
    dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    for block in reversed(list(net.modules())):  # innermost first: a block inside a block is its own unit
        if isinstance(block, CHECKPOINTED_BLOCKS):
            fully_shard(block, mesh=dp_mesh, mp_policy=policy)
    fully_shard(net, mesh=dp_mesh, mp_policy=policy)
