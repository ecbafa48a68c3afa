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


# Per-algorithm options for the CIFAR-10 40/250/4000-label recipes: USB's classic-CV configs
# (config/classic_cv/<algo>/<algo>_cifar10_<n>_0.yaml use the same values at every label count), or the
# paper where USB has none. Most equal the algorithm's Config defaults; they are repeated so that a recipe
# reads as the full setup. Π-Model, Mean Teacher, MixMatch, ReMixMatch, VAT, ICT and Pseudo-Label train with
# μ=1 in USB's classic-CV setting.
_ALGO_OPTIONS: dict[str, dict[str, Any]] = {
    "flexmatch": {"algo.tau": 0.95, "algo.thresh_warmup": True, "algo.mapping": "convex"},
    "freematch": {"algo.ema_p": 0.999, "algo.lambda_e": 0.001},
    "softmatch": {"algo.ema_p": 0.999, "algo.n_sigma": 2.0, "algo.dist_align": True, "algo.dist_uniform": True},
    "uda": {"algo.tau": 0.8, "algo.T": 0.4, "algo.tsa_schedule": "none"},
    "adamatch": {"algo.tau": 0.95, "algo.ema_p": 0.999},
    "dash": {"algo.gamma": 1.27, "algo.C": 1.0001, "algo.rho_min": 0.05, "algo.T": 0.5},
    "pseudolabel": {"algo.tau": 0.95, "algo.unsup_warmup": 0.4, "data.uratio": 1},
    "defixmatch": {"algo.tau": 0.95},
    # no USB config: the entropy weight of Oliver et al. (NeurIPS 2018)'s re-implementation study
    "entmin": {"algo.lambda_u": 0.06},
    "pimodel": {"algo.lambda_u": 10.0, "algo.unsup_warmup": 0.4, "algo.consistency": "mse", "data.uratio": 1},
    "meanteacher": {"algo.lambda_u": 50.0, "algo.unsup_warmup": 0.4, "algo.consistency": "mse", "data.uratio": 1},
    "mixmatch": {"algo.lambda_u": 100.0, "algo.T": 0.5, "algo.mixup_alpha": 0.5, "algo.unsup_warmup": 0.4,
                 "data.uratio": 1},
    "remixmatch": {"algo.lambda_u": 1.5, "algo.lambda_kl": 0.5, "algo.lambda_rot": 0.5, "algo.T": 0.5,
                   "algo.mixup_alpha": 0.75, "algo.unsup_warmup": 1 / 64, "data.uratio": 1},
    "vat": {"algo.lambda_u": 1.0, "algo.eps": 6.0, "algo.lambda_ent": 0.06, "algo.unsup_warmup": 0.4,
            "data.uratio": 1},
    # no USB config: the ICT authors' CIFAR-10 command
    "ict": {"algo.lambda_u": 100.0, "algo.mixup_alpha": 1.0, "algo.mixup_alpha_sup": 1.0,
            "algo.unsup_warmup": 0.25, "data.uratio": 1},
}


def _build() -> dict[str, dict[str, Any]]:
    recipes: dict[str, dict[str, Any]] = {}
    for ds, (over, label_counts) in _DATASETS.items():
        for n in label_counts:
            recipes[f"{ds}_fixmatch_{n}"] = {**_LONG, **over, "data.num_labels": n}
            recipes[f"{ds}_supervised_{n}"] = {**_LONG, **over, "data.num_labels": n, "algo.name": "supervised"}
    cifar10, label_counts = _DATASETS["cifar10"]
    for algo, options in _ALGO_OPTIONS.items():
        for n in label_counts:
            recipes[f"cifar10_{algo}_{n}"] = {**_LONG, **cifar10, "data.num_labels": n, "algo.name": algo, **options}
    return recipes


RECIPES: dict[str, dict[str, Any]] = _build()


def get_recipe(name: str) -> dict[str, Any]:
    try:
        return dict(RECIPES[name])
    except KeyError:
        raise ValueError(f"unknown recipe --recipe={name!r}; choose one of: {', '.join(sorted(RECIPES))}") from None
