"""Named, published setups: each is the set of overrides that reproduces a table entry.

Base: FixMatch's classic-CV protocol (Sohn et al. 2020, Table 1 / USB classic_cv configs): WRN-28-2
(WRN-28-8 for CIFAR-100, WRN-37-2 for STL-10), B=64, μ=7, SGD lr 0.03 Nesterov momentum 0.9, wd 5e-4
(1e-3 for CIFAR-100), cosine cos(7πk/16K), 2^20 steps, EMA 0.999, τ=0.95, λ_u=1. Users pass the data
folder: `fastssl train --recipe cifar10_fixmatch_40 --data.root DATA/cifar-10-batches-py`.

Derived, not listed: `<dataset>_<algo>_<labels>` = base + dataset + label count + the algorithm's own
`recipe` class attribute (USB's classic-CV config for it, or its paper's). Every registered algorithm has
CIFAR-10 recipes; FixMatch and the supervised baseline have every dataset's. Listing the names imports no
algorithm module; reading a recipe imports its algorithm's (torch only, no Triton).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from fastssl.algorithms import ALGORITHMS, get_algorithm

_LONG = {"train.steps": 1 << 20, "train.eval_every": 5000, "train.ckpt_every": 5000, "train.log_every": 100,
         "data.batch_size": 64, "data.uratio": 7, "data.eval_batch_size": 1024, "optim.lr": 0.03,
         "optim.weight_decay": 5e-4, "train.ema_decay": 0.999}

_DATASETS: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "cifar10": ({"data.name": "cifar10", "model.name": "wrn_28_2"}, (40, 250, 4000)),
    "cifar100": ({"data.name": "cifar100", "model.name": "wrn_28_8", "optim.weight_decay": 1e-3}, (400, 2500, 10000)),
    "svhn": ({"data.name": "svhn", "model.name": "wrn_28_2"}, (40, 250, 1000)),
    "stl10": ({"data.name": "stl10", "model.name": "wrn_37_2"}, (40, 250, 1000)),
}

_EVERY_DATASET = ("fixmatch", "supervised")
"""the algorithms with recipes for every dataset; the others have CIFAR-10's (the protocols they state)"""


def _names() -> dict[str, tuple[str, str, int]]:
    """recipe name → (algorithm, dataset, label count), in listing order."""
    names = {}
    for ds, (_, counts) in _DATASETS.items():
        for n in counts:
            for algo in _EVERY_DATASET:
                names[f"{ds}_{algo}_{n}"] = (algo, ds, n)
    for algo in ALGORITHMS:
        if algo not in _EVERY_DATASET:
            for n in _DATASETS["cifar10"][1]:
                names[f"cifar10_{algo}_{n}"] = (algo, "cifar10", n)
    return names


class _Recipes(Mapping):
    """name → overrides, each built when read (importing that algorithm's module)."""

    def __init__(self):
        self._names = _names()

    def __getitem__(self, name: str) -> dict[str, Any]:
        algo, ds, n = self._names[name]
        own = {k: v(n) if callable(v) else v for k, v in get_algorithm(algo).recipe.items()}  # v(n): per label count
        return {**_LONG, **_DATASETS[ds][0], "data.num_labels": n, "algo.name": algo, **own}

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


RECIPES: Mapping[str, dict[str, Any]] = _Recipes()


def get_recipe(name: str) -> dict[str, Any]:
    try:
        return dict(RECIPES[name])
    except KeyError:
        raise ValueError(f"unknown recipe --recipe={name!r}; choose one of: {', '.join(sorted(RECIPES))}") from None
