"""Supervised-only baseline: cross-entropy on the labeled weak view; the unlabeled data is not used.

The reference point every SSL algorithm must beat on the same labeled split."""
from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor, nn

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput, acc
from fastssl.data.batch import SSLBatch, ViewSpec



@dataclasses.dataclass
class SupervisedConfig(AlgorithmConfig):
    pass


class Supervised(Algorithm):
    name = "supervised"
    Config = SupervisedConfig
    views = ViewSpec(num_weak=0, num_strong=0)

    def forward(self, model: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        sup_loss = F.cross_entropy(acc(model(batch.x_lb)), batch.y_lb)
        return StepOutput(sup_loss, {"sup_loss": sup_loss.detach()}, {})
