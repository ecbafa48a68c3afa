"""AdaMatch: Berthelot, Roelofs, Sohn, Carlini & Kurakin, "AdaMatch: A Unified Approach to
Semi-Supervised Learning and Domain Adaptation", ICLR 2022 (arXiv:2106.04732).

FixMatch with two changes, in the semi-supervised setting of USB:
- relative confidence threshold: a pseudo-label is kept when its confidence reaches τ times the mean
  max-probability of the labeled weak view in the same batch (the threshold follows the model's own
  confidence on data it knows);
- distribution alignment: the weak-view probabilities are multiplied by p_target / p_model (then
  renormalised), with p_model the mean unlabeled prediction and p_target the mean labeled prediction.
  Those means are EMAs (momentum `ema_p`, USB's choice; p_model starts from the first batch's mean,
  p_target from uniform); `ema_p=0` gives the paper's per-batch means. The pseudo-label, its confidence and
  (with hard_label=false) the soft target all come from the aligned probabilities.

Not included: the paper's random logit interpolation between separate labeled/unlabeled BatchNorm passes
and its unlabeled-loss warm-up, both aimed at domain adaptation (USB leaves them out for SSL as well).
Order, as USB: the alignment EMAs take this step's batch first; `forward` takes that step on this rank's
batch, `update_state` commits it from the batch gathered from every rank.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput, acc, dist_align, forward_cat
from fastssl.algorithms.fixmatch import pseudo_label_metrics
from fastssl.batch import SSLBatch
from fastssl.kernels import pseudo_label_ce
from fastssl.collectives import all_gather_cat


@dataclasses.dataclass
class AdaMatchConfig(AlgorithmConfig):
    tau: float = 0.95
    """relative threshold: keep a pseudo-label when its confidence ≥ τ · mean labeled max-probability"""
    ema_p: float = 0.999
    """momentum of the distribution-alignment EMAs (0 = the paper's per-batch means)"""
    hard_label: bool = True
    """one-hot pseudo-labels (argmax of the aligned probabilities) rather than the aligned probabilities"""


class AdaMatch(Algorithm):
    name = "adamatch"
    Config = AdaMatchConfig

    def __init__(self, cfg: AdaMatchConfig, *, num_classes: int, num_ulb: int, total_steps: int = 1 << 20,
                 num_features: int = 0):
        super().__init__(cfg, num_classes=num_classes, num_ulb=num_ulb, total_steps=total_steps,
                         num_features=num_features)
        C = num_classes
        self.register_buffer("p_model", torch.full((C,), 1.0 / C))
        """EMA of the mean unlabeled weak-view prediction (the first batch's mean at first)"""
        self.register_buffer("p_target", torch.full((C,), 1.0 / C))
        """EMA of the mean labeled weak-view prediction (from uniform)"""
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.long))
        """state updates so far (0: p_model takes the first batch's mean)"""

    def ema_step(self, probs_ulb: Tensor, probs_lb: Tensor) -> tuple[Tensor, Tensor]:
        """(p_model, p_target) after one EMA step; pure."""
        m = self.cfg.ema_p
        m_first = torch.where(self.num_updates == 0, 0.0, m)
        p_model = m_first * self.p_model + (1 - m_first) * probs_ulb.mean(0)
        p_target = m * self.p_target + (1 - m) * probs_lb.mean(0)
        return p_model, p_target

    def forward(self, model: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        cfg: AdaMatchConfig = self.cfg
        logits_lb, logits_ulb_w, logits_ulb_s = forward_cat(model, batch.x_lb, batch.x_ulb_w, batch.x_ulb_s)
        sup_loss = F.cross_entropy(acc(logits_lb), batch.y_lb)
        probs_lb = acc(logits_lb.detach()).softmax(-1)
        probs_ulb_w = acc(logits_ulb_w.detach()).softmax(-1)
        p_model, p_target = self.ema_step(probs_ulb_w, probs_lb)
        aligned = dist_align(probs_ulb_w, p_target, p_model)
        threshold = cfg.tau * probs_lb.max(-1).values.mean()  # 0-d, relative to the labeled confidence
        # softmax(log p) = p: the fused kernel sees the aligned distribution as its weak "logits"
        pl = pseudo_label_ce(aligned.clamp_min(1e-30).log(), logits_ulb_s, threshold, soft=not cfg.hard_label)
        reg_loss, reg_metrics = self.regularizers(logits_ulb_w)
        loss = sup_loss + cfg.lambda_u * pl.loss + reg_loss
        metrics = {"sup_loss": sup_loss.detach(), "unsup_loss": pl.loss.detach(), "threshold": threshold.float(),
                   **pseudo_label_metrics(pl.mask, pl.pseudo, batch.y_ulb), **reg_metrics}
        return StepOutput(loss, metrics, {"probs_ulb": probs_ulb_w, "probs_lb": probs_lb,
                                          "pseudo": pl.pseudo, "mask": pl.mask})

    @torch.no_grad()
    def update_state(self, batch: SSLBatch, out: StepOutput) -> None:
        p_model, p_target = self.ema_step(all_gather_cat(out.state["probs_ulb"]), all_gather_cat(out.state["probs_lb"]))
        self.p_model.copy_(p_model)
        self.p_target.copy_(p_target)
        self.num_updates.add_(1)
