"""FreeMatch: the self-adaptive threshold EMAs against their formulas, the order (EMA step, then mask),
and the loss (pseudo-label CE + fairness) against a per-sample loop written the reference way."""
import math

import pytest
import torch

from algo_testing import IDENTITY, ce_by_hand, logits_batch, random_logits, softmax_by_hand
from fastssl.algorithms.freematch import FreeMatch, FreeMatchConfig

C = 4


def make(**kw):
    return FreeMatch(FreeMatchConfig(**kw), num_classes=C, num_ulb=32)


def test_ema_update_formulas():
    m = 0.9
    algo = make(ema_p=m)
    w = random_logits(8, C, 0)
    batch = logits_batch(w, w.clone(), w[:2], torch.tensor([0, 1]))
    out = algo(IDENTITY, IDENTITY, batch, torch.tensor(0))
    algo.update_state(batch, out.state)
    probs = [softmax_by_hand(w[i]) for i in range(8)]
    conf = sum(max(p) for p in probs) / 8
    assert float(algo.time_p) == pytest.approx(m / C + (1 - m) * conf, rel=1e-6)
    for c in range(C):
        mean_c = sum(p[c] for p in probs) / 8
        hist_c = sum(1 for p in probs if p.index(max(p)) == c) / 8
        assert float(algo.p_model[c]) == pytest.approx(m / C + (1 - m) * mean_c, rel=1e-6)
        assert float(algo.label_hist[c]) == pytest.approx(m / C + (1 - m) * hist_c, rel=1e-6)
    # a second step starts from the committed state
    t1 = float(algo.time_p)
    out = algo(IDENTITY, IDENTITY, batch, torch.tensor(1))
    algo.update_state(batch, out.state)
    assert float(algo.time_p) == pytest.approx(m * t1 + (1 - m) * conf, rel=1e-6)


def test_quantile_and_clip():
    algo = make(ema_p=0.0, use_quantile=True, clip_thresh=True)
    w = torch.eye(C, dtype=torch.float64).repeat(2, 1) * 30  # max-prob ≈ 1 everywhere
    batch = logits_batch(w, w.clone(), w[:1], torch.tensor([0]))
    algo.update_state(batch, algo(IDENTITY, IDENTITY, batch, torch.tensor(0)).state)
    assert float(algo.time_p) == pytest.approx(0.95)


def reference_loss(algo, w, s, lb, y, lambda_e):
    """The reference's order: EMA step with this batch, then mask; fairness over the selected rows."""
    m, n = algo.cfg.ema_p, w.shape[0]
    probs = [softmax_by_hand(w[i]) for i in range(n)]
    tp = m * float(algo.time_p) + (1 - m) * sum(max(p) for p in probs) / n
    pm = [m * float(algo.p_model[c]) + (1 - m) * sum(p[c] for p in probs) / n for c in range(C)]
    lh = [m * float(algo.label_hist[c]) + (1 - m) * sum(1 for p in probs if p.index(max(p)) == c) / n
          for c in range(C)]
    sup = sum(ce_by_hand(lb[i], int(y[i])) for i in range(lb.shape[0])) / lb.shape[0]
    unsup, sel = 0.0, []
    for i, p in enumerate(probs):
        k = p.index(max(p))
        if p[k] >= tp * pm[k] / max(pm):
            unsup += ce_by_hand(s[i], k)
            sel.append(i)
    fair = 0.0
    if sel:
        ps = [softmax_by_hand(s[i]) for i in sel]
        hist = [sum(1 for q in ps if q.index(max(q)) == c) / len(sel) for c in range(C)]
        mean = [sum(q[c] for q in ps) / len(sel) * (1 / hist[c] if hist[c] > 0 else 0.0) for c in range(C)]
        tgt = [pm[c] / lh[c] for c in range(C)]
        fair = sum(tgt[c] / sum(tgt) * math.log(mean[c] / sum(mean) + 1e-12) for c in range(C))
    return sup + unsup / n + lambda_e * fair, len(sel)


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_matches_per_sample_loop(seed):
    n = 12
    algo = make(ema_p=0.7, lambda_e=0.5)
    algo.time_p.fill_(0.8)
    algo.p_model.copy_(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    algo.label_hist.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    w, s, lb = random_logits(n, C, seed), random_logits(n, C, seed + 10), random_logits(3, C, seed + 20)
    y = torch.tensor([0, 3, 2])
    out = algo(IDENTITY, IDENTITY, logits_batch(w, s, lb, y), torch.tensor(5))
    want, nsel = reference_loss(algo, w, s, lb, y, 0.5)
    assert 0 < nsel < n
    assert float(out.loss.detach()) == pytest.approx(want, rel=1e-6)


def test_no_masked_sample_gives_zero_fairness_not_nan():
    algo = make(lambda_e=1.0)
    algo.time_p.fill_(1.0)  # nothing reaches the threshold
    w = torch.zeros(6, C, dtype=torch.float64)
    s = random_logits(6, C, 3)
    out = algo(IDENTITY, IDENTITY, logits_batch(w, s, w[:1], torch.tensor([0])), torch.tensor(0))
    assert float(out.metrics["fair_loss"]) == 0.0
    out.loss.backward()
    assert torch.isfinite(s.grad).all()
