"""Π-Model: loss against a per-sample reference, target branch detached, λ_u matters, compile-ability."""
import pytest
import torch

from algo_testing import (grad_with_lambda, mean_ce_by_hand, mean_softmax_mse_by_hand, random_image_batch,
                          teacher_copy, tiny_net)
from fastssl.algorithms import get_algorithm
from fastssl.algorithms.pimodel import PiModel

INIT = dict(num_classes=5, num_ulb=64, total_steps=100)


def test_registered_and_views():
    assert get_algorithm("pimodel") is PiModel
    assert PiModel.views.num_weak == 2 and PiModel.views.num_strong == 0


def test_loss_matches_per_sample_reference():
    model = tiny_net(bn=False)
    batch = random_image_batch(PiModel.views)
    algo = PiModel(PiModel.Config(lambda_u=3.0, unsup_warmup=0.4), **INIT)
    out = algo(model, teacher_copy(model), batch, torch.tensor(10))
    ramp = float(torch.tensor(10.0) / 40)
    target = torch.softmax(model(batch.x_ulb_w), -1)
    ref = mean_ce_by_hand(model(batch.x_lb), batch.y_lb) + 3.0 * ramp * mean_softmax_mse_by_hand(model(batch.x_ulb_w_extra[0]), target)
    assert float(out.loss.detach()) == pytest.approx(ref, rel=1e-12)


def test_target_branch_is_detached_and_lambda_matters():
    model = tiny_net(bn=True)
    batch = random_image_batch(PiModel.views)
    step = torch.tensor(100)
    g1 = grad_with_lambda(PiModel, {}, model, batch, step, lambda_u=1.0, **INIT)
    g0 = grad_with_lambda(PiModel, {}, model, batch, step, lambda_u=0.0, **INIT)
    assert any((a - b).abs().max() > 1e-8 for a, b in zip(g1, g0))
    # the gradient equals that of CE + mse(student(view2), const(softmax_by_hand(view1))): view 1 is a constant target
    model.zero_grad()
    algo = PiModel(PiModel.Config(lambda_u=1.0, unsup_warmup=0.0), **INIT)
    out = algo(model, teacher_copy(model), batch, step)
    g, = torch.autograd.grad(out.loss, model.head.weight)
    logits = model(torch.cat([batch.x_lb, batch.x_ulb_w, batch.x_ulb_w_extra[0]]))
    n = batch.x_ulb_w.shape[0]
    t = torch.softmax(logits[4:4 + n], -1).detach()
    ref = torch.nn.functional.cross_entropy(logits[:4], batch.y_lb)
    ref = ref + (torch.softmax(logits[4 + n:], -1) - t).square().mean(-1).mean()
    g_ref, = torch.autograd.grad(ref, model.head.weight)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_compiles_fullgraph():
    model = tiny_net(bn=True)
    batch = random_image_batch(PiModel.views)
    algo = PiModel(PiModel.Config(), **INIT)
    teacher = teacher_copy(model)
    loss = torch.compile(lambda b, s: algo(model, teacher, b, s).loss, backend="eager", fullgraph=True)(batch, torch.tensor(3))
    loss.backward()
    assert model.conv.weight.grad is not None
