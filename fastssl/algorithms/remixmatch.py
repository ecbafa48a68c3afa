"""ReMixMatch: Berthelot, Carlini, Cubuk, Kurakin, Sohn, Zhang, Raffel, "ReMixMatch: Semi-Supervised
Learning with Distribution Alignment and Augmentation Anchoring", ICLR 2020 (arXiv:1911.09785).

1. Guess (no gradient, BatchNorm on batch statistics, running statistics untouched): softmax on the weak
   view, *distribution alignment* q̃ = Normalize(q · p(y) / p̃(y)) with p(y) the labeled class distribution
   (uniform: our labeled splits are class-balanced; a trainer may `copy_` another into `p_target`) and p̃(y)
   the mean of the model's weak-view predictions over the last 128 steps (a ring of per-step global means,
   initialised uniform as in the authors' code), then sharpening with T.
2. *Augmentation anchoring*: the guess is the target of the strong views. MixUp over
   [x_lb, strong 1, strong 2, weak] with targets [one-hot, q, q, q] (λ' = max(λ, 1 − λ)); soft
   cross-entropy on the mixed labeled rows (sup) and mixed unlabeled rows (λ_u).
3. Pre-mixup loss: soft cross-entropy of the un-mixed first strong view against the guess (λ_kl).
4. Rotation loss: the first strong view rotated by k·90°, k uniform in {0..3} per sample, classified by a
   4-way linear head on the backbone features (λ_rot). The rotation is `torch.rot90` + `torch.where`
   (static shapes, on the device).

All gradient-carrying rows go through ONE backbone forward: [mixed batch, strong view 1, rotated strong 1];
class logits come from `model.head`, rotation logits from this algorithm's `rot_head`. So the model must
expose `forward_features` and `head` with `model(x) == model.head(model.forward_features(x))`.

State: `p_model_hist` (128, C) and `p_target` (C,) buffers, checkpointed with the algorithm. The history
is updated in `update_state` with the all-reduced mean over ranks, so every rank holds the same history;
the step's alignment uses the history up to the previous step (one step of lag in a 128-step average).

Defaults: USB classic-CV (K = 2 strong views — the paper used 8 —, α = 0.75, T = 0.5, λ_u = 1.5,
λ_kl = 0.5, λ_rot = 0.5, λ_u and λ_kl ramped up linearly over 1/64 of training (16k of 2^20 steps)).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput
from fastssl.algorithms.losses import (acc, forward_batch_stats, mixup, mixup_lambda, one_hot, ramp_up, random_permutation,
                                       regularizers, rotate90, sharpen, soft_ce)
from fastssl.batch import SSLBatch, ViewSpec
from fastssl.collectives import all_reduce_sum, world_size


@dataclasses.dataclass
class ReMixMatchConfig(AlgorithmConfig):
    lambda_u: float = 1.5
    """weight of the soft cross-entropy on the mixed unlabeled rows, after ramp-up"""
    lambda_kl: float = 0.5
    """weight of the pre-mixup loss (first strong view vs the guess), after ramp-up"""
    lambda_rot: float = 0.5
    """weight of the rotation-prediction loss (not ramped); 0 turns it off"""
    T: float = 0.5
    """sharpening temperature of the guessed label"""
    mixup_alpha: float = 0.75
    """MixUp λ ~ Beta(α, α), then λ' = max(λ, 1 − λ)"""
    unsup_warmup: float = 1 / 64
    """λ_u and λ_kl ramp up linearly over this fraction of train.steps"""
    da_len: int = 128
    """distribution alignment: p̃(y) is the mean model prediction over the last da_len steps"""

    def __post_init__(self):
        if not self.T > 0 or not self.mixup_alpha > 0 or self.da_len < 1:
            raise ValueError(f"--algo.T={self.T} and --algo.mixup_alpha={self.mixup_alpha} must be > 0 and "
                             f"--algo.da_len={self.da_len} ≥ 1 (ReMixMatch: 0.5, 0.75, 128)")


class ReMixMatchState(NamedTuple):
    probs_mean: Tensor
    """(C,) this rank's mean weak-view prediction (unaligned)"""


