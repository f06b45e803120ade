"""Several GPUs (or CPU processes) through torchrun: one process per device, DistributedDataParallel averages the
gradients, so every process holds the same weights after every step.

`torchrun --nproc_per_node N -m pfp_core pretrain ...` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; a plain `python -m pfp_core pretrain ...` is a world of one and starts no process group.
NCCL on CUDA, gloo on CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
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


def start(device_flag: str = "auto") -> Process:
    """Join the process group torchrun describes in the environment (nothing to join for a world of one)."""
    rank, world = launched_rank(), _env_int("WORLD_SIZE", 1)
    device = pick_device(device_flag, _env_int("LOCAL_RANK", 0))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Process(rank, world, device)


def stop(process: Process) -> None:
    if process.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: torch.nn.Module, process: Process) -> torch.nn.Module:
    """DDP for a world of several (it also broadcasts rank 0's weights once); the module itself otherwise.
    gradient_as_bucket_view: gradients live in DDP's buckets instead of in a second copy."""
    if process.world == 1:
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
