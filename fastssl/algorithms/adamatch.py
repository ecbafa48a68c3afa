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
from torch import Tensor

from fastssl.algorithms.base import AlgorithmConfig, Predictions, PseudoLabelAlgorithm, PseudoLabels, PseudoLabelState
from fastssl.algorithms.losses import dist_align
from fastssl.batch import SSLBatch
from fastssl.collectives import all_gather_cat


@dataclasses.dataclass
class AdaMatchConfig(AlgorithmConfig):
    tau: float = 0.95
    """relative threshold: keep a pseudo-label when its confidence ≥ τ · mean labeled max-probability"""
    ema_p: float = 0.999
    """momentum of the distribution-alignment EMAs (0 = the paper's per-batch means)"""
    hard_label: bool = True
    """one-hot pseudo-labels (argmax of the aligned probabilities) rather than the aligned probabilities"""


class AdaMatch(PseudoLabelAlgorithm):
    name = "adamatch"
    Config = AdaMatchConfig
    recipe = {"algo.tau": 0.95, "algo.ema_p": 0.999}

    def init_state(self) -> None:
        C = self.num_classes
        self.register_buffer("p_model", torch.full((C,), 1.0 / C))
        """EMA of the mean unlabeled weak-view prediction (the first batch's mean at first)"""
        self.register_buffer("p_target", torch.full((C,), 1.0 / C))
        """EMA of the mean labeled weak-view prediction (from uniform)"""
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.long))
        """state updates so far (0: p_model takes the first batch's mean)"""

    def ema_step(self, probs_ulb: Tensor, probs_lb: Tensor) -> tuple[Tensor, Tensor]:
        """(p_model, p_target) after one EMA step; pure."""
        m = self.cfg.ema_p
        m_first = m * (self.num_updates > 0).to(self.p_model.dtype)  # 0 at the first update; in the state's dtype
        p_model = m_first * self.p_model + (1 - m_first) * probs_ulb.mean(0)
        p_target = m * self.p_target + (1 - m) * probs_lb.mean(0)
        return p_model, p_target

    def pseudo_labels(self, p: Predictions, step: Tensor) -> PseudoLabels:
        cfg: AdaMatchConfig = self.cfg
        p_model, p_target = self.ema_step(p.probs_ulb_w, p.probs_lb)
        aligned = dist_align(p.probs_ulb_w, p_target, p_model)
        threshold = cfg.tau * p.probs_lb.max(-1).values.mean()  # 0-d, relative to the labeled confidence
        # softmax(log p) = p: the fused kernel reads the aligned distribution as its weak "logits"
        return PseudoLabels(threshold, logits_w=aligned.clamp_min(1e-30).log(), soft=not cfg.hard_label,
                            metrics={"threshold": threshold.float()})

    @torch.no_grad()
    def update_state(self, batch: SSLBatch, state: PseudoLabelState) -> None:
        p_model, p_target = self.ema_step(all_gather_cat(state.probs_ulb), all_gather_cat(state.probs_lb))
        self.p_model.copy_(p_model)
        self.p_target.copy_(p_target)
        self.num_updates.add_(1)
