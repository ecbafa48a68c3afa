"""Π-Model: Laine & Aila, "Temporal Ensembling for Semi-Supervised Learning", ICLR 2017 (arXiv:1610.02242).

Labeled: cross-entropy. Unlabeled: the network's predictions on two independent weak augmentations of the
same image are pulled together, with a ramped-up weight. The first view's prediction is the (detached)
target and the second view is trained towards it, as in USB and Oliver et al.'s evaluation code.
One forward over [x_lb, weak view 1, weak view 2].

Defaults: USB classic-CV (λ_u = 10, linear ramp over the first 40% of training, softmax MSE); the paper
used a sigmoid ramp (`--algo.ramp=sigmoid`).
"""
from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor, nn

from fastssl.algorithms.base import Algorithm, StepOutput, forward_cat
from fastssl.algorithms.losses import DISTANCES, acc
from fastssl.algorithms.meanteacher import ConsistencyConfig, unsup_weight
from fastssl.batch import SSLBatch, ViewSpec


@dataclasses.dataclass
class PiModelConfig(ConsistencyConfig):
    lambda_u: float = 10.0
    """weight of the consistency loss after ramp-up (USB classic-CV: 10)"""


class PiModel(Algorithm):
    name = "pimodel"
    Config = PiModelConfig
    views = ViewSpec(num_weak=2, num_strong=0)

    def forward(self, model: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        cfg: PiModelConfig = self.cfg
        logits_lb, logits_w1, logits_w2 = forward_cat(model, batch.x_lb, batch.x_ulb_w, batch.x_ulb_w_extra[0])
        sup_loss = F.cross_entropy(acc(logits_lb), batch.y_lb)
        target = acc(logits_w1.detach()).softmax(-1)
        unsup_loss = DISTANCES[cfg.consistency](logits_w2, target).mean()
        weight = unsup_weight(self, step)
        # add-ons on the first weak view (x_ulb_w), as the threshold family: its logits carry gradient here
        # although the consistency term uses them only as the detached target
        reg_loss, reg_metrics = self.regularizers(logits_w1)
        loss = sup_loss + weight * unsup_loss + reg_loss
        metrics = {"sup_loss": sup_loss.detach(), "unsup_loss": unsup_loss.detach(), "unsup_weight": weight,
                   **reg_metrics}
        return StepOutput(loss, metrics, {})
