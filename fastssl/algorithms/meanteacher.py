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
from torch import Tensor, nn

from fastssl.algorithms.base import ConsistencyAlgorithm, ConsistencyConfig
from fastssl.algorithms.losses import acc, forward_batch_stats, forward_cat
from fastssl.batch import SSLBatch


@dataclasses.dataclass
class MeanTeacherConfig(ConsistencyConfig):
    lambda_u: float = 50.0
    """weight of the consistency loss after ramp-up (USB classic-CV: 50)"""


class MeanTeacher(ConsistencyAlgorithm):
    name = "meanteacher"
    Config = MeanTeacherConfig
    recipe = {"algo.lambda_u": 50.0, "algo.unsup_warmup": 0.4, "algo.consistency": "mse", "data.uratio": 1}

    def predict(self, student: nn.Module, teacher: nn.Module, batch: SSLBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        logits_lb, logits_ulb_student = forward_cat(student, batch.x_lb, batch.x_ulb_w_extra[0])
        with torch.no_grad():
            probs_teacher = acc(forward_batch_stats(teacher, batch.x_ulb_w)).softmax(-1)
        # add-ons on the student's weak view (the second one): x_ulb_w goes to the teacher, without gradient
        return logits_lb, logits_ulb_student, probs_teacher, logits_ulb_student