class ReMixMatch(Algorithm):
    name = "remixmatch"
    Config = ReMixMatchConfig
    views = ViewSpec(num_weak=1, num_strong=2)
    recipe = {"algo.lambda_u": 1.5, "algo.lambda_kl": 0.5, "algo.lambda_rot": 0.5, "algo.T": 0.5, "algo.mixup_alpha": 0.75,
              "algo.unsup_warmup": 1 / 64, "data.uratio": 1}

    def init_state(self) -> None:
        cfg: ReMixMatchConfig = self.cfg
        C = self.num_classes
        if cfg.lambda_rot > 0 and self.num_features < 1:
            raise ValueError("ReMixMatch's rotation head reads the model's features: construct it with "
                             "num_features=model.num_features (the trainer does), or set --algo.lambda_rot=0")
        self.rot_head = nn.Linear(self.num_features, 4) if cfg.lambda_rot > 0 else None
        """4-way rotation classifier on the backbone features (learnable: optimised with the model)"""
        self.register_buffer("p_model_hist", torch.full((cfg.da_len, C), 1.0 / C))
        """(da_len, C) ring of the last da_len steps' mean weak-view predictions (averaged over ranks)"""
        self.register_buffer("p_target", torch.full((C,), 1.0 / C))
        """(C,) labeled class distribution p(y) (uniform: the labeled splits are class-balanced)"""

    def sample_mix(self, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """(λ', permutation of n rows), drawn on the device. Tests replace it to inject fixed values."""
        return mixup_lambda(self.cfg.mixup_alpha, like, biased=True), random_permutation(n, like.device)

    def sample_rotation(self, n: int, like: Tensor) -> Tensor:
        """(n,) int64 rotation labels, uniform in {0, 1, 2, 3} (quarter turns)."""
        return torch.randint(0, 4, (n,), device=like.device)

    def align(self, probs: Tensor) -> Tensor:
        """Distribution alignment: probs · p(y) / p̃(y), renormalised per row."""
        p_model = self.p_model_hist.mean(0).clamp_min(1e-12)  # a mean of softmaxes: > 0 unless it underflows
        aligned = probs * self.p_target / p_model
        return aligned / aligned.sum(-1, keepdim=True)

    def forward(self, student: nn.Module, teacher: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        cfg: ReMixMatchConfig = self.cfg
        x_s1, x_s2 = batch.x_ulb_s, batch.x_ulb_s_extra[0]
        B, n = batch.x_lb.shape[0], batch.x_ulb_w.shape[0]
        with torch.no_grad():
            probs_w = acc(forward_batch_stats(student, batch.x_ulb_w)).softmax(-1)  # (μB, C)
            guess = sharpen(self.align(probs_w), cfg.T)
        y_lb = one_hot(batch.y_lb, self.num_classes, guess.dtype)
        inputs = torch.cat([batch.x_lb, x_s1, x_s2, batch.x_ulb_w])  # (B + 3μB, C, H, W)
        targets = torch.cat([y_lb, guess, guess, guess])
        lam, perm = self.sample_mix(inputs.shape[0], inputs)
        mixed_x, mixed_y = mixup(inputs, targets, lam, perm)
        parts = [mixed_x, x_s1]
        if self.rot_head is not None:
            rot = self.sample_rotation(n, x_s1)
            parts.append(rotate90(x_s1, rot))
        feats = student.forward_features(torch.cat(parts))  # one backbone forward for every gradient row
        m = inputs.shape[0]
        logits = student.head(feats[:m + n])
        logits_mixed, logits_s1 = logits[:m], logits[m:]
        sup_loss = soft_ce(logits_mixed[:B], mixed_y[:B]).mean()
        unsup_loss = soft_ce(logits_mixed[B:], mixed_y[B:]).mean()
        pre_loss = soft_ce(logits_s1, guess).mean()
        ramp = ramp_up(step, cfg.unsup_warmup * self.total_steps, "linear")
        # add-ons on the un-mixed first strong view: the weak view's pass (the guess) has no gradient, and
        # a strong view is a real image where a mixed row is not (entropy of a MixUp is meant to be high)
        reg_loss, reg_metrics = regularizers(logits_s1, cfg)
        loss = sup_loss + ramp * (cfg.lambda_u * unsup_loss + cfg.lambda_kl * pre_loss) + reg_loss
        metrics = {**reg_metrics, "sup_loss": sup_loss.detach(), "unsup_loss": unsup_loss.detach(),
                   "pre_mixup_loss": pre_loss.detach(), "unsup_weight": cfg.lambda_u * ramp,
                   "guess_acc": (guess.argmax(-1) == batch.y_ulb).float().mean()}
        if self.rot_head is not None:
            rot_logits = acc(self.rot_head(feats[m + n:]))
            rot_loss = F.cross_entropy(rot_logits, rot)
            loss = loss + cfg.lambda_rot * rot_loss
            metrics["rot_loss"] = rot_loss.detach()
            metrics["rot_acc"] = (rot_logits.argmax(-1) == rot).float().mean()
        return StepOutput(loss, metrics, ReMixMatchState(probs_w.mean(0)))

    @torch.no_grad()
    def update_state(self, batch: SSLBatch, state: ReMixMatchState) -> None:
        """Pushes this step's mean weak-view prediction (averaged over ranks) into the history ring."""
        mean = all_reduce_sum(state.probs_mean.to(self.p_model_hist.dtype)) / world_size()
        self.p_model_hist.copy_(torch.cat([self.p_model_hist[1:], mean[None]]))
