"""Fused pseudo-label cross-entropy (FixMatch / UDA / SoftMatch unlabeled loss) as Triton kernels.

One program handles a (BLOCK_N, BLOCK_C) tile: BLOCK_N whole rows, BLOCK_C = next_pow2(C). The forward
reads each weak and strong row once and writes per row: mask, pseudo, maxprob, the masked row loss, and
two log-normalizers for the backward (strong logsumexp; weak logsumexp at temperature T for soft targets),
plus one partial sum per program. At FixMatch's 448x10 the whole batch is one program, so the reduced loss
comes out of the single launch (a view of the partial, no second kernel). The backward reads the strong
row (and, for soft targets only, the weak row) and the saved per-row statistics: it does no reduction over
the weak row, i.e. it never recomputes the weak softmax's max/argmax/normalizer.

Semantics are those of `reference.pseudo_label_ce_reference` (see its docstring for NaN/inf and ties).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op

from ._launch import launch, scalar as _scalar
from .reference import acc_dtype

MAX_C = 16384
"""largest class count handled in one tile (a row lives in registers); more needs a looped kernel"""
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


@triton.jit
def _pl_ce_fwd_kernel(
    w_ptr, s_ptr, thr_ptr, temp_ptr, weight_ptr,
    row_ptr, part_ptr, mask_ptr, pseudo_ptr, maxprob_ptr, lse_s_ptr, lse_t_ptr,
    N, C, stride_w, stride_s,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
    SOFT: tl.constexpr, HAS_WEIGHT: tl.constexpr, PER_CLASS: tl.constexpr, MEAN: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_C)
    rmask = rows < N
    cmask = cols < C
    m2 = rmask[:, None] & cmask[None, :]
    rows64 = rows.to(tl.int64)

    # weak row: max/argmax ignoring NaN (NaN handled explicitly so GPU and interpreter agree)
    w = tl.load(w_ptr + rows64[:, None] * stride_w + cols[None, :], mask=m2, other=float("-inf")).to(ACC)
    w_nan = w != w
    w_nn = tl.where(w_nan, float("-inf"), w)
    mw = tl.max(w_nn, axis=1)
    has_nan = tl.max(w_nan.to(tl.int32), axis=1) > 0
    # pseudo = first NaN if any (torch.argmax convention), else the lowest index attaining the max
    cand = tl.where(has_nan[:, None], w_nan, w_nn == mw[:, None]) & cmask[None, :]
    pseudo = tl.min(tl.where(cand, cols[None, :], BLOCK_C), axis=1)
    # +inf (inf - inf), all -inf (-inf + inf) and NaN rows all give a NaN normalizer -> maxprob NaN, mask 0
    e = tl.where(m2, tl.exp(w - mw[:, None]), 0.0)
    sw = tl.sum(e, axis=1)
    maxprob = 1.0 / sw

    if PER_CLASS:
        thr = tl.load(thr_ptr + pseudo, mask=rmask, other=0.0).to(ACC)
    else:
        thr = tl.load(thr_ptr).to(ACC)
    if HAS_WEIGHT:
        mask = tl.load(weight_ptr + rows64, mask=rmask, other=0.0).to(ACC)
    else:
        mask = tl.where(maxprob >= thr, 1.0, 0.0).to(ACC)

    # strong row: logsumexp (NaN entries excluded from the max, then they poison the sum as they should)
    s = tl.load(s_ptr + rows64[:, None] * stride_s + cols[None, :], mask=m2, other=float("-inf")).to(ACC)
    ms = tl.max(tl.where(s != s, float("-inf"), s), axis=1)
    es = tl.where(m2, tl.exp(s - ms[:, None]), 0.0)
    lse_s = ms + tl.log(tl.sum(es, axis=1))

    if SOFT:
        temp = tl.load(temp_ptr).to(ACC)
        et = tl.where(m2, tl.exp((w - mw[:, None]) / temp), 0.0)
        st = tl.sum(et, axis=1)
        lse_t = mw / temp + tl.log(st)
        t = et / st[:, None]
        # terms with target exactly 0 contribute 0 even where the strong logit is -inf (x*log y, x=0)
        ce = -tl.sum(tl.where(t == 0.0, 0.0, t * (s - lse_s[:, None])), axis=1)
        tl.store(lse_t_ptr + rows64, lse_t, mask=rmask)
    else:
        s_t = tl.sum(tl.where(cols[None, :] == pseudo[:, None], s, 0.0), axis=1)
        ce = lse_s - s_t

    # a row with mask 0 contributes exactly 0 (not NaN*0): the mask selects, as boolean indexing would
    row = tl.where(rmask & (mask != 0.0), ce * mask, 0.0)
    part = tl.sum(row, axis=0)
    if MEAN:
        part = part / N
    tl.store(part_ptr + pid, part)
    tl.store(row_ptr + rows64, row, mask=rmask)
    tl.store(mask_ptr + rows64, mask, mask=rmask)
    tl.store(pseudo_ptr + rows64, pseudo.to(tl.int64), mask=rmask)
    tl.store(maxprob_ptr + rows64, maxprob, mask=rmask)
    tl.store(lse_s_ptr + rows64, lse_s, mask=rmask)


@triton.jit
def _pl_ce_bwd_kernel(
    gout_ptr, w_ptr, s_ptr, temp_ptr, mask_ptr, pseudo_ptr, lse_s_ptr, lse_t_ptr, ds_ptr,
    N, C, stride_w, stride_s, stride_ds,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
    SOFT: tl.constexpr, REDUCTION: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_C)
    rmask = rows < N
    cmask = cols < C
    m2 = rmask[:, None] & cmask[None, :]
    rows64 = rows.to(tl.int64)

    if REDUCTION == 0:
        g = tl.load(gout_ptr + rows64, mask=rmask, other=0.0).to(ACC)
    else:
        g = tl.load(gout_ptr).to(ACC)
        if REDUCTION == 1:
            g = g / N
    mask = tl.load(mask_ptr + rows64, mask=rmask, other=0.0).to(ACC)
    lse_s = tl.load(lse_s_ptr + rows64, mask=rmask, other=0.0).to(ACC)
    s = tl.load(s_ptr + rows64[:, None] * stride_s + cols[None, :], mask=m2, other=float("-inf")).to(ACC)
    p = tl.exp(s - lse_s[:, None])
    if SOFT:
        temp = tl.load(temp_ptr).to(ACC)
        lse_t = tl.load(lse_t_ptr + rows64, mask=rmask, other=0.0).to(ACC)
        w = tl.load(w_ptr + rows64[:, None] * stride_w + cols[None, :], mask=m2, other=float("-inf")).to(ACC)
        t = tl.where(m2, tl.exp(w / temp - lse_t[:, None]), 0.0)
    else:
        pseudo = tl.load(pseudo_ptr + rows64, mask=rmask, other=0)
        t = tl.where(cols[None, :] == pseudo[:, None], 1.0, 0.0).to(ACC)
    ds = tl.where((mask != 0.0)[:, None], (g * mask)[:, None] * (p - t), 0.0)
    tl.store(ds_ptr + rows64[:, None] * stride_ds + cols[None, :], ds.to(ds_ptr.dtype.element_ty), mask=m2)


def _tile(N: int, C: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_C, num_warps): whole rows per tile, up to 8192 elements per program, so that
    FixMatch's 448x10 (and anything up to 8192 logits) is a single program and a single launch."""
    if C > MAX_C:
        raise ValueError(f"pseudo_label_ce: C={C} classes > {MAX_C} (one row per tile); "
                         "pass impl='reference' or add a looped kernel")
    block_c = max(16, triton.next_power_of_2(C))
    block_n = max(1, min(triton.next_power_of_2(N), 8192 // block_c))
    # 16 elements per thread per tile at 16 warps. Compiled for sm_90a/sm_80 (tests/test_kernels_cubin.py):
    # hard, per-class and weighted targets in fp32/bf16/fp16 stay in registers (90-114 of the 128 a 512-thread
    # program may hold); soft targets (UDA) spill 128-136 B/thread on sm_90a at 448x10, fp64 more. Halving the
    # tile removes the spill but makes 448x10 two programs plus a reduction launch; a launch costs more than an
    # L1-resident spill in this launch-bound loss, so the single program stays (to be timed on a GPU).
    return block_n, block_c, max(4, min(16, block_n * block_c // 512))


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if acc_dtype(dtype) == torch.float64 else tl.float32


def pseudo_label_ce_fwd(
    logits_w: Tensor, logits_s: Tensor, threshold: Tensor, temperature: Tensor,
    weight: Tensor | None, soft: bool, reduction: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Launch the forward. threshold: 0-d or (C,) tensor; temperature: 0-d tensor (read only if soft).

    Returns (loss, mask, pseudo, maxprob, lse_s, lse_t); loss is 0-d (mean/sum) or (N,) (none); lse_t is
    (N,) for soft targets and an unused (1,) tensor otherwise.
    Callable directly on CPU tensors under TRITON_INTERPRET=1 (the tests do).
    """
    N, C = logits_s.shape
    acc = acc_dtype(logits_s.dtype)
    dev = logits_s.device
    logits_w = logits_w if logits_w.stride(-1) == 1 else logits_w.contiguous()
    logits_s = logits_s if logits_s.stride(-1) == 1 else logits_s.contiguous()
    block_n, block_c, warps = _tile(N, C)
    grid = triton.cdiv(N, block_n)
    row = torch.empty(N, dtype=acc, device=dev)
    part = torch.empty(grid, dtype=acc, device=dev)
    mask = torch.empty(N, dtype=acc, device=dev)
    pseudo = torch.empty(N, dtype=torch.int64, device=dev)
    maxprob = torch.empty(N, dtype=acc, device=dev)
    lse_s = torch.empty(N, dtype=acc, device=dev)
    # Every pointer argument is its own tensor, even the ones a specialization never touches (weight without
    # HAS_WEIGHT, lse_t without SOFT): inductor decides what a kernel mutates per argument, and one tensor
    # passed as a read argument and a written one (or as two written ones) could be mis-functionalized.
    lse_t = torch.empty(N if soft else 1, dtype=acc, device=dev)  # 1 unused element: no 0-size pointer
    launch(
        _pl_ce_fwd_kernel, (grid,),
        logits_w, logits_s, threshold, temperature,
        weight if weight is not None else torch.empty(1, dtype=acc, device=dev),
        row, part, mask, pseudo, maxprob, lse_s, lse_t,
        N, C, logits_w.stride(0), logits_s.stride(0),
        BLOCK_N=block_n, BLOCK_C=block_c, ACC=_tl_acc(logits_s.dtype),
        SOFT=soft, HAS_WEIGHT=weight is not None, PER_CLASS=threshold.ndim == 1, MEAN=reduction == 1,
        num_warps=warps,
    )
    if reduction == 0:
        loss = row
    else:  # one program (the launch-bound FixMatch case): the partial is the loss, no second kernel
        loss = part.view(()) if grid == 1 else part.sum()
    return loss, mask, pseudo, maxprob, lse_s, lse_t


def pseudo_label_ce_bwd(
    grad_loss: Tensor, logits_w: Tensor, logits_s: Tensor, temperature: Tensor, mask: Tensor,
    pseudo: Tensor, lse_s: Tensor, lse_t: Tensor, soft: bool, reduction: int,
) -> Tensor:
    """Launch the backward: d loss / d logits_s, in logits_s's dtype."""
    N, C = logits_s.shape
    logits_w = logits_w if logits_w.stride(-1) == 1 else logits_w.contiguous()
    logits_s = logits_s if logits_s.stride(-1) == 1 else logits_s.contiguous()
    grad_loss = grad_loss.contiguous()  # 'none': an expanded (stride-0) grad from a later .sum()
    block_n, block_c, warps = _tile(N, C)
    ds = torch.empty((N, C), dtype=logits_s.dtype, device=logits_s.device)
    launch(
        _pl_ce_bwd_kernel, (triton.cdiv(N, block_n),),
        grad_loss, logits_w, logits_s, temperature, mask, pseudo, lse_s, lse_t, ds,
        N, C, logits_w.stride(0), logits_s.stride(0), ds.stride(0),
        BLOCK_N=block_n, BLOCK_C=block_c, ACC=_tl_acc(logits_s.dtype), SOFT=soft, REDUCTION=reduction,
        num_warps=warps,
    )
    return ds


@triton_op("fastssl::pseudo_label_ce_fwd", mutates_args=())
def _fwd_op(
    logits_w: Tensor, logits_s: Tensor, threshold: Tensor, temperature: Tensor,
    weight: Tensor | None, soft: bool, reduction: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return pseudo_label_ce_fwd(logits_w, logits_s, threshold, temperature, weight, soft, reduction)


@triton_op("fastssl::pseudo_label_ce_bwd", mutates_args=())
def _bwd_op(
    grad_loss: Tensor, logits_w: Tensor, logits_s: Tensor, temperature: Tensor, mask: Tensor,
    pseudo: Tensor, lse_s: Tensor, lse_t: Tensor, soft: bool, reduction: int,
) -> Tensor:
    return pseudo_label_ce_bwd(grad_loss, logits_w, logits_s, temperature, mask, pseudo, lse_s, lse_t,
                               soft, reduction)


def _setup_context(ctx, inputs, output):
    logits_w, logits_s, threshold, temperature, weight, soft, reduction = inputs
    _, mask, pseudo, _, lse_s, lse_t = output
    # The weak logits are read back only for soft targets, but saved always so the backward gets a tensor of
    # its own for every argument; the step's weak and strong logits are views of one output, so saving them
    # keeps nothing alive that logits_s does not.
    ctx.save_for_backward(logits_w, logits_s, temperature, mask, pseudo, lse_s, lse_t)
    ctx.soft, ctx.reduction = soft, reduction


def _backward(ctx, grad_loss, *_unused_grads):
    logits_w, logits_s, temperature, mask, pseudo, lse_s, lse_t = ctx.saved_tensors
    ds = torch.ops.fastssl.pseudo_label_ce_bwd(grad_loss, logits_w, logits_s, temperature, mask, pseudo,
                                               lse_s, lse_t, ctx.soft, ctx.reduction)
    return None, ds, None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def pseudo_label_ce_triton(logits_w, logits_s, threshold, T=1.0, *, soft=False, weight=None, reduction="mean"):
    """The Triton path of `fastssl.kernels.pseudo_label_ce` (any device Triton can run on)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}; use 'mean', 'sum' or 'none'")
    if logits_w.shape != logits_s.shape or logits_s.ndim != 2:
        raise ValueError(f"logits_w {tuple(logits_w.shape)} and logits_s {tuple(logits_s.shape)} must both be (N, C)")
    acc = acc_dtype(logits_s.dtype)
    dev = logits_s.device
    if isinstance(threshold, Tensor) and threshold.ndim == 1 and threshold.shape[0] != logits_s.shape[1]:
        raise ValueError(f"per-class threshold has {threshold.shape[0]} entries for C={logits_s.shape[1]} classes; "
                         "pass a scalar or a (C,) tensor")
    thr = threshold.to(device=dev, dtype=acc) if isinstance(threshold, Tensor) else _scalar(threshold, acc, dev)
    temp = T.to(device=dev, dtype=acc) if isinstance(T, Tensor) else _scalar(T, acc, dev)
    if weight is not None:
        if weight.shape != logits_s.shape[:1]:
            raise ValueError(f"weight has shape {tuple(weight.shape)}; pass one weight per row, shape ({logits_s.shape[0]},)")
        weight = weight.detach().contiguous()
    loss, mask, pseudo, maxprob, _, _ = torch.ops.fastssl.pseudo_label_ce_fwd(
        logits_w.detach(), logits_s, thr, temp, weight, soft, REDUCTIONS[reduction])
    return loss, mask, pseudo, maxprob
