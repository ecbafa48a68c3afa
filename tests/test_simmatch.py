"""SimMatch: loss against a per-sample loop in fp64 (alignment, instance similarity, unfolding,
aggregation, masked soft CE, instance loss), the warm-up and bank-filled gates, the bank's ring update,
gradients through the unlabeled term and the head, compile + no host sync, state round trip, identical
state on 2 gloo ranks, a falling loss, a real DALI batch."""
import math

import pytest
import torch

import algo_checks
import test_algorithms
from algo_testing import ConfidentNet, grad_with_lambda, random_image_batch, soft_ce_by_hand, softmax_by_hand, teacher_copy, tiny_net
from fastssl.algorithms import get_algorithm
from fastssl.algorithms.simmatch import SimMatch
from test_comatch import _dot, _embed

C = 5
INIT = dict(num_classes=C, num_ulb=64, total_steps=640, num_features=6)  # warm-up 1/1024 of 640: step ≥ 1


def _algo(**kw):
    torch.manual_seed(5)
    return SimMatch(SimMatch.Config(**kw), **INIT).double()


def _fill(algo, seed=1):
    g = torch.Generator().manual_seed(seed)
    K, P = algo.bank_feats.shape
    with torch.no_grad():
        algo.bank_feats.copy_(torch.nn.functional.normalize(torch.randn(K, P, generator=g, dtype=torch.float64), dim=-1))
        algo.bank_labels.copy_(torch.randint(0, C, (K,), generator=g))
        algo.bank_filled.fill_(K)
        algo.p_model_hist.copy_(torch.softmax(torch.randn(algo.p_model_hist.shape, generator=g, dtype=torch.float64), -1))


def _reference(algo, model, batch, T, alpha, tau, lam_u, lam_in, active=True, aggregate=True):
    n, B = batch.x_ulb_w.shape[0], batch.x_lb.shape[0]
    pm = algo.p_model_hist.mean(0).tolist()
    bank, labels = algo.bank_feats.tolist(), algo.bank_labels.tolist()
    sup = sum(-math.log(softmax_by_hand(model(x[None])[0])[int(y)]) for x, y in zip(batch.x_lb, batch.y_lb)) / B
    unsup = inst = 0.0
    qs = []
    for w, s in zip(batch.x_ulb_w, batch.x_ulb_s):
        p = softmax_by_hand(model(w[None])[0])
        p = [pi * (1 / C + 1e-6) / (m + 1e-6) for pi, m in zip(p, pm)]
        p = [v / sum(p) for v in p]
        sim = softmax_by_hand([_dot(_embed(algo, model, w), b) for b in bank], T)
        unf = [sk * p[lk] for sk, lk in zip(sim, labels)]
        unf = [v / sum(unf) for v in unf]
        q = [alpha * p[c] + (1 - alpha) * sum(sk for sk, lk in zip(sim, labels) if lk == c) for c in range(C)]
        q = q if active and aggregate else p
        qs.append(q)
        if max(q) >= tau:
            unsup += soft_ce_by_hand(model(s[None])[0], q) / n
        if active:
            student = softmax_by_hand([_dot(_embed(algo, model, s), b) for b in bank], T)
            inst += -sum(u * math.log(v) for u, v in zip(unf, student)) / n
    return sup + lam_u * unsup + lam_in * inst, sup, unsup, inst, qs


def test_registered_and_needs_the_feature_width():
    assert get_algorithm("simmatch") is SimMatch
    with pytest.raises(ValueError, match="num_features=model.num_features"):
        SimMatch(SimMatch.Config(), **{k: v for k, v in INIT.items() if k != "num_features"})
    with pytest.raises(ValueError, match="bank_size"):
        SimMatch.Config(bank_size=0)
    assert set(_algo().state_dict()) >= {"bank_feats", "bank_labels", "bank_ptr", "p_model_hist"}


def test_loss_matches_per_sample_loop():
    model = tiny_net(bn=False)
    batch = random_image_batch(SimMatch.views)  # B=4, μB=8
    T, alpha, lam_u, lam_in = 0.5, 0.6, 0.8, 1.3
    algo = _algo(T=T, smoothing_alpha=alpha, bank_size=7, proj_size=3, num_proj=2, da_len=4)
    _fill(algo)
    qs = _reference(algo, model, batch, T, alpha, 0.0, 1.0, 1.0)[-1]
    top = sorted(max(q) for q in qs)
    tau = (top[3] + top[4]) / 2  # half the rows pass
    ref, sup, unsup, inst, _ = _reference(algo, model, batch, T, alpha, tau, lam_u, lam_in)
    algo.cfg.tau, algo.cfg.lambda_u, algo.cfg.lambda_in = tau, lam_u, lam_in
    out = algo(model, teacher_copy(model), batch, torch.tensor(3))
    assert float(out.loss.detach()) == pytest.approx(ref, rel=1e-10)
    for key, val in (("sup_loss", sup), ("unsup_loss", unsup), ("in_loss", inst)):
        assert float(out.metrics[key]) == pytest.approx(val, rel=1e-10), key
    assert float(out.metrics["mask_ratio"]) == 0.5 and inst > 0
    # the warm-up (step 0 < 640/1024): q = p and no instance loss
    ref_off = _reference(algo, model, batch, T, alpha, tau, lam_u, lam_in, active=False)
    out = algo(model, teacher_copy(model), batch, torch.tensor(0))
    assert float(out.loss.detach()) == pytest.approx(ref_off[0], rel=1e-10) and float(out.metrics["in_loss"]) == 0
    # a bank not yet written through: no aggregation (q = p), the instance loss on whatever the bank holds
    algo.bank_filled.fill_(6)
    ref_partial = _reference(algo, model, batch, T, alpha, tau, lam_u, lam_in, aggregate=False)
    out = algo(model, teacher_copy(model), batch, torch.tensor(3))
    assert float(out.loss.detach()) == pytest.approx(ref_partial[0], rel=1e-10)
    assert ref_partial[0] != pytest.approx(ref, rel=1e-6)


