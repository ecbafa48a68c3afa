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
- The loss is plain PyTorch, not the fused kernel: the mask is loss-based and the target switches from
  soft to hard on a tensor condition, which the kernel's (threshold, T) signature does not express.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput, acc, forward_cat
from fastssl.algorithms.fixmatch import pseudo_label_metrics
from fastssl.algorithms.losses import one_hot
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


class Dash(Algorithm):
    name = "dash"
    Config = DashConfig

    def __init__(self, cfg: DashConfig, *, num_classes: int, num_ulb: int, total_steps: int = 1 << 20,
                 num_features: int = 0):
        super().__init__(cfg, num_classes=num_classes, num_ulb=num_ulb, total_steps=total_steps,
                         num_features=num_features)
        self.warmup_steps = int(cfg.warmup_frac * total_steps)
        self.update_every = max(1, int(cfg.rho_update_frac * total_steps))
        self.register_buffer("rho_init", torch.tensor(math.log(num_classes)))
        """ρ̂: EMA of the labeled loss over the warm-up steps (ln C until the first warm-up step)"""
        self.register_buffer("num_warmup_updates", torch.tensor(0, dtype=torch.long))
        """warm-up steps seen (0: ρ̂ takes the first value)"""

    def rho(self, step: Tensor) -> Tensor:
        """ρ_t (0-d) at `step`."""
        cfg: DashConfig = self.cfg
        k = torch.div((step - self.warmup_steps).clamp_min(0), self.update_every, rounding_mode="floor")
        return (cfg.C * cfg.gamma ** (-k.to(torch.float32)) * self.rho_init).clamp_min(cfg.rho_min)

    def forward(self, model: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        cfg: DashConfig = self.cfg
        logits_lb, logits_ulb_w, logits_ulb_s = forward_cat(model, batch.x_lb, batch.x_ulb_w, batch.x_ulb_s)
        sup_loss = F.cross_entropy(acc(logits_lb), batch.y_lb)
        rho = self.rho(step)
        hard = rho <= cfg.rho_min
        lw = acc(logits_ulb_w.detach())
        pseudo = lw.argmax(-1)
        target = torch.where(hard, one_hot(pseudo, self.num_classes, lw.dtype), (lw / cfg.T).softmax(-1))
        loss_w = -(target * lw.log_softmax(-1)).sum(-1)  # (μB,) the weak view's loss on its own target
        mask = (loss_w <= rho).to(lw.dtype)
        unsup_loss = (-(target * acc(logits_ulb_s).log_softmax(-1)).sum(-1) * mask).mean()
        in_warmup = step < self.warmup_steps
        reg_loss, reg_metrics = self.regularizers(logits_ulb_w)
        loss = sup_loss + torch.where(in_warmup, 0.0, cfg.lambda_u * unsup_loss + reg_loss)
        metrics = {"sup_loss": sup_loss.detach(), "unsup_loss": unsup_loss.detach(), "rho": rho.float(),
                   **pseudo_label_metrics(mask, pseudo, batch.y_ulb), **reg_metrics}
        return StepOutput(loss, metrics, {"sup_loss": sup_loss.detach(), "in_warmup": in_warmup,
                                          "pseudo": pseudo, "mask": mask})

    @torch.no_grad()
    def update_state(self, batch: SSLBatch, out: StepOutput) -> None:
        lb_loss = all_reduce_sum(out.state["sup_loss"].float()) / world_size()
        first = self.num_warmup_updates == 0
        ema = torch.where(first, lb_loss, 0.9 * self.rho_init + 0.1 * lb_loss)
        self.rho_init.copy_(torch.where(out.state["in_warmup"], ema, self.rho_init))
        self.num_warmup_updates.add_(out.state["in_warmup"].long())
