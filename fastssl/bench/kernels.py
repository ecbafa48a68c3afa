"""Kernel timings side by side: the fused pseudo-label CE (fwd+bwd) and the fused EMA against their baselines.

    fastssl bench kernels [--reps 50] [--json out.json]

Every implementation of one case is timed in interleaved rounds (so load drift hits all alike), medians of
`--reps` calls after warm-up; CUDA events on GPU, perf_counter on CPU. On CPU only the torch rows run
(quote ratios); the Triton rows need CUDA. The pytest-benchmark suite of the same cases is
benchmarks/bench_kernels.py (source checkout).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from fastssl.bench import common

LOSS_SHAPES = [(448, 10), (448, 100), (7168, 1000)]
"""FixMatch CIFAR-10/100 (B=64, μ=7); ImageNet-1k scale"""


def wrn_param_shapes(depth: int = 28, widen: int = 2, num_classes: int = 10) -> list[tuple[int, ...]]:
    """Parameter shapes of WRN-depth-widen as in the SSL literature (bias-free convs, BN affine, fc bias)."""
    n = (depth - 4) // 6
    shapes = [(16, 3, 3, 3)]
    cin = 16
    for width in (16 * widen, 32 * widen, 64 * widen):
        for _ in range(n):
            shapes += [(cin,), (cin,), (width, cin, 3, 3), (width,), (width,), (width, width, 3, 3)]
            if cin != width:
                shapes.append((width, cin, 1, 1))
            cin = width
    return shapes + [(cin,), (cin,), (num_classes, cin), (num_classes,)]


EMA_SIZES = {"wrn-28-2": wrn_param_shapes(28, 2), "wrn-28-8": wrn_param_shapes(28, 8)}


def _loss_cases(dev: str) -> dict[str, dict]:
    from fastssl.kernels import load_triton, pseudo_label_ce
    from fastssl.kernels.reference import pseudo_label_ce_reference

    def ref(w, s, thr):
        return pseudo_label_ce_reference(w, s, thr).loss

    impls = {"eager_reference": ref, "compiled_reference": torch.compile(ref, fullgraph=True, dynamic=False)}
    if dev == "cuda":
        load_triton()
        impls["triton"] = lambda w, s, thr: pseudo_label_ce(w, s, thr).loss
    cases = {}
    for n, c in LOSS_SHAPES:
        g = torch.Generator(device=dev).manual_seed(0)
        w = torch.randn(n, c, device=dev, generator=g) * 3
        s = torch.randn(n, c, device=dev, generator=g, requires_grad=True)
        thr = torch.tensor(0.95, device=dev)

        def step(fn, w=w, s=s, thr=thr):
            fn(w, s, thr).backward()
            s.grad = None
        cases[f"pseudo_label_ce {n}x{c}"] = {k: (lambda f=f, step=step: step(f)) for k, f in impls.items()}
    return cases


def _ema_cases(dev: str) -> dict[str, dict]:
    from fastssl.kernels import ema_update_
    from fastssl.kernels.reference import ema_update_reference

    cases = {}
    for size, shapes in EMA_SIZES.items():
        numels = [torch.Size(s).numel() for s in shapes]
        ema_flat, p_flat = torch.randn(sum(numels), device=dev), torch.randn(sum(numels), device=dev)
        ema, params = list(ema_flat.split(numels)), list(p_flat.split(numels))
        decay = torch.tensor(0.999, device=dev)
        impls = {
            "loop": lambda ema=ema, params=params, decay=decay: ema_update_reference(ema, params, decay),
            "foreach_lerp": lambda ema=ema, params=params: torch._foreach_lerp_(ema, params, 1 - 0.999),
            "flat_torch": lambda e=ema_flat, p=p_flat, decay=decay: ema_update_reference([e], [p], decay),
        }
        if dev == "cuda":
            impls["triton_flat"] = lambda e=ema_flat, p=p_flat, decay=decay: ema_update_([e], [p], decay)
        cases[f"ema {size} ({p_flat.numel() / 1e6:.2f}M params)"] = impls
    return cases


def _time(fn, dev: str, reps: int) -> float:
    """Seconds for `reps` calls of fn, synchronised at both ends."""
    if dev == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if dev == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def run(args) -> dict:
    dev = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    result = {"env": common.environment(), "setup": {"device": dev, "reps": args.reps, "rounds": args.rounds},
              "cases": {}}
    for case, impls in {**_loss_cases(dev), **_ema_cases(dev)}.items():
        for fn in impls.values():  # warm-up: compilation and autotuning stay out of the timing
            for _ in range(3):
                fn()
        secs: dict[str, list[float]] = {k: [] for k in impls}
        for r in range(args.rounds):
            for name in (list(impls) if r % 2 == 0 else list(impls)[::-1]):
                secs[name].append(_time(impls[name], dev, args.reps))
        base = list(impls)[0]
        result["cases"][case] = {name: {"us_median": 1e6 * statistics.median(s),
                                        f"speedup_vs_{base}": common.paired_ratio(secs[base], s)}
                                 for name, s in secs.items()}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fastssl bench kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=50, help="calls per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="auto", help="auto (CUDA if present) or cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    res = run(args)
    for case, rows in res["cases"].items():
        print(f"{case} ({res['setup']['device']}):")
        for name, e in rows.items():
            ratio = next(v for k, v in e.items() if k.startswith("speedup"))
            print(f"  {name:<20}{e['us_median']:>12.1f} us  {ratio:>6.2f}x")
    if args.json:
        common.write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
