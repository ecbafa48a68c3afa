"""Collectives: the ground floor's process-group helpers. Every function is the identity when not
distributed, so single-process code and the algorithms need no special case. Imports nothing of fastssl."""
from __future__ import annotations

import torch.distributed as dist
from torch import Tensor


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


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
