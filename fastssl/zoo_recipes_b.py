"""CIFAR-10 recipes (40 / 250 / 4000 labels) for the consistency and MixUp algorithms, as flat override
dicts `{"section.field": value}` — the `--section.field=value` options of `fastssl train`.

The common part is USB's classic-CV setting, which is also what its published tables for these algorithms
use: WRN-28-2, 64 labeled + 64 unlabeled images per step (μ = 1), 2^20 steps, SGD lr 0.03 Nesterov,
momentum 0.9, weight decay 5e-4, cosine decay, EMA 0.999. The algorithm options are their classic-CV values
(the algorithm `Config` defaults); they are repeated here so that a recipe reads as the full setup.
ICT has no USB config: its recipe keeps the common optimiser and the authors' algorithm options.
"""
from __future__ import annotations

from typing import Any

COMMON: dict[str, Any] = {
    "data.name": "cifar10",
    "data.batch_size": 64,
    "data.uratio": 1,
    "model.name": "wrn_28_2",
    "train.steps": 1 << 20,
    "train.ema_decay": 0.999,
    "optim.lr": 0.03,
    "optim.momentum": 0.9,
    "optim.nesterov": True,
    "optim.weight_decay": 5e-4,
}

ALGO_OPTIONS: dict[str, dict[str, Any]] = {
    "pimodel": {"algo.lambda_u": 10.0, "algo.unsup_warmup": 0.4, "algo.consistency": "mse"},
    "meanteacher": {"algo.lambda_u": 50.0, "algo.unsup_warmup": 0.4, "algo.consistency": "mse"},
    "mixmatch": {"algo.lambda_u": 100.0, "algo.T": 0.5, "algo.mixup_alpha": 0.5, "algo.unsup_warmup": 0.4},
    "remixmatch": {"algo.lambda_u": 1.5, "algo.lambda_kl": 0.5, "algo.lambda_rot": 0.5, "algo.T": 0.5,
                   "algo.mixup_alpha": 0.75, "algo.unsup_warmup": 1 / 64},
    "vat": {"algo.lambda_u": 1.0, "algo.eps": 6.0, "algo.lambda_ent": 0.06, "algo.unsup_warmup": 0.4},
    "ict": {"algo.lambda_u": 100.0, "algo.mixup_alpha": 1.0, "algo.mixup_alpha_sup": 1.0,
            "algo.unsup_warmup": 0.25},
}

RECIPES: dict[str, dict[str, Any]] = {
    f"cifar10_{algo}_{n}": {"algo.name": algo, **COMMON, "data.num_labels": n, **options}
    for algo, options in ALGO_OPTIONS.items()
    for n in (40, 250, 4000)
}
"""recipe name → overrides, e.g. RECIPES["cifar10_mixmatch_250"]"""
