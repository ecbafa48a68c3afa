"""SoftMatch: Chen, Tao, Wang, Wang, Heng, Wang, Fan, Raj, Xie & Savvides, "SoftMatch: Addressing the
Quantity-Quality Trade-off in Semi-supervised Learning", ICLR 2023 (arXiv:2301.10921).

FixMatch with a soft confidence weight instead of a hard mask: a truncated Gaussian of the max-probability,

    λ(p) = exp(−(min(max p − μ_t, 0))² / (2 σ_t² / n_sigma²)),

equal to 1 above the running mean μ_t and decaying below it. μ_t and σ_t² are EMAs (momentum `ema_p`,
from μ=1/C, σ²=1) of the mean and unbiased variance of the batch's max-probabilities. Those are read after
uniform distribution alignment, p ← Normalize(p · u / p̂_model), with p̂_model an EMA of the mean
prediction (its first value is the first batch's mean, as the reference). The pseudo-label itself is the
argmax of the *unaligned* prediction (as the reference: alignment only shapes the weights).

Order, as the reference (USB): the EMAs take this step's batch first, then the weights are read. `forward`
takes that step with this rank's batch; `update_state` commits it from the batch gathered from every rank.
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
class SoftMatchConfig(AlgorithmConfig):
    ema_p: float = 0.999
    """momentum of the EMAs of μ_t, σ_t² and of the distribution-alignment model distribution"""
    n_sigma: float = 2.0
    """the Gaussian's width is σ_t / n_sigma"""
    dist_align: bool = True
    """distribution alignment of the weak-view probabilities before the weights are computed"""
    dist_uniform: bool = True
    """align to the uniform distribution (else to an EMA of the labeled predictions)"""
    T: float = 0.5
    """temperature of the soft pseudo-label softmax(weak/T) (used only with hard_label=false)"""
    hard_label: bool = True
    """one-hot pseudo-labels (argmax) rather than soft targets"""


class SoftMatch(PseudoLabelAlgorithm):
    name = "softmatch"
    Config = SoftMatchConfig
    recipe = {"algo.ema_p": 0.999, "algo.n_sigma": 2.0, "algo.dist_align": True, "algo.dist_uniform": True}

    def init_state(self) -> None:
        C = self.num_classes
        self.register_buffer("prob_max_mu_t", torch.tensor(1.0 / C))
        """μ_t: EMA of the batch mean of the (aligned) max-probabilities"""
        self.register_buffer("prob_max_var_t", torch.tensor(1.0))
        """σ_t²: EMA of the batch's unbiased variance of the (aligned) max-probabilities"""
        self.register_buffer("p_model", torch.full((C,), 1.0 / C))
        """distribution alignment: EMA of the mean unlabeled prediction (the first batch's mean at first)"""
        self.register_buffer("p_target", torch.full((C,), 1.0 / C))
        """distribution alignment target: uniform, or an EMA of the mean labeled prediction"""
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.long))
        """state updates so far (0: p_model takes the first batch's mean)"""

    def ema_step(self, probs_ulb: Tensor, probs_lb: Tensor) -> tuple[Tensor, ...]:
        """One step of every EMA on (N, C) unlabeled and (B, C) labeled probabilities, then the aligned
        unlabeled probabilities. Pure: returns (mu, var, p_model, p_target, aligned)."""
        cfg: SoftMatchConfig = self.cfg
        m = cfg.ema_p
        m_da = m * (self.num_updates > 0).to(self.p_model.dtype)  # 0 at the first update; in the state's dtype
        p_model = m_da * self.p_model + (1 - m_da) * probs_ulb.mean(0)
        p_target = self.p_target if cfg.dist_uniform else m * self.p_target + (1 - m) * probs_lb.mean(0)
        aligned = probs_ulb
        if cfg.dist_align:
            aligned = dist_align(probs_ulb, p_target, p_model)
        maxprob = aligned.max(-1).values
        mu = m * self.prob_max_mu_t + (1 - m) * maxprob.mean()
        var = m * self.prob_max_var_t + (1 - m) * maxprob.var(unbiased=True)
        return mu, var, p_model, p_target, aligned

    def weights(self, aligned: Tensor, mu: Tensor, var: Tensor) -> Tensor:
        """(N,) truncated-Gaussian weights of the aligned probabilities."""
        gap = (aligned.max(-1).values - mu).clamp(max=0.0)
        return torch.exp(-gap.square() / (2 * var / self.cfg.n_sigma ** 2))

    def pseudo_labels(self, p: Predictions, step: Tensor) -> PseudoLabels:
        cfg: SoftMatchConfig = self.cfg
        mu, var, _, _, aligned = self.ema_step(p.probs_ulb_w, p.probs_lb)
        return PseudoLabels(0.0, sample_weight=self.weights(aligned, mu, var), T=cfg.T, soft=not cfg.hard_label,
                            metrics={"mu_t": mu.detach().float(), "var_t": var.detach().float()})

    @torch.no_grad()
    def update_state(self, batch: SSLBatch, state: PseudoLabelState) -> None:
        mu, var, p_model, p_target, _ = self.ema_step(all_gather_cat(state.probs_ulb), all_gather_cat(state.probs_lb))
        self.prob_max_mu_t.copy_(mu)
        self.prob_max_var_t.copy_(var)
        self.p_model.copy_(p_model)
        self.p_target.copy_(p_target)
        self.num_updates.add_(1)
