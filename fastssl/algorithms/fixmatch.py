"""FixMatch: Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence",
NeurIPS 2020 (arXiv:2001.07685).

Labeled: cross-entropy on the weak view. Unlabeled: the weak view's prediction becomes a pseudo-label when
its confidence reaches τ, and the strong view is trained to predict it. One forward over the concatenated
batch; the masked cross-entropy runs in one fused kernel on GPU (`fastssl.kernels.pseudo_label_ce`).
With `hard_label=false` the target is softmax(weak/T); USB's soft target ignores T (its softmax at T=1).
"""
from __future__ import annotations

import dataclasses

from torch import Tensor

from fastssl.algorithms.base import AlgorithmConfig, Predictions, PseudoLabelAlgorithm, PseudoLabels


@dataclasses.dataclass
class FixMatchConfig(AlgorithmConfig):
    tau: float = 0.95
    """confidence threshold τ: a weak-view prediction becomes a pseudo-label when its max prob ≥ τ"""
    T: float = 1.0
    """temperature of the soft pseudo-label softmax(weak/T) (used only with hard_label=false)"""
    hard_label: bool = True
    """one-hot pseudo-labels (argmax) rather than soft targets"""


class FixMatch(PseudoLabelAlgorithm):
    name = "fixmatch"
    Config = FixMatchConfig

    def pseudo_labels(self, p: Predictions, step: Tensor) -> PseudoLabels:
        cfg: FixMatchConfig = self.cfg
        return PseudoLabels(cfg.tau, T=cfg.T, soft=not cfg.hard_label)