def test_bank_ring_update_and_history():
    model = tiny_net(bn=True)
    batch = random_image_batch(SimMatch.views)
    algo = _algo(bank_size=6, proj_size=3, da_len=3)
    algo.bank_ptr.fill_(4)
    init = algo.bank_feats.clone()
    torch.testing.assert_close(init.norm(dim=-1), torch.ones(6, dtype=torch.float64))  # random unit vectors
    assert torch.equal(init, _algo(bank_size=6, proj_size=3).bank_feats)  # from a fixed seed: alike on every rank
    out = algo(model, teacher_copy(model), batch, torch.tensor(0))
    algo.update_state(batch, out.state)
    rows = [4, 5, 0, 1]
    torch.testing.assert_close(algo.bank_feats[rows], out.state.feats_lb, rtol=0, atol=0)
    assert torch.equal(algo.bank_labels[rows], batch.y_lb)
    assert torch.equal(algo.bank_feats[[2, 3]], init[[2, 3]])
    assert int(algo.bank_ptr) == 2 and int(algo.bank_filled) == 4
    torch.testing.assert_close(out.state.feats_lb.norm(dim=-1), torch.ones(4, dtype=torch.float64))
    model.train()
    mean = torch.softmax(model(torch.cat([batch.x_lb, batch.x_ulb_w, batch.x_ulb_s]))[4:12], -1).mean(0)
    torch.testing.assert_close(algo.p_model_hist[-1], mean, rtol=1e-10, atol=1e-12)
    algo.update_state(batch, out.state)
    assert int(algo.bank_ptr) == 0 and int(algo.bank_filled) == 6


def test_gradient_reaches_student_through_unlabeled_term_and_head():
    model = tiny_net(bn=True)
    batch = random_image_batch(SimMatch.views)
    kw = {"tau": 0.0, "bank_size": 4}
    g1 = grad_with_lambda(SimMatch, kw, model, batch, torch.tensor(3), lambda_u=1.0, **INIT)
    g0 = grad_with_lambda(SimMatch, kw, model, batch, torch.tensor(3), lambda_u=0.0, **INIT)
    assert any((a - b).abs().max() > 1e-8 for a, b in zip(g1, g0))
    algo = _algo(bank_size=7)
    _fill(algo)
    algo(model, teacher_copy(model), batch, torch.tensor(3)).loss.backward()  # the instance loss reaches the head
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.proj.parameters())


def test_compiles_and_is_sync_free():
    algo_checks.check_compiles_and_sync_free("simmatch", bank_size=4)  # wraps within one update


def test_state_round_trip():
    algo_checks.state_round_trip("simmatch", bank_size=6)


def test_two_ranks_hold_identical_banks():
    r0, r1 = algo_checks.two_rank_states("simmatch", steps=3, bank_size=10)
    for k in r0[True]:
        assert torch.equal(r0[True][k], r1[True][k]), k
    assert int(r0[True]["bank_ptr"]) == (3 * 8) % 10 and int(r0[True]["bank_filled"]) == 10  # 2 ranks × B=4 rows
    assert not torch.equal(r0[False]["bank_feats"], r1[False]["bank_feats"])  # the control: without the gather
    assert int(r0[False]["bank_ptr"]) == 2


def test_short_cpu_run_lowers_the_loss():
    test_algorithms.test_short_run_lowers_loss("simmatch")


def test_real_dali_batch_feeds_it():
    batch = algo_checks.dali_batch(SimMatch.views)
    assert batch.x_ulb_s.shape == batch.x_ulb_w.shape and not torch.equal(batch.x_ulb_s, batch.x_ulb_w)
    torch.manual_seed(0)
    model = ConfidentNet(scale=1.0)
    algo = SimMatch(SimMatch.Config(tau=0.0, bank_size=4), num_classes=4, num_ulb=40, total_steps=64,
                    num_features=model.num_features)
    algo.update_state(batch, algo(model, teacher_copy(model), batch, torch.tensor(10)).state)
    out = algo(model, teacher_copy(model), batch, torch.tensor(11))  # reads the bank the first step filled
    out.loss.backward()
    assert torch.isfinite(out.loss) and float(out.metrics["in_loss"]) > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in [*model.parameters(), *algo.parameters()])
