"""Training under ``torchrun``: one process group, each rank a slice of every global batch.

``torchrun --nproc_per_node=K -m polyfocal compare ...`` starts K processes; each joins the
group that torchrun describes in its environment (gloo on CPU, nccl with CUDA), builds the
same model from the same seed, and trains on every K-th example of each global batch under
DistributedDataParallel (which averages the gradients). The loss's normaliser (the number
of positive locations, or of examples) is all-reduced, and GHM's histogram is all-reduced by
the loss itself, so K processes take the steps one process takes on the whole global batch.
Only rank 0 prints and writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._errors import InputValueError

__all__ = ["Group", "current", "join_from_environment", "leave", "require_single_process"]


@dataclass(frozen=True)
class Group:
    """This process's place in the run: rank, world size and the device it trains on."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, index: Tensor) -> Tensor:
        """This rank's examples of a global batch: every ``world``-th, from ``rank``."""
        return index[self.rank::self.world]

    def total(self, value: Tensor) -> Tensor:
        """The sum of ``value`` over the ranks (a new tensor; ``value`` itself when alone)."""
        if self.world == 1:
            return value
        value = value.detach().to(self.device, torch.float64).clone()
        dist.all_reduce(value)
        return value

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` on this rank's device, under DistributedDataParallel when there are 2+ ranks."""
        model = model.to(self.device)
        if self.world == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def current() -> Group:
    """The group this process is in (a group of one without ``torch.distributed``)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return Group()
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return Group(dist.get_rank(), dist.get_world_size(), device)


def join_from_environment() -> Group:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); otherwise a group of one."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return current()


def leave() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def require_single_process(command: str, instead: str) -> None:
    """Raise ``ValueError`` when started by torchrun with 2+ processes: ``command`` runs in one."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world != "1":
        raise InputValueError(f"`polyfocal {command}` runs in one process; got WORLD_SIZE={world} (torchrun). "
                              f"{instead}")
