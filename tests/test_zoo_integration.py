"""Every registered algorithm against the real data path and the real trainer.

(1) Views: a DALI `TrainLoader` built from each algorithm's `views` yields a batch the algorithm's forward and
    backward consume (one loader per distinct `ViewSpec`; the batch's shapes are checked against the spec).
(2) Trainer smoke: `Trainer` runs 2 steps of each algorithm on the offline default (digits) with a finite
    loss and one `metrics.jsonl` row, so config → model → algorithm wiring (teacher, ReMixMatch's head
    width, empty views) is exercised for all of them.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from algo_testing import C, STEP, ConfidentNet, build_algo, teacher_copy
from fastssl.algorithms import ALGORITHMS, get_algorithm
from fastssl.batch import ViewSpec
from fastssl.config import Config, apply_overrides
from fastssl.data.augment import AugmentConfig
from fastssl.data.pipeline import TrainLoader
from fastssl.train.trainer import Trainer

NAMES = sorted(ALGORITHMS)
B, MU, HW = 4, 2, 8
BY_SPEC: dict[ViewSpec, list[str]] = defaultdict(list)
for _n in NAMES:
    BY_SPEC[get_algorithm(_n).views].append(_n)
SPECS = sorted(BY_SPEC)
SMALL_POOL = AugmentConfig(ops=("Identity", "Rotate", "Solarize", "Equalize"), num_ops=2, flip_prob=0.5)  # quick to build


def _loader(spec: ViewSpec) -> TrainLoader:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, HW, HW, 3), dtype=np.uint8)
    y = (np.arange(40) % C).astype(np.int64)
    return TrainLoader(x[:20], y[:20], x, y, batch_size=B, uratio=MU, views=spec, aug=SMALL_POOL,
                       mean=(0.5,) * 3, std=(0.25,) * 3, seed=0, num_threads=1, prefetch=1)


@pytest.mark.parametrize("spec", SPECS, ids=[f"w{s.num_weak}s{s.num_strong}{'L' if s.lb_strong else ''}" for s in SPECS])
def test_pipeline_views_feed_every_algorithm(spec):
    batch = next(iter(_loader(spec)))
    n = B * MU
    assert batch.x_lb.shape == (B, 3, HW, HW)
    assert batch.x_ulb_w.shape[0] == (n if spec.num_weak else 0)
    assert batch.x_ulb_s.shape[0] == (n if spec.num_strong else 0)
    assert len(batch.x_ulb_w_extra) == max(spec.num_weak - 1, 0)
    assert len(batch.x_ulb_s_extra) == max(spec.num_strong - 1, 0)
    assert all(t.shape == (n, 3, HW, HW) for t in (*batch.x_ulb_w_extra, *batch.x_ulb_s_extra))
    assert (batch.x_lb_s is not None) == spec.lb_strong
    for name in BY_SPEC[spec]:
        torch.manual_seed(0)
        model = ConfidentNet(scale=1.0)
        algo = build_algo(name)
        out = algo(model, teacher_copy(model), batch, torch.tensor(STEP))
        out.loss.backward()
        assert torch.isfinite(out.loss), name
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name
        algo.update_state(batch, out.state)


SMOKE = {"data.batch_size": 8, "data.uratio": 2, "data.eval_batch_size": 450, "train.steps": 2,
         "train.eval_every": 2, "train.progress": False, "train.compile": "off"}


@pytest.mark.parametrize("name", NAMES)
def test_trainer_two_steps(name, tmp_path):
    cfg = Config()
    apply_overrides(cfg, {**SMOKE, "algo.name": name, "train.out": str(tmp_path)})
    summary = Trainer(cfg).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 2
    assert math.isfinite(rows[0]["loss"]), f"{name}: loss {rows[0]['loss']}"
    assert summary["top1"] == rows[0]["top1"]
