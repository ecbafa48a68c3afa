"""Debiased Self-Training: the loss against a per-sample loop in fp64 (classifier CE on both labeled views,
pseudo head on the thresholded pseudo-labels, worst-case estimation loss); the gradient reversal (heads get
the plain gradient, the backbone −c(t) times it) and its warm-up; the unlabeled term reaches the backbone;
the step compiles with fullgraph and is sync-free. (Registry-wide: tests/test_algorithms.py,
test_zoo_integration.py — the real DALI loader's views —, test_host_syncs.py — whole Trainer steps.)"""
import math

import pytest
import torch

from algo_testing import (STEP, ConfidentNet, build_algo, ce_by_hand, param_grads, random_image_batch, separable_batch,
                          softmax_by_hand, teacher_copy, tiny_net)
from fastssl.algorithms.dst import DST, grad_reverse, grl_coeff
from fastssl.train.syncs import HostSyncTrace

INIT = dict(num_classes=5, num_ulb=64, total_steps=640, num_features=6)


def make(**kw):
    torch.manual_seed(3)
    return DST(DST.Config(**{"head_dropout": 0.0, **kw}), **INIT).double()


def dst_batch():
    """random_image_batch plus the labeled strong view DST declares (another Gaussian image per labeled row)."""
    b = random_image_batch(DST.views)
    return b._replace(x_lb_s=torch.randn(b.x_lb.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64))


def reference(algo, model, batch, step, tau, lam_s, lam_u, eta, eta_p):
    """One sample at a time: features, the three heads, every loss term by hand."""
    def rows(x, head):
        return [head(model.forward_features(xi[None]))[0] for xi in x]
    y = [int(t) for t in batch.y_lb]
    lb, lb_s, w = rows(batch.x_lb, model.head), rows(batch.x_lb_s, model.head), rows(batch.x_ulb_w, model.head)
    ps = rows(batch.x_ulb_s, algo.pseudo_head)
    adv_l, adv_u = rows(batch.x_lb, algo.adv_head), rows(batch.x_ulb_w, algo.adv_head)
    B, n = len(y), len(w)
    sup = sum(ce_by_hand(z, t) for z, t in zip(lb, y)) / B
    sup_s = sum(ce_by_hand(z, t) for z, t in zip(lb_s, y)) / B
    st = 0.0
    for zw, zs in zip(w, ps):
        p = softmax_by_hand(zw)
        if max(p) >= tau:
            st += ce_by_hand(zs, p.index(max(p)))
    st /= n
    argmax = lambda z: max(range(len(z)), key=lambda c: float(z[c].detach()))  # noqa: E731
    wce_l = sum(ce_by_hand(a, argmax(z)) for a, z in zip(adv_l, lb)) / B
    wce_u = sum(-math.log(min(1 - softmax_by_hand(a)[argmax(z)] + 1e-6, 1.0)) for a, z in zip(adv_u, w)) / n
    wce = eta_p * wce_l + wce_u
    return sup + lam_s * sup_s + lam_u * st + eta * wce, {"sup_loss": sup, "sup_strong_loss": sup_s, "unsup_loss": st,
                                                          "wce_loss": wce}


def test_loss_matches_per_sample_loop():
    model = tiny_net(bn=False)
    with torch.no_grad():
        model.head.weight.mul_(8)  # confident enough that some, not all, rows pass τ
    batch = dst_batch()
    kw = dict(tau=0.42, lambda_s=0.3, lambda_u=1.3, eta=0.7, eta_prime=2.0)
    algo = make(**kw)
    out = algo(model, teacher_copy(model), batch, torch.tensor(500))
    want, parts = reference(algo, model, batch, 500, kw["tau"], kw["lambda_s"], kw["lambda_u"], kw["eta"], kw["eta_prime"])
    assert 0 < float(out.metrics["mask_ratio"]) < 1
    assert float(out.loss.detach()) == pytest.approx(want, rel=1e-12)
    for k, v in parts.items():
        assert float(out.metrics[k]) == pytest.approx(v, rel=1e-12), k


