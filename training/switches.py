"""Training speed / memory switches shared by the LightningModules: torch.compile and activation checkpointing.

Both act on the plain network in place and leave its parameters and state_dict keys untouched, so a
checkpoint written with a switch on loads into a model built with it off, and back.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.layers import DecoderBlock, EncoderBlock
from models.spacetime import DividedSpaceTimeBlock

# The transformer blocks of every model of the zoo (JointSpaceTimeBlock is an EncoderBlock).
CHECKPOINTED_BLOCKS: tuple[type[nn.Module], ...] = (EncoderBlock, DecoderBlock, DividedSpaceTimeBlock)


def block_classes() -> set[type[nn.Module]]:
    """The transformer block classes, e.g. as FSDP's auto-wrap policy (configs/trainer/fsdp.yaml)."""
    return set(CHECKPOINTED_BLOCKS)


def _checkpointed_forward(block: nn.Module, *args: Any, **kwargs: Any) -> Any:
    forward = functools.partial(type(block).forward, block)
    if block.training and torch.is_grad_enabled():
        # Non-reentrant: works with keyword arguments, inputs that need no grad and torch.compile.
        # The RNG state is saved and restored, so dropout / drop-path masks repeat exactly on recompute.
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)  # eval, no_grad, cached decoding: nothing to save memory on


def enable_grad_checkpointing(net: nn.Module, blocks: tuple[type[nn.Module], ...] = CHECKPOINTED_BLOCKS) -> int:
    """Recompute every transformer block's activations in the backward pass instead of storing them.

    Only the input of each block is kept during the forward pass (memory ~ depth x one activation
    instead of depth x all of a block's intermediates), for about one extra forward pass of compute.
    The block's `forward` is replaced on the instance (a partial, so deepcopy / pickle follow the copy);
    the classes, parameters and state_dict keys stay as they are. Returns the number of blocks wrapped.
    """
    n = 0
    for module in net.modules():
        if isinstance(module, blocks) and "forward" not in module.__dict__:
            module.forward = functools.partial(_checkpointed_forward, module)  # type: ignore[method-assign]
            n += 1
    if n == 0:
        raise ValueError(f"grad_checkpointing: {type(net).__name__} has no block of type "
                         f"{', '.join(b.__name__ for b in blocks)} to checkpoint")
    return n


# Tests swap in "aot_eager" (same graph capture and autograd, no C++ code generation: seconds, not minutes).
COMPILE_BACKEND = os.environ.get("ZOO_COMPILE_BACKEND", "inductor")


def compile_net(net: nn.Module, backend: str | None = None, **options: Any) -> nn.Module:
    """`torch.compile` the network's forward in place (nn.Module.compile): `net(...)` runs the compiled
    graph, while the state_dict keys, the parameters and other methods (`net.greedy`, `net.encode`:
    variable-length decoding stays eager) are those of the plain module."""
    net.compile(backend=backend or COMPILE_BACKEND, **options)
    return net


def apply_switches(net: nn.Module, compile: bool, grad_checkpointing: bool) -> None:
    """The LightningModules' `compile` / `grad_checkpointing` options (checkpointing first: the compiled
    forward then traces the checkpointed blocks)."""
    if grad_checkpointing:
        enable_grad_checkpointing(net)
    if compile:
        compile_net(net)
