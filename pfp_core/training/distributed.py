"""Several GPUs (or CPU processes) through torchrun: one process per device, DistributedDataParallel averages the
gradients, so every process holds the same weights after every step.

`torchrun --nproc_per_node N -m pfp_core pretrain ...` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; a plain `python -m pfp_core pretrain ...` is a world of one and starts no process group.
NCCL on CUDA, gloo on CPU.

For models that do not fit one GPU, `shard` (training's --fsdp) uses FSDP2 instead (fully_shard): each DiT block,
the memory encoder and the rest are sharded over the processes, so a GPU holds 1/N of the fp32 weights, gradients
and AdamW moments and gathers one block's weights at a time. Checkpoints stay one file: `full_state` gathers the
shards to rank 0, `distribute_like` cuts a full tensor read from that file back into this process's shard.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

DEVICES = ("auto", "cuda", "cpu")


@dataclass(frozen=True)
class Process:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and the progress bar."""
        return self.rank == 0


def pick_device(flag: str, local_rank: int) -> torch.device:
    """auto: this process's GPU when torch sees one, else the CPU."""
    if flag not in DEVICES:
        raise ValueError(f"device: '{flag}' is unknown; use one of {', '.join(DEVICES)}")
    if flag == "cpu" or (flag == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but this torch sees no GPU; install a CUDA build of torch or "
                         "pass --device cpu")
    return torch.device("cuda", local_rank)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, str(default))
    if not text.isdigit():
        raise ValueError(f"{name}: '{text}' is not a whole number; launch with torchrun, which sets it")
    return int(text)


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun)."""
    return _env_int("RANK", 0)


def launched_world() -> int:
    """How many processes torchrun started (1 without torchrun)."""
    return _env_int("WORLD_SIZE", 1)


def start(device_flag: str = "auto") -> Process:
    """Join the process group torchrun describes in the environment (nothing to join for a world of one)."""
    rank, world = launched_rank(), launched_world()
    device = pick_device(device_flag, _env_int("LOCAL_RANK", 0))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Process(rank, world, device)


def stop(process: Process) -> None:
    if process.world > 1 and dist.is_initialized():
        # every rank done with its last collective before any tears the group down: a gloo rank whose peer
        # closed first can abort on exit (seen under CPU load: "terminate called without an active exception")
        dist.barrier()
        dist.destroy_process_group()


def wrap(module: torch.nn.Module, process: Process) -> torch.nn.Module:
    """DDP for a world of several (it also broadcasts rank 0's weights once); the module itself otherwise.
    gradient_as_bucket_view: gradients live in DDP's buckets instead of in a second copy."""
    if process.world == 1 or is_sharded(module):
        return module
    device_ids = [process.device.index] if process.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, gradient_as_bucket_view=True)


def mean(value: float, process: Process) -> float:
    """The average of a number over all processes (the step's loss over every rank's batch)."""
    if process.world == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=process.device)
    dist.all_reduce(total)
    return total.item() / process.world


def is_sharded(module: torch.nn.Module) -> bool:
    return isinstance(module, FSDPModule)


def shard(models: torch.nn.Module, process: Process) -> torch.nn.Module:
    """FSDP2 in place: every DiT block and the memory encoder a unit of their own (gathered one at a time), the
    embeddings and the head in the root unit. The parameters move to this process's device as they are sharded;
    build the optimizer after this, over the sharded parameters."""
    mesh = init_device_mesh(process.device.type, (process.world,))
    units = [*models.dit.blocks]
    if models.encoder is not None and any(True for _ in models.encoder.parameters()):
        units.append(models.encoder)
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(models, mesh=mesh)
    return models


def full_state(tensors: dict[str, torch.Tensor], keep: bool) -> dict[str, torch.Tensor]:
    """Shards gathered into whole tensors on the CPU, one tensor at a time (every process must call it, in the
    same order); only the process with `keep` (rank 0) holds the result, the others get {}."""
    gathered = {}
    for name, value in tensors.items():
        whole = value.full_tensor() if isinstance(value, DTensor) else value
        if keep:
            gathered[name] = whole.detach().cpu()
    return gathered


def distribute_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A full tensor (read by every process from the same file) as this process's shard of `like`'s layout; `whole`
    unchanged when `like` is not sharded. No communication: each process cuts its own part."""
    if not isinstance(like, DTensor):
        return whole
    return distribute_tensor(whole.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a sharded tensor (the tensor itself otherwise)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite, on all processes (each checks its own shards)."""
    finite = all(bool(torch.isfinite(local(t)).all()) for t in tensors)
    if not (tensors and dist.is_initialized()):
        return finite
    flag = torch.tensor([float(finite)], device=local(tensors[0]).device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())
