"""SoftMatch: the truncated-Gaussian weights and their EMA statistics after uniform alignment, against a
per-sample loop in the reference's order (alignment EMA, align, Gaussian EMA, weight)."""
import math

import pytest
import torch

from algo_testing import (IDENTITY, ce_by_hand, logits_batch, random_logits, softmax_by_hand,
                          update_twice_mean_probs)
from fastssl.algorithms.softmatch import SoftMatch, SoftMatchConfig

C = 4


def make(**kw):
    return SoftMatch(SoftMatchConfig(**kw), num_classes=C, num_ulb=32)


def reference(algo, w, s, lb, y):
    """Python floats: returns (loss, weights, mu, var, p_model) for one step from the algorithm's state."""
    cfg, n = algo.cfg, w.shape[0]
    m = cfg.ema_p
    probs = [softmax_by_hand(w[i]) for i in range(n)]
    mean = [sum(p[c] for p in probs) / n for c in range(C)]
    first = int(algo.num_updates) == 0
    pm = mean if first else [m * float(algo.p_model[c]) + (1 - m) * mean[c] for c in range(C)]
    aligned = []
    for p in probs:
        q = [p[c] * (1 / C + 1e-6) / (pm[c] + 1e-6) for c in range(C)]
        aligned.append([x / sum(q) for x in q])
    mx = [max(q) for q in aligned]
    bm = sum(mx) / n
    bv = sum((x - bm) ** 2 for x in mx) / (n - 1)
    mu = m * float(algo.prob_max_mu_t) + (1 - m) * bm
    var = m * float(algo.prob_max_var_t) + (1 - m) * bv
    wts = [1.0 if x >= mu else math.exp(-((x - mu) ** 2) / (2 * var / cfg.n_sigma ** 2)) for x in mx]
    sup = sum(ce_by_hand(lb[i], int(y[i])) for i in range(lb.shape[0])) / lb.shape[0]
    unsup = sum(wts[i] * ce_by_hand(s[i], probs[i].index(max(probs[i]))) for i in range(n)) / n  # unaligned argmax
    return sup + unsup, wts, mu, var, pm


@pytest.mark.parametrize("ema_p", [0.999, 0.5])
def test_weights_and_loss_match_loop_over_two_steps(ema_p):
    algo = make(ema_p=ema_p)
    algo.prob_max_mu_t.fill_(0.8)  # a state mid-training, so that some weights are below 1
    algo.prob_max_var_t.fill_(0.05)
    lb, y = random_logits(3, C, 5), torch.tensor([0, 1, 3])
    for t in range(2):
        w, s = random_logits(10, C, t), random_logits(10, C, t + 10)
        batch = logits_batch(w, s, lb, y)
        out = algo(IDENTITY, IDENTITY, batch, torch.tensor(t))
        loss, wts, mu, var, pm = reference(algo, w, s, lb, y)
        assert out.state.mask.tolist() == pytest.approx(wts, rel=1e-6)
        assert float(out.loss.detach()) == pytest.approx(loss, rel=1e-6)
        assert any(x < 1 for x in wts) and any(x == 1 for x in wts)
        algo.update_state(batch, out.state)
        assert float(algo.prob_max_mu_t) == pytest.approx(mu, rel=1e-6)
        assert float(algo.prob_max_var_t) == pytest.approx(var, rel=1e-6)
        assert algo.p_model.tolist() == pytest.approx(pm, rel=1e-6)


def test_weight_is_one_above_mean_and_gaussian_below():
    algo = make()
    aligned = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3]], dtype=torch.float64)
    mu, var = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.04, dtype=torch.float64)
    w = algo.weights(aligned, mu, var)
    # n_sigma = 2: width σ/2 = 0.1; 0.5 is two widths below μ → exp(−2)
    assert w.tolist() == pytest.approx([1.0, math.exp(-2.0), 1.0])


def test_fp64_state_uses_the_exact_momentum():
    """In an fp64 run the alignment EMA must use ema_p itself: a momentum built as fp32 (0.999 → 0.99900001…)
    moved p_model by ~1e-9 relative, far above fp64 rounding."""
    m = 0.999
    algo = make(ema_p=m).double()
    lb, y = random_logits(3, C, 5), torch.tensor([0, 1, 3])
    first, second = update_twice_mean_probs(algo, lb, y)
    want = [m * a + (1 - m) * b for a, b in zip(first, second)]  # first step: p_model = the batch mean
    assert algo.p_model.dtype == torch.float64
    assert algo.p_model.tolist() == pytest.approx(want, rel=1e-13, abs=0)
