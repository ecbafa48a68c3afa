"""FixMatch's loss against a naive per-sample loop in fp64."""
import math

import torch
from torch import nn

from fastssl.algorithms import get_algorithm
from fastssl.batch import SSLBatch


class Fixed(nn.Module):
    """A 'model' that returns preset logits, one row per input row (inputs carry their row id)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[x[:, 0, 0, 0].long()]


def naive_fixmatch(lg_lb, y_lb, lg_w, lg_s, tau, lambda_u, T, hard):
    sup = sum(-torch.log_softmax(lg_lb[i], 0)[y_lb[i]] for i in range(len(y_lb))) / len(y_lb)
    unsup = 0.0
    for i in range(lg_w.shape[0]):
        p = [math.exp(v) for v in lg_w[i].tolist()]
        z = sum(p)
        p = [v / z for v in p]
        conf = max(p)
        if conf >= tau:
            logq = torch.log_softmax(lg_s[i], 0)
            if hard:
                unsup += -logq[p.index(conf)]
            else:
                t = torch.softmax(lg_w[i] / T, 0)
                unsup += -(t * logq).sum()
    unsup = unsup / lg_w.shape[0]
    return sup + lambda_u * unsup


def test_fixmatch_loss_equals_naive_loop():
    torch.manual_seed(0)
    B, U, C = 5, 12, 10
    lg_lb = torch.randn(B, C, dtype=torch.float64)
    lg_w = torch.randn(U, C, dtype=torch.float64) * 4
    lg_s = torch.randn(U, C, dtype=torch.float64)
    y_lb = torch.randint(0, C, (B,))
    logits = torch.cat([lg_lb, lg_w, lg_s])
    ids = torch.arange(B + 2 * U, dtype=torch.float64)[:, None, None, None].expand(-1, 1, 2, 2)
    batch = SSLBatch(ids[:B], y_lb, ids[B:B + U], ids[B + U:], torch.arange(U), torch.randint(0, C, (U,)))
    algo_cls = get_algorithm("fixmatch")
    for tau, hard, T in [(0.5, True, 1.0), (0.7, False, 0.5), (0.99, True, 1.0)]:
        algo = algo_cls(algo_cls.Config(tau=tau, lambda_u=0.7, T=T, hard_label=hard), num_classes=C, num_ulb=U)
        model = Fixed(logits)
        out = algo(model, model, batch, torch.tensor(0))  # the teacher: unread by FixMatch
        ref = naive_fixmatch(lg_lb, y_lb, lg_w, lg_s, tau, 0.7, T, hard)
        torch.testing.assert_close(out.loss, torch.as_tensor(ref, dtype=torch.float64), rtol=1e-10, atol=1e-12)
        probs = torch.softmax(lg_w, 1)
        assert torch.equal(out.state.mask.bool(), probs.max(1).values >= tau)
        assert torch.equal(out.state.pseudo, probs.argmax(1))
