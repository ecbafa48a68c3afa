"""AdaMatch: relative threshold and distribution alignment against a per-sample loop, over two steps
(the first batch initialises p_model; p_target is an EMA of the labeled predictions from uniform)."""
import pytest
import torch

from algo_testing import (IDENTITY, ce_by_hand, logits_batch, random_logits, softmax_by_hand,
                          update_twice_mean_probs)
from fastssl.algorithms.adamatch import AdaMatch, AdaMatchConfig

C = 4


@pytest.mark.parametrize("ema_p", [0.0, 0.6])
def test_loss_matches_per_sample_loop(ema_p):
    algo = AdaMatch(AdaMatchConfig(ema_p=ema_p, tau=0.9), num_classes=C, num_ulb=32)
    for t in range(2):
        n, B = 12, 4
        w, s = random_logits(n, C, t, scale=2.5), random_logits(n, C, t + 10)
        lb, y = random_logits(B, C, t + 20, scale=4.0), torch.tensor([0, 1, 2, 3])
        batch = logits_batch(w, s, lb, y)
        pm_old, pt_old = algo.p_model.tolist(), algo.p_target.tolist()
        out = algo(IDENTITY, IDENTITY, batch, torch.tensor(t))
        pu = [softmax_by_hand(w[i]) for i in range(n)]
        pl = [softmax_by_hand(lb[i]) for i in range(B)]
        mu = ema_p if t > 0 else 0.0
        pm = [mu * pm_old[c] + (1 - mu) * sum(p[c] for p in pu) / n for c in range(C)]
        pt = [ema_p * pt_old[c] + (1 - ema_p) * sum(p[c] for p in pl) / B for c in range(C)]
        thr = 0.9 * sum(max(p) for p in pl) / B
        sup = sum(ce_by_hand(lb[i], int(y[i])) for i in range(B)) / B
        unsup, nmask = 0.0, 0
        for i in range(n):
            q = [pu[i][c] * (pt[c] + 1e-6) / (pm[c] + 1e-6) for c in range(C)]
            q = [x / sum(q) for x in q]
            k = q.index(max(q))
            if q[k] >= thr:
                unsup += ce_by_hand(s[i], k)
                nmask += 1
        assert 0 < nmask < n
        assert float(out.loss.detach()) == pytest.approx(sup + unsup / n, rel=1e-6)
        algo.update_state(batch, out.state)
        assert algo.p_model.tolist() == pytest.approx(pm, rel=1e-6)
        assert algo.p_target.tolist() == pytest.approx(pt, rel=1e-6)


def test_threshold_is_relative_to_labeled_confidence():
    algo = AdaMatch(AdaMatchConfig(tau=0.5, ema_p=0.0), num_classes=C, num_ulb=8)
    lb = torch.tensor([[4.0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)  # max-probs 0.9479…, 0.25
    w = torch.zeros(2, C, dtype=torch.float64)
    out = algo(IDENTITY, IDENTITY, logits_batch(w, w.clone(), lb, torch.tensor([0, 1])), torch.tensor(0))
    p0 = softmax_by_hand(lb[0])[0]
    assert float(out.metrics["threshold"]) == pytest.approx(0.5 * (p0 + 0.25) / 2, rel=1e-6)


def test_fp64_state_uses_the_exact_momentum():
    """In an fp64 run the alignment EMA must use ema_p itself: a momentum built as fp32 (0.999 → 0.99900001…)
    moved p_model by ~1e-9 relative, far above fp64 rounding."""
    m = 0.999
    algo = AdaMatch(AdaMatchConfig(ema_p=m), num_classes=C, num_ulb=32).double()
    lb, y = random_logits(4, C, 5), torch.tensor([0, 1, 2, 3])
    first, second = update_twice_mean_probs(algo, lb, y)
    want = [m * a + (1 - m) * b for a, b in zip(first, second)]  # first step: p_model = the batch mean
    assert algo.p_model.dtype == torch.float64
    assert algo.p_model.tolist() == pytest.approx(want, rel=1e-13, abs=0)
