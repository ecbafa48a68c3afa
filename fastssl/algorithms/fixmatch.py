"""FixMatch: Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence",
NeurIPS 2020 (arXiv:2001.07685).

Labeled: cross-entropy on the weak view. Unlabeled: the weak view's prediction becomes a pseudo-label when
its confidence reaches τ, and the strong view is trained to predict it. One forward over the concatenated
batch; the masked cross-entropy runs in one fused kernel on GPU (`fastssl.kernels.pseudo_label_ce`).
With `hard_label=false` the target is softmax(weak/T); USB's soft target ignores T (its softmax at T=1).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput, acc, forward_cat
from fastssl.batch import SSLBatch
from fastssl.kernels import pseudo_label_ce


@dataclasses.dataclass
class FixMatchConfig(AlgorithmConfig):
    tau: float = 0.95
    """confidence threshold τ: a weak-view prediction becomes a pseudo-label when its max prob ≥ τ"""
    T: float = 1.0
    """temperature of the soft pseudo-label softmax(weak/T) (used only with hard_label=false)"""
    hard_label: bool = True
    """one-hot pseudo-labels (argmax) rather than soft targets"""


def pseudo_label_metrics(mask: Tensor, pseudo: Tensor, y_ulb: Tensor) -> dict[str, Tensor]:
    """Mask ratio and accuracy of the selected pseudo-labels, as 0-d tensors (no host sync)."""
    mask = mask.float()
    correct = (pseudo == y_ulb).float()
    return {
        "mask_ratio": mask.mean(),
        "pl_acc": (correct * mask).sum() / mask.sum().clamp_min(1.0),
    }


class FixMatch(Algorithm):
    name = "fixmatch"
    Config = FixMatchConfig

    def forward(self, model: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        cfg: FixMatchConfig = self.cfg
        logits_lb, logits_ulb_w, logits_ulb_s = forward_cat(model, batch.x_lb, batch.x_ulb_w, batch.x_ulb_s)
        sup_loss = F.cross_entropy(acc(logits_lb), batch.y_lb)
        pl = pseudo_label_ce(logits_ulb_w.detach(), logits_ulb_s, cfg.tau, cfg.T, soft=not cfg.hard_label)
        reg_loss, reg_metrics = self.regularizers(logits_ulb_w)
        loss = sup_loss + cfg.lambda_u * pl.loss + reg_loss
        metrics = {"sup_loss": sup_loss.detach(), "unsup_loss": pl.loss.detach(),
                   **pseudo_label_metrics(pl.mask, pl.pseudo, batch.y_ulb), **reg_metrics}
        return StepOutput(loss, metrics, {"pseudo": pl.pseudo, "mask": pl.mask, "maxprob": pl.maxprob})
