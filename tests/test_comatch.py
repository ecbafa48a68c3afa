"""CoMatch: loss against a per-sample loop in fp64 (alignment, memory smoothing, masked soft CE, the
pseudo-label graph and the contrastive loss), the queue's wrap-around update, gradients through the
unlabeled term, compile + no host sync, state round trip, identical state on 2 gloo ranks, a falling loss,
a real DALI batch whose second strong view the step reads."""
import math

import pytest
import torch

import algo_checks
import test_algorithms
from algo_testing import (ConfidentNet, grad_with_lambda, random_image_batch, soft_ce_by_hand, softmax_by_hand,
                          teacher_copy, tiny_net)
from fastssl.algorithms import get_algorithm
from fastssl.algorithms.comatch import CoMatch

C = 5
INIT = dict(num_classes=C, num_ulb=64, total_steps=640, num_features=6)


def _algo(**kw):
    torch.manual_seed(5)
    return CoMatch(CoMatch.Config(**kw), **INIT).double()


def _fill(algo, seed=1):
    """A full queue of random unit embeddings / probabilities and a non-uniform alignment history."""
    g = torch.Generator().manual_seed(seed)
    S, P = algo.queue_feats.shape
    with torch.no_grad():
        algo.queue_feats.copy_(torch.nn.functional.normalize(torch.randn(S, P, generator=g, dtype=torch.float64), dim=-1))
        algo.queue_probs.copy_(torch.softmax(2 * torch.randn(S, C, generator=g, dtype=torch.float64), -1))
        algo.p_model_hist.copy_(torch.softmax(torch.randn(algo.p_model_hist.shape, generator=g, dtype=torch.float64), -1))
        algo.queue_filled.fill_(S)


