"""SequenceMatch: the loss against a per-sample fp64 loop (FlexMatch thresholds after one update), the
gradient through each unlabeled view, and the medium view from the DALI loader and the synthetic one.
Compile (fullgraph), sync-freedom, state round trip and a short run: the registry-wide tests."""
import math

import numpy as np
import pytest
import torch

from algo_testing import IDENTITY, ce_by_hand, logits_batch, random_logits, softmax_by_hand
from fastssl.algorithms.flexmatch import FlexMatchConfig
from fastssl.algorithms.sequencematch import SequenceMatch
from fastssl.batch import ViewSpec
from fastssl.data.augment import AugmentConfig, ViewParams
from fastssl.data.pipeline import TrainLoader

C, N = 4, 12


def _algo(**kw):
    algo = SequenceMatch(FlexMatchConfig(**kw), num_classes=C, num_ulb=N)
    w = torch.zeros(N, C, dtype=torch.float64)  # one update: σ = (6, 3, 1, 0), 2 unused
    w[torch.arange(10), torch.tensor([0] * 6 + [1] * 3 + [2])] = 20.0
    b = logits_batch(w, w.clone(), w[:2], torch.tensor([0, 1]), m=w.clone())
    algo.update_state(b, algo(IDENTITY, IDENTITY, b, torch.tensor(0)).state)
    return algo


def _kl_by_hand(logits_row, target_probs, T):
    t = softmax_by_hand(target_probs, T)
    q = softmax_by_hand(logits_row)
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(t, q))


def test_loss_matches_per_sample_loop():
    algo = _algo(tau=0.95, T=0.5)
    thr = algo.thresholds().tolist()
    assert len(set(thr)) > 1  # class-wise thresholds are in play
    n, B = N, 5
    w, s, m = random_logits(n, C, 0, 2.5), random_logits(n, C, 1), random_logits(n, C, 2)
    lb, y = random_logits(B, C, 3), torch.arange(B) % C
    out = algo(IDENTITY, IDENTITY, logits_batch(w, s, lb, y, m=m), torch.tensor(1))
    sup = sum(ce_by_hand(lb[i], int(y[i])) for i in range(B)) / B
    pl = mw = sm = sw = 0.0
    kept = 0
    for i in range(n):
        pw, pm = softmax_by_hand(w[i]), softmax_by_hand(m[i])
        k = pw.index(max(pw))
        if max(pw) >= thr[k]:
            kept += 1
            pl += ce_by_hand(s[i], k)
            mw += _kl_by_hand(m[i], pw, 0.5)
            sm += _kl_by_hand(s[i], pm, 0.5)
            sw += _kl_by_hand(s[i], pw, 0.5)
    assert 0 < kept < n
    assert float(out.loss.detach()) == pytest.approx(sup + (pl + mw + sm + sw) / n, rel=1e-9)
    assert float(out.metrics["kl_sm"]) == pytest.approx(sm / n, rel=1e-9)


def test_gradient_reaches_every_unlabeled_view_only_through_the_unlabeled_term():
    algo = _algo(tau=0.5)
    w, s, m = random_logits(N, C, 0, 4.0), random_logits(N, C, 1), random_logits(N, C, 2)
    lb = random_logits(3, C, 3)
    for lam in (1.0, 0.0):
        algo.cfg.lambda_u = lam
        for t in (w, s, m, lb):
            t.grad = None
        algo(IDENTITY, IDENTITY, logits_batch(w, s, lb, torch.tensor([0, 1, 2]), m=m), torch.tensor(1)).loss.backward()
        assert lb.grad.abs().sum() > 0
        for t in (s, m):
            assert (t.grad.abs().sum() > 0) == (lam > 0)
        assert w.grad is None or w.grad.abs().sum() == 0  # the weak view is only a (detached) target


def test_missing_medium_view_names_the_fix():
    algo = _algo()
    w = random_logits(N, C, 0)
    with pytest.raises(ValueError, match="medium=True"):
        algo(IDENTITY, IDENTITY, logits_batch(w, w, w[:2], torch.tensor([0, 1])), torch.tensor(0))


def test_view_params_draw_medium_views_with_their_own_op_count():
    cfg = AugmentConfig(num_ops=3, medium_num_ops=1, flip_prob=0.5)
    vp = ViewParams(cfg, (8, 8), 3, 1, 1, (0,), num_medium=1)
    d = vp.draw(0, 4)
    assert {"s0.2.M", "m0.0.M", "m0.crop_x", "m0.cut_anchor"} <= set(d) and "m0.1.M" not in d
    base = ViewParams(cfg, (8, 8), 3, 1, 1, (0,)).draw(0, 4)  # medium draws come after: the rest unchanged
    assert all(np.array_equal(base[k], d[k]) for k in base)


def _data(n=40):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return x, rng.integers(0, 10, n).astype(np.int64)


def test_dali_loader_feeds_the_views_sequencematch_reads():
    x, y = _data()
    kw = dict(batch_size=4, uratio=2, views=SequenceMatch.views, mean=(0.5,) * 3, std=(0.25,) * 3, seed=1,
              num_threads=1)
    plain = AugmentConfig(flip_prob=0.0, crop_pad_frac=0.0, num_ops=0, medium_num_ops=0, cutout_max_frac=0.0)
    b = next(TrainLoader(x[:12], y[:12], x, y, aug=plain, **kw))
    assert torch.equal(b.x_ulb_m, b.x_ulb_w)  # unaugmented: the same images, in the same rows as idx_ulb
    ref = (torch.from_numpy(x[b.idx_ulb.numpy()]).double().permute(0, 3, 1, 2) - 127.5) / 63.75
    torch.testing.assert_close(b.x_ulb_m.double(), ref, rtol=0, atol=1e-5)
    b = next(TrainLoader(x[:12], y[:12], x, y, aug=AugmentConfig(flip_prob=0.5), **kw))
    assert b.x_ulb_m.shape == b.x_ulb_s.shape == b.x_ulb_w.shape
    assert not torch.equal(b.x_ulb_m, b.x_ulb_w) and not torch.equal(b.x_ulb_m, b.x_ulb_s)
    algo = SequenceMatch(FlexMatchConfig(), num_classes=10, num_ulb=len(x))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    out = algo(model, model, b, torch.tensor(0))
    assert torch.isfinite(out.loss) and "kl_mw" in out.metrics


def test_synthetic_loader_mirrors_the_medium_view():
    from fastssl.data.synthetic import SyntheticTrainLoader
    labels = np.arange(40) % 4
    kw = dict(batch_size=4, uratio=2, shape=(3, 8, 8), seed=0)
    b = next(SyntheticTrainLoader(labels, np.arange(8), np.arange(40), views=SequenceMatch.views, **kw))
    assert b.x_ulb_m.shape == b.x_ulb_w.shape and b.x_ulb_m.stride() == b.x_ulb_w.stride()
    plain = next(SyntheticTrainLoader(labels, np.arange(8), np.arange(40), views=ViewSpec(), **kw))
    assert plain.x_ulb_m is None and torch.equal(plain.x_ulb_s, b.x_ulb_s)  # the other views unchanged
