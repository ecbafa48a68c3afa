"""Pseudo-Label: Lee, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method for Deep
Neural Networks", ICML 2013 Workshop on Challenges in Representation Learning (no arXiv version).

The model's own hard prediction on an unlabeled sample is its target, on the *same* (weak) view: the
pseudo-label is the argmax of the detached logits and the cross-entropy flows through the same logits.
The unlabeled weight ramps up linearly, α(t) = λ_u · min(t / (unsup_warmup · K), 1) (the paper ramps from
T1 to T2 epochs; USB's classic-CV form, a ramp from 0 over the first 40% of training, is used here), and
only predictions with confidence ≥ τ are used (τ = 0.95 as USB; τ = 0 gives the paper's plain argmax).

One forward over the concatenated labeled and unlabeled batch. USB instead freezes the BatchNorm running
statistics during the unlabeled forward; here BatchNorm sees the whole batch, as in FixMatch.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput, acc, forward_cat
from fastssl.algorithms.fixmatch import pseudo_label_metrics
from fastssl.batch import SSLBatch, ViewSpec
from fastssl.kernels import pseudo_label_ce


@dataclasses.dataclass
class PseudoLabelConfig(AlgorithmConfig):
    tau: float = 0.95
    """confidence threshold of the pseudo-labels (0 = the paper's plain argmax)"""
    unsup_warmup: float = 0.4
    """fraction of training over which the unlabeled weight ramps linearly from 0 to λ_u"""


def linear_ramp(step: Tensor, length: float) -> Tensor:
    """min(step / length, 1) as a 0-d float tensor (1 when length ≤ 0)."""
    if length <= 0:
        return torch.ones((), device=step.device)
    return (step.to(torch.float32) / length).clamp(0.0, 1.0)


class PseudoLabel(Algorithm):
    name = "pseudolabel"
    Config = PseudoLabelConfig
    views = ViewSpec(num_weak=1, num_strong=0)

    def forward(self, model: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        cfg: PseudoLabelConfig = self.cfg
        logits_lb, logits_ulb_w = forward_cat(model, batch.x_lb, batch.x_ulb_w)
        sup_loss = F.cross_entropy(acc(logits_lb), batch.y_lb)
        pl = pseudo_label_ce(logits_ulb_w.detach(), logits_ulb_w, cfg.tau)  # target and prediction: same view
        ramp = linear_ramp(step, cfg.unsup_warmup * self.total_steps)
        reg_loss, reg_metrics = self.regularizers(logits_ulb_w)
        loss = sup_loss + cfg.lambda_u * ramp * pl.loss + reg_loss
        metrics = {"sup_loss": sup_loss.detach(), "unsup_loss": pl.loss.detach(), "unsup_weight": ramp,
                   **pseudo_label_metrics(pl.mask, pl.pseudo, batch.y_ulb), **reg_metrics}
        return StepOutput(loss, metrics, {"pseudo": pl.pseudo, "mask": pl.mask})
