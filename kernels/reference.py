"""Pure-PyTorch references for the fused kernels: the semantics the Triton kernels must reproduce."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class PseudoLabelOutput(NamedTuple):
    loss: Tensor
    """reduced loss (0-d for mean/sum, (N,) for none), in the accumulation dtype (fp32, or fp64 for fp64 input)"""
    mask: Tensor
    """(N,) per-row weight actually applied: 0/1 from the threshold, or the given `weight`"""
    pseudo: Tensor
    """(N,) int64 argmax of the weak logits (ties: the lowest class index)"""
    maxprob: Tensor
    """(N,) max of softmax(weak logits) at temperature 1, accumulation dtype"""


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp64 for fp64 inputs (exact tests), fp32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pseudo_label_ce_reference(
    logits_w: Tensor,
    logits_s: Tensor,
    threshold: Tensor | float,
    T: float = 1.0,
    *,
    soft: bool = False,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> PseudoLabelOutput:
    """Masked pseudo-label cross-entropy (FixMatch family).

    maxprob, pseudo = max/argmax of softmax(logits_w) (temperature 1: confidence is always read from the
    plain softmax, as in the reference trainers); mask = maxprob >= threshold (a scalar, or a (C,) tensor
    read at the pseudo-label's class); target = one-hot(pseudo), or softmax(logits_w / T) if `soft`;
    row loss = CE(logits_s, target) * mask (or * weight, if given). Gradient flows to logits_s only.
    """
    acc = acc_dtype(logits_s.dtype)
    lw = logits_w.detach().to(acc)
    ls = logits_s.to(acc)
    probs = lw.softmax(-1)
    maxprob, pseudo = probs.max(-1)
    thr = torch.as_tensor(threshold, dtype=acc, device=lw.device)
    thr = thr[pseudo] if thr.ndim == 1 else thr
    mask = weight.detach().to(acc) if weight is not None else (maxprob >= thr).to(acc)
    if soft:
        target = (lw / T).softmax(-1)
        row = -(target * ls.log_softmax(-1)).sum(-1)
    else:
        row = F.cross_entropy(ls, pseudo, reduction="none")
    row = row * mask
    if reduction == "mean":
        loss = row.mean()
    elif reduction == "sum":
        loss = row.sum()
    elif reduction == "none":
        loss = row
    else:
        raise ValueError(f"reduction={reduction!r}; use 'mean', 'sum' or 'none'")
    return PseudoLabelOutput(loss, mask, pseudo, maxprob)


def ema_update_reference(ema: list[Tensor], params: list[Tensor], decay: Tensor | float) -> None:
    """ema <- decay * ema + (1 - decay) * param, in place, for each pair."""
    for e, p in zip(ema, params):
        e.mul_(decay).add_(p.detach() * (1 - decay))
