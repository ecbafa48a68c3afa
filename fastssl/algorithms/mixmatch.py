"""MixMatch: Berthelot, Carlini, Goodfellow, Papernot, Oliver, Raffel, "MixMatch: A Holistic Approach to
Semi-Supervised Learning", NeurIPS 2019 (arXiv:1905.02249).

1. Label guessing (no gradient): average softmax over K = 2 weak views of each unlabeled image, sharpened
   with temperature T. This pass runs with BatchNorm on batch statistics and its running statistics
   untouched (the reference code skips that pass's BN updates).
2. MixUp over the whole batch [x_lb, weak view 1, weak view 2] with targets [one-hot, guess, guess]:
   one λ ~ Beta(α, α), λ' = max(λ, 1 − λ), one random permutation.
3. Labeled loss: soft cross-entropy on the mixed labeled rows; unlabeled loss: softmax MSE (L2, averaged
   over classes) on the mixed unlabeled rows, weighted by λ_u times a ramp-up.

Interleaving (the reference's fix for BatchNorm when labeled and unlabeled rows go through separate
forward passes) is not needed: the mixed batch goes through ONE forward, so every row is normalised with
the statistics of the whole batch and the running statistics are updated once from it, which is what
interleaving approximates. `tests/test_mixmatch.py` checks that per-row outputs do not depend on how the
batch is ordered or grouped.

Defaults: USB classic-CV (α = 0.5, T = 0.5, λ_u = 100, linear ramp over 40% of training; the paper used
α = 0.75 and λ_u = 75 on CIFAR-10 with a 16k-step linear ramp).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput
from fastssl.algorithms.losses import (acc, forward_batch_stats, mixup, mixup_lambda, mse, one_hot, ramp_up,
                                       random_permutation, regularizers, sharpen, soft_ce)
from fastssl.batch import SSLBatch, ViewSpec


@dataclasses.dataclass
class MixMatchConfig(AlgorithmConfig):
    lambda_u: float = 100.0
    """weight of the unlabeled L2 loss after ramp-up (USB classic-CV: 100; paper CIFAR-10: 75)"""
    T: float = 0.5
    """sharpening temperature of the guessed label"""
    mixup_alpha: float = 0.5
    """MixUp λ ~ Beta(α, α), then λ' = max(λ, 1 − λ) (USB classic-CV: 0.5; paper CIFAR-10: 0.75)"""
    unsup_warmup: float = 0.4
    """λ_u ramps up linearly over this fraction of train.steps"""

    def __post_init__(self):
        if not self.T > 0:
            raise ValueError(f"--algo.T={self.T} must be > 0 (MixMatch uses 0.5)")
        if not self.mixup_alpha > 0:
            raise ValueError(f"--algo.mixup_alpha={self.mixup_alpha} must be > 0 (MixMatch uses 0.5–0.75)")


class MixMatch(Algorithm):
    name = "mixmatch"
    Config = MixMatchConfig
    views = ViewSpec(num_weak=2, num_strong=0)
    recipe = {"algo.lambda_u": 100.0, "algo.T": 0.5, "algo.mixup_alpha": 0.5, "algo.unsup_warmup": 0.4, "data.uratio": 1}

    def sample_mix(self, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """(λ', permutation of n rows), drawn on the device. Tests replace it to inject fixed values."""
        return mixup_lambda(self.cfg.mixup_alpha, like, biased=True), random_permutation(n, like.device)

    def forward(self, student: nn.Module, teacher: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        cfg: MixMatchConfig = self.cfg
        x_w1, x_w2 = batch.x_ulb_w, batch.x_ulb_w_extra[0]
        B, n = batch.x_lb.shape[0], x_w1.shape[0]
        with torch.no_grad():
            logits_w = acc(forward_batch_stats(student, torch.cat([x_w1, x_w2])))
            probs_w1, probs_w2 = logits_w.softmax(-1).split(n)  # (μB, C) each
            guess = sharpen(0.5 * (probs_w1 + probs_w2), cfg.T)
        y_lb = one_hot(batch.y_lb, self.num_classes, guess.dtype)
        inputs = torch.cat([batch.x_lb, x_w1, x_w2])  # (B + 2μB, C, H, W)
        targets = torch.cat([y_lb, guess, guess])
        lam, perm = self.sample_mix(inputs.shape[0], inputs)
        mixed_x, mixed_y = mixup(inputs, targets, lam, perm)
        logits = student(mixed_x)  # one forward: BN over the whole mixed batch, no interleaving needed
        sup_loss = soft_ce(logits[:B], mixed_y[:B]).mean()
        unsup_loss = mse(logits[B:], mixed_y[B:]).mean()
        weight = cfg.lambda_u * ramp_up(step, cfg.unsup_warmup * self.total_steps, "linear")
        # add-ons on the mixed unlabeled rows: the only unlabeled logits with gradient (the weak views'
        # label-guessing pass runs without gradient)
        reg_loss, reg_metrics = regularizers(logits[B:], cfg)
        loss = sup_loss + weight * unsup_loss + reg_loss
        metrics = {**reg_metrics, "sup_loss": sup_loss.detach(), "unsup_loss": unsup_loss.detach(), "unsup_weight": weight,
                   "mixup_lambda": lam.detach().float(),
                   "guess_acc": (guess.argmax(-1) == batch.y_ulb).float().mean()}
        return StepOutput(loss, metrics, None)
