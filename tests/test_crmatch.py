"""CRMatch: loss against a per-sample loop in fp64 (pseudo-labels, feature distance, rotations), gradients
through the unlabeled term and into both heads, compile + no host sync, a falling loss, a real DALI batch."""
import math

import pytest
import torch

import algo_checks
import test_algorithms
from algo_testing import ConfidentNet, ce_by_hand, grad_with_lambda, random_image_batch, softmax_by_hand, teacher_copy, tiny_net
from fastssl.algorithms import get_algorithm
from fastssl.algorithms.base import Algorithm
from fastssl.algorithms.crmatch import CRMatch

INIT = dict(num_classes=5, num_ulb=64, total_steps=640, num_features=6)


def _algo(**kw):
    torch.manual_seed(5)
    return CRMatch(CRMatch.Config(**kw), **INIT).double()


def _cos(a, b):
    a, b = a.tolist(), b.tolist()
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_registered_heads_and_feature_width():
    assert get_algorithm("crmatch") is CRMatch
    no_width = {k: v for k, v in INIT.items() if k != "num_features"}
    with pytest.raises(ValueError, match="num_features=model.num_features"):
        CRMatch(CRMatch.Config(), **no_width)
    off = CRMatch(CRMatch.Config(lambda_ds=0.0, lambda_rot=0.0), **no_width)
    assert off.ds_head is None and off.rot_head is None and not list(off.buffers())
    assert {n.split(".")[0] for n, _ in _algo().named_parameters()} == {"ds_head", "rot_head"}
    with pytest.raises(ValueError, match="lambda_ds"):
        CRMatch.Config(lambda_ds=-1.0)


def test_loss_matches_per_sample_loop():
    model = tiny_net(bn=False)  # per-sample forwards equal the batched one
    batch = random_image_batch(CRMatch.views)  # B=4, μB=8
    f = model.forward_features
    with torch.no_grad():
        maxprob = sorted(max(softmax_by_hand(model(w[None])[0])) for w in batch.x_ulb_w)
    tau = (maxprob[3] + maxprob[4]) / 2  # half the rows pseudo-labeled, half masked out
    lam_u, lam_ds, lam_rot = 0.7, 1.3, 0.4
    algo = _algo(tau=tau, lambda_u=lam_u, lambda_ds=lam_ds, lambda_rot=lam_rot)
    with torch.no_grad():  # centre the projection on these views: similarities of both signs (the clamp matters)
        h = f(torch.cat([batch.x_ulb_w, batch.x_ulb_s]))
        algo.ds_head.bias.sub_(algo.ds_head(h).mean(0))
    out = algo(model, teacher_copy(model), batch, torch.tensor(7))

    n, B = 8, 4
    sup = sum(ce_by_hand(model(x[None])[0], int(y)) for x, y in zip(batch.x_lb, batch.y_lb)) / B
    pl = ds = 0.0
    kept, signs = 0, set()
    for w, s in zip(batch.x_ulb_w, batch.x_ulb_s):
        p = softmax_by_hand(model(w[None])[0])
        if max(p) >= tau:
            kept += 1
            pl += ce_by_hand(model(s[None])[0], p.index(max(p))) / n
            cos = _cos(algo.ds_head(f(s[None]))[0], algo.ds_head(f(w[None]))[0])
            signs.add(cos > 0)
            ds += max(0.0, cos) / n
    rot = sum(ce_by_hand(algo.rot_head(f(torch.rot90(w, k, dims=(-2, -1))[None]))[0], k)
              for k in range(4) for w in batch.x_ulb_w[:B]) / (4 * B)
    assert kept == 4 and signs == {True, False}
    ref = sup + lam_u * pl + lam_ds * ds + lam_rot * rot
    assert float(out.loss.detach()) == pytest.approx(ref, rel=1e-10)
    for key, val in (("sup_loss", sup), ("unsup_loss", pl), ("ds_loss", ds), ("rot_loss", rot)):
        assert float(out.metrics[key]) == pytest.approx(val, rel=1e-10), key
    assert float(out.metrics["mask_ratio"]) == 0.5


def test_gradient_reaches_student_through_unlabeled_term_and_heads():
    model = tiny_net(bn=True)
    batch = random_image_batch(CRMatch.views)
    step, kw = torch.tensor(10), {"tau": 0.0}  # every row pseudo-labeled
    g1 = grad_with_lambda(CRMatch, kw, model, batch, step, lambda_u=1.0, **INIT)
    g0 = grad_with_lambda(CRMatch, kw, model, batch, step, lambda_u=0.0, **INIT)
    assert any((a - b).abs().max() > 1e-8 for a, b in zip(g1, g0))
    algo = _algo(tau=0.0)
    algo(model, teacher_copy(model), batch, step).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.parameters())


def test_compiles_and_is_sync_free():
    algo_checks.check_compiles_and_sync_free("crmatch")
    algo_checks.check_compiles_and_sync_free("crmatch", lambda_rot=0.0, entmin_weight=0.1)


def test_stateless():
    """No buffers (nothing to gather or checkpoint beyond the heads' parameters, which the optimizer owns)."""
    assert CRMatch.update_state is Algorithm.update_state
    assert not list(_algo().buffers())


def test_short_cpu_run_lowers_the_loss():
    test_algorithms.test_short_run_lowers_loss("crmatch")


def test_real_dali_batch_feeds_the_views_it_reads():
    batch = algo_checks.dali_batch(CRMatch.views)
    assert batch.x_ulb_s.shape == batch.x_ulb_w.shape and not torch.equal(batch.x_ulb_s, batch.x_ulb_w)
    torch.manual_seed(0)
    model = ConfidentNet(scale=50.0)
    algo = CRMatch(CRMatch.Config(tau=0.0), num_classes=4, num_ulb=40, num_features=model.num_features)
    out = algo(model, teacher_copy(model), batch, torch.tensor(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and float(out.metrics["rot_loss"]) > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in [*model.parameters(), *algo.parameters()])
