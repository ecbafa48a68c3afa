"""Supervised-only baseline: cross-entropy on the labeled weak view; the unlabeled data is not used.

The reference point every SSL algorithm must beat on the same labeled split."""
from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor, nn

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput
from fastssl.algorithms.losses import acc
from fastssl.batch import SSLBatch, ViewSpec


@dataclasses.dataclass
class SupervisedConfig(AlgorithmConfig):
    def __post_init__(self):
        # the add-ons act on unlabeled predictions, and this baseline reads none: refuse rather than ignore
        on = [f"--algo.{k}={getattr(self, k)}" for k in ("entmin_weight", "cbl_weight", "mcc_weight")
              if getattr(self, k) != 0]
        if on:
            raise ValueError(f"{', '.join(on)}: supervised uses no unlabeled data, so the unlabeled "
                             "regularizers do nothing; set them to 0 or pick an SSL algorithm")


class Supervised(Algorithm):
    name = "supervised"
    Config = SupervisedConfig
    views = ViewSpec(num_weak=0, num_strong=0)

    def forward(self, student: nn.Module, teacher: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        sup_loss = F.cross_entropy(acc(student(batch.x_lb)), batch.y_lb)
        return StepOutput(sup_loss, {"sup_loss": sup_loss.detach()}, None)
