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

from torch import Tensor, nn

from fastssl.algorithms.base import ConsistencyAlgorithm, ConsistencyConfig
from fastssl.algorithms.losses import acc, forward_cat
from fastssl.batch import SSLBatch


@dataclasses.dataclass
class PiModelConfig(ConsistencyConfig):
    lambda_u: float = 10.0
    """weight of the consistency loss after ramp-up (USB classic-CV: 10)"""


class PiModel(ConsistencyAlgorithm):
    name = "pimodel"
    Config = PiModelConfig
    recipe = {"algo.lambda_u": 10.0, "algo.unsup_warmup": 0.4, "algo.consistency": "mse", "data.uratio": 1}

    def predict(self, student: nn.Module, teacher: nn.Module, batch: SSLBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        logits_lb, logits_w1, logits_w2 = forward_cat(student, batch.x_lb, batch.x_ulb_w, batch.x_ulb_w_extra[0])
        target = acc(logits_w1.detach()).softmax(-1)
        # add-ons on the first weak view (x_ulb_w), as the threshold family: its logits carry gradient here
        # although the consistency term uses them only as the detached target
        return logits_lb, logits_w2, target, logits_w1
