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
from torch import Tensor, nn

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput, acc, forward_cat
from fastssl.algorithms.fixmatch import pseudo_label_metrics
from fastssl.batch import SSLBatch
from fastssl.kernels import pseudo_label_ce

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


class UDA(Algorithm):
    name = "uda"
    Config = UDAConfig

    def forward(self, model: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        cfg: UDAConfig = self.cfg
        logits_lb, logits_ulb_w, logits_ulb_s = forward_cat(model, batch.x_lb, batch.x_ulb_w, batch.x_ulb_s)
        logits_lb = acc(logits_lb)
        eta = tsa_threshold(cfg.tsa_schedule, step, self.total_steps, self.num_classes)
        p_correct = logits_lb.detach().softmax(-1).gather(1, batch.y_lb[:, None])[:, 0]
        sup_mask = (p_correct <= eta).to(logits_lb.dtype)
        sup_loss = (F.cross_entropy(logits_lb, batch.y_lb, reduction="none") * sup_mask).sum() / sup_mask.sum().clamp_min(1)
        pl = pseudo_label_ce(logits_ulb_w.detach(), logits_ulb_s, cfg.tau, cfg.T, soft=True)
        reg_loss, reg_metrics = self.regularizers(logits_ulb_w)
        loss = sup_loss + cfg.lambda_u * pl.loss + reg_loss
        metrics = {"sup_loss": sup_loss.detach(), "unsup_loss": pl.loss.detach(), "tsa_eta": eta,
                   "tsa_kept": sup_mask.mean(), **pseudo_label_metrics(pl.mask, pl.pseudo, batch.y_ulb), **reg_metrics}
        return StepOutput(loss, metrics, {"pseudo": pl.pseudo, "mask": pl.mask})
