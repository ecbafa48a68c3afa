"""Pseudo-Label: the loss (hard labels from the same view, threshold, linear ramp) against a per-sample loop,
and the gradient flowing through the same view's logits."""
import pytest
import torch

from algo_testing import IDENTITY, ce_by_hand, logits_batch, random_logits, softmax_by_hand
from fastssl.algorithms.pseudolabel import PseudoLabel, PseudoLabelConfig

C, K = 5, 1000


@pytest.mark.parametrize("step,ramp", [(0, 0.0), (100, 0.25), (400, 1.0), (999, 1.0)])
def test_loss_matches_per_sample_loop(step, ramp):
    algo = PseudoLabel(PseudoLabelConfig(tau=0.7), num_classes=C, num_ulb=64, total_steps=K)
    n, B = 12, 5
    w, lb, y = random_logits(n, C, 0), random_logits(B, C, 1), torch.arange(B) % C
    empty = torch.empty(0, C, dtype=torch.float64)
    out = algo(IDENTITY, IDENTITY, logits_batch(w, empty, lb, y), torch.tensor(step))
    sup = sum(ce_by_hand(lb[i], int(y[i])) for i in range(B)) / B
    kept = [i for i in range(n) if max(softmax_by_hand(w[i])) >= 0.7]
    unsup = sum(ce_by_hand(w[i], softmax_by_hand(w[i]).index(max(softmax_by_hand(w[i])))) for i in kept) / n
    assert 0 < len(kept) < n
    assert float(out.loss.detach()) == pytest.approx(sup + ramp * unsup, rel=1e-9)
    assert float(out.metrics["unsup_weight"]) == pytest.approx(ramp)


def test_gradient_through_same_view():
    algo = PseudoLabel(PseudoLabelConfig(tau=0.0), num_classes=C, num_ulb=64, total_steps=K)
    w, lb = random_logits(4, C, 2), random_logits(2, C, 3)
    out = algo(IDENTITY, IDENTITY, logits_batch(w, torch.empty(0, C, dtype=torch.float64), lb, torch.tensor([0, 1])),
               torch.tensor(K))
    (out.loss - out.metrics["sup_loss"]).backward()
    p = torch.softmax(w.detach(), -1)
    want = (p - torch.nn.functional.one_hot(p.argmax(-1), C)) / 4  # d CE / d logits, mean over 4 rows
    assert torch.allclose(w.grad, want, atol=1e-12)
