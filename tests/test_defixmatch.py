"""DeFixMatch: the debiased loss against a per-sample loop, and its need for the labeled strong view."""
import pytest
import torch

from algo_testing import IDENTITY, ce_by_hand, logits_batch, random_logits, softmax_by_hand
from fastssl.algorithms.defixmatch import DeFixMatch, DeFixMatchConfig

C = 4


def test_loss_matches_per_sample_loop():
    algo = DeFixMatch(DeFixMatchConfig(tau=0.7), num_classes=C, num_ulb=32)
    n, B = 12, 6
    w, s = random_logits(n, C, 0), random_logits(n, C, 1)
    lb, lb_s, y = random_logits(B, C, 2), random_logits(B, C, 3), torch.arange(B) % C
    out = algo(IDENTITY, IDENTITY, logits_batch(w, s, lb, y, lb_s=lb_s), torch.tensor(0))
    sup = 0.5 * (sum(ce_by_hand(lb[i], int(y[i])) for i in range(B)) + sum(ce_by_hand(lb_s[i], int(y[i])) for i in range(B))) / B

    def pl_term(weak, strong):
        tot, k = 0.0, 0
        for i in range(weak.shape[0]):
            p = softmax_by_hand(weak[i])
            if max(p) >= 0.7:
                tot += ce_by_hand(strong[i], p.index(max(p)))
                k += 1
        return tot / weak.shape[0], k

    u, ku = pl_term(w, s)
    l, kl = pl_term(lb, lb_s)
    assert 0 < ku < n and 0 < kl < B
    assert float(out.loss.detach()) == pytest.approx(sup + u - l, rel=1e-9)


def test_missing_labeled_strong_view_names_the_fix():
    algo = DeFixMatch(DeFixMatchConfig(), num_classes=C, num_ulb=32)
    w = random_logits(4, C, 0)
    with pytest.raises(ValueError, match="lb_strong"):
        algo(IDENTITY, IDENTITY, logits_batch(w, w, w[:2], torch.tensor([0, 1])), torch.tensor(0))
