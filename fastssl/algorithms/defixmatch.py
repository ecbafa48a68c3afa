"""DeFixMatch: Schmutz, Humbert & Mattei, "Don't fear the unlabelled: safe semi-supervised learning via
debiasing", ICLR 2023 (arXiv:2203.07512).

FixMatch made unbiased: the pseudo-label term is also computed on the *labeled* images (pseudo-label from
their weak view, prediction on their strong view, the same threshold τ) and subtracted,

    L = ½[CE(x_lb_w, y) + CE(x_lb_s, y)] + λ_u · (L_pl(unlabeled) − L_pl(labeled)),

so the expected gradient is that of the labeled risk whatever the pseudo-labels' quality. It needs a
strong view of each labeled image: `views.lb_strong` asks the pipeline for `x_lb_s`. The labeled loss
averages both labeled views, as the authors' implementation in USB. Both pseudo-label terms run in the
fused kernel; one forward over the four concatenated views.
"""
from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor, nn

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput, acc, forward_cat
from fastssl.algorithms.fixmatch import pseudo_label_metrics
from fastssl.batch import SSLBatch, ViewSpec
from fastssl.kernels import pseudo_label_ce


@dataclasses.dataclass
class DeFixMatchConfig(AlgorithmConfig):
    tau: float = 0.95
    """confidence threshold τ of the pseudo-labels (the same on labeled and unlabeled images)"""
    T: float = 0.5
    """temperature of the soft pseudo-label softmax(weak/T) (used only with hard_label=false)"""
    hard_label: bool = True
    """one-hot pseudo-labels (argmax) rather than soft targets"""


class DeFixMatch(Algorithm):
    name = "defixmatch"
    Config = DeFixMatchConfig
    views = ViewSpec(num_weak=1, num_strong=1, lb_strong=True)

    def forward(self, model: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        cfg: DeFixMatchConfig = self.cfg
        if batch.x_lb_s is None:
            raise ValueError("defixmatch needs a strong view of the labeled images (batch.x_lb_s): build the "
                             "pipeline from the algorithm's ViewSpec (lb_strong=True)")
        logits_lb, logits_lb_s, logits_ulb_w, logits_ulb_s = forward_cat(
            model, batch.x_lb, batch.x_lb_s, batch.x_ulb_w, batch.x_ulb_s)
        sup_loss = 0.5 * (F.cross_entropy(acc(logits_lb), batch.y_lb) + F.cross_entropy(acc(logits_lb_s), batch.y_lb))
        soft = not cfg.hard_label
        pl = pseudo_label_ce(logits_ulb_w.detach(), logits_ulb_s, cfg.tau, cfg.T, soft=soft)
        pl_lb = pseudo_label_ce(logits_lb.detach(), logits_lb_s, cfg.tau, cfg.T, soft=soft)  # the debiasing term
        reg_loss, reg_metrics = self.regularizers(logits_ulb_w)
        loss = sup_loss + cfg.lambda_u * (pl.loss - pl_lb.loss) + reg_loss
        metrics = {"sup_loss": sup_loss.detach(), "unsup_loss": pl.loss.detach(), "anti_unsup_loss": pl_lb.loss.detach(),
                   "mask_ratio_lb": pl_lb.mask.float().mean(),
                   **pseudo_label_metrics(pl.mask, pl.pseudo, batch.y_ulb), **reg_metrics}
        return StepOutput(loss, metrics, {"pseudo": pl.pseudo, "mask": pl.mask})
