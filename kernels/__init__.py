"""Fused kernels and their single dispatch point (imported as `fastssl.kernels`).

`pseudo_label_ce` and `ema_update_` are what the algorithms and the trainer call. On CUDA tensors they run
the Triton kernels (registered with `torch.library.triton_op`, so `torch.compile(fullgraph=True)` traces
through them); on CPU tensors the pure-PyTorch reference (`kernels/reference.py`), which defines the
semantics. `impl="triton"` forces the kernels (on CPU that needs TRITON_INTERPRET=1, as in the tests).

Triton is imported lazily, by `load_triton()`: on the first Triton dispatch, or before `torch.compile` (the
Trainer calls it on CUDA, so Dynamo never traces an import). Importing this package costs no Triton, so
parsing options and `fastssl info` stay fast on machines where Triton is slow to import or absent.
"""
from __future__ import annotations

import importlib
import sys
import types

import torch
from torch import Tensor

from .reference import PseudoLabelOutput, acc_dtype, ema_update_reference, pseudo_label_ce_reference

__all__ = ["PseudoLabelOutput", "pseudo_label_ce", "ema_update_", "load_triton"]
IMPLS = ("auto", "triton", "reference")


def load_triton() -> types.ModuleType:
    """Imports the Triton kernels (registering the `torch.ops.fastssl` ops) once; returns the CE kernel
    module. Call it before `torch.compile` of a step that dispatches to Triton."""
    ce, ema = sys.modules.get(f"{__name__}.pseudo_label_ce"), sys.modules.get(f"{__name__}.ema")
    if ce is None or ema is None:  # only the first call imports: Dynamo cannot trace import_module
        importlib.import_module(".ema", __name__)
        ce = importlib.import_module(".pseudo_label_ce", __name__)
    return ce


class _Package(types.ModuleType):
    """Importing the submodule `pseudo_label_ce` makes the import system set the package attribute of the same
    name to the module; the dispatch function below keeps that name."""

    def __setattr__(self, name, value):
        if name == "pseudo_label_ce" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def _use_triton(t: Tensor, impl: str) -> bool:
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r}; use one of {IMPLS}")
    return impl == "triton" or (impl == "auto" and t.is_cuda)


def pseudo_label_ce(logits_w, logits_s, threshold, T=1.0, *, soft=False, weight=None, reduction="mean",
                    impl="auto") -> PseudoLabelOutput:
    """See `reference.pseudo_label_ce_reference` for the exact semantics (incl. NaN/inf and ties)."""
    if _use_triton(logits_s, impl):
        ce = load_triton()
        return PseudoLabelOutput(*ce.pseudo_label_ce_triton(logits_w, logits_s, threshold, T, soft=soft,
                                                            weight=weight, reduction=reduction))
    return pseudo_label_ce_reference(logits_w, logits_s, threshold, T, soft=soft, weight=weight, reduction=reduction)


def ema_update_(ema, params, decay, *, impl="auto") -> None:
    """ema <- decay*ema + (1-decay)*param in place; `ema`, `params`: lists of same-shape tensors.

    Triton path: one launch per pair, so pass flat buffers (EMATeacher does) to get one launch in all.
    `decay`: 0-d tensor on the tensors' device (no sync, no recompile) or a float.
    """
    if not ema:
        return
    if not _use_triton(ema[0], impl):
        ema_update_reference(ema, params, decay)
        return
    load_triton()
    if not isinstance(decay, Tensor):
        from ._launch import scalar

        decay = scalar(decay, acc_dtype(ema[0].dtype), ema[0].device)
    for e, p in zip(ema, params, strict=True):
        if e.is_contiguous() and p.is_contiguous() and e.shape == p.shape:
            torch.ops.fastssl.ema_update_(e, p.detach(), decay)
        else:  # a strided pair (not produced by EMATeacher): the reference handles any layout
            ema_update_reference([e], [p], decay)
