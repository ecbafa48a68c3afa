"""Consistency distances and mixing helpers against closed forms written as per-sample Python loops (fp64)."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastssl.algorithms import losses as L


def _softmax_row(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def _kl_row(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def _ref(name, logits, target):
    out = []
    for z, t in zip(logits.tolist(), target.tolist()):
        p = _softmax_row(z)
        C = len(z)
        if name == "mse":
            out.append(sum((a - b) ** 2 for a, b in zip(p, t)) / C)
        elif name == "l1":
            out.append(sum(abs(a - b) for a, b in zip(p, t)) / C)
        elif name == "kl":
            out.append(_kl_row(t, p))
        elif name == "js":
            m = [(a + b) / 2 for a, b in zip(p, t)]
            out.append(0.5 * _kl_row(t, m) + 0.5 * _kl_row(p, m))
        elif name == "soft_ce":
            out.append(-sum(ti * math.log(pi) for ti, pi in zip(t, p)))
    return torch.tensor(out, dtype=torch.float64)


def _inputs(seed=0, n=7, c=10):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    target = torch.softmax(torch.randn(n, c, generator=g, dtype=torch.float64) * 3, -1)
    target[0] = F.one_hot(torch.tensor(3), c).double()  # a one-hot row: 0·log 0 must count as 0
    return logits, target


@pytest.mark.parametrize("name", ["mse", "l1", "kl", "js"])
def test_distance_matches_closed_form_fp64(name):
    logits, target = _inputs()
    got = L.DISTANCES[name](logits, target)
    assert got.dtype == torch.float64 and got.shape == (7,)
    torch.testing.assert_close(got, _ref(name, logits, target), rtol=1e-12, atol=1e-12)
    assert (got >= 0).all()


def test_soft_ce_and_entropy_closed_form():
    logits, target = _inputs(1)
    torch.testing.assert_close(L.soft_ce(logits, target), _ref("soft_ce", logits, target), rtol=1e-12, atol=1e-12)
    p = torch.softmax(logits, -1)
    ent = torch.tensor([-sum(v * math.log(v) for v in row) for row in p.tolist()], dtype=torch.float64)
    torch.testing.assert_close(L.entropy(logits), ent, rtol=1e-12, atol=1e-12)


def test_divergences_are_zero_on_equal_inputs_and_js_is_symmetric_and_bounded():
    logits, _ = _inputs(2)
    p = torch.softmax(logits, -1)
    for name in ("mse", "l1", "kl", "js"):
        torch.testing.assert_close(L.DISTANCES[name](logits, p), torch.zeros(7, dtype=torch.float64), atol=1e-14, rtol=0)
    a, b = _inputs(3)[0], _inputs(4)[0]
    js_ab = L.js(a, torch.softmax(b, -1))
    js_ba = L.js(b, torch.softmax(a, -1))
    torch.testing.assert_close(js_ab, js_ba, rtol=1e-12, atol=1e-14)
    assert (js_ab <= math.log(2) + 1e-12).all()
    # the USB defect: JS with the first distribution twice is identically zero, ours is not
    assert (js_ab > 1e-3).all()


def test_naive_kl_div_on_probabilities_is_negative_ours_is_not():
    logits, target = _inputs(5)
    p = torch.softmax(logits, -1)
    # F.kl_div expects log-probabilities as its first argument; passing probabilities gives garbage
    naive = F.kl_div(p, target, reduction="none").sum(-1)
    assert (naive < 0).any()
    assert (L.kl(logits, target) >= 0).all()


def test_gradients_flow_through_logits_only():
    logits, target = _inputs(6)
    logits.requires_grad_(True)
    target.requires_grad_(True)
    for name in ("mse", "l1", "kl", "js"):
        g_logits, = torch.autograd.grad(L.DISTANCES[name](logits, target.detach()).sum(), logits)
        assert g_logits.abs().sum() > 0


def test_bf16_logits_are_computed_in_fp32():
    logits, target = _inputs(7)
    out = L.kl(logits.bfloat16(), target.float())
    assert out.dtype == torch.float32


def test_sharpen():
    p = torch.softmax(torch.randn(5, 4, dtype=torch.float64), -1)
    T = 0.5
    ref = torch.tensor([[v ** (1 / T) / sum(u ** (1 / T) for u in row) for v in row] for row in p.tolist()],
                       dtype=torch.float64)
    torch.testing.assert_close(L.sharpen(p, T), ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(L.sharpen(p, 1.0), p, rtol=1e-12, atol=1e-14)


def test_mixup_matches_loop_and_lambda_is_biased():
    x = torch.randn(6, 3, 2, 2, dtype=torch.float64)
    y = torch.softmax(torch.randn(6, 5, dtype=torch.float64), -1)
    lam = torch.tensor(0.7, dtype=torch.float64)
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    xm, ym = L.mixup(x, y, lam, perm)
    for i in range(6):
        torch.testing.assert_close(xm[i], 0.7 * x[i] + 0.3 * x[int(perm[i])])
        torch.testing.assert_close(ym[i], 0.7 * y[i] + 0.3 * y[int(perm[i])])
    torch.manual_seed(0)
    lams = torch.stack([L.mixup_lambda(0.5, x, biased=True) for _ in range(200)])
    assert (lams >= 0.5).all() and (lams <= 1).all()
    lams = torch.stack([L.mixup_lambda(0.5, x, biased=False) for _ in range(200)])
    assert (lams < 0.5).any() and (lams > 0.5).any()


def test_ramp_up():
    for s, lin in ((0, 0.0), (50, 0.5), (100, 1.0), (300, 1.0)):
        step = torch.tensor(s)
        assert float(L.ramp_up(step, 100, "linear")) == pytest.approx(lin)
        assert float(L.ramp_up(step, 100, "sigmoid")) == pytest.approx(math.exp(-5 * (1 - lin) ** 2))
    assert float(L.ramp_up(torch.tensor(0), 0)) == 1.0
    with pytest.raises(ValueError, match="linear or sigmoid"):
        L.ramp_up(torch.tensor(0), 10, "cosine")


def test_rotate90_matches_per_sample_rot90():
    x = torch.arange(4 * 2 * 3 * 3, dtype=torch.float64).view(4, 2, 3, 3)
    k = torch.tensor([2, 0, 3, 1])
    out = L.rotate90(x, k)
    for i in range(4):
        assert torch.equal(out[i], torch.rot90(x[i], int(k[i]), dims=(-2, -1)))
    with pytest.raises(ValueError, match="square"):
        L.rotate90(torch.zeros(1, 1, 2, 3), torch.zeros(1, dtype=torch.long))


def test_helpers_compile_fullgraph():
    def f(logits, target, x, step):
        lam = L.mixup_lambda(0.5, x, biased=True)
        xm, ym = L.mixup(x, target, lam, L.random_permutation(x.shape[0], x.device))
        k = torch.randint(0, 4, (x.shape[0],))
        return (L.js(logits, ym).mean() + L.kl(logits, L.sharpen(target, 0.5)).mean() + xm.sum()
                + L.rotate90(x, k).sum() + L.ramp_up(step, 10, "sigmoid"))

    logits, target = _inputs(8)
    x = torch.randn(7, 1, 4, 4, dtype=torch.float64)
    out = torch.compile(f, backend="eager", fullgraph=True)(logits, target, x, torch.tensor(3))
    assert torch.isfinite(out)


def test_random_permutation_and_mixup_compile_with_inductor():
    """`x[torch.randperm(n)]` crashes inductor's pattern matcher in torch 2.13; the argsort form compiles."""
    for n in (1, 7, 33):
        assert sorted(L.random_permutation(n, torch.device("cpu")).tolist()) == list(range(n))
    torch.manual_seed(0)
    firsts = torch.stack([L.random_permutation(4, torch.device("cpu"))[0] for _ in range(400)])
    assert torch.bincount(firsts, minlength=4).min() > 60  # every position reachable, roughly uniform

    def f(x, y):
        xm, ym = L.mixup(x, y, L.mixup_lambda(0.5, x, biased=True), L.random_permutation(x.shape[0], x.device))
        return xm.sum() + ym.sum()

    x, y = torch.randn(6, 3, 4, 4), torch.softmax(torch.randn(6, 5), -1)
    torch._dynamo.reset()
    assert torch.isfinite(torch.compile(f, fullgraph=True)(x, y))


