"""ICT: Verma, Lamb, Kannala, Bengio, Lopez-Paz, "Interpolation Consistency Training for Semi-Supervised
Learning", IJCAI 2019 (arXiv:1903.03825).

Unlabeled: the student's prediction at a MixUp of two unlabeled images, Mix_λ(u_j, u_k), is pulled (softmax
MSE) towards the same MixUp of the EMA teacher's predictions, Mix_λ(p_teacher(u_j), p_teacher(u_k)), with
λ ~ Beta(α, α) (not folded to max(λ, 1 − λ): the target is mixed with the same λ) and a sigmoid ramp-up.
Labeled: MixUp cross-entropy (the authors' CIFAR-10 runs use supervised MixUp with α = 1; `mixup_alpha_sup=0`
gives the plain cross-entropy of the paper's Algorithm 1).

- The teacher runs under `no_grad` with BatchNorm on its batch statistics, running statistics untouched
  (the authors' code keeps the EMA model in training mode); the gradient flows through the student only.
- Teacher *probabilities* are interpolated, as the paper writes it; the authors' code interpolates the
  teacher's logits and takes the softmax afterwards, which is not a mixture of the two predictions.
- One student forward over [mixed labeled, mixed unlabeled].

Defaults: the authors' CIFAR-10 command (λ_u = 100, α = 1 for both MixUps, sigmoid ramp-up over the first
quarter of training; EMA 0.999 is the trainer's `train.ema_decay`).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput
from fastssl.algorithms.losses import (acc, forward_batch_stats, forward_cat, mixup, mixup_lambda, mse, one_hot, ramp_up,
                                       random_permutation, regularizers, soft_ce)
from fastssl.batch import SSLBatch, ViewSpec


@dataclasses.dataclass
class ICTConfig(AlgorithmConfig):
    lambda_u: float = 100.0
    """weight of the interpolation-consistency loss after ramp-up (authors' CIFAR-10: 100)"""
    mixup_alpha: float = 1.0
    """unlabeled MixUp λ ~ Beta(α, α)"""
    mixup_alpha_sup: float = 1.0
    """labeled MixUp λ ~ Beta(α, α); 0 = plain cross-entropy"""
    unsup_warmup: float = 0.25
    """λ_u ramps up (sigmoid exp(-5(1-t)^2)) over this fraction of train.steps"""

    def __post_init__(self):
        if not self.mixup_alpha > 0 or self.mixup_alpha_sup < 0:
            raise ValueError(f"--algo.mixup_alpha={self.mixup_alpha} must be > 0 and --algo.mixup_alpha_sup="
                             f"{self.mixup_alpha_sup} ≥ 0 (ICT: 1.0 and 1.0)")


class ICT(Algorithm):
    name = "ict"
    Config = ICTConfig
    views = ViewSpec(num_weak=1, num_strong=0)
    # no USB config: the ICT authors' CIFAR-10 command
    recipe = {"algo.lambda_u": 100.0, "algo.mixup_alpha": 1.0, "algo.mixup_alpha_sup": 1.0, "algo.unsup_warmup": 0.25,
              "data.uratio": 1}

    def sample_mix(self, n: int, like: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
        """(λ ~ Beta(α, α), permutation of n rows), on the device. Tests replace it to inject fixed values."""
        return mixup_lambda(alpha, like, biased=False), random_permutation(n, like.device)

    def forward(self, student: nn.Module, teacher: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        cfg: ICTConfig = self.cfg
        x_u = batch.x_ulb_w
        with torch.no_grad():
            probs_t = acc(forward_batch_stats(teacher, x_u)).softmax(-1)  # (μB, C)
        lam_u, perm_u = self.sample_mix(x_u.shape[0], x_u, cfg.mixup_alpha)
        mixed_u, target_u = mixup(x_u, probs_t, lam_u, perm_u)
        y_lb = one_hot(batch.y_lb, self.num_classes, probs_t.dtype)
        x_lb = batch.x_lb
        if cfg.mixup_alpha_sup > 0:
            lam_l, perm_l = self.sample_mix(x_lb.shape[0], x_lb, cfg.mixup_alpha_sup)
            x_lb, y_lb = mixup(x_lb, y_lb, lam_l, perm_l)
        logits_lb, logits_u = forward_cat(student, x_lb, mixed_u)
        sup_loss = soft_ce(logits_lb, y_lb).mean()
        unsup_loss = mse(logits_u, target_u).mean()
        weight = cfg.lambda_u * ramp_up(step, cfg.unsup_warmup * self.total_steps, "sigmoid")
        # add-ons on the student's mixed unlabeled rows: the only unlabeled logits with gradient (the weak
        # view itself goes through the teacher only)
        reg_loss, reg_metrics = regularizers(logits_u, cfg)
        loss = sup_loss + weight * unsup_loss + reg_loss
        metrics = {"sup_loss": sup_loss.detach(), "unsup_loss": unsup_loss.detach(), "unsup_weight": weight,
                   **reg_metrics}
        return StepOutput(loss, metrics, None)
