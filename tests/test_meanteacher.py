"""Mean Teacher: loss against a per-sample reference, gradient through the student only (the USB defect),
teacher BatchNorm on batch statistics with its state untouched, compile-ability."""
import math

import pytest
import torch

from algo_testing import (grad_with_lambda, mean_ce_by_hand, mean_softmax_mse_by_hand, perturbed_teacher,
                          random_image_batch, tiny_net)
from fastssl.algorithms import get_algorithm
from fastssl.algorithms.meanteacher import MeanTeacher

INIT = dict(num_classes=5, num_ulb=64, total_steps=100)


def _setup(bn=False):
    model = tiny_net(bn=bn)
    teacher = perturbed_teacher(model)
    batch = random_image_batch(MeanTeacher.views)
    algo = MeanTeacher(MeanTeacher.Config(lambda_u=2.0, unsup_warmup=0.5), **INIT).double()
    return model, teacher, batch, algo


def test_registered_and_views():
    assert get_algorithm("meanteacher") is MeanTeacher
    assert MeanTeacher.views.num_weak == 2 and MeanTeacher.views.num_strong == 0


def test_loss_matches_per_sample_reference():
    model, teacher, batch, algo = _setup()
    out = algo(model, teacher, batch, torch.tensor(20))
    student = model(batch.x_ulb_w_extra[0])  # student on the second weak view
    target = torch.softmax(teacher(batch.x_ulb_w), -1)  # teacher on the first
    ramp = float(torch.tensor(20.0) / 50)  # the ramp is fp32 tensor math
    ref = mean_ce_by_hand(model(batch.x_lb), batch.y_lb) + 2.0 * ramp * mean_softmax_mse_by_hand(student, target)
    assert out.loss.dtype == torch.float64
    assert float(out.loss.detach()) == pytest.approx(ref, rel=1e-12)
    assert float(out.metrics["unsup_weight"]) == pytest.approx(2.0 * ramp)


def test_sigmoid_ramp_and_other_distances():
    model, teacher, batch, _ = _setup()
    algo = MeanTeacher(MeanTeacher.Config(lambda_u=1.0, unsup_warmup=0.5, ramp="sigmoid", consistency="kl"), **INIT)
    out = algo(model, teacher, batch, torch.tensor(25))
    assert float(out.metrics["unsup_weight"]) == pytest.approx(math.exp(-5 * 0.5 ** 2))
    with pytest.raises(ValueError, match="--algo.consistency"):
        MeanTeacher.Config(consistency="cosine")


def test_gradient_through_student_only_and_nonzero():
    """USB's defect: its consistency term compares the teacher with itself and has no gradient. Here the
    consistency term moves the student, and nothing flows into the teacher, even if its params require grad."""
    model, teacher, batch, _ = _setup()
    teacher.requires_grad_(True)
    step = torch.tensor(100)
    g1 = grad_with_lambda(MeanTeacher, {}, model, batch, step, teacher=teacher, lambda_u=1.0, **INIT)
    g0 = grad_with_lambda(MeanTeacher, {}, model, batch, step, teacher=teacher, lambda_u=0.0, **INIT)
    assert any((a - b).abs().max() > 1e-8 for a, b in zip(g1, g0))
    assert all(p.grad is None for p in teacher.parameters())
    # even with identical weights (step 0 of EMA), different views give a nonzero consistency gradient
    teacher.load_state_dict(model.state_dict())
    algo = MeanTeacher(MeanTeacher.Config(lambda_u=1.0, unsup_warmup=0.0), **INIT)
    out = algo(model, teacher, batch, step)
    g, = torch.autograd.grad(out.loss, model.head.weight)
    n = batch.x_lb.shape[0]
    sup = torch.nn.functional.cross_entropy(model(torch.cat([batch.x_lb, batch.x_ulb_w_extra[0]]))[:n], batch.y_lb)
    g_sup, = torch.autograd.grad(sup, model.head.weight)
    assert (g - g_sup).abs().max() > 1e-6


def test_teacher_uses_batch_stats_and_keeps_its_state_and_mode():
    model, teacher, batch, algo = _setup(bn=True)
    with torch.no_grad():
        teacher.bn.running_mean.fill_(5.0)  # eval mode would normalise with these: far off
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    out = algo(model, teacher, batch, torch.tensor(50))
    assert not teacher.training
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    teacher.train()
    expected = torch.softmax(teacher(batch.x_ulb_w), -1)  # train mode: batch statistics
    teacher.eval()
    model2 = tiny_net(bn=True)
    logits = model2(torch.cat([batch.x_lb, batch.x_ulb_w_extra[0]]))
    ref = mean_ce_by_hand(logits[:4], batch.y_lb) + 2.0 * mean_softmax_mse_by_hand(logits[4:], expected)
    assert float(out.loss.detach()) == pytest.approx(ref, rel=1e-10)


def test_compiles_fullgraph():
    model, teacher, batch, algo = _setup(bn=True)
    fn = torch.compile(lambda b, s: algo(model, teacher, b, s).loss, backend="eager", fullgraph=True)
    loss = fn(batch, torch.tensor(10))
    loss.backward()
    assert model.conv.weight.grad is not None
