"""MixMatch: loss against a per-sample reference with injected λ and permutation, label guessing, the
one-forward argument that replaces interleaving, λ_u matters, compile-ability."""
import pytest
import torch

from algo_testing import (grad_with_lambda, mean_soft_ce_by_hand, mean_softmax_mse_by_hand, random_image_batch,
                          softmax_by_hand, teacher_copy, tiny_net)
from fastssl.algorithms import get_algorithm
from fastssl.algorithms.mixmatch import MixMatch

INIT = dict(num_classes=5, num_ulb=64, total_steps=100)


def _fixed(algo, lam, perm):
    algo.sample_mix = lambda n, like: (torch.tensor(lam, dtype=like.dtype), perm)
    return algo


def test_registered_and_views():
    assert get_algorithm("mixmatch") is MixMatch
    assert MixMatch.views.num_weak == 2 and MixMatch.views.num_strong == 0


def test_loss_matches_per_sample_reference():
    model = tiny_net(bn=False)
    batch = random_image_batch(MixMatch.views)  # B=4, μB=8: 20 rows to mix
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(3))
    algo = _fixed(MixMatch(MixMatch.Config(lambda_u=7.0, unsup_warmup=0.5), **INIT), 0.8, perm)
    out = algo(model, teacher_copy(model), batch, torch.tensor(30))
    # reference, one sample at a time
    T = 0.5
    guesses = []
    for a, b in zip(batch.x_ulb_w, batch.x_ulb_w_extra[0]):
        p1 = softmax_by_hand(model(a[None])[0].tolist())
        p2 = softmax_by_hand(model(b[None])[0].tolist())
        avg = [(u + v) / 2 for u, v in zip(p1, p2)]
        s = [v ** (1 / T) for v in avg]
        guesses.append([v / sum(s) for v in s])
    targets = [[1.0 if c == int(y) else 0.0 for c in range(5)] for y in batch.y_lb] + guesses + guesses
    inputs = torch.cat([batch.x_lb, batch.x_ulb_w, batch.x_ulb_w_extra[0]])
    mixed_x = torch.stack([0.8 * inputs[i] + 0.2 * inputs[int(perm[i])] for i in range(20)])
    mixed_y = torch.tensor([[0.8 * targets[i][c] + 0.2 * targets[int(perm[i])][c] for c in range(5)]
                            for i in range(20)], dtype=torch.float64)
    logits = torch.stack([model(mixed_x[i][None])[0] for i in range(20)])
    weight = float(out.metrics["unsup_weight"])  # 7 · ramp, fp32 tensor math
    assert weight == pytest.approx(7.0 * 30 / 50, rel=1e-6)
    ref = mean_soft_ce_by_hand(logits[:4], mixed_y[:4]) + weight * mean_softmax_mse_by_hand(logits[4:], mixed_y[4:])
    assert float(out.loss.detach()) == pytest.approx(ref, rel=1e-12)


def test_one_forward_makes_interleaving_unnecessary():
    """Interleaving exists because the reference runs labeled and unlabeled chunks through separate BN
    forwards. In one forward each row's output is independent of where it sits in the batch, and the running
    statistics are updated once, from the whole batch."""
    model = tiny_net(bn=True)
    x = torch.randn(12, 3, 6, 6, dtype=torch.float64)
    perm = torch.randperm(12)
    out = model(x)
    out_perm = model(x[perm])
    torch.testing.assert_close(out_perm, out[perm], rtol=1e-12, atol=1e-12)
    # separate chunk forwards (the reference's situation) do depend on the grouping
    chunks = torch.cat([model(c) for c in x.split(4)])
    assert (chunks - out).abs().max() > 1e-3


def test_guess_pass_leaves_bn_running_stats_to_the_mixed_forward():
    model = tiny_net(bn=True)
    ref_model = tiny_net(bn=True)
    batch = random_image_batch(MixMatch.views)
    perm = torch.arange(20)
    algo = _fixed(MixMatch(MixMatch.Config(), **INIT), 1.0, perm)
    algo(model, teacher_copy(model), batch, torch.tensor(0))
    ref_model(torch.cat([batch.x_lb, batch.x_ulb_w, batch.x_ulb_w_extra[0]]))  # λ=1, identity perm: no mixing
    torch.testing.assert_close(model.bn.running_mean, ref_model.bn.running_mean, rtol=1e-12, atol=1e-12)
    assert int(model.bn.num_batches_tracked) == 1


def test_lambda_matters_and_compiles():
    model = tiny_net(bn=True)
    batch = random_image_batch(MixMatch.views)
    step = torch.tensor(100)
    g1 = grad_with_lambda(MixMatch, {}, model, batch, step, lambda_u=1.0, **INIT)
    g0 = grad_with_lambda(MixMatch, {}, model, batch, step, lambda_u=0.0, **INIT)
    assert any((a - b).abs().max() > 1e-8 for a, b in zip(g1, g0))
    algo = MixMatch(MixMatch.Config(), **INIT)
    teacher = teacher_copy(model)
    loss = torch.compile(lambda b, s: algo(model, teacher, b, s).loss, backend="eager", fullgraph=True)(batch, step)
    assert torch.isfinite(loss)
