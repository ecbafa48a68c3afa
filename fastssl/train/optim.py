"""SGD with Nesterov momentum, weight decay on weights only, and FixMatch's cosine schedule."""
from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

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


def build_optimizer(modules: Iterable[nn.Module], cfg: OptimConfig, device: torch.device, *,
                    compiled: bool = False) -> torch.optim.SGD:
    """SGD whose groups share one 0-d fp32 device tensor as their learning rate (the step writes it in place),
    so the schedule costs no host sync and a compiled step never recompiles for it.

    Eager: the fused kernel (one per device and dtype), which reads a tensor lr on the device; the foreach
    path would call `.item()` on it. Compiled (`compiled=True`): the foreach path, which Dynamo traces (it
    skips fused optimizers) and multiplies by the tensor lr in the graph; inductor fuses it.

    The momentum buffers start as zeros rather than appearing at the first step: a compiled optimizer step
    then sees the same state structure every step (no recompile after step 0), and the first update is
    unchanged (buf = μ·0 + g = g exactly)."""
    lr = torch.tensor(cfg.lr, dtype=torch.float32, device=device)
    groups = [{**g, "lr": lr} for g in param_groups(modules, cfg.weight_decay)]
    opt = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=not compiled,
                          foreach=compiled)
    if cfg.momentum:
        for g in opt.param_groups:
            for p in g["params"]:
                opt.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return opt


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """lr·cos(π·c·k/K) after an optional linear warm-up (FixMatch: c = 7/16, never reaching zero), on the
    host: what the logs report. `lr_tensor` is the same schedule on the device, for the step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * math.cos(math.pi * cfg.cosine_cycles * step / total)


def lr_tensor(step: Tensor, total: int, cfg: OptimConfig) -> Tensor:
    """`lr_at` of the 0-d int64 device step, as a 0-d fp64 tensor: no host sync, no recompile per step."""
    k = step.double()
    lr = cfg.lr * torch.cos(math.pi * cfg.cosine_cycles * k / total)  # lr_at's order of operations
    if cfg.warmup_steps:
        lr = torch.where(k < cfg.warmup_steps, cfg.lr * (k + 1) / cfg.warmup_steps, lr)
    return lr


def unwrapped_step(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """`optimizer.step` without its wrappers, for a caller already under `torch.no_grad()`.

    The wrappers run the step hooks (none here) and set grad mode around the update, breaking the graph
    there on purpose so that AOTAutograd sees an inference graph; a caller traced under no_grad gets that
    without the breaks, so the optimizer joins the rest of the step in one graph. Same update, eager or
    compiled. Resolved once, here: Dynamo then traces a plain function."""
    return functools.partial(inspect.unwrap(type(optimizer).step), optimizer)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """`load_state_dict`, keeping the optimizer's own lr tensor (loading replaces each group's "lr" with the
    checkpoint's object, which the step would then no longer write)."""
    lr = optimizer.param_groups[0]["lr"]
    optimizer.load_state_dict(state)
    for g in optimizer.param_groups:
        g["lr"] = lr
