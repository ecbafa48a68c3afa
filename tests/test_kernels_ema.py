"""Fused EMA kernel (interpreter on CPU) against the reference loop; dispatch and compile integration."""
import pytest
import torch

from fastssl.kernels import ema_update_
from fastssl.kernels.ema import BLOCK, ema_update_flat_
from fastssl.kernels.reference import ema_update_reference

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.mark.parametrize("n", [1, 1000, 2 * BLOCK + 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kernel_matches_reference(n, dtype):
    g = torch.Generator().manual_seed(n)
    ema, param = torch.randn(n, generator=g, dtype=dtype), torch.randn(n, generator=g, dtype=dtype)
    decay = torch.tensor(0.999, dtype=dtype)
    want = ema.clone()
    ema_update_reference([want], [param], decay)
    ema_update_flat_(ema, param, decay)
    tol = 1e-10 if dtype == torch.float64 else 1e-6  # fp32: an FMA may round once instead of twice
    torch.testing.assert_close(ema, want, rtol=tol, atol=tol)


def test_decay_tensor_read_each_call_and_bounds():
    ema, param = torch.zeros(10, dtype=torch.float64), torch.ones(10, dtype=torch.float64)
    decay = torch.tensor(0.5, dtype=torch.float64)
    ema_update_flat_(ema, param, decay)
    decay.fill_(0.0)  # a schedule mutates the same device tensor: no new value is baked in
    ema_update_flat_(ema[:5], param[:5], decay)
    assert ema.tolist() == [1.0] * 5 + [0.5] * 5  # and nothing past n was written


def test_dispatch_lists_and_strided_fallback():
    g = torch.Generator().manual_seed(0)
    ema = [torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64).t()]
    par = [torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)]
    want = [e.clone() for e in ema]
    ema_update_reference(want, par, 0.9)
    ema_update_(ema, par, 0.9, impl="triton")
    for a, b in zip(ema, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_compiles_fullgraph(impl):
    ema, param = torch.zeros(100, dtype=torch.float64), torch.ones(100, dtype=torch.float64)
    decay = torch.tensor(0.75, dtype=torch.float64)
    torch._dynamo.reset()
    f = torch.compile(lambda e, p, d: ema_update_([e], [p], d, impl=impl), backend="eager", fullgraph=True)
    f(ema, param, decay)
    decay.fill_(0.5)
    f(ema, param, decay)
    torch.testing.assert_close(ema, torch.full((100,), 0.625, dtype=torch.float64))


def test_opcheck():
    e, p = torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)
    torch.library.opcheck(torch.ops.fastssl.ema_update_.default, (e, p, torch.tensor(0.9, dtype=torch.float64)),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
