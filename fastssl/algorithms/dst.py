"""Debiased Self-Training (DST): Chen, Wang, Fu, Long & Wang, "Debiased Self-Training for Semi-Supervised
Learning", NeurIPS 2022 (arXiv:2202.07136).

Two heads of this algorithm's own sit on the backbone features f = `student.forward_features(x)`, beside
the model's classifier head h (`student.head`):
- the pseudo head h_pseudo: trained on the strong unlabeled view towards the classifier's thresholded
  pseudo-labels (weak view, max-prob ≥ τ); the classifier head itself never trains on pseudo-labels
  (the decoupling that removes the training bias);
- the worst-case estimation head h_worst, behind a gradient reversal layer: it is fitted to agree with h on
  the labeled batch and to disagree with it on the unlabeled batch, while the backbone, through the
  reversed gradient, is pushed the other way (the adversarial term that removes the data bias):

    L_wce = η · ( η' · CE(h_worst(f_l), argmax h(f_l)) + mean_u −log(1 − softmax(h_worst(f_u))[argmax h(f_u)] + 1e-6) )

  (the log's argument clamped at 1), with the reversal coefficient warmed up as
  c(t) = 2·hi / (1 + exp(−t / warm_iters)) − hi (0 at step 0 → hi).

    loss = CE(h(f_l,weak), y) + λ_s · CE(h(f_l,strong), y) + λ_u · mean_u mask · CE(h_pseudo(f_u,strong), ŷ) + L_wce

Both heads are Linear(F, width) → ReLU → Dropout → Linear(width, C) with F = the model's `num_features`;
they are parameters of the algorithm (optimised with the model) and are not used at evaluation.
The gradient reversal is a `torch.autograd.Function` (identity forward, −c·grad backward; traced by
`torch.compile(fullgraph=True)`, tested).

Defaults: tllib's examples/semi_supervised_learning/image_classification/dst.py (τ = 0.7, η = 1, η' = 2,
λ_s = 0.1, λ_u = 1, dropout 0.5, reversal hi = 0.1 over 1000 iterations), except the heads' width.
Deliberate differences from tllib:
- the heads' hidden width is twice the feature width by default (256 on WRN-28-2's 128 features), the
  ratio of tllib's 2048 to its 1024-wide bottleneck: a fixed 2048 (16× WRN-28-2's features) made the heads
  diverge in the CPU test's short run at lr 0.05 (worst-case loss 3.0 → 151), a ratio of 2 did not;
- the heads read the backbone's pooled features directly: tllib puts a bottleneck
  (Linear → BatchNorm → ReLU → Dropout, 1024 wide) between the backbone and all three heads, part of its
  classifier for fine-tuning pretrained backbones; here the classifier is the model's own head;
- one backbone forward over [labeled weak, labeled strong, unlabeled weak, unlabeled strong] (BatchNorm
  statistics over all of them, the FixMatch convention) where tllib runs three forwards;
- the mask is max-prob ≥ τ (tllib: > τ), as the fused pseudo-label kernel defines it.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput
from fastssl.algorithms.losses import acc, pseudo_label_ce, pseudo_label_metrics, regularizers
from fastssl.batch import SSLBatch, ViewSpec


@dataclasses.dataclass
class DSTConfig(AlgorithmConfig):
    lambda_u: float = 1.0
    """weight of the pseudo head's self-training loss (tllib's trade-off-self-training)"""
    tau: float = 0.7
    """confidence threshold of the classifier's weak-view pseudo-labels (tllib: 0.7)"""
    lambda_s: float = 0.1
    """weight of the cross-entropy on the labeled strong view (tllib's trade-off-cls-strong)"""
    eta: float = 1.0
    """weight η of the worst-case estimation loss"""
    eta_prime: float = 2.0
    """η': weight of the labeled part of the worst-case estimation loss against its unlabeled part"""
    head_width: int = 0
    """hidden width of the pseudo head and the worst-case estimation head; 0 = twice the feature width (tllib:
    2048 on its 1024-wide bottleneck)"""
    head_dropout: float = 0.5
    """dropout inside both heads (before their last layer)"""
    grl_hi: float = 0.1
    """final coefficient of the gradient reversal layer"""
    grl_warm_iters: float = 1000.0
    """the reversal coefficient 2·hi/(1 + exp(−t/warm_iters)) − hi rises from 0 towards hi on this step scale"""

    def __post_init__(self):
        if self.head_width < 0 or not 0 <= self.head_dropout < 1 or not self.grl_warm_iters > 0:
            raise ValueError(f"--algo.head_width={self.head_width} must be ≥ 0, --algo.head_dropout={self.head_dropout} "
                             f"in [0, 1), --algo.grl_warm_iters={self.grl_warm_iters} > 0 (DST: 0 = 2·features, 0.5, 1000)")


