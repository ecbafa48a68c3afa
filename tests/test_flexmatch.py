"""FlexMatch: the class-wise thresholds against the paper's formulas on a hand-built count table, the
update rule (fixed-τ selection, overwrite, duplicates), and the loss against a per-sample loop."""
import math

import pytest
import torch

from algo_testing import IDENTITY, ce_by_hand, logits_batch, random_logits
from fastssl.algorithms.flexmatch import FlexMatch, FlexMatchConfig

C, TAU = 3, 0.95


def make(num_ulb=10, **kw):
    return FlexMatch(FlexMatchConfig(**kw), num_classes=C, num_ulb=num_ulb)


def confident(classes, c=C):
    """Weak logits: a very confident prediction of each given class; None → uniform (maxprob 1/C)."""
    w = torch.zeros(len(classes), c, dtype=torch.float64)
    for i, k in enumerate(classes):
        if k is not None:
            w[i, k] = 20.0
    return w


def step(algo, classes, idx=None):
    w = confident(classes)
    batch = logits_batch(w, w.clone(), w[:1], torch.zeros(1, dtype=torch.long), idx)
    out = algo(IDENTITY, IDENTITY, batch, torch.tensor(0))
    algo.update_state(batch, out.state)
    return out


# The hand-built table: 10 unlabeled samples, σ = (3, 2, 1), 4 never selected.
TABLE = [0, 0, 0, 1, 1, 2, None, None, None, None]
BETA = {True: [3 / 4, 2 / 4, 1 / 4],   # warm-up: normaliser max(3, 10 − 6 = 4) = 4
        False: [3 / 3, 2 / 3, 1 / 3]}  # no warm-up: normaliser max σ = 3
MAP = {"convex": lambda x: x / (2 - x), "linear": lambda x: x, "concave": lambda x: math.log(x + 1) / math.log(2)}


@pytest.mark.parametrize("warmup", [True, False])
@pytest.mark.parametrize("mapping", ["convex", "linear", "concave"])
def test_thresholds_table(warmup, mapping):
    algo = make(thresh_warmup=warmup, mapping=mapping)
    step(algo, TABLE)
    assert algo.selected_label.tolist() == [0, 0, 0, 1, 1, 2, -1, -1, -1, -1]
    assert algo.classwise_acc.tolist() == pytest.approx(BETA[warmup], abs=1e-7)
    expected = [TAU * MAP[mapping](b) for b in BETA[warmup]]
    assert algo.thresholds().tolist() == pytest.approx(expected, abs=1e-6)
    # hand values for the convex warm-up row, written out: 0.95·(0.6, 1/3, 1/7)
    if warmup and mapping == "convex":
        assert algo.thresholds().tolist() == pytest.approx([0.57, 0.95 / 3, 0.95 / 7], abs=1e-6)


def test_initial_state_accepts_everything_but_records_only_above_tau():
    algo = make()
    out = step(algo, [0, None, 2, None])  # β = 0 → every threshold 0 → mask all ones
    assert out.state.mask.tolist() == [1, 1, 1, 1]
    assert algo.selected_label[:4].tolist() == [0, -1, 2, -1]  # selection uses the fixed τ


def test_mask_reads_class_thresholds():
    algo = make(mapping="linear")  # thresholds 0.95·(3/4, 2/4, 1/4) = (0.7125, 0.475, 0.2375)
    step(algo, TABLE)
    thr = algo.thresholds()

    def logits_with_maxprob(k, p):  # class k with probability p, the rest shared equally
        row = torch.full((C,), math.log((1 - p) / (C - 1)), dtype=torch.float64)
        row[k] = math.log(p)
        return row

    rows, want = [], []
    for k in range(C):
        for d, m in ((+0.01, 1.0), (-0.01, 0.0)):
            p = float(thr[k]) + d
            if 1 / C < p < 1:
                rows.append(logits_with_maxprob(k, p))
                want.append(m)
    w = torch.stack(rows)
    batch = logits_batch(w, w.clone(), w[:1], torch.zeros(1, dtype=torch.long), torch.arange(len(rows)))
    out = algo(IDENTITY, IDENTITY, batch, torch.tensor(1))
    assert out.state.mask.tolist() == want


def test_update_overwrites_and_keeps():
    algo = make()
    step(algo, [0, 1, 2])
    step(algo, [2, None, None], idx=torch.tensor([0, 1, 5]))  # 0 re-selected as 2, 1 not selected: kept
    assert algo.selected_label[:6].tolist() == [2, 1, 2, -1, -1, -1]


def test_duplicates_are_order_independent():
    algo = make()
    step(algo, [1, 2, None], idx=torch.tensor([4, 4, 4]))
    assert int(algo.selected_label[4]) == 2  # the larger class among the confident duplicates
    algo2 = make()
    step(algo2, [None, 2, 1], idx=torch.tensor([4, 4, 4]))
    assert int(algo2.selected_label[4]) == 2


def test_loss_matches_per_sample_loop():
    n, B = 9, 4
    algo = make(num_ulb=n, mapping="concave")
    algo.classwise_acc.copy_(torch.tensor([0.9, 0.2, 0.6]))
    w, s = random_logits(n, C, 1), random_logits(n, C, 2)
    lb, y = random_logits(B, C, 3), torch.tensor([0, 1, 2, 1])
    out = algo(IDENTITY, IDENTITY, logits_batch(w, s, lb, y), torch.tensor(3))
    thr = [TAU * math.log2(1 + b) for b in (0.9, 0.2, 0.6)]
    sup = sum(ce_by_hand(lb[i], int(y[i])) for i in range(B)) / B
    unsup = 0.0
    for i in range(n):
        p = torch.softmax(w[i].detach(), -1)
        k = int(p.argmax())
        if float(p[k]) >= thr[k]:
            unsup += ce_by_hand(s[i], k)
    assert float(out.loss.detach()) == pytest.approx(sup + unsup / n, rel=1e-9)
    assert 0 < float(out.metrics["mask_ratio"]) < 1


def test_bad_mapping_names_the_choices():
    with pytest.raises(ValueError, match="convex, linear, concave"):
        FlexMatchConfig(mapping="cubic")
