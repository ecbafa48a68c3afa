"""FreeMatch: Wang, Chen, Heng, Hou, Fan, Wu, Wang, Savvides, Shinozaki, Raj, Schiele & Xie, "FreeMatch:
Self-adaptive Thresholding for Semi-supervised Learning", ICLR 2023 (arXiv:2205.07246).

FixMatch with a self-adaptive threshold and a fairness regulariser. Three EMAs (momentum λ = `ema_p`) of
the weak-view predictions: the global confidence τ_t (mean max-probability), the model's class
distribution p̃_t (mean probability vector) and the histogram of predicted classes h̃_t. The threshold of
class c is τ_t · p̃_t(c) / max_c' p̃_t(c'). The self-adaptive fairness loss is
L_f = −H(SumNorm(p̃_t / h̃_t), SumNorm(p̄ / h̄)), where p̄ and h̄ are the mean probability and the histogram
of the strong-view predictions of the masked samples (weight `lambda_e`).

Order of operations, as the reference (USB): the EMAs take this step's batch first, then the mask is read.
`forward` does that EMA step on this rank's batch for the mask; `update_state` commits it from the
probabilities gathered from every rank (so the state is identical on every rank, and equals the
single-process reference exactly when there is one rank).

The fairness term is written with masks (static shapes). The reference selects the masked rows and skips
the term when no row passes the mask; here the masks give that same 0.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from fastssl.algorithms.base import AlgorithmConfig, Predictions, PseudoLabelAlgorithm, PseudoLabels, PseudoLabelState
from fastssl.algorithms.losses import acc, one_hot
from fastssl.batch import SSLBatch
from fastssl.collectives import all_gather_cat


@dataclasses.dataclass
class FreeMatchConfig(AlgorithmConfig):
    ema_p: float = 0.999
    """momentum λ of the EMAs of the global confidence, the class distribution and the label histogram"""
    lambda_e: float = 0.001
    """weight of the self-adaptive fairness loss (USB's ent_loss_ratio; 0.001 for CIFAR-10)"""
    use_quantile: bool = False
    """global confidence from the 0.8-quantile of the max-probabilities instead of their mean (USB option)"""
    clip_thresh: bool = False
    """clip the global confidence to [0, 0.95] (USB option)"""
    T: float = 0.5
    """temperature of the soft pseudo-label softmax(weak/T) (used only with hard_label=false)"""
    hard_label: bool = True
    """one-hot pseudo-labels (argmax) rather than soft targets"""


def fairness_loss(mask: Tensor, logits_s: Tensor, p_model: Tensor, label_hist: Tensor) -> Tensor:
    """Σ_c SumNorm(p̃/h̃)_c · log SumNorm(p̄/h̄)_c over the masked strong-view predictions (0 if none)."""
    C = logits_s.shape[-1]
    m = mask.to(logits_s.dtype)[:, None]  # (N, 1)
    n = m.sum()
    probs_s = logits_s.softmax(-1)  # (N, C), with gradient
    hist_s = (one_hot(probs_s.detach().argmax(-1), C, probs_s.dtype) * m).sum(0) / n.clamp_min(1)
    scale_s = torch.where(hist_s > 0, 1 / hist_s.clamp_min(1e-30), 0.0)  # 1/h̄, 0 for unseen classes
    mean_s = (probs_s * m).sum(0) / n.clamp_min(1) * scale_s
    mean_s = mean_s / mean_s.sum().clamp_min(1e-30)
    target = p_model / label_hist
    target = target / target.sum()
    return (target * torch.log(mean_s + 1e-12)).sum() * (n > 0).to(probs_s.dtype)


class FreeMatch(PseudoLabelAlgorithm):
    name = "freematch"
    Config = FreeMatchConfig
    recipe = {"algo.ema_p": 0.999, "algo.lambda_e": 0.001}

    def init_state(self) -> None:
        C = self.num_classes
        self.register_buffer("time_p", torch.tensor(1.0 / C))
        """global confidence τ_t (EMA of the mean max-probability), starts at 1/C"""
        self.register_buffer("p_model", torch.full((C,), 1.0 / C))
        """p̃_t: EMA of the mean predicted class distribution"""
        self.register_buffer("label_hist", torch.full((C,), 1.0 / C))
        """h̃_t: EMA of the histogram of predicted classes"""

    def ema_step(self, probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(τ, p̃, h̃) after one EMA step on the weak-view probabilities `probs` (N, C); pure."""
        cfg: FreeMatchConfig = self.cfg
        m = cfg.ema_p
        maxprob, pseudo = probs.max(-1)
        conf = torch.quantile(maxprob, 0.8) if cfg.use_quantile else maxprob.mean()
        time_p = m * self.time_p + (1 - m) * conf
        if cfg.clip_thresh:
            time_p = time_p.clamp(0.0, 0.95)
        p_model = m * self.p_model + (1 - m) * probs.mean(0)
        hist = one_hot(pseudo, self.num_classes, probs.dtype).mean(0)
        label_hist = m * self.label_hist + (1 - m) * hist
        return time_p, p_model, label_hist

    def pseudo_labels(self, p: Predictions, step: Tensor) -> PseudoLabels:
        cfg: FreeMatchConfig = self.cfg
        time_p, p_model, label_hist = self.ema_step(p.probs_ulb_w)
        thresholds = time_p * p_model / p_model.max()  # (C,)
        return PseudoLabels(thresholds, T=cfg.T, soft=not cfg.hard_label, metrics={"time_p": time_p.detach().float()},
                            aux=(p_model, label_hist))

    def extra_loss(self, p: Predictions, pl, sel: PseudoLabels) -> tuple[Tensor, dict[str, Tensor]]:
        p_model, label_hist = sel.aux
        fair = fairness_loss(pl.mask, acc(p.logits_ulb_s), p_model, label_hist)
        return self.cfg.lambda_e * fair, {"fair_loss": fair.detach()}

    @torch.no_grad()
    def update_state(self, batch: SSLBatch, state: PseudoLabelState) -> None:
        time_p, p_model, label_hist = self.ema_step(all_gather_cat(state.probs_ulb))
        self.time_p.copy_(time_p)
        self.p_model.copy_(p_model)
        self.label_hist.copy_(label_hist)
