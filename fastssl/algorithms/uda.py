"""UDA: Xie, Dai, Hovy, Luong & Le, "Unsupervised Data Augmentation for Consistency Training",
NeurIPS 2020 (arXiv:1904.12848).

Unlabeled: the strong view is trained towards the sharpened weak-view prediction softmax(weak/T) (T=0.4),
kept only where the weak view's confidence reaches τ=0.8 (confidence masking). Cross-entropy to the
fixed soft target has the gradient of the paper's KL term. Labeled: cross-entropy with optional Training
Signal Annealing: a labeled example is left out while the model's probability of its *correct* class is
above η_t = α_t(1 − 1/C) + 1/C, with α_t = t/K (linear), exp(5(t/K − 1)) (exp) or 1 − exp(−5t/K) (log),
and the kept losses are averaged over the kept count (the paper and the authors' code).

Deviation from USB on purpose: USB masks TSA on the *largest* predicted probability rather than the
correct class's and averages over the whole batch; we follow the paper. USB's target is the unsharpened
weak-view softmax whatever T; ours is softmax(weak/T), as the paper. The schedule reads `step` as a
tensor, so it never recompiles.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from fastssl.algorithms.base import AlgorithmConfig, Predictions, PseudoLabelAlgorithm, PseudoLabels
from fastssl.algorithms.losses import acc
from fastssl.batch import SSLBatch

TSA_SCHEDULES = ("none", "linear", "exp", "log")


@dataclasses.dataclass
class UDAConfig(AlgorithmConfig):
    tau: float = 0.8
    """confidence threshold of the weak-view prediction for the consistency loss"""
    T: float = 0.4
    """sharpening temperature of the soft target softmax(weak/T)"""
    tsa_schedule: str = "none"
    """Training Signal Annealing of the labeled loss: none, linear, exp, log"""

    def __post_init__(self):
        if self.tsa_schedule not in TSA_SCHEDULES:
            raise ValueError(f"--algo.tsa_schedule={self.tsa_schedule!r}: use one of {', '.join(TSA_SCHEDULES)}")


def tsa_threshold(schedule: str, step: Tensor, total_steps: int, num_classes: int) -> Tensor:
    """η_t = α_t(1 − 1/C) + 1/C as a 0-d float tensor (1 for 'none')."""
    t = step.to(torch.float32) / total_steps
    if schedule == "none":
        return torch.ones_like(t)
    if schedule == "linear":
        alpha = t
    elif schedule == "exp":
        alpha = torch.exp((t - 1) * 5)
    else:
        alpha = 1 - torch.exp(-t * 5)
    return alpha * (1 - 1 / num_classes) + 1 / num_classes


class UDA(PseudoLabelAlgorithm):
    name = "uda"
    Config = UDAConfig
    recipe = {"algo.tau": 0.8, "algo.T": 0.4, "algo.tsa_schedule": "none"}

    def pseudo_labels(self, p: Predictions, step: Tensor) -> PseudoLabels:
        return PseudoLabels(self.cfg.tau, T=self.cfg.T, soft=True)

    def supervised_loss(self, p: Predictions, batch: SSLBatch, step: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy over the labeled examples Training Signal Annealing keeps, averaged over the kept count."""
        logits_lb = acc(p.logits_lb)
        eta = tsa_threshold(self.cfg.tsa_schedule, step, self.total_steps, self.num_classes)
        p_correct = p.probs_lb.gather(1, batch.y_lb[:, None])[:, 0]
        kept = (p_correct <= eta).to(logits_lb.dtype)
        sup_loss = (F.cross_entropy(logits_lb, batch.y_lb, reduction="none") * kept).sum() / kept.sum().clamp_min(1)
        return sup_loss, {"tsa_eta": eta, "tsa_kept": kept.mean()}
