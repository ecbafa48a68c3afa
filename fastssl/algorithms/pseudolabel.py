"""Pseudo-Label: Lee, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method for Deep
Neural Networks", ICML 2013 Workshop on Challenges in Representation Learning (no arXiv version).

The model's own hard prediction on an unlabeled sample is its target, on the *same* (weak) view: the
pseudo-label is the argmax of the detached logits and the cross-entropy flows through the same logits.
The unlabeled weight ramps up linearly, α(t) = λ_u · min(t / (unsup_warmup · K), 1) (the paper ramps from
T1 to T2 epochs; USB's classic-CV form, a ramp from 0 over the first 40% of training, is used here), and
only predictions with confidence ≥ τ are used (τ = 0.95 as USB; τ = 0 gives the paper's plain argmax).
The ramp scales the whole unlabeled part, the opt-in add-on regularizers included.

One forward over the concatenated labeled and unlabeled batch. USB instead freezes the BatchNorm running
statistics during the unlabeled forward; here BatchNorm sees the whole batch, as in FixMatch.
"""
from __future__ import annotations

import dataclasses

from torch import Tensor

from fastssl.algorithms.base import AlgorithmConfig, Predictions, PseudoLabelAlgorithm, PseudoLabels
from fastssl.algorithms.losses import ramp_up
from fastssl.batch import ViewSpec


@dataclasses.dataclass
class PseudoLabelConfig(AlgorithmConfig):
    tau: float = 0.95
    """confidence threshold of the pseudo-labels (0 = the paper's plain argmax)"""
    unsup_warmup: float = 0.4
    """fraction of training over which the unlabeled weight ramps linearly from 0 to λ_u"""


class PseudoLabel(PseudoLabelAlgorithm):
    """No strong view: the family's forward trains the weak view itself towards its own pseudo-labels."""

    name = "pseudolabel"
    Config = PseudoLabelConfig
    views = ViewSpec(num_weak=1, num_strong=0)
    recipe = {"algo.tau": 0.95, "algo.unsup_warmup": 0.4, "data.uratio": 1}

    def pseudo_labels(self, p: Predictions, step: Tensor) -> PseudoLabels:
        cfg: PseudoLabelConfig = self.cfg
        ramp = ramp_up(step, cfg.unsup_warmup * self.total_steps, "linear")
        return PseudoLabels(cfg.tau, unsup_weight=ramp, metrics={"unsup_weight": ramp})
