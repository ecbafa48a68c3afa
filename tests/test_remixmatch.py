"""ReMixMatch: loss against a per-sample reference (distribution alignment with a non-uniform history,
injected λ / permutation / rotations), history ring update, rotation head, λ_u matters, compile-ability."""
import math

import pytest
import torch

from algo_testing import grad_with_lambda, random_image_batch, softmax_by_hand, teacher_copy, tiny_net
from fastssl.algorithms import get_algorithm
from fastssl.algorithms.remixmatch import ReMixMatch

INIT = dict(num_classes=5, num_ulb=64, total_steps=640, num_features=6)


def _algo(**kw):
    cfg = ReMixMatch.Config(**kw)
    torch.manual_seed(5)
    return ReMixMatch(cfg, **INIT).double()


def _ce_row(logits, target):
    return -sum(t * math.log(p) for t, p in zip(target, softmax_by_hand(logits.tolist())))


def test_registered_views_and_rotation_head_needs_the_feature_width():
    assert get_algorithm("remixmatch") is ReMixMatch
    assert ReMixMatch.views.num_weak == 1 and ReMixMatch.views.num_strong == 2
    no_width = {k: v for k, v in INIT.items() if k != "num_features"}
    with pytest.raises(ValueError, match="num_features=model.num_features"):
        ReMixMatch(ReMixMatch.Config(), **no_width)
    assert ReMixMatch(ReMixMatch.Config(lambda_rot=0.0), **no_width).rot_head is None
    algo = _algo()
    assert {n for n, _ in algo.named_parameters()} == {"rot_head.weight", "rot_head.bias"}
    assert set(algo.state_dict()) >= {"p_model_hist", "p_target"}


def test_loss_matches_per_sample_reference():
    model = tiny_net(bn=False)
    batch = random_image_batch(ReMixMatch.views)  # B=4, μB=8 → 4 + 3·8 = 28 rows to mix
    algo = _algo(lambda_u=1.5, lambda_kl=0.5, lambda_rot=0.5, unsup_warmup=0.25)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        algo.p_model_hist.copy_(torch.softmax(torch.randn(128, 5, generator=g, dtype=torch.float64), -1))
    perm = torch.randperm(28, generator=g)
    rot = torch.randint(0, 4, (8,), generator=g)
    algo.sample_mix = lambda n, like: (torch.tensor(0.7, dtype=like.dtype), perm)
    algo.sample_rotation = lambda n, like: rot
    step = torch.tensor(80)
    out = algo(model, teacher_copy(model), batch, step)

    p_model = algo.p_model_hist.mean(0).tolist()
    guesses = []
    for w in batch.x_ulb_w:
        p = softmax_by_hand(model(w[None])[0].tolist())
        a = [pi * 0.2 / pm for pi, pm in zip(p, p_model)]  # p_target uniform = 0.2
        a = [v / sum(a) for v in a]
        s = [v ** 2 for v in a]  # T = 0.5
        guesses.append([v / sum(s) for v in s])
    onehots = [[1.0 if c == int(y) else 0.0 for c in range(5)] for y in batch.y_lb]
    targets = onehots + guesses * 3
    inputs = torch.cat([batch.x_lb, batch.x_ulb_s, batch.x_ulb_s_extra[0], batch.x_ulb_w])
    sup = unsup = 0.0
    for i in range(28):
        j = int(perm[i])
        logits = model((0.7 * inputs[i] + 0.3 * inputs[j])[None])[0]
        ce = _ce_row(logits, [0.7 * a + 0.3 * b for a, b in zip(targets[i], targets[j])])
        if i < 4:
            sup += ce / 4
        else:
            unsup += ce / 24
    pre = sum(_ce_row(model(s[None])[0], q) for s, q in zip(batch.x_ulb_s, guesses)) / 8
    rot_loss = 0.0
    for s, k in zip(batch.x_ulb_s, rot):
        z = algo.rot_head(model.forward_features(torch.rot90(s, int(k), dims=(-2, -1))[None]))[0]
        rot_loss += -math.log(softmax_by_hand(z.tolist())[int(k)]) / 8
    ramp = float(torch.tensor(80.0) / (640 / 4))
    ref = sup + ramp * (1.5 * unsup + 0.5 * pre) + 0.5 * rot_loss
    assert float(out.loss.detach()) == pytest.approx(ref, rel=1e-7)  # ramp·λ is fp32 tensor math
    assert float(out.metrics["sup_loss"]) == pytest.approx(sup, rel=1e-12)
    assert float(out.metrics["unsup_loss"]) == pytest.approx(unsup, rel=1e-12)
    assert float(out.metrics["pre_mixup_loss"]) == pytest.approx(pre, rel=1e-12)
    assert float(out.metrics["rot_loss"]) == pytest.approx(rot_loss, rel=1e-12)


def test_distribution_alignment_history_ring():
    model = tiny_net(bn=True)
    batch = random_image_batch(ReMixMatch.views)
    algo = _algo(da_len=4)
    torch.testing.assert_close(algo.p_model_hist, torch.full((4, 5), 0.2, dtype=torch.float64))
    hist = []
    for s in range(6):
        out = algo(model, teacher_copy(model), batch._replace(x_ulb_w=batch.x_ulb_w * (1 + s)), torch.tensor(s))
        algo.update_state(batch, out.state)
        hist.append(out.state.probs_mean)
    # the state is the unaligned mean weak-view prediction of the step; the ring keeps the last da_len
    model.train()
    p = torch.softmax(model(batch.x_ulb_w * 6), -1).mean(0)
    torch.testing.assert_close(hist[-1], p, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(algo.p_model_hist, torch.stack(hist[-4:]), rtol=0, atol=0)
    # alignment with a flat history and uniform target is the identity
    flat = _algo()
    probs = torch.softmax(torch.randn(3, 5, dtype=torch.float64), -1)
    torch.testing.assert_close(flat.align(probs), probs, rtol=1e-12, atol=1e-14)


def test_rotation_labels_and_lambda_matters_and_compiles():
    algo = _algo()
    k = algo.sample_rotation(4000, torch.zeros(1))
    assert k.dtype == torch.int64 and set(k.tolist()) == {0, 1, 2, 3}
    model = tiny_net(bn=True)
    batch = random_image_batch(ReMixMatch.views)
    step = torch.tensor(1000)
    kw = {}
    g1 = grad_with_lambda(ReMixMatch, kw, model, batch, step, lambda_u=1.0, **INIT)
    g0 = grad_with_lambda(ReMixMatch, kw, model, batch, step, lambda_u=0.0, **INIT)
    assert any((a - b).abs().max() > 1e-8 for a, b in zip(g1, g0))
    teacher = teacher_copy(model)
    fn = torch.compile(lambda b, s: algo(model, teacher, b, s), backend="eager", fullgraph=True)
    out = fn(batch, step)
    out.loss.backward()
    assert algo.rot_head.weight.grad is not None and algo.rot_head.weight.grad.abs().sum() > 0
    algo.update_state(batch, out.state)
