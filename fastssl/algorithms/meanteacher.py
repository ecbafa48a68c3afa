"""Mean Teacher: Tarvainen & Valpola, "Mean teachers are better role models: Weight-averaged consistency
targets improve semi-supervised deep learning results", NeurIPS 2017 (arXiv:1703.01780).

Labeled: cross-entropy. Unlabeled: the student's prediction on one weak view is pulled towards the EMA
teacher's prediction on another weak view (independent augmentation), with a ramped-up weight.

- The gradient flows through the student only: the teacher runs under `no_grad` and its output is the
  target. (USB's version scores the teacher's output against itself, so its consistency loss has no
  gradient at all; `tests/test_meanteacher.py` checks that ours has one.)
- The teacher runs with BatchNorm on its own batch statistics (training mode) and its running statistics
  untouched, as in the authors' code (teacher in training mode) and USB (EMA weights in the training-mode
  model, BN frozen). Its eval-mode statistics would be the student's (`EMATeacher` copies buffers), which
  lag-mismatch the averaged weights early in training.
- Student: one forward over [x_lb, second weak view], so BatchNorm sees both (the FixMatch convention).

Defaults: USB classic-CV (λ_u = 50, linear ramp over the first 40% of training, softmax MSE). The paper's
CIFAR-10 setting used a sigmoid ramp (`--algo.ramp=sigmoid`) and a consistency weight of 100 with MSE.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput, forward_cat
from fastssl.algorithms.forwards import forward_batch_stats
from fastssl.algorithms.losses import DISTANCES, ramp_up, acc
from fastssl.batch import SSLBatch, ViewSpec


@dataclasses.dataclass
class ConsistencyConfig(AlgorithmConfig):
    """Options shared by Π-Model and Mean Teacher."""

    consistency: str = "mse"
    """distance between the prediction and its target: mse (softmax MSE, the papers'), l1, kl, js"""
    unsup_warmup: float = 0.4
    """the unlabeled weight ramps up over this fraction of train.steps (0 = full weight from step 0)"""
    ramp: str = "linear"
    """ramp-up shape: linear (USB) or sigmoid exp(-5(1-t)^2) (Laine & Aila, Tarvainen & Valpola)"""

    def __post_init__(self):
        if self.consistency not in DISTANCES:
            raise ValueError(f"--algo.consistency={self.consistency!r}: use one of {', '.join(DISTANCES)}")
        if self.ramp not in ("linear", "sigmoid"):
            raise ValueError(f"--algo.ramp={self.ramp!r}: use linear or sigmoid")
        if not 0 <= self.unsup_warmup <= 1:
            raise ValueError(f"--algo.unsup_warmup={self.unsup_warmup} is a fraction of train.steps: use [0, 1]")


@dataclasses.dataclass
class MeanTeacherConfig(ConsistencyConfig):
    lambda_u: float = 50.0
    """weight of the consistency loss after ramp-up (USB classic-CV: 50)"""


def unsup_weight(algo: Algorithm, step: Tensor) -> Tensor:
    """λ_u · ramp(step) as a 0-d tensor."""
    cfg = algo.cfg
    return cfg.lambda_u * ramp_up(step, cfg.unsup_warmup * algo.total_steps, cfg.ramp)


class MeanTeacher(Algorithm):
    name = "meanteacher"
    Config = MeanTeacherConfig
    views = ViewSpec(num_weak=2, num_strong=0)
    uses_teacher = True

    def forward(self, model: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        cfg: MeanTeacherConfig = self.cfg
        logits_lb, logits_ulb_student = forward_cat(model, batch.x_lb, batch.x_ulb_w_extra[0])
        with torch.no_grad():
            probs_teacher = acc(forward_batch_stats(self.teacher, batch.x_ulb_w)).softmax(-1)
        sup_loss = F.cross_entropy(acc(logits_lb), batch.y_lb)
        unsup_loss = DISTANCES[cfg.consistency](logits_ulb_student, probs_teacher).mean()
        weight = unsup_weight(self, step)
        # add-ons on the student's weak view (the second one): x_ulb_w goes to the teacher, without gradient
        reg_loss, reg_metrics = self.regularizers(logits_ulb_student)
        loss = sup_loss + weight * unsup_loss + reg_loss
        metrics = {"sup_loss": sup_loss.detach(), "unsup_loss": unsup_loss.detach(), "unsup_weight": weight,
                   **reg_metrics}
        return StepOutput(loss, metrics, {})
