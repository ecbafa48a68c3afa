"""Meta Pseudo Labels: Pham, Dai, Xie & Le, "Meta Pseudo Labels", CVPR 2021 (arXiv:2003.10580).

Two networks. The *student* (the trainer's model) learns only from the *teacher*'s pseudo-labels; the
teacher (a second network of the same architecture, owned by this algorithm) learns from the labels, from
UDA consistency, and from the student's feedback: how much the student's step on its pseudo-labels changed
the student's loss on the labeled batch.

Step t (USB's classic-CV form, first-order approximation of the paper's meta-gradient):
1. forward (compiled with the trainer's step): the teacher, without gradient, on [x_lb, x_ulb_w, x_ulb_s];
   the student's labeled loss L_old = CE(S(x_lb), y) (no gradient); the student's loss
   λ_u · mean_i m_i · CE(softmax(T(x_ulb_s)_i / T), S(x_ulb_s)_i), m_i = [max softmax(T(x_ulb_s)_i) ≥ τ]
   (the fused `pseudo_label_ce`, soft targets); the trainer's optimizer updates the student.
2. `after_step` (eager, after that update): L_new = CE(S'(x_lb), y) with the updated student; the feedback
   h = L_old − L_new (both means over the global labeled batch, all-reduced), minus a moving-average
   baseline b ← d·b + (1 − d)·h (USB's; d = `baseline_decay`); the teacher's loss
       CE_ls(T(x_lb), y) + uda_weight·ramp(t) · mean_i m'_i · CE(softmax(T(x_ulb_w)_i / T), T(x_ulb_s)_i)
       + h · mean_i CE(ŷ_i, T(x_ulb_s)_i),   ŷ_i = argmax T(x_ulb_s)_i (the student's pseudo-labels' class)
   with m'_i = [max softmax(T(x_ulb_w)_i) ≥ τ] and CE_ls the labeled cross-entropy with USB's label
   smoothing (1 − ε on the label, ε/(C − 1) elsewhere); one backward, the gradients averaged over ranks,
   one step of the teacher's own SGD (Nesterov momentum, weight decay on ≥2-D weights: the trainer's rule)
   at teacher_lr · cos(7πt/16K).

Sign: with θ' = θ − η∇CE(ŷ, S(x_u; θ)), L_l(θ) − L_l(θ') ≈ η ∇L_l(θ')ᵀ∇CE(ŷ, S(x_u; θ)), the paper's h; a
positive h (the pseudo-labels helped) makes the teacher more confident in ŷ. USB uses the same sign (the
authors' released code, as reported by the MPL-pytorch port, the opposite).

Choices of ours, on purpose:
- L_old and L_new are both CE of the student on x_lb alone with BatchNorm on batch statistics and running
  statistics untouched (`forward_batch_stats`), so h measures the parameter update and nothing else (USB
  computes L_old inside a concatenated forward and L_new on x_lb alone: different batch statistics).
- The student's pass with gradient is over x_ulb_s alone (its loss reads nothing else); USB concatenates
  x_lb into it, which only changes the BatchNorm batch statistics.
- The teacher always runs on batch statistics and never updates its running statistics: nothing reads
  them (the teacher is never evaluated; the trainer evaluates the student's EMA), and they stay identical
  on every rank. Its no-gradient pass in the forward and its gradient pass in `after_step` therefore give
  the same logits; ŷ is handed over from the forward so that both use the same pseudo-labels.
- The teacher's parameters are `requires_grad=False` outside `after_step` (the contract in base.py): the
  trainer's optimizer and DDP leave them alone; the momentum and the baseline are buffers, so they are in
  the checkpoint and a run resumes bit-exactly.

Cost: two networks, and the teacher's forward runs twice (without gradient in the compiled step, with
gradient in `after_step`): a CPU step took 171 ms against FixMatch's 81 ms (`python -m
fastssl.bench.algo_rates --algos mpl,uda --threads 1 --rounds 20`, small CNN, B=16, μ=7, shared 2-core machine).

Defaults: USB classic-CV CIFAR-10/40 (τ = 0.6, T = 0.7, uda_weight = 8, 5000 of 2^20 steps of UDA warm-up,
label smoothing 0.1, teacher_lr = 0.03 with the student's momentum and weight decay).
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput
from fastssl.algorithms.losses import (acc, forward_batch_stats, pseudo_label_ce, pseudo_label_metrics, regularizers,
                                       soft_ce)
from fastssl.batch import SSLBatch, ViewSpec
from fastssl.collectives import all_reduce_sum, world_size


@dataclasses.dataclass
class MPLConfig(AlgorithmConfig):
    lambda_u: float = 1.0
    """weight of the student's loss on the teacher's pseudo-labels (the student's whole loss)"""
    tau: float = 0.6
    """confidence threshold of the teacher's predictions (the student's targets and the UDA term)"""
    T: float = 0.7
    """temperature of the soft targets softmax(logits/T)"""
    uda_weight: float = 8.0
    """weight of the teacher's UDA consistency loss, after warm-up"""
    unsup_warmup: float = 5000 / 2**20
    """the UDA weight ramps up linearly over this fraction of train.steps (USB: 5000 steps of 2^20)"""
    label_smoothing: float = 0.1
    """label smoothing of the teacher's labeled cross-entropy (1 − ε on the label, ε/(C − 1) elsewhere)"""
    teacher_lr: float = 0.03
    """the teacher's SGD learning rate, on the cosine schedule cos(7πt/16K)"""
    teacher_momentum: float = 0.9
    """the teacher's Nesterov momentum"""
    teacher_weight_decay: float = 5e-4
    """the teacher's weight decay (on ≥2-D weights only, as the student's)"""
    baseline_decay: float = 0.99
    """decay of the moving average of h subtracted from it (USB: 0.99); 1 = no baseline"""

    def __post_init__(self):
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.baseline_decay <= 1:
            raise ValueError(f"--algo.label_smoothing={self.label_smoothing} must be in [0, 1) and "
                             f"--algo.baseline_decay={self.baseline_decay} in [0, 1] (MPL: 0.1, 0.99)")
        if self.teacher_lr < 0 or not 0 <= self.teacher_momentum < 1 or self.teacher_weight_decay < 0:
            raise ValueError(f"--algo.teacher_lr={self.teacher_lr} and --algo.teacher_weight_decay="
                             f"{self.teacher_weight_decay} must be ≥ 0 and --algo.teacher_momentum="
                             f"{self.teacher_momentum} in [0, 1) (MPL: 0.03, 5e-4, 0.9)")


class MPLState(NamedTuple):
    sup_loss_old: Tensor
    """0-d: the student's labeled loss before this step's update (this rank's batch)"""
    pseudo: Tensor
    """(μB,) int64: argmax of the teacher's strong-view logits, ŷ"""
    step: Tensor
    """0-d step this state was computed at"""


def smoothed_targets(y: Tensor, num_classes: int, eps: float, dtype: torch.dtype) -> Tensor:
    """(N, C): 1 − ε at the label, ε/(C − 1) elsewhere."""
    out = torch.full((y.shape[0], num_classes), eps / (num_classes - 1), dtype=dtype, device=y.device)
    return out.scatter_(1, y[:, None], 1.0 - eps)


class MPL(Algorithm):
    name = "mpl"
    Config = MPLConfig
    views = ViewSpec(num_weak=1, num_strong=1)
    recipe = {"algo.tau": 0.6, "algo.T": 0.7, "algo.uda_weight": 8.0, "algo.teacher_lr": 0.03}

    def init_state(self) -> None:
        if self.make_model is None:
            raise ValueError("MPL trains a teacher network like the student: construct it with make_model= "
                             "(a factory of the student's architecture; the trainer passes one)")
        self.teacher = self.make_model()
        """the teacher network (updated in `after_step`, never by the trainer's optimizer)"""
        self.teacher.requires_grad_(False)
        n, dtype = sum(p.numel() for p in self.teacher.parameters()), next(self.teacher.parameters()).dtype
        self.register_buffer("teacher_momentum", torch.zeros(n, dtype=dtype))
        """(#teacher parameters,) the teacher's SGD momentum, flat, in `teacher.parameters()` order"""
        self.register_buffer("baseline", torch.zeros((), dtype=dtype))
        """0-d moving average of the feedback h"""
        decay = torch.cat([torch.full((p.numel(),), float(p.ndim > 1)) for p in self.teacher.parameters()])
        self.register_buffer("decay_mask", decay.to(self.teacher_momentum.dtype), persistent=False)
        """(#teacher parameters,) 1 where weight decay applies (≥2-D weights), 0 on BN weights and biases"""

    def forward(self, student: nn.Module, teacher: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        """The student's loss; `teacher` (the trainer's EMA of the student) is not used."""
        cfg: MPLConfig = self.cfg
        B, n = batch.x_lb.shape[0], batch.x_ulb_w.shape[0]
        with torch.no_grad():
            t_logits = forward_batch_stats(self.teacher, torch.cat([batch.x_lb, batch.x_ulb_w, batch.x_ulb_s]))
            t_lb, t_w, t_s = acc(t_logits).split([B, n, n])
            sup_loss_old = F.cross_entropy(acc(forward_batch_stats(student, batch.x_lb)), batch.y_lb)
            t_sup = soft_ce(t_lb, smoothed_targets(batch.y_lb, self.num_classes, cfg.label_smoothing, t_lb.dtype)).mean()
            t_uda = pseudo_label_ce(t_w, t_s, cfg.tau, cfg.T, soft=True).loss
        logits_s = student(batch.x_ulb_s)  # (μB, C), the only student pass with gradient
        pl = pseudo_label_ce(t_s, logits_s, cfg.tau, cfg.T, soft=True)
        reg_loss, reg_metrics = regularizers(logits_s, cfg)
        loss = cfg.lambda_u * pl.loss + reg_loss
        metrics = {"sup_loss": sup_loss_old, "unsup_loss": pl.loss.detach(), "teacher_sup_loss": t_sup,
                   "teacher_uda_loss": t_uda, "mpl_baseline": self.baseline.clone(),
                   **pseudo_label_metrics(pl.mask, pl.pseudo, batch.y_ulb), **reg_metrics}
        return StepOutput(loss, metrics, MPLState(sup_loss_old, pl.pseudo, step))

    def feedback(self, student: nn.Module, batch: SSLBatch, state: MPLState) -> Tensor:
        """h − b: the change of the student's global labeled loss across its update, minus the baseline
        (which this call advances)."""
        d = self.cfg.baseline_decay
        new = F.cross_entropy(acc(forward_batch_stats(student, batch.x_lb)), batch.y_lb)
        old_new = all_reduce_sum(torch.stack([state.sup_loss_old, new])) / world_size()
        h = old_new[0] - old_new[1]
        self.baseline.mul_(d).add_((1 - d) * h)
        return h - self.baseline

    def teacher_loss(self, batch: SSLBatch, state: MPLState, h: Tensor) -> Tensor:
        """The teacher's loss on this rank's batch, with gradient to the teacher's parameters."""
        cfg: MPLConfig = self.cfg
        B, n = batch.x_lb.shape[0], batch.x_ulb_w.shape[0]
        logits = forward_batch_stats(self.teacher, torch.cat([batch.x_lb, batch.x_ulb_w, batch.x_ulb_s]))
        t_lb, t_w, t_s = acc(logits).split([B, n, n])
        sup = soft_ce(t_lb, smoothed_targets(batch.y_lb, self.num_classes, cfg.label_smoothing, t_lb.dtype)).mean()
        uda = pseudo_label_ce(t_w.detach(), t_s, cfg.tau, cfg.T, soft=True).loss
        mpl = F.cross_entropy(t_s, state.pseudo)
        warmup = cfg.unsup_warmup * self.total_steps  # USB's min(1, (t + 1)/warmup), in the loss dtype (fp64 tests)
        ramp = ((state.step + 1).to(uda.dtype) / warmup).clamp(max=1.0) if warmup > 0 else 1.0
        return sup + cfg.uda_weight * ramp * uda + h.to(mpl.dtype) * mpl

    def after_step(self, student: nn.Module, batch: SSLBatch, state: MPLState) -> None:
        """The teacher's step, from the student's feedback (module docstring, step 2)."""
        with torch.no_grad():
            h = self.feedback(student, batch, state)
        params = list(self.teacher.parameters())
        with torch.enable_grad():
            self.teacher.requires_grad_(True)
            try:
                grads = torch.autograd.grad(self.teacher_loss(batch, state, h), params)
            finally:
                self.teacher.requires_grad_(False)
        with torch.no_grad():
            g = all_reduce_sum(torch.cat([x.reshape(-1) for x in grads]).to(self.teacher_momentum.dtype)) / world_size()
            self.sgd_step(params, g, state.step)

    def sgd_step(self, params: list[Tensor], g: Tensor, step: Tensor) -> None:
        """One step of SGD with Nesterov momentum and weight decay on ≥2-D weights (torch.optim.SGD's update,
        on one flat buffer), learning rate teacher_lr·cos(7π·step/16K) as a 0-d tensor (no host sync)."""
        cfg: MPLConfig = self.cfg
        flat = torch.cat([p.reshape(-1) for p in params])
        g = g + cfg.teacher_weight_decay * self.decay_mask * flat
        m = self.teacher_momentum.mul_(cfg.teacher_momentum).add_(g)
        lr = cfg.teacher_lr * torch.cos(step.to(flat.dtype) * (math.pi * 7 / 16 / self.total_steps))
        flat = flat - lr * (g + cfg.teacher_momentum * m)
        torch._foreach_copy_(params, [x.view_as(p) for x, p in zip(flat.split([p.numel() for p in params]), params)])
