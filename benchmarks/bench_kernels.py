"""Kernel benchmarks (pytest-benchmark): fused pseudo-label CE and fused EMA vs their baselines, side by side.

Run for real (timings + JSON; the pyproject addopts disable timing, so re-enable it):
    python -m pytest benchmarks/bench_kernels.py --benchmark-enable --benchmark-json=benchmarks/kernels.json
Without --benchmark-enable every case runs once, as a smoke test. On CPU only the reference, compiled
reference, per-parameter loop, foreach and flat-buffer rows run (quote ratios, not times); the Triton rows
and the EMA bandwidth measurement need CUDA. GPU numbers go to benchmarks/RESULTS.md with provenance.
"""
from __future__ import annotations

import pytest
import torch

from fastssl.bench.kernels import EMA_SIZES, LOSS_SHAPES
from fastssl.kernels import ema_update_, pseudo_label_ce
from fastssl.kernels.reference import ema_update_reference, pseudo_label_ce_reference

DEV = "cuda" if torch.cuda.is_available() else "cpu"
needs_cuda = pytest.mark.skipif(DEV != "cuda", reason="Triton rows need CUDA (the interpreter is not timed)")


def _sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------- pseudo-label CE


def _reference_loss(w, s, thr):
    return pseudo_label_ce_reference(w, s, thr).loss


def _triton_loss(w, s, thr):
    return pseudo_label_ce(w, s, thr).loss


_compiled_reference = torch.compile(_reference_loss, fullgraph=True, dynamic=False)  # static, as in the step
_compiled_triton = torch.compile(_triton_loss, fullgraph=True, dynamic=False)  # as the compiled step runs it


@pytest.mark.parametrize("impl", ["eager_reference", "compiled_reference", pytest.param("triton", marks=needs_cuda),
                                  pytest.param("compiled_triton", marks=needs_cuda)])
@pytest.mark.parametrize("N,C", LOSS_SHAPES, ids=lambda v: str(v))
def test_pseudo_label_ce_fwd_bwd(benchmark, N, C, impl):
    g = torch.Generator(device=DEV).manual_seed(0)
    w = torch.randn(N, C, device=DEV, generator=g) * 3
    s = torch.randn(N, C, device=DEV, generator=g, requires_grad=True)
    thr = torch.tensor(0.95, device=DEV)
    loss_fn = {
        "eager_reference": _reference_loss,
        "compiled_reference": _compiled_reference,
        "triton": _triton_loss,
        "compiled_triton": _compiled_triton,
    }[impl]

    def step():
        loss_fn(w, s, thr).backward()
        s.grad = None
        _sync()

    for _ in range(3):  # warm-up: compilation and autotuning stay out of the timing
        step()
    benchmark.group = f"pseudo_label_ce fwd+bwd {N}x{C} {DEV}"
    benchmark(step)


# ------------------------------------------------------------------------------------------------ EMA
def test_wrn_sizes():
    counts = {k: sum(torch.Size(s).numel() for s in v) for k, v in EMA_SIZES.items()}
    assert abs(counts["wrn-28-2"] - 1.47e6) < 0.01e6 and abs(counts["wrn-28-8"] - 23.4e6) < 0.1e6, counts


def _flat_pair(shapes):
    n = sum(torch.Size(s).numel() for s in shapes)
    return torch.randn(n, device=DEV), torch.randn(n, device=DEV)


def _views(flat, shapes):
    return list(torch.split(flat, [torch.Size(s).numel() for s in shapes]))


@pytest.mark.parametrize("impl", ["loop", "foreach_lerp", "flat_torch", pytest.param("triton_flat", marks=needs_cuda)])
@pytest.mark.parametrize("size", list(EMA_SIZES))
def test_ema_update(benchmark, size, impl):
    shapes = EMA_SIZES[size]
    ema_flat, p_flat = _flat_pair(shapes)
    ema, params = _views(ema_flat, shapes), _views(p_flat, shapes)
    decay = torch.tensor(0.999, device=DEV)
    update = {
        "loop": lambda: ema_update_reference(ema, params, decay),                 # USB style, per tensor
        "foreach_lerp": lambda: torch._foreach_lerp_(ema, params, 1 - 0.999),     # multi-tensor, float weight
        "flat_torch": lambda: ema_update_reference([ema_flat], [p_flat], decay),  # flat buffer, 2 torch ops
        "triton_flat": lambda: ema_update_([ema_flat], [p_flat], decay),          # flat buffer, 1 launch
    }[impl]

    def step():
        update()
        _sync()

    for _ in range(3):
        step()
    benchmark.group = f"ema {size} ({p_flat.numel() / 1e6:.2f}M params) {DEV}"
    benchmark.extra_info["bytes_per_update"] = 12 * p_flat.numel()
    benchmark(step)


@needs_cuda
def test_ema_bandwidth_vs_copy(capsys):
    """EMA kernel at WRN-28-8 size vs a device-to-device copy, both with CUDA events, median of 200."""
    ema, param = _flat_pair(EMA_SIZES["wrn-28-8"])
    dst = torch.empty_like(param)
    decay = torch.tensor(0.999, device="cuda")
    n = param.numel()

    def median_ms(fn, reps=200):
        for _ in range(10):
            fn()
        times = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        return sorted(times)[reps // 2]

    t_ema = median_ms(lambda: ema_update_([ema], [param], decay))
    t_copy = median_ms(lambda: dst.copy_(param))
    gbs_ema, gbs_copy = 12 * n / t_ema / 1e6, 8 * n / t_copy / 1e6  # bytes / ms / 1e6 = GB/s
    with capsys.disabled():
        print(f"\nEMA {n / 1e6:.1f}M fp32: {t_ema * 1e3:.1f} us, {gbs_ema:.0f} GB/s (12 B/param); "
              f"copy {t_copy * 1e3:.1f} us, {gbs_copy:.0f} GB/s (8 B/elem); EMA = {100 * gbs_ema / gbs_copy:.0f}% of copy")
    assert gbs_ema >= 0.8 * gbs_copy, f"EMA at {100 * gbs_ema / gbs_copy:.0f}% of copy bandwidth; target >= 80%"
