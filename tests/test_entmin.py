"""Entropy minimisation, the algorithm and the add-on regularizers (entmin, class balance, MCC) on the base
`losses.regularizers`, against closed forms and per-sample loops in fp64."""
import math

import pytest
import torch

from algo_testing import IDENTITY, ce_by_hand, logits_batch, random_logits, softmax_by_hand
from fastssl.algorithms.entmin import EntMin, EntMinConfig
from fastssl.algorithms.fixmatch import FixMatch, FixMatchConfig
from fastssl.algorithms.losses import class_balance_loss, entropy_loss, mcc_loss

C = 4


def H(p):
    return -sum(x * math.log(x) for x in p if x > 0)


def test_entropy_closed_forms():
    uniform = torch.zeros(3, C, dtype=torch.float64)
    assert float(entropy_loss(uniform)) == pytest.approx(math.log(C))
    onehot = torch.tensor([[1e4, 0, 0, 0]], dtype=torch.float64)
    assert float(entropy_loss(onehot)) == pytest.approx(0.0, abs=1e-12)


def test_entmin_algorithm_loss():
    algo = EntMin(EntMinConfig(), num_classes=C, num_ulb=16)
    w, lb, y = random_logits(6, C, 0), random_logits(3, C, 1), torch.tensor([0, 1, 2])
    out = algo(IDENTITY, IDENTITY, logits_batch(w, torch.empty(0, C), lb, y), torch.tensor(0))
    sup = sum(ce_by_hand(lb[i], int(y[i])) for i in range(3)) / 3
    ent = sum(H(softmax_by_hand(w[i])) for i in range(6)) / 6
    assert float(out.loss.detach()) == pytest.approx(sup + 0.06 * ent, rel=1e-12)


def test_class_balance_loss_loop():
    z = random_logits(7, C, 2)
    probs = [softmax_by_hand(z[i]) for i in range(7)]
    pbar = [sum(p[c] for p in probs) / 7 for c in range(C)]
    want = -sum((1 / C) * math.log(q) + (1 - 1 / C) * math.log(1 - q) for q in pbar) / C
    assert float(class_balance_loss(z.detach())) == pytest.approx(want, rel=1e-12)
    # minimised by a balanced batch: a collapsed batch costs more
    collapsed = torch.tensor([[5.0, 0, 0, 0]] * 4, dtype=torch.float64)
    balanced = torch.eye(C, dtype=torch.float64) * 5
    assert float(class_balance_loss(collapsed)) > float(class_balance_loss(balanced))


def test_mcc_loss_loop():
    N, T = 6, 2.5
    z = random_logits(N, C, 3)
    p = [softmax_by_hand(z[i], T) for i in range(N)]
    w = [1 + math.exp(-H(q)) for q in p]
    w = [N * x / sum(w) for x in w]
    conf = [[sum(w[i] * p[i][a] * p[i][b] for i in range(N)) for b in range(C)] for a in range(C)]
    col = [sum(conf[a][b] for a in range(C)) for b in range(C)]
    want = sum(conf[a][b] / col[b] for a in range(C) for b in range(C) if a != b) / C
    assert float(mcc_loss(z.detach(), T)) == pytest.approx(want, rel=1e-12)


def test_regularizers_add_to_fixmatch():
    w, s, lb, y = random_logits(8, C, 4), random_logits(8, C, 5), random_logits(2, C, 6), torch.tensor([0, 1])
    batch = logits_batch(w, s, lb, y)
    base = FixMatch(FixMatchConfig(), num_classes=C, num_ulb=16)
    reg = FixMatch(FixMatchConfig(entmin_weight=0.5, cbl_weight=0.25, mcc_weight=2.0), num_classes=C, num_ulb=16)
    l0 = float(base(IDENTITY, IDENTITY, batch, torch.tensor(0)).loss.detach())
    out = reg(IDENTITY, IDENTITY, batch, torch.tensor(0))
    wd = w.detach()
    want = l0 + 0.5 * float(entropy_loss(wd)) + 0.25 * float(class_balance_loss(wd)) + 2.0 * float(mcc_loss(wd))
    assert float(out.loss.detach()) == pytest.approx(want, rel=1e-12)
    assert {"entmin_loss", "cbl_loss", "mcc_loss"} <= out.metrics.keys()
    out.loss.backward()
    assert w.grad is not None and w.grad.abs().sum() > 0  # the add-ons train the weak view
