"""The data-parallel processes a run trains in: where this one sits (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK),
the sum over all of them, and their agreement to stop."""
import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class Processes:
    """Where this process sits among the data-parallel ones (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK)."""
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")


def start_processes(device: str) -> Processes:
    """Join the process group torchrun started: gloo on CPU, NCCL on GPU. One process needs no group."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: expected a machine with a CUDA GPU for 'cuda', got none (use --device cpu)")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    where = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        torch.cuda.set_device(where)
    if world_size == 1:
        return Processes(device=where)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), where)


def all_reduce_sum(x: torch.Tensor, procs: Processes) -> torch.Tensor:
    if procs.world_size > 1:
        x = x.clone()
        dist.all_reduce(x)
    return x


def stop_requested(requested, procs: Processes) -> bool:
    """Whether any process was asked to stop (Ctrl-C, SIGTERM): all of them agree, so that they stop after the same
    step and save one consistent checkpoint together."""
    if procs.world_size == 1:
        return requested.is_set()                      # no tensor, no device round trip on the one-process path
    flag = torch.tensor(float(requested.is_set()), device=procs.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
