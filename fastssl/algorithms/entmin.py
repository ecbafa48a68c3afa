"""Entropy Minimization: Grandvalet & Bengio, "Semi-supervised Learning by Entropy Minimization",
NeurIPS 2004 (no arXiv version).

Labeled cross-entropy plus λ_u times the mean Shannon entropy of the predictions on the unlabeled weak view,
which pushes the decision boundary away from dense unlabeled regions. The same term is available as an
add-on to every algorithm through `--algo.entmin_weight` (`losses.regularizers`); this is the
stand-alone method. Default λ_u = 0.06, the entropy-penalty multiplier of the unified re-implementation
of Oliver et al., "Realistic Evaluation of Deep Semi-Supervised Learning Algorithms", NeurIPS 2018.
"""
from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor, nn

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput
from fastssl.algorithms.losses import acc, entropy_loss, forward_cat, regularizers
from fastssl.batch import SSLBatch, ViewSpec


@dataclasses.dataclass
class EntMinConfig(AlgorithmConfig):
    lambda_u: float = 0.06
    """weight of the unlabeled entropy term"""


class EntMin(Algorithm):
    name = "entmin"
    Config = EntMinConfig
    views = ViewSpec(num_weak=1, num_strong=0)
    # no USB config: the entropy weight of Oliver et al. (NeurIPS 2018)'s re-implementation study
    recipe = {"algo.lambda_u": 0.06}

    def forward(self, student: nn.Module, teacher: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        logits_lb, logits_ulb_w = forward_cat(student, batch.x_lb, batch.x_ulb_w)
        sup_loss = F.cross_entropy(acc(logits_lb), batch.y_lb)
        ent = entropy_loss(acc(logits_ulb_w))
        reg_loss, reg_metrics = regularizers(logits_ulb_w, self.cfg)
        loss = sup_loss + self.cfg.lambda_u * ent + reg_loss
        return StepOutput(loss, {"sup_loss": sup_loss.detach(), "unsup_loss": ent.detach(), **reg_metrics}, None)