def test_grl_coefficient_schedule():
    for t in (0, 1, 500, 1000, 10**6):
        want = 2 * 0.1 / (1 + math.exp(-t / 1000)) - 0.1
        assert float(grl_coeff(torch.tensor(t), 0.1, 1000.0)) == pytest.approx(want, rel=1e-12, abs=1e-15)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 4, dtype=torch.float64)
    y = grad_reverse(x, torch.tensor(0.25))
    assert torch.equal(y, x)
    y.backward(g)
    torch.testing.assert_close(x.grad, -0.25 * g, rtol=0, atol=0)


def test_worst_case_gradient_is_reversed_into_the_backbone_only():
    """η = 1 minus η = 0: the worst-case term's own gradient. The adversarial head gets the plain gradient of
    that term; the backbone (conv) gets −c(t) times the plain gradient (computed without the reversal)."""
    model = tiny_net(bn=False)
    batch = dst_batch()
    step = torch.tensor(700)
    c = float(grl_coeff(step, 0.1, 1000.0))
    grads = {}
    for eta in (0.0, 1.0):
        algo = make(eta=eta)
        model.zero_grad()
        algo(model, teacher_copy(model), batch, step).loss.backward()
        grads[eta] = (param_grads(model), param_grads(algo.adv_head))
    algo = make()
    model.zero_grad()
    f = model.forward_features(torch.cat([batch.x_lb, batch.x_ulb_w]))
    logits = model.head(f).detach()
    from fastssl.algorithms.dst import worst_case_estimation_loss
    B = batch.x_lb.shape[0]
    adv = algo.adv_head(f)  # no reversal
    worst_case_estimation_loss(logits[:B], adv[:B], logits[B:], adv[B:], 2.0).backward()
    plain_model, plain_head = param_grads(model), param_grads(algo.adv_head)
    wce_model = [a - b for a, b in zip(grads[1.0][0], grads[0.0][0])]
    for got, want, name in zip(wce_model, plain_model, [n for n, _ in model.named_parameters()]):
        if name.startswith("head"):
            assert got.abs().max() < 1e-14, name  # the classifier head is not on the worst-case path
        else:
            torch.testing.assert_close(got, -c * want, rtol=1e-9, atol=1e-14)
            assert want.abs().max() > 1e-6, name
    for got, want in zip(grads[1.0][1], plain_head):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


def test_unlabeled_term_reaches_the_backbone_and_pseudo_head():
    model = tiny_net(bn=False)
    with torch.no_grad():
        model.head.weight.mul_(8)
    batch = dst_batch()
    got = {}
    for lam in (0.0, 1.0):
        algo = make(tau=0.42, lambda_u=lam)
        model.zero_grad()
        algo(model, teacher_copy(model), batch, torch.tensor(0)).loss.backward()
        got[lam] = param_grads(model)[0], param_grads(algo.pseudo_head)[0]
    assert (got[1.0][0] - got[0.0][0]).abs().max() > 1e-8  # conv weight
    assert got[0.0][1].abs().max() == 0 and got[1.0][1].abs().max() > 0


def test_step_compiles_and_is_sync_free():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ConfidentNet(scale=3.0)
    teacher = teacher_copy(model)
    algo = build_algo("dst", head_dropout=0.0)
    batch = separable_batch(DST)
    step = torch.tensor(STEP)
    with HostSyncTrace() as trace:
        eager = algo(model, teacher, batch, step)
        eager.loss.backward()
    assert trace.total == 0, trace
    eager_grad = algo.adv_head[0].weight.grad.clone()
    algo.zero_grad()
    out = torch.compile(lambda b, t: algo(model, teacher, b, t), backend="aot_eager", fullgraph=True)(batch, step)
    out.loss.backward()
    torch.testing.assert_close(out.loss, eager.loss)
    torch.testing.assert_close(algo.adv_head[0].weight.grad, eager_grad)


def test_needs_the_feature_width():
    with pytest.raises(ValueError, match="num_features=model.num_features"):
        DST(DST.Config(), **{**INIT, "num_features": 0})
    assert make().pseudo_head[0].out_features == 12  # 0 = twice the feature width
