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
from torch import Tensor

from fastssl.algorithms.base import AlgorithmConfig, Predictions, PseudoLabelAlgorithm, PseudoLabels
from fastssl.algorithms.losses import acc, pseudo_label_ce
from fastssl.batch import SSLBatch, ViewSpec


@dataclasses.dataclass
class DeFixMatchConfig(AlgorithmConfig):
    tau: float = 0.95
    """confidence threshold τ of the pseudo-labels (the same on labeled and unlabeled images)"""
    T: float = 0.5
    """temperature of the soft pseudo-label softmax(weak/T) (used only with hard_label=false)"""
    hard_label: bool = True
    """one-hot pseudo-labels (argmax) rather than soft targets"""


class DeFixMatch(PseudoLabelAlgorithm):
    name = "defixmatch"
    Config = DeFixMatchConfig
    views = ViewSpec(num_weak=1, num_strong=1, lb_strong=True)
    recipe = {"algo.tau": 0.95}

    def pseudo_labels(self, p: Predictions, step: Tensor) -> PseudoLabels:
        cfg: DeFixMatchConfig = self.cfg
        return PseudoLabels(cfg.tau, T=cfg.T, soft=not cfg.hard_label)

    def supervised_loss(self, p: Predictions, batch: SSLBatch, step: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return 0.5 * (F.cross_entropy(acc(p.logits_lb), batch.y_lb) + F.cross_entropy(acc(p.logits_lb_s), batch.y_lb)), {}

    def extra_loss(self, p: Predictions, pl, sel: PseudoLabels) -> tuple[Tensor, dict[str, Tensor]]:
        """The debiasing term: the same pseudo-label loss on the labeled images, subtracted."""
        pl_lb = pseudo_label_ce(p.logits_lb.detach(), p.logits_lb_s, sel.threshold, sel.T, soft=sel.soft)
        return -self.cfg.lambda_u * pl_lb.loss, {"anti_unsup_loss": pl_lb.loss.detach(),
                                                 "mask_ratio_lb": pl_lb.mask.float().mean()}
