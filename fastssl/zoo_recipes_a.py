"""CIFAR-10 recipes for the confidence-threshold family (Zoo A), as overrides of the CIFAR-10 FixMatch base
(WRN-28-2, B=64, μ=7, SGD 0.03 Nesterov, wd 5e-4, cosine 7/16, EMA 0.999, 2^20 steps). To be merged into
`fastssl/recipes.py`. Values follow USB's classic-CV configs (config/classic_cv/<algo>/<algo>_cifar10_<n>_0.yaml),
which use the same hyper-parameters at 40, 250 and 4000 labels for every algorithm here; the algorithms'
own defaults already equal them, so most entries only name the algorithm. Listed explicitly where USB's
value is the point of the recipe (thresholds, temperatures, loss weights)."""
from __future__ import annotations

from typing import Any

_PER_ALGO: dict[str, dict[str, Any]] = {
    "flexmatch": {"algo.tau": 0.95, "algo.thresh_warmup": True, "algo.mapping": "convex"},
    "freematch": {"algo.ema_p": 0.999, "algo.lambda_e": 0.001},
    "softmatch": {"algo.ema_p": 0.999, "algo.n_sigma": 2.0, "algo.dist_align": True, "algo.dist_uniform": True},
    "uda": {"algo.tau": 0.8, "algo.T": 0.4, "algo.tsa_schedule": "none"},
    "adamatch": {"algo.tau": 0.95, "algo.ema_p": 0.999},
    "dash": {"algo.gamma": 1.27, "algo.C": 1.0001, "algo.rho_min": 0.05, "algo.T": 0.5},
    # USB trains Pseudo-Label with μ=1 (one unlabeled image per labeled image)
    "pseudolabel": {"algo.tau": 0.95, "algo.unsup_warmup": 0.4, "data.uratio": 1},
    "defixmatch": {"algo.tau": 0.95},
    # no USB config: the entropy weight of Oliver et al. (NeurIPS 2018)'s unified re-implementation
    "entmin": {"algo.lambda_u": 0.06},
}

RECIPES: dict[str, dict[str, Any]] = {
    f"cifar10_{algo}_{n}": {"algo.name": algo, "data.num_labels": n, **over}
    for algo, over in _PER_ALGO.items()
    for n in (40, 250, 4000)
}
