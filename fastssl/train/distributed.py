"""Process-group start-up for the trainer (torchrun's environment → rank, world size, device)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from fastssl.collectives import is_dist, world_size


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
    return (dist.get_rank() if is_dist() else 0), world_size(), device
