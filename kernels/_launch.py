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
