"""The Triton kernels as a GPU will run them, checked without a GPU: every specialization the dispatcher
launches is compiled by Triton's NVIDIA backend for Hopper (sm_90a, the H200) and Ampere (sm_80) to a
cubin (tests/_cubin.py), and the cubins' resources are checked. The interpreter tests prove the
arithmetic; these prove that the same source compiles for the real targets, that a program fits an SM,
that the hot specializations keep everything in registers, and that the EMA kernel moves its data in
16-byte vectors (what its bandwidth target needs)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

ARCHS = {90: 227 * 1024, 80: 163 * 1024}  # compute capability: max shared memory per block (bytes)
HELPER = Path(__file__).with_name("_cubin.py")
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


@pytest.fixture(scope="module")
def cubins() -> dict[int, list[dict]]:
    if not CUOBJDUMP.exists():
        pytest.skip(f"this Triton wheel ships no NVIDIA toolchain ({CUOBJDUMP} missing)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = {arch: subprocess.Popen([sys.executable, str(HELPER), str(arch)], env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for arch in ARCHS}  # one process per target: the two cores compile in parallel
    out = {}
    for arch, p in procs.items():
        stdout, stderr = p.communicate(timeout=600)
        if p.returncode == 3:  # _cubin.API_CHANGED: a Triton whose private launch binding moved
            pytest.skip(f"tests/_cubin.py does not know this Triton's launch binding: {stderr.strip()[-300:]}")
        assert p.returncode == 0, f"sm_{arch} compile helper failed:\n{stderr[-4000:]}"
        out[arch] = [json.loads(line) for line in stdout.splitlines()]
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_every_specialization_compiles(cubins, arch):
    recs = cubins[arch]
    errors = [f"{r['case']}: {r['error']}" for r in recs if "error" in r]
    assert not errors, "\n".join(errors)
    assert {r["kernel"] for r in recs} == {"_pl_ce_fwd_kernel", "_pl_ce_bwd_kernel", "_ema_kernel"}
    # every mode and dtype of the forward is its own specialization (4 modes x 4 dtypes at 448x10)
    fwd_448x10 = {r["case"] for r in recs if r["kernel"] == "_pl_ce_fwd_kernel" and "448x10 mean" in r["case"]}
    assert len(fwd_448x10) == 16


@pytest.mark.parametrize("arch", ARCHS)
def test_one_program_fits_an_sm(cubins, arch):
    for r in cubins[arch]:
        threads = 32 * r["num_warps"]
        assert r["reg"] * threads <= 65536, f"{r['case']} {r['kernel']}: {r['reg']} regs x {threads} threads"
        assert r["shared"] <= ARCHS[arch], f"{r['case']} {r['kernel']}: {r['shared']} B shared memory"


@pytest.mark.parametrize("arch", ARCHS)
def test_hot_specializations_do_not_spill(cubins, arch):
    """Hard-target CE (FixMatch, FlexMatch/FreeMatch per-class, SoftMatch weights) in fp32/bf16/fp16 at the
    trainer's and the benchmarks' shapes, and the EMA: no stack frame, i.e. no register spills. Known and
    allowed: soft targets (UDA) and fp64 (tests only) spill at 448x10 with one 16-warp program, and so does
    a 16384-class row (see `_tile`)."""
    hot = [r for r in cubins[arch]
           if r["kernel"] == "_ema_kernel"
           or ("soft" not in r["case"] and "fp64" not in r["case"] and "16384" not in r["case"])]
    assert len(hot) >= 20
    spilled = [f"{r['case']} {r['kernel']}: {r['stack']} B stack, {r['reg']} regs" for r in hot if r["stack"]]
    assert not spilled, "\n".join(spilled)


@pytest.mark.parametrize("arch", ARCHS)
def test_ema_moves_16_byte_vectors(cubins, arch):
    """At the flat buffers EMATeacher builds (length a multiple of 64 elements), every load and store of
    ema/param is a 128-bit vector access; the one narrow load is the decay scalar."""
    emas = [r for r in cubins[arch] if r["kernel"] == "_ema_kernel"]
    assert len(emas) == 4  # fp32, bf16, fp16, fp64
    for r in emas:
        bits = dict(r["global_access_bits"])
        assert bits.pop("ld128", 0) > 0 and bits.pop("st128", 0) > 0, (r["case"], r["global_access_bits"])
        assert sum(v for k, v in bits.items() if k.startswith("ld")) == 1, (r["case"], bits)  # the decay
        assert not any(k.startswith("st") for k in bits), (r["case"], bits)
