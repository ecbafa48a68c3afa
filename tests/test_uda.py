"""UDA: the loss against a per-sample loop (sharpened soft targets, confidence mask, TSA on the correct
class's probability averaged over the kept count), and the TSA schedules against their formulas."""
import math

import pytest
import torch

from algo_testing import IDENTITY, ce_by_hand, logits_batch, random_logits, soft_ce_by_hand, softmax_by_hand
from fastssl.algorithms.uda import UDA, UDAConfig, tsa_threshold

C, K = 5, 1000


def alpha(schedule, t):
    return {"linear": t, "exp": math.exp(5 * (t - 1)), "log": 1 - math.exp(-5 * t), "none": 1.0}[schedule]


@pytest.mark.parametrize("schedule", ["none", "linear", "exp", "log"])
@pytest.mark.parametrize("step", [0, 250, 999])
def test_tsa_schedule(schedule, step):
    eta = float(tsa_threshold(schedule, torch.tensor(step), K, C))
    assert eta == pytest.approx(alpha(schedule, step / K) * (1 - 1 / C) + 1 / C, rel=1e-6)


@pytest.mark.parametrize("schedule", ["none", "linear", "log"])
def test_loss_matches_per_sample_loop(schedule):
    algo = UDA(UDAConfig(tsa_schedule=schedule), num_classes=C, num_ulb=64, total_steps=K)
    n, B, step = 16, 8, 300
    w, s = random_logits(n, C, 0, scale=2.5), random_logits(n, C, 1)
    lb, y = random_logits(B, C, 2, scale=6.0), torch.arange(B) % C
    out = algo(IDENTITY, IDENTITY, logits_batch(w, s, lb, y), torch.tensor(step))
    eta = alpha(schedule, step / K) * (1 - 1 / C) + 1 / C
    kept = [i for i in range(B) if softmax_by_hand(lb[i])[int(y[i])] <= eta]
    sup = sum(ce_by_hand(lb[i], int(y[i])) for i in kept) / max(len(kept), 1)
    unsup, nmask = 0.0, 0
    for i in range(n):
        if max(softmax_by_hand(w[i])) >= 0.8:  # confidence at T=1
            unsup += soft_ce_by_hand(s[i], softmax_by_hand(w[i], T=0.4))
            nmask += 1
    assert 0 < nmask < n
    if schedule != "none":
        assert 0 < len(kept) < B
    assert float(out.loss.detach()) == pytest.approx(sup + unsup / n, rel=1e-9)
