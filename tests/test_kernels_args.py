"""Every Triton launch of the pseudo-label CE gets a tensor of its own for each pointer argument.

Inductor decides per kernel argument what the kernel reads and writes; one tensor passed twice (once read
and once written, e.g. the threshold as an unused weight, or lse_s as an unused lse_t) could make it
functionalize the launch wrongly. Checked on every mode's forward and backward through the public op."""
import importlib

import pytest
import torch

from fastssl.kernels import pseudo_label_ce
from fastssl.kernels.reference import pseudo_label_ce_reference

ce = importlib.import_module("fastssl.kernels.pseudo_label_ce")  # the attribute is the function of that name

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture
def launches(monkeypatch):
    seen = []
    real = ce.launch

    def record(kernel, grid, *args, **kwargs):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        seen.append((getattr(kernel, "__name__", str(kernel)), [t.untyped_storage().data_ptr() for t in tensors]))
        real(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(ce, "launch", record)
    return seen


@pytest.mark.parametrize("mode", ["hard", "per_class", "soft", "weight"])
def test_no_tensor_is_passed_twice(launches, mode):
    g = torch.Generator().manual_seed(0)
    lw = torch.randn(7, 10, generator=g, dtype=torch.float64)
    ls = torch.randn(7, 10, generator=g, dtype=torch.float64, requires_grad=True)
    thr = torch.full((10,), 0.3, dtype=torch.float64) if mode == "per_class" else 0.3
    weight = torch.rand(7, generator=g, dtype=torch.float64) if mode == "weight" else None
    out = pseudo_label_ce(lw, ls, thr, 0.7, soft=mode == "soft", weight=weight, impl="triton")
    out.loss.backward()
    assert len(launches) == 2  # forward and backward
    for name, ptrs in launches:
        assert len(ptrs) == len(set(ptrs)), f"{name} got one tensor as two arguments ({mode}): {ptrs}"
    # and the arithmetic still agrees with the reference
    ref_s = ls.detach().clone().requires_grad_()
    r = pseudo_label_ce_reference(lw, ref_s, thr, 0.7, soft=mode == "soft", weight=weight)
    r.loss.backward()
    torch.testing.assert_close(out.loss, r.loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ls.grad, ref_s.grad, rtol=1e-10, atol=1e-12)
