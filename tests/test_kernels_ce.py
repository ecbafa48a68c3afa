"""Fused pseudo-label CE: the Triton kernels (interpreter on CPU) against the fp64 reference, the op's
autograd and torch.compile integration, the dispatch, and the NaN/inf/tie/boundary semantics."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastssl.kernels import pseudo_label_ce
from fastssl.kernels.pseudo_label_ce import MAX_C, REDUCTIONS, pseudo_label_ce_bwd, pseudo_label_ce_fwd
from fastssl.kernels.reference import pseudo_label_ce_reference

# the interpreter evaluates padded lanes too (-inf - -inf etc.); those values are never stored
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

F64 = torch.float64
SHAPES = [(1, 10), (7, 10), (33, 100), (448, 1000)]
MODES = ["hard", "soft", "weight"]

# Tolerances of the Triton kernels (fp32 accumulation) against the fp64 reference on the SAME low-precision
# inputs upcast to fp64 (used on GPU, and by the interpreter on CPU): (loss/maxprob rtol, atol; grad atol relative to max |grad|). One table, all tests.
TOLERANCES = {
    torch.float32: dict(rtol=1e-5, atol=1e-6, grad_atol=1e-5),   # exp on GPU: ~1e-6 relative (ex2.approx)
    torch.bfloat16: dict(rtol=1e-4, atol=1e-5, grad_atol=8e-3),  # grad is stored in bf16: 2^-8 relative
    torch.float16: dict(rtol=1e-4, atol=1e-5, grad_atol=1e-3),   # grad stored in fp16: 2^-11 relative
}


def _logits(N, C, seed=0, scale=3.0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, C, generator=g, dtype=F64) * scale).to(dtype), torch.randn(N, C, generator=g, dtype=F64).to(dtype)


def _triton(lw, ls, threshold, T=1.0, soft=False, weight=None, reduction="mean", grad=None):
    """Call the launch functions directly (CPU tensors -> interpreter): forward, then backward with `grad`."""
    thr = torch.as_tensor(threshold, dtype=F64)
    temp = torch.as_tensor(T, dtype=F64)
    red = REDUCTIONS[reduction]
    loss, mask, pseudo, maxprob, lse_s, lse_t = pseudo_label_ce_fwd(lw, ls, thr, temp, weight, soft, red)
    if grad is None:
        grad = torch.ones_like(loss)
    ds = pseudo_label_ce_bwd(grad, lw, ls, temp, mask, pseudo, lse_s, lse_t, soft, red)
    return loss, mask, pseudo, maxprob, ds


def _reference(lw, ls, threshold, T=1.0, soft=False, weight=None, reduction="mean", grad=None):
    ls = ls.detach().clone().requires_grad_(True)
    out = pseudo_label_ce_reference(lw, ls, threshold, T, soft=soft, weight=weight, reduction=reduction)
    out.loss.backward(torch.ones_like(out.loss) if grad is None else grad)
    return out.loss.detach(), out.mask, out.pseudo, out.maxprob, ls.grad


def _compare(got, ref, tol=1e-10):
    loss, mask, pseudo, maxprob, ds = got
    r_loss, r_mask, r_pseudo, r_maxprob, r_ds = ref
    assert torch.equal(pseudo, r_pseudo)
    assert torch.equal(mask, r_mask)
    torch.testing.assert_close(maxprob, r_maxprob, rtol=tol, atol=tol, equal_nan=True)
    torch.testing.assert_close(loss, r_loss, rtol=tol, atol=tol, equal_nan=True)
    torch.testing.assert_close(ds, r_ds, rtol=tol, atol=tol, equal_nan=True)


def _args(mode, N, C, lw):
    """(threshold, T, soft, weight): threshold at the median confidence so about half the rows pass."""
    thr = lw.softmax(-1).max(-1).values.median().item() - 1e-6  # off the median row by >> 1 ulp
    weight = torch.rand(N, generator=torch.Generator().manual_seed(1), dtype=F64) if mode == "weight" else None
    return thr, 0.7, mode == "soft", weight


@pytest.mark.parametrize("N,C", SHAPES)
@pytest.mark.parametrize("mode", MODES)
def test_matches_fp64_reference(N, C, mode):
    lw, ls = _logits(N, C, seed=N + C)
    thr, T, soft, weight = _args(mode, N, C, lw)
    got = _triton(lw, ls, thr, T, soft, weight)
    ref = _reference(lw, ls, thr, T, soft, weight)
    _compare(got, ref)
    if weight is None and N > 1:
        assert 0 < got[1].sum() < N  # both branches of the mask exercised


@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("mode", MODES)
def test_reductions(reduction, mode):
    lw, ls = _logits(7, 10, seed=3)
    thr, T, soft, weight = _args(mode, 7, 10, lw)
    grad = torch.linspace(-1, 2, 7, dtype=F64) if reduction == "none" else torch.tensor(1.7, dtype=F64)
    _compare(_triton(lw, ls, thr, T, soft, weight, reduction, grad), _reference(lw, ls, thr, T, soft, weight, reduction, grad))


def test_per_class_threshold():
    lw, ls = _logits(33, 100, seed=5, scale=4.0)
    thr = torch.rand(100, generator=torch.Generator().manual_seed(2), dtype=F64) * 0.4 + 0.1
    got = _triton(lw, ls, thr)
    _compare(got, _reference(lw, ls, thr))
    assert torch.equal(got[1], (got[3] >= thr[got[2]]).to(F64))


@pytest.mark.parametrize("threshold,expect", [(1.01, 0.0), (0.0, 1.0)])
def test_all_and_none_masked(threshold, expect):
    lw, ls = _logits(7, 10, seed=7)
    got = _triton(lw, ls, threshold)
    _compare(got, _reference(lw, ls, threshold))
    assert torch.all(got[1] == expect)
    if expect == 0.0:
        assert got[0] == 0 and torch.all(got[4] == 0)
    else:
        torch.testing.assert_close(got[0], F.cross_entropy(ls, lw.argmax(-1)), rtol=1e-12, atol=1e-12)


def test_threshold_exactly_at_maxprob():
    # exactly representable confidences: uniform rows (1/4), and a row whose softmax rounds to exactly 1
    lw = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0], [800.0, 0.0, 0.0, 0.0]], dtype=F64)
    ls = torch.randn(3, 4, dtype=F64)
    got = _triton(lw, ls, 0.25)
    assert got[3].tolist() == [0.25, 0.25, 1.0] and got[1].tolist() == [1.0, 1.0, 1.0]  # >= at equality
    assert _triton(lw, ls, 1.0)[1].tolist() == [0.0, 0.0, 1.0]
    # random rows: the kernel's own maxprob as threshold passes, the next float above does not
    lw, ls = _logits(7, 10, seed=11)
    mp = _triton(lw, ls, 0.5)[3]
    for i in range(7):
        thr = mp[i].item()
        assert _triton(lw, ls, thr)[1][i] == 1.0
        assert _triton(lw, ls, math.nextafter(thr, 2.0))[1][i] == 0.0
    _compare(_triton(lw, ls, 0.25), _reference(lw, ls, 0.25))


def test_ties_take_lowest_class():
    lw = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0], [0.5] * 5, [-1.0, 2.0, -1.0, 2.0, 1.0]], dtype=F64)
    ls = torch.randn(3, 5, dtype=F64)
    for soft in (False, True):
        got = _triton(lw, ls, 0.2, soft=soft)
        assert got[2].tolist() == [1, 0, 1] == lw.argmax(-1).tolist()
        _compare(got, _reference(lw, ls, 0.2, soft=soft))
    assert _triton(lw, ls, 0.2)[1].tolist() == [1.0, 1.0, 1.0]  # 1/3, 1/5 exactly at 0.2, ~0.42


def test_nan_and_inf():
    inf, nan = math.inf, math.nan
    lw = torch.tensor([
        [0.0, 1.0, nan, 2.0, nan],      # NaN in weak: maxprob NaN, mask 0, pseudo = first NaN
        [0.0, inf, 1.0, inf, 0.0],      # +inf in weak: undefined softmax, pseudo = first +inf
        [-inf] * 5,                     # all -inf: undefined, pseudo 0
        [-inf, 9.0, -inf, 0.0, -inf],   # some -inf: fine, probability 0 there
        [9.0, 0.0, 0.0, 0.0, 0.0],      # confident, strong row has NaN -> loss NaN (loud)
        [0.0, 0.0, 0.0, 0.0, 0.1],      # not confident, strong row NaN/inf -> contributes exactly 0
        [0.0, 9.0, 0.0, 0.0, 0.0],      # confident, strong logit -inf at the target -> +inf
    ], dtype=F64)
    ls = torch.randn(7, 5, dtype=F64)
    ls[4, 2] = nan
    ls[5, 0], ls[5, 1] = nan, inf
    ls[6, 1] = -inf
    got = _triton(lw, ls, 0.9, reduction="none")
    loss, mask, pseudo, maxprob, ds = got
    assert pseudo.tolist() == [2, 1, 0, 1, 0, 4, 1] == lw.argmax(-1).tolist()
    assert mask.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert torch.isnan(maxprob[:3]).all() and torch.isfinite(maxprob[3:]).all()
    assert torch.isnan(loss[4]) and loss[6] == inf and loss[5] == 0 and torch.all(loss[:3] == 0)
    assert torch.all(ds[[0, 1, 2, 5]] == 0) and torch.isfinite(ds[3]).all()
    _compare(got, _reference(lw, ls, 0.9, reduction="none"))
    # soft targets and the mean: masked-out garbage stays out, selected garbage propagates
    for soft in (False, True):
        keep = [0, 1, 2, 3, 5]
        got = _triton(lw[keep], ls[keep], 0.9, soft=soft)
        assert torch.isfinite(got[0]) and torch.isfinite(got[4]).all()
        _compare(got, _reference(lw[keep], ls[keep], 0.9, soft=soft))
        assert torch.isnan(_triton(lw, ls, 0.9, soft=soft)[0])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_through_op(mode, reduction):
    lw, ls = _logits(3, 5, seed=13)
    thr, T, soft, weight = _args(mode, 3, 5, lw)
    ls.requires_grad_(True)
    fn = lambda s: pseudo_label_ce(lw, s, thr, T, soft=soft, weight=weight, reduction=reduction, impl="triton").loss  # noqa: E731
    assert torch.autograd.gradcheck(fn, (ls,), eps=1e-6, atol=1e-8)


def test_op_matches_launch_and_opcheck():
    lw, ls = _logits(7, 10, seed=17)
    for soft in (False, True):
        out = pseudo_label_ce(lw, ls, 0.4, 0.5, soft=soft, impl="triton")
        ref = pseudo_label_ce_reference(lw, ls, 0.4, 0.5, soft=soft)
        for a, b in zip(out, ref):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    args = (lw, ls.requires_grad_(True), torch.tensor(0.4, dtype=F64), torch.tensor(0.5, dtype=F64), None, True, 1)
    torch.library.opcheck(torch.ops.fastssl.pseudo_label_ce_fwd.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_dispatch_cpu_runs_reference():
    lw, ls = _logits(7, 10, seed=19, dtype=torch.float32)
    out = pseudo_label_ce(lw, ls, 0.5)
    ref = pseudo_label_ce_reference(lw, ls, 0.5)
    for a, b in zip(out, ref):
        assert torch.equal(a, b)
    assert out.loss.dtype == torch.float32


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_compiles_fullgraph(impl):
    """No graph break through the dispatch, forward and backward (backend='eager': Dynamo only, fast)."""
    lw, ls = _logits(7, 10, seed=23)
    thr = torch.full((10,), 0.3, dtype=F64)

    def step(w, s, decay_t):
        out = pseudo_label_ce(w, s, thr, decay_t, soft=True, impl=impl)
        return out.loss * 2, out.mask.mean(), out.pseudo

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="eager", fullgraph=True)
    s1 = ls.clone().requires_grad_(True)
    s2 = ls.clone().requires_grad_(True)
    T = torch.tensor(0.5, dtype=F64)
    got, want = compiled(lw, s1, T), step(lw, s2, T)
    got[0].backward()
    want[0].backward()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-12, atol=1e-12)


def test_errors_name_the_fix():
    lw, ls = _logits(2, 10)
    with pytest.raises(ValueError, match="reduction"):
        pseudo_label_ce(lw, ls, 0.5, reduction="avg", impl="triton")
    with pytest.raises(ValueError, match=r"\(C,\) tensor"):
        pseudo_label_ce(lw, ls, torch.full((9,), 0.5), impl="triton")
    with pytest.raises(ValueError, match=r"one weight per row"):
        pseudo_label_ce(lw, ls, 0.5, weight=torch.ones(2, 1), impl="triton")
    with pytest.raises(ValueError, match="impl='reference'"):
        pseudo_label_ce(*_logits(1, MAX_C + 1), 0.5, impl="triton")
    with pytest.raises(ValueError, match="impl"):
        pseudo_label_ce(lw, ls, 0.5, impl="cuda")


def _check_low_precision(dtype, N, C, mode, device):
    tol = TOLERANCES[dtype]
    lw64, ls64 = _logits(N, C, seed=29)
    lw, ls = lw64.to(dtype).to(device), ls64.to(dtype).to(device)
    thr, T, soft, weight = _args(mode, N, C, lw64)
    weight = weight.float().to(device) if weight is not None else None
    s = ls.clone().requires_grad_(True)
    out = pseudo_label_ce(lw, s, thr, T, soft=soft, weight=weight, impl="triton")
    out.loss.backward()
    ref = _reference(lw.double().cpu(), ls.double().cpu(), thr, T, soft, weight.double().cpu() if weight is not None else None)
    assert out.loss.dtype == torch.float32 and s.grad.dtype == dtype
    assert torch.equal(out.pseudo.cpu(), ref[2])  # argmax of identical values: exact, ties included
    torch.testing.assert_close(out.maxprob.double().cpu(), ref[3], rtol=tol["rtol"], atol=tol["atol"])
    far = (ref[3] - thr).abs() > 1e-4  # rows whose confidence is not within rounding of the threshold
    assert torch.equal(out.mask.double().cpu()[far], ref[1][far])
    torch.testing.assert_close(out.loss.double().cpu(), ref[0], rtol=tol["rtol"], atol=tol["atol"])
    scale = ref[4].abs().max()
    torch.testing.assert_close(s.grad.double().cpu(), ref[4], rtol=0, atol=tol["grad_atol"] * scale)


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("mode", MODES)
def test_low_precision_vs_fp64_interpreter(dtype, mode):
    """The dtype casts (fp32 accumulation, gradient stored in the logits' dtype) under the interpreter."""
    _check_low_precision(dtype, 33, 100, mode, "cpu")


# ----------------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("N,C", [(448, 10), (448, 100), (7168, 1000)])
@pytest.mark.parametrize("mode", MODES)
def test_gpu_low_precision_vs_fp64(dtype, N, C, mode):
    """Real Triton on CUDA: fp32/bf16/fp16 logits against the fp64 reference of the same (upcast) values."""
    _check_low_precision(dtype, N, C, mode, "cuda")


@pytest.mark.gpu
def test_gpu_compiled_step_with_kernels():
    """A torch.compile(fullgraph=True, inductor) step with the Triton op, sync-free, vs the eager reference."""
    torch.manual_seed(0)
    model = torch.nn.Linear(32, 10).cuda()
    x_w, x_s = torch.randn(448, 32, device="cuda"), torch.randn(448, 32, device="cuda")
    thr = torch.tensor(0.2, device="cuda")

    def step(impl):
        out = pseudo_label_ce(model(x_w), model(x_s), thr, impl=impl)
        return out.loss, out.mask.mean()

    compiled = torch.compile(lambda: step("auto"), fullgraph=True)
    compiled()[0].backward()  # compiles forward and backward (compilation itself may synchronise)
    model.zero_grad()
    torch.cuda.set_sync_debug_mode("error")  # the compiled step itself: no host sync
    try:
        loss, ratio = compiled()
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    g = model.weight.grad.clone()
    model.zero_grad()
    ref_loss, ref_ratio = step("reference")
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ratio, ref_ratio)
    torch.testing.assert_close(g, model.weight.grad, rtol=1e-4, atol=1e-6)
