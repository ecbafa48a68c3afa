"""Dash: Xu, Shang, Ye, Qian, Li, Sun, Li & Jin, "Dash: Semi-Supervised Learning with Dynamic
Thresholding", ICML 2021 (arXiv:2109.00650).

FixMatch-style training where an unlabeled sample is kept when its *loss* on the weak view against its
own pseudo-label is at most a dynamic threshold that decreases over training:

    ρ_t = max(C · γ^{−k} · ρ̂, ρ_min),   k = ⌊(t − t_warmup) / t_update⌋,

with C=1.0001, γ=1.27, ρ_min=0.05. Until ρ_t reaches ρ_min the pseudo-labels are soft,
softmax(weak/T) with T=0.5, and the kept loss is against them; from then on they are one-hot (as the
reference). During the warm-up (the first `warmup_frac` of training) only the labeled loss is trained,
and ρ̂ is estimated from it.

Differences from the reference (USB), on purpose:
- ρ̂ is an EMA (momentum 0.9, all-reduced over ranks) of the labeled training loss over the warm-up steps,
  which tracks the warm-up model's labeled loss (the paper's estimate). USB takes the loss on the
  evaluation set, which leaks test data into training. Without warm-up, ρ̂ = ln C (a uniform predictor).
- The warm-up is part of the run's `total_steps` and both lengths are fractions of it (the USB defaults,
  2,048 warm-up iterations and an update every 10 epochs of 1,024 iterations, out of 2^20), so the same
  schedule fits short runs. Every switch (warm-up, soft→hard) is a tensor `where`, never a Python branch.
- The loss runs in the family's fused kernel with the loss-based mask as per-sample weights; the target
  switches from soft to hard on a tensor condition, so the kernel reads it from logits that encode it:
  the weak logits while soft, log(one-hot) (0 and −inf, whose softmax is exactly one-hot) once hard.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from fastssl.algorithms.base import AlgorithmConfig, Predictions, PseudoLabelAlgorithm, PseudoLabels, PseudoLabelState
from fastssl.algorithms.losses import acc, one_hot
from fastssl.batch import SSLBatch
from fastssl.collectives import all_reduce_sum, world_size


@dataclasses.dataclass
class DashConfig(AlgorithmConfig):
    T: float = 0.5
    """temperature of the soft pseudo-labels softmax(weak/T), used until ρ_t reaches rho_min"""
    gamma: float = 1.27
    """γ > 1: ρ_t shrinks by 1/γ at every update"""
    C: float = 1.0001
    """the constant C of ρ_t = C·γ^{−k}·ρ̂"""
    rho_min: float = 0.05
    """floor of ρ_t; reaching it switches to one-hot pseudo-labels"""
    warmup_frac: float = 2048 / 2**20
    """fraction of training with the labeled loss only, over which ρ̂ is estimated (USB: 2,048 of 2^20 steps)"""
    rho_update_frac: float = 10240 / 2**20
    """ρ_t is updated every this fraction of training (USB: every 10 epochs of 1,024 steps, of 2^20)"""


class Dash(PseudoLabelAlgorithm):
    name = "dash"
    Config = DashConfig
    recipe = {"algo.gamma": 1.27, "algo.C": 1.0001, "algo.rho_min": 0.05, "algo.T": 0.5}

    def init_state(self) -> None:
        cfg: DashConfig = self.cfg
        self.warmup_steps = int(cfg.warmup_frac * self.total_steps)
        self.update_every = max(1, int(cfg.rho_update_frac * self.total_steps))
        self.register_buffer("rho_init", torch.tensor(math.log(self.num_classes)))
        """ρ̂: EMA of the labeled loss over the warm-up steps (ln C until the first warm-up step)"""
        self.register_buffer("num_warmup_updates", torch.tensor(0, dtype=torch.long))
        """warm-up steps seen (0: ρ̂ takes the first value)"""

    def rho(self, step: Tensor) -> Tensor:
        """ρ_t (0-d) at `step`."""
        cfg: DashConfig = self.cfg
        k = torch.div((step - self.warmup_steps).clamp_min(0), self.update_every, rounding_mode="floor")
        return (cfg.C * cfg.gamma ** (-k.to(torch.float32)) * self.rho_init).clamp_min(cfg.rho_min)

    def pseudo_labels(self, p: Predictions, step: Tensor) -> PseudoLabels:
        cfg: DashConfig = self.cfg
        rho = self.rho(step)
        lw = acc(p.logits_ulb_w.detach())
        target_logits = torch.where(rho <= cfg.rho_min, one_hot(lw.argmax(-1), self.num_classes, lw.dtype).log(), lw)
        target = (target_logits / cfg.T).softmax(-1)
        loss_w = -(target * lw.log_softmax(-1)).sum(-1)  # (μB,) the weak view's loss on its own target
        keep = (loss_w <= rho).to(lw.dtype)
        trains = (step >= self.warmup_steps).to(lw.dtype)  # 0 during the warm-up: labeled loss only
        return PseudoLabels(0.0, sample_weight=keep, logits_w=target_logits, T=cfg.T, soft=True, unsup_weight=trains,
                            metrics={"rho": rho.float()})

    @torch.no_grad()
    def update_state(self, batch: SSLBatch, state: PseudoLabelState) -> None:
        lb_loss = all_reduce_sum(state.sup_loss.float()) / world_size()
        in_warmup = state.step < self.warmup_steps
        first = self.num_warmup_updates == 0
        ema = torch.where(first, lb_loss, 0.9 * self.rho_init + 0.1 * lb_loss)
        self.rho_init.copy_(torch.where(in_warmup, ema, self.rho_init))
        self.num_warmup_updates.add_(in_warmup.long())
