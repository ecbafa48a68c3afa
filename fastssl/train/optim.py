"""SGD with Nesterov momentum, weight decay on weights only, and FixMatch's cosine schedule."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from fastssl.config import OptimConfig


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """Two groups: conv/linear weights (decayed) and BatchNorm weights + all biases (not decayed).

    Every model in the registry keeps BN/bias parameters 1-D and weights ≥ 2-D (tested in test_models), so
    `ndim <= 1` is the rule: the same split as the reference's name-based `bias`/`bn` filter."""
    decay, no_decay = [], []
    for m in modules:
        for p in m.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(modules: Iterable[nn.Module], cfg: OptimConfig, device: torch.device) -> torch.optim.SGD:
    # fused=True on CUDA: one kernel for the whole update (with a float lr there is no host sync);
    # foreach on CPU, where fused SGD also exists but is no faster.
    fused = device.type == "cuda"
    return torch.optim.SGD(param_groups(modules, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov, fused=fused, foreach=not fused)


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """lr·cos(π·c·k/K) after an optional linear warm-up (FixMatch: c = 7/16, never reaching zero).

    Computed on the host from the Python step counter, so it costs no sync and no recompile."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * math.cos(math.pi * cfg.cosine_cycles * step / total)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
