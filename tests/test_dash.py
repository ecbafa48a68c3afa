"""Dash: the dynamic-threshold schedule against its formula, the ρ̂ estimate over the warm-up, and the
loss (soft, then hard pseudo-labels, loss-based mask) against a per-sample loop."""
import math

import pytest
import torch

from algo_testing import IDENTITY, ce_by_hand, logits_batch, random_logits, soft_ce_by_hand, softmax_by_hand
from fastssl.algorithms.dash import Dash, DashConfig

C, K = 4, 1000


def make(**kw):
    kw = {"warmup_frac": 0.1, "rho_update_frac": 0.05, **kw}  # warm-up 100 steps, ρ updated every 50
    return Dash(DashConfig(**kw), num_classes=C, num_ulb=32, total_steps=K)


@pytest.mark.parametrize("step,k", [(0, 0), (100, 0), (149, 0), (150, 1), (260, 3), (5000, 98)])
def test_rho_schedule(step, k):
    algo = make()
    algo.rho_init.fill_(2.0)
    want = max(1.0001 * 1.27 ** (-k) * 2.0, 0.05)
    assert float(algo.rho(torch.tensor(step))) == pytest.approx(want, rel=1e-6)


def test_rho_init_from_warmup_labeled_loss():
    algo = make()
    assert float(algo.rho_init) == pytest.approx(math.log(C))
    losses = []
    for t in (0, 1, 2, 100, 101):  # the last two are past the warm-up: ρ̂ frozen
        lb, y = random_logits(4, C, t), torch.tensor([0, 1, 2, 3])
        w = random_logits(6, C, t + 50)
        batch = logits_batch(w, w.clone(), lb, y)
        out = algo(IDENTITY, IDENTITY, batch, torch.tensor(t))
        algo.update_state(batch, out.state)
        if t < 100:
            losses.append(sum(ce_by_hand(lb[i], int(y[i])) for i in range(4)) / 4)
    want = losses[0]
    for x in losses[1:]:
        want = 0.9 * want + 0.1 * x
    assert float(algo.rho_init) == pytest.approx(want, rel=1e-6)
    assert int(algo.num_warmup_updates) == 3


def test_warmup_trains_labeled_only():
    algo = make()
    w, s, lb = random_logits(6, C, 0), random_logits(6, C, 1), random_logits(2, C, 2)
    out = algo(IDENTITY, IDENTITY, logits_batch(w, s, lb, torch.tensor([0, 1])), torch.tensor(50))
    out.loss.backward()
    assert s.grad is None or torch.all(s.grad == 0)
    assert lb.grad.abs().sum() > 0


@pytest.mark.parametrize("step,hard", [(120, False), (900, True)])
def test_loss_matches_per_sample_loop(step, hard):
    algo = make()
    algo.rho_init.fill_(0.6)
    n, B = 16, 4
    w, s = random_logits(n, C, 3, scale=6.0 if hard else 2.0), random_logits(n, C, 4)
    lb, y = random_logits(B, C, 5), torch.tensor([0, 1, 2, 3])
    out = algo(IDENTITY, IDENTITY, logits_batch(w, s, lb, y), torch.tensor(step))
    k = (step - 100) // 50
    rho = max(1.0001 * 1.27 ** (-k) * 0.6, 0.05)
    assert (rho == 0.05) == hard
    sup = sum(ce_by_hand(lb[i], int(y[i])) for i in range(B)) / B
    unsup, nmask = 0.0, 0
    for i in range(n):
        p = softmax_by_hand(w[i])
        kk = p.index(max(p))
        target = [float(c == kk) for c in range(C)] if hard else softmax_by_hand(w[i], T=0.5)
        if soft_ce_by_hand(w[i], target) <= rho:
            unsup += soft_ce_by_hand(s[i], target)
            nmask += 1
    assert 0 < nmask < n
    assert float(out.loss.detach()) == pytest.approx(sup + unsup / n, rel=1e-6)
