"""ReFixMatch: the loss (FixMatch term + KL(weak ‖ strong) on the selected rows) against a per-sample loop in
fp64, for each row selection; the KL term alone carries gradient to the strong view; the step compiles with
fullgraph and dispatches no host-syncing operator. (Registry-wide: tests/test_algorithms.py,
test_zoo_integration.py — the real DALI loader's views —, test_host_syncs.py — whole Trainer steps.)"""
import math

import pytest
import torch

from algo_testing import (IDENTITY, STEP, ConfidentNet, build_algo, ce_by_hand, logits_batch, random_logits,
                          separable_batch, softmax_by_hand, teacher_copy)
from fastssl.algorithms.refixmatch import ReFixMatch, ReFixMatchConfig
from fastssl.train.syncs import HostSyncTrace

C = 5


def make(**kw):
    return ReFixMatch(ReFixMatchConfig(**kw), num_classes=C, num_ulb=64)


def reference(w, s, lb, y, tau, lam, rows):
    n = w.shape[0]
    sup = sum(ce_by_hand(lb[i], int(y[i])) for i in range(lb.shape[0])) / lb.shape[0]
    fix = refix = 0.0
    n_conf = 0
    for i in range(n):
        p = softmax_by_hand(w[i])
        q = softmax_by_hand(s[i])
        conf = max(p) >= tau
        n_conf += conf
        if conf:
            fix += ce_by_hand(s[i], p.index(max(p)))
        if rows == "all" or (rows == "high") == conf:
            refix += sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q) if pc > 0)
    return sup + lam * fix / n + lam * refix / n, fix / n, refix / n, n_conf


@pytest.mark.parametrize("rows", ["low", "high", "all"])
def test_loss_matches_per_sample_loop(rows):
    n, tau, lam = 16, 0.8, 1.7
    w, s, lb = random_logits(n, C, 0), random_logits(n, C, 1), random_logits(4, C, 2)
    y = torch.tensor([0, 4, 2, 1])
    out = make(tau=tau, lambda_u=lam, refix_rows=rows)(IDENTITY, IDENTITY, logits_batch(w, s, lb, y), torch.tensor(3))
    want, fix, refix, n_conf = reference(w, s, lb, y, tau, lam, rows)
    assert 0 < n_conf < n  # both kinds of rows are present
    assert float(out.loss.detach()) == pytest.approx(want, rel=1e-12)
    assert float(out.metrics["unsup_loss"]) == pytest.approx(fix, rel=1e-12)
    assert float(out.metrics["refix_loss"]) == pytest.approx(refix, rel=1e-12)


def test_low_confidence_rows_carry_gradient():
    """τ unreachable: FixMatch's term is exactly 0, yet the strong view gets the KL term's gradient
    (q_s − p_w)/n per row, and λ_u scales it."""
    n = 6
    w, lb = random_logits(n, C, 3), random_logits(2, C, 4)
    grads = []
    for lam in (1.0, 2.0):
        s = random_logits(n, C, 5)
        out = make(tau=1.01, lambda_u=lam)(IDENTITY, IDENTITY, logits_batch(w, s, lb, torch.tensor([0, 1])), torch.tensor(0))
        assert float(out.metrics["unsup_loss"]) == 0.0
        out.loss.backward()
        grads.append(s.grad)
    want = (torch.softmax(s.detach(), -1) - torch.softmax(w.detach(), -1)) / n
    torch.testing.assert_close(grads[0], want, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grads[1], 2 * want, rtol=1e-12, atol=1e-15)


def test_step_compiles_and_is_sync_free():
    """The compiled step (fullgraph) equals the eager one; the eager step (forward, backward) dispatches no
    host-syncing operator (HostSyncTrace cannot run around compiled code)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ConfidentNet(scale=3.0)
    teacher = teacher_copy(model)
    algo = build_algo("refixmatch")
    batch = separable_batch(ReFixMatch)
    step = torch.tensor(STEP)
    with HostSyncTrace() as trace:
        eager = algo(model, teacher, batch, step)
        eager.loss.backward()
    assert trace.total == 0, trace
    assert float(eager.metrics["refix_loss"]) > 0  # the KL term is in the traced step
    out = torch.compile(lambda b, t: algo(model, teacher, b, t), backend="eager", fullgraph=True)(batch, step)
    torch.testing.assert_close(out.loss, eager.loss)


def test_rejects_unknown_rows():
    with pytest.raises(ValueError, match="refix_rows"):
        ReFixMatchConfig(refix_rows="some")
