"""Fused EMA update as a Triton kernel: ema <- d*ema + (1-d)*param over one flat buffer per launch.

Memory traffic is the floor of 12 B/param for fp32 (read ema, read param, write ema); the decay is read
from a 0-d device tensor inside the kernel, so a warm-up schedule never recompiles and never syncs.
`fastssl.train.ema.EMATeacher` lays the parameters out in one flat buffer so that the whole teacher is
one launch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op

from ._launch import launch
from .reference import acc_dtype

BLOCK = 4096
"""elements per program: 16 KiB of fp32 per stream, enough in flight per SM to reach copy bandwidth"""


@triton.jit
def _ema_kernel(ema_ptr, p_ptr, decay_ptr, n, BLOCK: tl.constexpr, ACC: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    d = tl.load(decay_ptr).to(ACC)
    e = tl.load(ema_ptr + offs, mask=m, eviction_policy="evict_first").to(ACC)
    p = tl.load(p_ptr + offs, mask=m, eviction_policy="evict_first").to(ACC)
    # same operation order as the reference (d*e + (1-d)*p), not a lerp: bitwise-close to the eager loop
    tl.store(ema_ptr + offs, (d * e + (1.0 - d) * p).to(ema_ptr.dtype.element_ty), mask=m)


def ema_update_flat_(ema: Tensor, param: Tensor, decay: Tensor) -> None:
    """Launch the kernel on contiguous same-size tensors (any shape; treated as flat). `decay`: 0-d tensor.

    Callable directly on CPU tensors under TRITON_INTERPRET=1 (the tests do).
    """
    n = ema.numel()
    if param.numel() != n or not (ema.is_contiguous() and param.is_contiguous()):
        raise ValueError("ema_update_flat_: ema and param must be contiguous with the same number of elements")
    acc = tl.float64 if acc_dtype(ema.dtype) == torch.float64 else tl.float32
    launch(_ema_kernel, (triton.cdiv(n, BLOCK),), ema, param, decay, n, BLOCK=BLOCK, ACC=acc, num_warps=8)


@triton_op("fastssl::ema_update_", mutates_args={"ema"})
def _ema_op(ema: Tensor, param: Tensor, decay: Tensor) -> None:
    ema_update_flat_(ema, param, decay)
