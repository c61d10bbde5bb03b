"""Data-parallel training (DDP) with the same trainer, one process per device.

How a run is split: every optimizer step draws one *global* batch of `training.batch_size`
examples (indices, timesteps, noise and caption-dropout flags all come from generators seeded
identically on every rank). Rank r takes the r-th contiguous shard of that batch, computes the
mean loss of its shard, and DDP averages gradients over ranks, so N processes compute the same
update as one process with the same global batch (up to float summation order). Only rank 0
writes anything (run folder, metrics, checkpoints, samples); the others wait at barriers.

One machine, two processes (CPU: gloo backend; GPUs: nccl, one GPU per process):

    torchrun --standalone --nproc_per_node=2 -m pictor.cli.main train --config configs/shapes.yaml

Several machines (run on every node, node_rank 0..nnodes-1; the master address must be reachable
from all nodes and the run folder must be on a file system every node sees, because every rank
reads the checkpoint on `--resume`):

    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 \
        --master_addr=10.0.0.1 --master_port=29500 \
        -m pictor.cli.main train --config configs/shapes.yaml --resume latest

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; `init_distributed`
reads them. Without them the run is a single process and nothing here does any communication.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """"auto" -> cuda:<local_rank> when CUDA is available, else cpu; otherwise torch.device."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"training.device={spec!r} but CUDA is not available; use auto or cpu")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(device_spec: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment, or return a 1-process info."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(device=resolve_device(device_spec, 0))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = resolve_device(device_spec, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(info: DistInfo, values: torch.Tensor) -> torch.Tensor:
    """Sum a small tensor over ranks (returns it unchanged for one process)."""
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_object(info: DistInfo, obj: object) -> object:
    """Rank 0's `obj` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_slice(info: DistInfo, global_batch: int) -> slice:
    """The contiguous part of a global batch that rank `info.rank` computes."""
    if global_batch % info.world_size:
        raise ValueError(f"training.batch_size={global_batch} must be divisible by the number "
                         f"of processes ({info.world_size})")
    per_rank = global_batch // info.world_size
    return slice(info.rank * per_rank, (info.rank + 1) * per_rank)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
