"""Compile every Triton kernel specialization that `fastssl.kernels` launches on a GPU, ahead of time and
without one, through Triton's real NVIDIA backend (not the interpreter), and report each cubin's resources.

    python tests/_cubin.py 90 [80 ...]   → one JSON line per (arch, specialization) on stdout

The launch functions are called with CPU tensors of the dtypes and shapes the trainer and the benchmarks
use; `launch` is replaced by a function that binds the arguments the way `JITFunction.run` does (same
signature, constexprs and divisibility attributes as a real launch) and calls `triton.compile` for the given
target. `cuobjdump -res-usage` (shipped in Triton's wheel) then reads registers, stack and local memory of
the cubin: LOCAL > 0 means ptxas spilled registers.

Runs in its own process: under TRITON_INTERPRET=1 (set by the test suite) `triton.language` itself is built
for the interpreter and cannot be compiled for a GPU.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import time

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("run without TRITON_INTERPRET (it replaces triton.language with the interpreter's)")

import torch  # noqa: E402
import triton  # noqa: E402

API_CHANGED = 3
"""exit status when this Triton lacks the (private) launch-binding API used here: the test skips, naming it"""
try:  # the pieces JITFunction.run uses to bind a launch (Triton 3.x); private, so checked rather than assumed
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature
    if not hasattr(JITFunction, "_pack_args"):
        raise ImportError("JITFunction._pack_args")
except ImportError as e:
    print(f"triton {triton.__version__}: launch-binding API not found ({e})", file=sys.stderr)
    sys.exit(API_CHANGED)

ce = importlib.import_module("fastssl.kernels.pseudo_label_ce")
ema = importlib.import_module("fastssl.kernels.ema")

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def cases():
    """(name, thunk) for every launch: the thunk calls the real launch function on CPU tensors."""
    out = []
    # FixMatch-family losses at the trainer's shape (B=64, mu=7 -> 448 rows), every mode and dtype
    for dt in ("fp32", "bf16", "fp16", "fp64"):
        for mode in ("hard", "per_class", "soft", "weight"):
            out.append((f"ce {mode} {dt} 448x10 mean", _ce(448, 10, DTYPES[dt], mode, 1)))
    for red, r in (("none", 0), ("sum", 2)):
        out.append((f"ce hard fp32 448x10 {red}", _ce(448, 10, torch.float32, "hard", r)))
    # the benchmark shapes and the tile limit (MAX_C classes: one row per program)
    for n, c in ((448, 100), (7168, 1000), (64, ce.MAX_C)):
        for dt in ("fp32", "bf16"):
            out.append((f"ce hard {dt} {n}x{c} mean", _ce(n, c, DTYPES[dt], "hard", 1)))
    for dt in ("fp32", "bf16", "fp16", "fp64"):
        out.append((f"ema {dt}", _ema(DTYPES[dt])))
    return out


def _ce(n, c, dtype, mode, reduction):
    def thunk():
        lw, ls = torch.randn(n, c).to(dtype), torch.randn(n, c).to(dtype)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        thr = torch.full((c,) if mode == "per_class" else (), 0.95, dtype=acc)
        temp = torch.tensor(0.5, dtype=acc)
        weight = torch.rand(n, dtype=acc) if mode == "weight" else None
        soft = mode == "soft"
        loss, mask, pseudo, maxprob, lse_s, lse_t = ce.pseudo_label_ce_fwd(lw, ls, thr, temp, weight, soft, reduction)
        # the forward was not run: its outputs are uninitialised, which is all the backward's launch needs
        grad = torch.ones_like(loss)
        ce.pseudo_label_ce_bwd(grad, lw, ls, temp, mask, pseudo, lse_s, lse_t, soft, reduction)
    return thunk


def _ema(dtype):
    def thunk():  # the flat buffers EMATeacher builds for WRN-28-2 (their length is a multiple of ALIGN)
        from fastssl.models.registry import build_model
        from fastssl.train.ema import EMATeacher
        teacher = EMATeacher(build_model("wrn_28_2", num_classes=10).to(dtype))
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        for t, s in teacher._param_flats:
            ema.ema_update_flat_(t, s, torch.tensor(0.999, dtype=acc))
    return thunk


def compile_for(target: GPUTarget, seen: dict):
    """A `launch` replacement: bind like JITFunction.run, compile for `target`, record the cubin's usage."""
    backend = make_backend(target)

    def aot_launch(kernel, grid, *args, **kwargs):
        fn = kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn)
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, spec, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
        key = (fn.__name__, repr(signature), repr(sorted(constexprs.items())), repr(sorted(attrs.items())),
               options.num_warps)
        if key in seen:
            return
        t0 = time.perf_counter()
        compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
        seen[key] = dict(kernel=fn.__name__, seconds=round(time.perf_counter() - t0, 2),
                         num_warps=options.num_warps, grid=list(grid),
                         constexprs={str(k[0] if isinstance(k, tuple) and len(k) == 1 else k): str(v)
                                     for k, v in constexprs.items()},
                         shared=compiled.metadata.shared, global_access_bits=access_widths(compiled.asm["ptx"]),
                         **resource_usage(compiled.asm["cubin"]))
    return aot_launch


def access_widths(ptx: str) -> dict[str, int]:
    """Global loads/stores in the PTX by access width in bits, e.g. {"ld128": 8, "st128": 4}: 128-bit
    (16-byte) vector accesses are what a bandwidth-bound kernel needs."""
    counts: dict[str, int] = {}
    for op, vec, bits in re.findall(r"\b(ld|st)\.global(?:\.[A-Za-z0-9_:]+)*?(?:\.v(\d))?\.[bfsu](\d+)\b", ptx):
        key = f"{op}{int(vec or 1) * int(bits)}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def resource_usage(cubin: bytes) -> dict:
    path = f"/tmp/fastssl_cubin_{os.getpid()}.cubin"
    with open(path, "wb") as f:
        f.write(cubin)
    try:
        text = subprocess.run([CUOBJDUMP, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)
    usage = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", text))
    return {k.lower(): int(v) for k, v in usage.items()}


def main(archs: list[int]) -> None:
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        seen: dict = {}  # specializations shared by several cases (e.g. the hard-target backward) compile once
        ce.launch = ema.launch = compile_for(target, seen)
        for name, thunk in cases():
            before = set(seen)
            try:
                thunk()
            except Exception as e:  # report the failure with its case, keep going
                print(json.dumps(dict(arch=arch, case=name, error=f"{type(e).__name__}: {e}"[:2000])), flush=True)
                continue
            for key in [k for k in seen if k not in before]:
                rec = seen[key]
                print(json.dumps(dict(arch=arch, case=name, **rec)), flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [90])