def test_one_hot_matches_torch_and_rejects_bad_labels():
    from fastssl.algorithms.losses import one_hot

    labels = torch.tensor([3, 0, 9, 3, 5])
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        got = one_hot(labels, 10, dtype)
        assert got.dtype == dtype
        assert torch.equal(got, F.one_hot(labels, 10).to(dtype))
    with pytest.raises(RuntimeError):
        one_hot(torch.tensor([10]), 10, torch.float32)
    with pytest.raises(RuntimeError):
        one_hot(torch.tensor([-1]), 10, torch.float32)


def _js_closed_form(z: list[float], t: list[float]) -> tuple[float, list[float]]:
    """JS(t ‖ softmax(z)) and its gradient in z, on Python floats (fp64: nothing underflows at these gaps).
    ∂JS/∂p_c = ½ log(p_c / m_c), then through the softmax: ∂/∂z_j = p_j (g_j − Σ_c p_c g_c)."""
    p = _softmax_row(z)
    m = [(a + b) / 2 for a, b in zip(p, t)]
    value = 0.5 * _kl_row(t, m) + 0.5 * _kl_row(p, m)
    g = [0.5 * math.log(pc / mc) for pc, mc in zip(p, m)]
    mean_g = sum(pc * gc for pc, gc in zip(p, g))
    return value, [pj * (gj - mean_g) for pj, gj in zip(p, g)]


def test_js_stays_finite_when_a_probability_underflows_where_the_target_is_zero():
    """fp32 logit gaps of 120 (> ~104): exp underflows, so p_c = 0 exactly where the one-hot target is 0.
    `(t + p).log()` was −inf there and 0·inf made the loss and every gradient NaN; the value and gradient
    must equal the closed form (computed in fp64, where p_c ≈ 1e-52 is still representable)."""
    rows = [([0.0, 0.0, -120.0], [1.0, 0.0, 0.0]), ([30.0, -90.0, 0.0], [0.0, 0.0, 1.0]),
            ([5.0, -115.0, 2.0], [0.2, 0.0, 0.8])]
    logits = torch.tensor([z for z, _ in rows], dtype=torch.float32, requires_grad=True)
    target = torch.tensor([t for _, t in rows], dtype=torch.float32)
    assert (torch.softmax(logits.detach(), -1) == 0).sum() == 3  # the underflow this test is about
    got = L.js(logits, target)
    grad, = torch.autograd.grad(got.sum(), logits)
    want = [_js_closed_form(z, t) for z, t in rows]
    torch.testing.assert_close(got, torch.tensor([v for v, _ in want]), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, torch.tensor([g for _, g in want]), rtol=1e-5, atol=1e-7)


def test_acc_agrees_with_the_kernels_accumulation_dtype():
    """`losses.acc` states the kernels' rule without importing them (Triton): the two must agree."""
    from fastssl.kernels.reference import acc_dtype

    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert L.acc(torch.zeros(1, dtype=dtype)).dtype == acc_dtype(dtype)