def _unit(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _embed(algo, model, x):
    """The projection of one image by hand: mean of the MLPs' outputs, normalised (on Python floats)."""
    h = model.forward_features(x[None])
    outs = [mlp(h)[0].tolist() for mlp in algo.proj.mlps]
    return _unit([sum(o[j] for o in outs) / len(outs) for j in range(len(outs[0]))])


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _reference(algo, model, batch, T, alpha, tau, ctau, lam_u, lam_c):
    n, B = batch.x_ulb_w.shape[0], batch.x_lb.shape[0]
    pm = algo.p_model_hist.mean(0).tolist()
    Z, Qp = algo.queue_feats.tolist(), algo.queue_probs.tolist()
    sup = sum(-math.log(softmax_by_hand(model(x[None])[0])[int(y)]) for x, y in zip(batch.x_lb, batch.y_lb)) / B
    qs = []
    for w in batch.x_ulb_w:
        p = softmax_by_hand(model(w[None])[0])
        al = [pi * (1 / C + 1e-6) / (m + 1e-6) for pi, m in zip(p, pm)]
        al = [v / sum(al) for v in al]
        zw = _embed(algo, model, w)
        a = softmax_by_hand([_dot(zw, zk) for zk in Z], T)
        mem = [sum(a[k] * Qp[k][c] for k in range(len(Z))) for c in range(C)]
        qs.append([alpha * al[c] + (1 - alpha) * mem[c] for c in range(C)])
    unsup = sum(soft_ce_by_hand(model(s[None])[0], q) for s, q in zip(batch.x_ulb_s, qs) if max(q) >= tau) / n
    z0 = [_embed(algo, model, s) for s in batch.x_ulb_s]
    z1 = [_embed(algo, model, s) for s in batch.x_ulb_s_extra[0]]
    contrast = 0.0
    for i in range(n):
        w = [1.0 if i == j else _dot(qs[i], qs[j]) for j in range(n)]
        w = [v if v >= ctau else 0.0 for v in w]
        w = [v / sum(w) for v in w]
        sim = softmax_by_hand([_dot(z0[i], z1[j]) for j in range(n)], T)
        contrast += -sum(wj * math.log(sj) for wj, sj in zip(w, sim)) / n
    return sup + lam_u * unsup + lam_c * contrast, sup, unsup, contrast, qs


def test_registered_and_needs_the_feature_width():
    assert get_algorithm("comatch") is CoMatch and CoMatch.views.num_strong == 2
    with pytest.raises(ValueError, match="num_features=model.num_features"):
        CoMatch(CoMatch.Config(), **{k: v for k, v in INIT.items() if k != "num_features"})
    with pytest.raises(ValueError, match="smoothing_alpha"):
        CoMatch.Config(smoothing_alpha=1.5)
    with pytest.raises(ValueError, match="contrast_tau"):
        CoMatch.Config(contrast_tau=1.5)  # would cut the diagonal: a graph row of zeros, 0/0
    assert set(_algo().state_dict()) >= {"queue_feats", "queue_probs", "queue_ptr", "queue_filled", "p_model_hist"}


def test_loss_matches_per_sample_loop():
    model = tiny_net(bn=False)
    batch = random_image_batch(CoMatch.views)  # B=4, μB=8
    T, alpha, lam_u, lam_c = 0.5, 0.7, 0.8, 1.3
    algo = _algo(T=T, smoothing_alpha=alpha, queue_size=6, proj_size=3, num_proj=2, da_len=4)
    _fill(algo)
    # thresholds from the reference's own q: half the rows pass τ, and some graph edges are cut
    *_, qs = _reference(algo, model, batch, T, alpha, 0.0, 0.0, 1.0, 1.0)
    top = sorted(max(q) for q in qs)
    tau = (top[3] + top[4]) / 2
    edges = sorted({round(_dot(qs[i], qs[j]), 12) for i in range(8) for j in range(i)})
    ctau = (edges[len(edges) // 2 - 1] + edges[len(edges) // 2]) / 2  # between two edges: no rounding tie
    ref, sup, unsup, contrast, _ = _reference(algo, model, batch, T, alpha, tau, ctau, lam_u, lam_c)
    algo.cfg.tau, algo.cfg.contrast_tau, algo.cfg.lambda_u, algo.cfg.lambda_c = tau, ctau, lam_u, lam_c
    out = algo(model, teacher_copy(model), batch, torch.tensor(3))
    assert float(out.loss.detach()) == pytest.approx(ref, rel=1e-10)
    assert float(out.metrics["sup_loss"]) == pytest.approx(sup, rel=1e-10)
    assert float(out.metrics["unsup_loss"]) == pytest.approx(unsup, rel=1e-10)
    assert float(out.metrics["contrast_loss"]) == pytest.approx(contrast, rel=1e-10)
    assert float(out.metrics["mask_ratio"]) == 0.5
    # before the queue is full, q is the aligned prediction alone (no smoothing)
    algo.queue_filled.fill_(5)
    out = algo(model, teacher_copy(model), batch, torch.tensor(3))
    ref_unsmoothed = _reference(algo, model, batch, T, 1.0, tau, ctau, lam_u, lam_c)[0]
    assert float(out.loss.detach()) == pytest.approx(ref_unsmoothed, rel=1e-10)


def test_queue_update_wraps_and_history_takes_the_mean():
    model = tiny_net(bn=True)
    batch = random_image_batch(CoMatch.views)  # 8 unlabeled + 4 labeled rows per step
    algo = _algo(queue_size=20, proj_size=3, da_len=3)
    algo.queue_ptr.fill_(15)
    old = algo.queue_feats.clone()
    out = algo(model, teacher_copy(model), batch, torch.tensor(0))
    algo.update_state(batch, out.state)
    feats, probs = out.state.feats, out.state.probs
    rows = [(15 + i) % 20 for i in range(12)]  # 15..19, then 0..6
    torch.testing.assert_close(algo.queue_feats[rows], feats, rtol=0, atol=0)
    torch.testing.assert_close(algo.queue_probs[rows], probs, rtol=0, atol=0)
    untouched = [r for r in range(20) if r not in rows]
    torch.testing.assert_close(algo.queue_feats[untouched], old[untouched], rtol=0, atol=0)
    assert int(algo.queue_ptr) == 7 and int(algo.queue_filled) == 12
    # labeled rows enter with their one-hot labels; unlabeled ones with the aligned prediction (sums to 1)
    assert torch.equal(probs[8:].argmax(-1), batch.y_lb) and torch.equal(probs[8:].sum(-1), torch.ones(4, dtype=probs.dtype))
    torch.testing.assert_close(probs[:8].sum(-1), torch.ones(8, dtype=probs.dtype))
    model.train()
    mean = torch.softmax(model(torch.cat([batch.x_lb, batch.x_ulb_w, batch.x_ulb_s, batch.x_ulb_s_extra[0]]))[4:12], -1).mean(0)
    torch.testing.assert_close(algo.p_model_hist[-1], mean, rtol=1e-10, atol=1e-12)
    algo.update_state(batch, out.state)
    assert int(algo.queue_ptr) == 19 and int(algo.queue_filled) == 20


def test_gradient_reaches_student_through_unlabeled_term_and_head():
    model = tiny_net(bn=True)
    batch = random_image_batch(CoMatch.views)
    kw = {"tau": 0.0, "queue_size": 12}
    g1 = grad_with_lambda(CoMatch, kw, model, batch, torch.tensor(3), lambda_u=1.0, **INIT)
    g0 = grad_with_lambda(CoMatch, kw, model, batch, torch.tensor(3), lambda_u=0.0, **INIT)
    assert any((a - b).abs().max() > 1e-8 for a, b in zip(g1, g0))
    algo = _algo(queue_size=12)
    algo(model, teacher_copy(model), batch, torch.tensor(3)).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.proj.parameters())


def test_compiles_and_is_sync_free():
    algo_checks.check_compiles_and_sync_free("comatch", queue_size=12)  # full after one update: smoothing runs


def test_state_round_trip():
    algo_checks.state_round_trip("comatch", queue_size=30)


def test_two_ranks_hold_identical_queues():
    r0, r1 = algo_checks.two_rank_states("comatch", steps=3, queue_size=40)
    for k in r0[True]:
        assert torch.equal(r0[True][k], r1[True][k]), k
    assert int(r0[True]["queue_ptr"]) == (3 * 24) % 40 and int(r0[True]["queue_filled"]) == 40  # 2 ranks × 12 rows
    assert not torch.equal(r0[False]["queue_feats"], r1[False]["queue_feats"])  # the control: without the gather
    assert not torch.equal(r0[False]["p_model_hist"], r1[False]["p_model_hist"])
    assert int(r0[False]["queue_ptr"]) == 36


def test_short_cpu_run_lowers_the_loss():
    test_algorithms.test_short_run_lowers_loss("comatch")


def test_real_dali_batch_feeds_both_strong_views():
    batch = algo_checks.dali_batch(CoMatch.views)
    s0, s1 = batch.x_ulb_s, batch.x_ulb_s_extra[0]
    assert s0.shape == s1.shape == batch.x_ulb_w.shape and not torch.equal(s0, s1)
    torch.manual_seed(0)
    model = ConfidentNet(scale=1.0)
    algo = CoMatch(CoMatch.Config(tau=0.0), num_classes=4, num_ulb=40, num_features=model.num_features)
    out = algo(model, teacher_copy(model), batch, torch.tensor(0))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in [*model.parameters(), *algo.parameters()])
    # the contrastive term reads the second strong view: the same image twice gives another loss
    same = algo(model, teacher_copy(model), batch._replace(x_ulb_s_extra=(s0,)), torch.tensor(0))
    assert float(same.metrics["contrast_loss"]) != pytest.approx(float(out.metrics["contrast_loss"]), rel=1e-3)
    algo.update_state(batch, out.state)


def test_ring_write_keeps_the_last_rows_of_an_oversized_push():
    from fastssl.algorithms.memory import ring_write

    bank, labels = torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    ptr, filled = torch.tensor(3), torch.tensor(0)
    rows = torch.arange(12.0).view(6, 2)  # 6 rows into 4 slots from position 3: rows 2..5 survive
    ring_write([bank, labels], [rows, torch.arange(6)], ptr, filled)
    # row i goes to (3 + i) % 4: rows 2, 3, 4, 5 land in slots 1, 2, 3, 0
    assert torch.equal(labels, torch.tensor([5, 2, 3, 4]))
    assert torch.equal(bank, rows[[5, 2, 3, 4]])
    assert int(ptr) == (3 + 6) % 4 and int(filled) == 4
