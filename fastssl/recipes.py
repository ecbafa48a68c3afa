"""Named, published setups: each is the set of overrides that reproduces a table entry.

Base: FixMatch's classic-CV protocol (Sohn et al. 2020, Table 1 / USB classic_cv configs): WRN-28-2
(WRN-28-8 for CIFAR-100, WRN-37-2 for STL-10), B=64, μ=7, SGD lr 0.03 Nesterov momentum 0.9, wd 5e-4
(1e-3 for CIFAR-100), cosine cos(7πk/16K), 2^20 steps, EMA 0.999, τ=0.95, λ_u=1. Users pass the data
folder: `fastssl train --recipe cifar10_fixmatch_40 --data.root DATA/cifar-10-batches-py`.
"""
from __future__ import annotations

from typing import Any

_LONG = {"train.steps": 1 << 20, "train.eval_every": 5000, "train.ckpt_every": 5000, "train.log_every": 100,
         "data.batch_size": 64, "data.uratio": 7, "data.eval_batch_size": 1024, "optim.lr": 0.03,
         "optim.weight_decay": 5e-4, "train.ema_decay": 0.999, "algo.name": "fixmatch"}

_DATASETS: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "cifar10": ({"data.name": "cifar10", "model.name": "wrn_28_2"}, (40, 250, 4000)),
    "cifar100": ({"data.name": "cifar100", "model.name": "wrn_28_8", "optim.weight_decay": 1e-3}, (400, 2500, 10000)),
    "svhn": ({"data.name": "svhn", "model.name": "wrn_28_2"}, (40, 250, 1000)),
    "stl10": ({"data.name": "stl10", "model.name": "wrn_37_2"}, (40, 250, 1000)),
}


def _build() -> dict[str, dict[str, Any]]:
    recipes: dict[str, dict[str, Any]] = {}
    for ds, (over, label_counts) in _DATASETS.items():
        for n in label_counts:
            recipes[f"{ds}_fixmatch_{n}"] = {**_LONG, **over, "data.num_labels": n}
            recipes[f"{ds}_supervised_{n}"] = {**_LONG, **over, "data.num_labels": n, "algo.name": "supervised"}
    return recipes


RECIPES: dict[str, dict[str, Any]] = _build()


def get_recipe(name: str) -> dict[str, Any]:
    try:
        return dict(RECIPES[name])
    except KeyError:
        raise ValueError(f"unknown recipe --recipe={name!r}; choose one of: {', '.join(sorted(RECIPES))}") from None
