"""Shared helpers for the algorithm tests: batches made of logits (the model is the identity, so a loss
can be checked against a per-sample loop on fixed logits), and a reference cross-entropy."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fastssl.batch import SSLBatch


def logits_batch(w: Tensor, s: Tensor, lb: Tensor, y_lb: Tensor, idx: Tensor | None = None,
                 lb_s: Tensor | None = None) -> SSLBatch:
    """An SSLBatch whose 'images' are logits: with `nn.Identity()` as the model, forward_cat returns them."""
    n = w.shape[0]
    idx = torch.arange(n) if idx is None else idx
    kw = {} if lb_s is None else {"x_lb_s": lb_s}
    return SSLBatch(lb, y_lb, w, s, idx, torch.zeros(n, dtype=torch.long), **kw)


def random_logits(n: int, c: int, seed: int, scale: float = 3.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g, dtype=torch.float64) * scale).requires_grad_()


def ce(row: Tensor, y: int) -> float:
    """−log softmax(row)[y], by hand (math on Python floats)."""
    vals = [float(v) for v in row.detach()]
    m = max(vals)
    lse = m + math.log(sum(math.exp(v - m) for v in vals))
    return lse - vals[y]


def softmax(row: Tensor, T: float = 1.0) -> list[float]:
    vals = [float(v) / T for v in row.detach()]
    m = max(vals)
    e = [math.exp(v - m) for v in vals]
    z = sum(e)
    return [x / z for x in e]


def soft_ce(row: Tensor, target: list[float]) -> float:
    """−Σ target · log softmax(row), by hand."""
    p = softmax(row)
    return -sum(t * math.log(q) for t, q in zip(target, p))


IDENTITY = nn.Identity()
