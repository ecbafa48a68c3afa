"""ReFixMatch: Nguyen & Yang, "Boosting Semi-Supervised Learning by bridging high and low-confidence
predictions", ICCV Workshops 2023 (arXiv:2308.07509).

FixMatch (hard pseudo-labels of the weak view above τ train the strong view) plus a second unlabeled term,
so that the predictions FixMatch discards are used too: the strong view's prediction is pulled towards the
weak view's full predicted distribution by KL(p_w ‖ softmax(strong)), per sample, on the rows that
`refix_rows` selects, weighted like the FixMatch term (λ_u):

    loss = CE(labeled) + λ_u · mean_i mask_i · CE(strong_i, argmax p_w,i) + λ_u · mean_i r_i · KL(p_w,i ‖ q_s,i)

with p_w = softmax(weak logits) (T = 1, detached) and q_s = softmax(strong logits).

Deliberate differences / choices:
- Rows of the KL term (`refix_rows`): by default the low-confidence rows (r = 1 − mask, "low"), the
  predictions FixMatch discards and the paper sets out to use; USB's `refixmatch` passes the *confident*
  mask to this term as well ("high" reproduces that code); "all" uses every row.
- The KL target is the plain softmax of the weak view, as in USB (its `T` only sharpens the soft FixMatch
  target, used with hard_label=false, as here).
- The mask is max p_w ≥ τ (the fused kernel's convention), as USB's fixed-threshold hook.
Defaults: USB classic-CV (τ = 0.95, λ_u = 1, hard labels, T = 0.5).
"""
from __future__ import annotations

import dataclasses

from torch import Tensor

from fastssl.algorithms.base import AlgorithmConfig, Predictions, PseudoLabelAlgorithm, PseudoLabels
from fastssl.algorithms.losses import kl

REFIX_ROWS = ("low", "high", "all")


@dataclasses.dataclass
class ReFixMatchConfig(AlgorithmConfig):
    tau: float = 0.95
    """confidence threshold τ: a weak-view prediction becomes a hard pseudo-label when its max prob ≥ τ"""
    T: float = 0.5
    """temperature of the soft pseudo-label softmax(weak/T) (used only with hard_label=false)"""
    hard_label: bool = True
    """one-hot pseudo-labels (argmax) rather than soft targets in the FixMatch term"""
    refix_rows: str = "low"
    """rows of the KL(weak ‖ strong) term: low (below τ, the default), high (at or above τ: USB's code), all"""

    def __post_init__(self):
        if self.refix_rows not in REFIX_ROWS:
            raise ValueError(f"--algo.refix_rows={self.refix_rows!r}: use one of {', '.join(REFIX_ROWS)}")


class ReFixMatch(PseudoLabelAlgorithm):
    name = "refixmatch"
    Config = ReFixMatchConfig
    recipe = {"algo.tau": 0.95, "algo.T": 0.5}

    def pseudo_labels(self, p: Predictions, step: Tensor) -> PseudoLabels:
        cfg: ReFixMatchConfig = self.cfg
        return PseudoLabels(cfg.tau, T=cfg.T, soft=not cfg.hard_label)

    def extra_loss(self, p: Predictions, pl, sel: PseudoLabels) -> tuple[Tensor, dict[str, Tensor]]:
        cfg: ReFixMatchConfig = self.cfg
        mask = pl.mask.to(p.probs_ulb_w.dtype)
        rows = {"low": 1 - mask, "high": mask, "all": 1.0}[cfg.refix_rows]
        refix = (kl(p.logits_ulb_s, p.probs_ulb_w) * rows).mean()
        return cfg.lambda_u * refix, {"refix_loss": refix.detach()}
