"""Pure-PyTorch references for the fused kernels: the semantics the Triton kernels must reproduce."""
from __future__ import annotations

from typing import NamedTuple

import torch
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
    T: Tensor | float = 1.0,
    *,
    soft: bool = False,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> PseudoLabelOutput:
    """Masked pseudo-label cross-entropy (FixMatch family).

    pseudo = argmax of logits_w (ties: the lowest class index); maxprob = softmax(logits_w)[pseudo]
    (temperature 1: confidence is always read from the plain softmax, as in the reference trainers);
    mask = maxprob >= threshold (a scalar, or a (C,) tensor read at the pseudo-label's class), or `weight`
    if given (SoftMatch); target = one-hot(pseudo), or softmax(logits_w / T) if `soft` (T > 0, float or
    0-d tensor); row loss = CE(logits_s, target) * mask. Gradient flows to logits_s only.

    Non-finite inputs (the kernels match this exactly):
      - a weak row containing NaN or +inf, or all -inf, has no defined softmax: maxprob = NaN, so the
        threshold mask is 0; pseudo = the first NaN if any (torch.argmax convention), else the first +inf,
        else 0. -inf entries alone are fine (probability 0).
      - a row whose mask is 0 contributes exactly 0 to the loss and gradient, even if its CE is NaN/inf
        (the mask selects rows, as boolean indexing would; NaN*0 does not leak into the batch mean).
      - a selected row (mask != 0) with NaN/+inf strong logits gives a NaN loss (loud, not hidden);
        a strong logit of -inf at the target gives +inf.
      - soft targets: terms whose target is exactly 0 contribute 0 (0 * log 0 = 0).
    """
    acc = acc_dtype(logits_s.dtype)
    lw = logits_w.detach().to(acc)
    ls = logits_s.to(acc)
    pseudo = lw.argmax(-1)
    maxprob = lw.softmax(-1).gather(-1, pseudo[:, None]).squeeze(-1)
    thr = torch.as_tensor(threshold, dtype=acc, device=lw.device)
    thr = thr[pseudo] if thr.ndim == 1 else thr
    mask = weight.detach().to(acc) if weight is not None else (maxprob >= thr).to(acc)
    # masked-out rows are zeroed before the log-softmax so that NaN/inf there cannot reach the gradient
    logp = torch.where(mask[:, None] != 0, ls, 0.0).log_softmax(-1)
    if soft:
        target = (lw / T).softmax(-1)
        row = -torch.where(target == 0, 0.0, target * logp).sum(-1)
    else:
        row = -logp.gather(-1, pseudo[:, None]).squeeze(-1)
    row = torch.where(mask != 0, row * mask, 0.0)
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
    """ema <- decay * ema + (1 - decay) * param, in place, for each pair (accumulated in ema's dtype).

    Fully in place (addcmul with the 0-d weight): a `param * (1 - decay)` temporary the size of a flat
    23.4M-parameter buffer made this 3x slower than the per-tensor loop on CPU (fresh pages every call)."""
    w = 1 - decay
    for e, p in zip(ema, params):
        e.mul_(decay)
        if isinstance(w, Tensor):
            e.addcmul_(p.detach(), w)
        else:
            e.add_(p.detach(), alpha=w)
