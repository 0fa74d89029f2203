"""torchrun / DDP / FSDP set-up. Reads the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK); no home-made
process management: multi-GPU runs are started with ``torchrun --nproc-per-node N -m vfmtok.cli.main ...``."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def init_distributed(device: str | None = None) -> DistInfo:
    """Initialise the process group when launched by torchrun (NCCL on GPU, gloo on CPU); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def all_reduce_mean(t: Tensor) -> Tensor:
    """Average a tensor over ranks (returns the tensor itself when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def all_reduce_sum(t: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, info: DistInfo, strategy: str = "ddp") -> nn.Module:
    """``strategy``: ``"ddp"`` (DistributedDataParallel) or ``"fsdp"`` (FullyShardedDataParallel, for big decoders and
    GPTs). Returns the model unchanged in a single process."""
    if not info.distributed:
        return model
    if strategy == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(model, device_id=info.device if info.device.type == "cuda" else None,
                                        use_orig_params=True)
    raise ValueError(f"unknown distributed strategy {strategy!r}; expected 'ddp' or 'fsdp'")


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """A plain (unsharded, CPU-gatherable) state dict of a bare, DDP or FSDP model, with wrapper prefixes removed."""
    try:
        from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

        if isinstance(model, FullyShardedDataParallel):
            cfg = FullStateDictConfig(offload_to_cpu=True, rank0_only=False)
            with FullyShardedDataParallel.state_dict_type(model, StateDictType.FULL_STATE_DICT, cfg):
                state = model.state_dict()
            return {k.replace("_fsdp_wrapped_module.", ""): v for k, v in state.items()}
    except ImportError:  # pragma: no cover - torch without distributed
        pass
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return model.state_dict()


# ----------------------------------------------------------------------------------- FSDP-aware state (both trainers)
def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(model, FullyShardedDataParallel)


def fsdp_full_state(model: nn.Module) -> contextlib.AbstractContextManager:
    """FSDP context in which model and optimiser state dicts are full, unsharded and on CPU on every rank."""
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, FullyShardedDataParallel
    from torch.distributed.fsdp import StateDictType

    return FullyShardedDataParallel.state_dict_type(
        model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=True, rank0_only=False),
        FullOptimStateDictConfig(offload_to_cpu=True, rank0_only=False))


def clean_param_name(name: str) -> str:
    """A parameter name without the FSDP / torch.compile / DDP wrapper prefixes (the bare model's name)."""
    name = name.replace("_fsdp_wrapped_module.", "").replace("_orig_mod.", "")
    return name[len("module."):] if name.startswith("module.") else name


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser's full state dict (collective under FSDP)."""
    if is_fsdp(model):
        from torch.distributed.fsdp import FullyShardedDataParallel

        with fsdp_full_state(model):
            return FullyShardedDataParallel.optim_state_dict(model, optimizer)
    return optimizer.state_dict()


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full optimiser state dict written by :func:`optimizer_state` (collective under FSDP)."""
    if is_fsdp(model):
        from torch.distributed.fsdp import FullyShardedDataParallel

        with fsdp_full_state(model):
            state = FullyShardedDataParallel.optim_state_dict_to_load(model, optimizer, state)
    optimizer.load_state_dict(state)
