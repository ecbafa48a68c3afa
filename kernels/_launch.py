"""Kernel launching shared by the ops: `wrap_triton` (so torch.compile sees the kernels) plus the one case
the Triton interpreter cannot handle."""
from __future__ import annotations

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton
from triton.runtime.interpreter import InterpretedFunction


def launch(kernel, grid: tuple[int, ...], *args, **kwargs) -> None:
    """kernel[grid](*args, **kwargs) through `wrap_triton`.

    Under TRITON_INTERPRET=1 `wrap_triton` hands back the interpreted kernel itself, which would try to read
    fake tensors when torch.compile propagates shapes through the op. Then the launch is skipped: the caller
    already allocated the outputs, which is all shape propagation needs, and Dynamo-only compiles
    (backend="eager") call the op on real tensors at run time. AOT backends would bake the skipped launch
    into the graph, so they are refused here (on GPU the kernels are traced normally).
    """
    k = wrap_triton(kernel)
    if isinstance(k, InterpretedFunction) and any(is_fake(a) for a in args if isinstance(a, Tensor)):
        if torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FUNCTIONAL) is not None:
            raise RuntimeError("TRITON_INTERPRET=1: compile the Triton ops with backend='eager' only "
                               "(AOT backends need real Triton on a GPU)")
        return
    k[grid](*args, **kwargs)


_SCALARS: dict[tuple[float, torch.dtype, torch.device], Tensor] = {}


def scalar(value: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A 0-d device tensor holding a Python float. Eager: cached, so a float threshold costs no fill kernel
    per step (at 448x10 a launch is a sizeable share of the loss). Compiled: a constant of the graph."""
    if torch.compiler.is_compiling():
        return torch.full((), float(value), dtype=dtype, device=device)
    key = (float(value), dtype, torch.device(device))
    if key not in _SCALARS:
        if len(_SCALARS) >= 64:  # floats that change every step belong in tensors; stay bounded anyway
            _SCALARS.clear()
        _SCALARS[key] = torch.full((), float(value), dtype=dtype, device=device)
    return _SCALARS[key]
