"""Process-group helpers. Every function is the identity when not distributed, so single-process code
and the algorithms need no special case."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def all_gather_cat(t: Tensor) -> Tensor:
    """Concatenates `t` from every rank along dim 0, rank order. Fixed-size: every rank must pass the same
    shape (static batches guarantee it). Identity without a process group."""
    if not is_dist():
        return t
    out = t.new_empty((world_size() * t.shape[0], *t.shape[1:]))
    dist.all_gather_into_tensor(out, t.contiguous())
    return out


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum over ranks, out of place. Identity without a process group."""
    if not is_dist():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def init_from_env() -> tuple[int, int, torch.device]:
    """Initialises the process group when launched by torchrun (WORLD_SIZE > 1): NCCL with CUDA, gloo on CPU.
    Returns (rank, world_size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not is_dist():
        dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
    return rank(), world_size(), device
