"""ICT: loss against a per-sample reference with injected λs and permutations, gradient through the student
only, teacher state untouched, λ_u matters, compile-ability."""
import math

import pytest
import torch

from algo_testing import (grad_with_lambda, mean_soft_ce_by_hand, mean_softmax_mse_by_hand, perturbed_teacher,
                          random_image_batch, softmax_by_hand, tiny_net)
from fastssl.algorithms import get_algorithm
from fastssl.algorithms.ict import ICT

INIT = dict(num_classes=5, num_ulb=64, total_steps=100)


def test_registered_and_views():
    assert get_algorithm("ict") is ICT
    assert ICT.views.num_weak == 1 and ICT.views.num_strong == 0


def test_loss_matches_per_sample_reference():
    model = tiny_net(bn=False)
    teacher = perturbed_teacher(model)
    batch = random_image_batch(ICT.views)
    g = torch.Generator().manual_seed(7)
    perm_u, perm_l = torch.randperm(8, generator=g), torch.randperm(4, generator=g)
    algo = ICT(ICT.Config(lambda_u=4.0, unsup_warmup=0.5), **INIT)
    draws = {8: (torch.tensor(0.35, dtype=torch.float64), perm_u), 4: (torch.tensor(0.6, dtype=torch.float64), perm_l)}
    algo.sample_mix = lambda n, like, alpha: draws[n]
    out = algo(model, teacher, batch, torch.tensor(20))
    u, pt = batch.x_ulb_w, [softmax_by_hand(teacher(x[None])[0].tolist()) for x in batch.x_ulb_w]
    mixed_u = torch.stack([0.35 * u[i] + 0.65 * u[int(perm_u[i])] for i in range(8)])
    target = torch.tensor([[0.35 * pt[i][c] + 0.65 * pt[int(perm_u[i])][c] for c in range(5)] for i in range(8)],
                          dtype=torch.float64)
    onehot = torch.nn.functional.one_hot(batch.y_lb, 5).double()
    x = batch.x_lb
    mixed_l = torch.stack([0.6 * x[i] + 0.4 * x[int(perm_l[i])] for i in range(4)])
    y_mix = torch.stack([0.6 * onehot[i] + 0.4 * onehot[int(perm_l[i])] for i in range(4)])
    weight = float(out.metrics["unsup_weight"])
    assert weight == pytest.approx(4.0 * math.exp(-5 * (1 - 20 / 50) ** 2), rel=1e-6)
    stu_u = torch.stack([model(m[None])[0] for m in mixed_u])
    stu_l = torch.stack([model(m[None])[0] for m in mixed_l])
    assert float(out.metrics["unsup_loss"]) == pytest.approx(mean_softmax_mse_by_hand(stu_u, target), rel=1e-12)
    ref = mean_soft_ce_by_hand(stu_l, y_mix) + weight * mean_softmax_mse_by_hand(stu_u, target)
    assert float(out.loss.detach()) == pytest.approx(ref, rel=1e-12)


def test_student_only_gradient_teacher_untouched_and_compiles():
    model = tiny_net(bn=True)
    teacher = perturbed_teacher(model).requires_grad_(True)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    batch = random_image_batch(ICT.views)
    step = torch.tensor(100)
    g1 = grad_with_lambda(ICT, {}, model, batch, step, teacher=teacher, lambda_u=1.0, **INIT)
    g0 = grad_with_lambda(ICT, {}, model, batch, step, teacher=teacher, lambda_u=0.0, **INIT)
    assert any((a - b).abs().max() > 1e-8 for a, b in zip(g1, g0))
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    algo = ICT(ICT.Config(mixup_alpha_sup=0.0), **INIT)
    loss = torch.compile(lambda b, s: algo(model, teacher, b, s).loss, backend="eager", fullgraph=True)(batch, step)
    assert torch.isfinite(loss)