class GradReverse(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by −coeff (a 0-d tensor, no gradient)."""

    @staticmethod
    def forward(x: Tensor, coeff: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        (coeff,) = ctx.saved_tensors
        return -coeff.to(grad.dtype) * grad, None


def grad_reverse(x: Tensor, coeff: Tensor) -> Tensor:
    return GradReverse.apply(x, coeff)


def grl_coeff(step: Tensor, hi: float, warm_iters: float) -> Tensor:
    """2·hi / (1 + exp(−step / warm_iters)) − hi, from the 0-d step (no recompile, no sync)."""
    return 2 * hi / (1 + torch.exp(-step.double() / warm_iters)) - hi


def worst_case_estimation_loss(logits_l: Tensor, adv_l: Tensor, logits_u: Tensor, adv_u: Tensor, eta_prime: float) -> Tensor:
    """η'·CE(adv_l, argmax logits_l) + mean −log(clamp(1 − softmax(adv_u)[argmax logits_u] + 1e-6, max=1))."""
    loss_l = F.cross_entropy(adv_l, logits_l.detach().argmax(-1))
    p_u = adv_u.softmax(-1).gather(1, logits_u.detach().argmax(-1, keepdim=True))[:, 0]
    loss_u = -torch.log((1 - p_u + 1e-6).clamp(max=1.0)).mean()
    return eta_prime * loss_l + loss_u


def mlp_head(width_in: int, width: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, num_classes))


class DST(Algorithm):
    name = "dst"
    Config = DSTConfig
    views = ViewSpec(num_weak=1, num_strong=1, lb_strong=True)
    recipe = {"algo.tau": 0.7, "algo.lambda_s": 0.1, "algo.eta": 1.0, "algo.eta_prime": 2.0}

    def init_state(self) -> None:
        cfg: DSTConfig = self.cfg
        if self.num_features < 1:
            raise ValueError("DST's pseudo and worst-case heads read the model's features: construct it with "
                             "num_features=model.num_features (the trainer does)")
        width = cfg.head_width or 2 * self.num_features
        self.pseudo_head = mlp_head(self.num_features, width, self.num_classes, cfg.head_dropout)
        """h_pseudo: trained on the strong unlabeled view towards the classifier's pseudo-labels"""
        self.adv_head = mlp_head(self.num_features, width, self.num_classes, cfg.head_dropout)
        """h_worst: the worst-case estimation head, behind the gradient reversal"""

    def forward(self, student: nn.Module, teacher: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        cfg: DSTConfig = self.cfg
        xs = (batch.x_lb, batch.x_lb_s, batch.x_ulb_w, batch.x_ulb_s)
        if batch.x_lb_s is None:
            raise ValueError("DST needs a strong view of the labeled images (batch.x_lb_s): build the pipeline "
                             "from the algorithm's ViewSpec (lb_strong=True)")
        f_lb, f_lb_s, f_w, f_s = student.forward_features(torch.cat(xs)).split([x.shape[0] for x in xs])
        B = f_lb.shape[0]
        logits = acc(student.head(torch.cat([f_lb, f_lb_s, f_w])))
        logits_lb, logits_lb_s, logits_w = logits.split([B, B, f_w.shape[0]])
        sup_weak = F.cross_entropy(logits_lb, batch.y_lb)
        sup_strong = F.cross_entropy(logits_lb_s, batch.y_lb)
        sup_loss = sup_weak + cfg.lambda_s * sup_strong
        pl = pseudo_label_ce(logits_w.detach(), acc(self.pseudo_head(f_s)), cfg.tau)
        coeff = grl_coeff(step, cfg.grl_hi, cfg.grl_warm_iters)
        adv = acc(self.adv_head(grad_reverse(torch.cat([f_lb, f_w]), coeff)))
        wce = worst_case_estimation_loss(logits_lb, adv[:B], logits_w, adv[B:], cfg.eta_prime)
        reg_loss, reg_metrics = regularizers(logits_w, cfg)
        loss = sup_loss + cfg.lambda_u * pl.loss + cfg.eta * wce + reg_loss
        metrics = {"sup_loss": sup_weak.detach(), "sup_strong_loss": sup_strong.detach(), "unsup_loss": pl.loss.detach(),
                   "wce_loss": wce.detach(), "grl_coeff": coeff.float(),
                   **pseudo_label_metrics(pl.mask, pl.pseudo, batch.y_ulb), **reg_metrics}
        return StepOutput(loss, metrics, None)
