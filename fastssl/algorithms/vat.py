"""VAT: Miyato, Maeda, Koyama, Ishii, "Virtual Adversarial Training: A Regularization Method for Supervised
and Semi-Supervised Learning", IEEE TPAMI 2018 (arXiv:1704.03976).

Unlabeled loss: KL(p(y|x) ‖ p(y|x + r_adv)), with the clean prediction as a constant target and r_adv the
direction, of L2 norm ε per sample, that most increases that divergence. r_adv comes from power iteration:
d ← ∇_r KL(p(y|x) ‖ p(y|x + r)) at r = ξ·d/‖d‖ (≈ ξ·H d, H the divergence's Hessian at r = 0), started from
Gaussian noise, then r_adv = ε·d/‖d‖. Optional entropy minimisation on the clean unlabeled prediction
("VAT + EntMin"), λ_ent.

- The input gradient is `torch.func.grad` over `functional_call` (traced by `torch.compile(fullgraph=True)`;
  `torch.autograd.grad` is not), and is not differentiated further.
- The unlabeled passes (clean, power iteration, adversarial) run with BatchNorm on their own batch
  statistics and running statistics untouched, as USB does; the labeled pass is a normal training forward.
  Clean and perturbed passes therefore normalise alike, so the gradient at r ≈ 0 is the ξ·H d signal and
  not a BatchNorm mismatch.
- Precision. The power iteration runs with autocast disabled (fp32), and its own target p(y|x) is
  recomputed there, so the divergence's gradient at r = 0 is exactly zero and only the ξ·H d signal is
  left (a bf16 target against an fp32 prediction would leave a rounding-mismatch gradient that swamps it).
  ξ = 1e-3, not the paper's/USB's 1e-6: ξ·d/‖d‖ spreads ξ over C·H·W elements, and at 1e-6 that is ~2e-8
  per element, below fp32 resolution for inputs of order 1. Measured on the test model (fp32, one
  iteration, cosine with the exact H·d from an fp64 Hessian, three samples): ξ = 1e-6 → −0.72/−0.35/−0.18;
  ξ = 1e-3 → 0.996/1.000/0.998 (another draw: 1e-6 → 0.27/0.93/0.69; 0.1 → ≥ 0.99).
  `tests/test_vat.py` pins both.

Defaults otherwise USB classic-CV (ε = 6, one power iteration, λ_u = 1 ramped linearly over 40% of
training, λ_ent = 0.06).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput
from fastssl.algorithms.losses import acc, entropy, forward_batch_stats, kl, ramp_up, regularizers
from fastssl.batch import SSLBatch, ViewSpec


@dataclasses.dataclass
class VATConfig(AlgorithmConfig):
    lambda_u: float = 1.0
    """weight of the virtual adversarial loss after ramp-up"""
    eps: float = 6.0
    """ε: L2 norm of the adversarial perturbation per sample (in normalised-input units)"""
    xi: float = 1e-3
    """ξ: finite-difference step of the power iteration (the paper's 1e-6 is below fp32 resolution; see the module doc)"""
    power_iters: int = 1
    """power-iteration steps estimating the adversarial direction (the paper: 1 suffices)"""
    lambda_ent: float = 0.06
    """weight of entropy minimisation on the clean unlabeled prediction (VAT+EntMin); 0 turns it off"""
    unsup_warmup: float = 0.4
    """λ_u ramps up linearly over this fraction of train.steps"""

    def __post_init__(self):
        if not (self.eps > 0 and self.xi > 0 and self.power_iters >= 1):
            raise ValueError(f"--algo.eps={self.eps} and --algo.xi={self.xi} must be > 0 and "
                             f"--algo.power_iters={self.power_iters} ≥ 1 (defaults: 6, 1e-3, 1)")


def l2_normalize(d: Tensor) -> Tensor:
    """d / ‖d‖ per sample (norm over every dim but the first)."""
    norm = d.flatten(1).norm(dim=1).clamp_min(1e-30)
    return d / norm.view(-1, *([1] * (d.dim() - 1)))


class VAT(Algorithm):
    name = "vat"
    Config = VATConfig
    views = ViewSpec(num_weak=1, num_strong=0)
    recipe = {"algo.lambda_u": 1.0, "algo.eps": 6.0, "algo.lambda_ent": 0.06, "algo.unsup_warmup": 0.4, "data.uratio": 1}

    def sample_noise(self, x: Tensor) -> Tensor:
        """The power iteration's starting direction (tests replace it)."""
        return torch.randn_like(x)

    def adversarial_perturbation(self, model: nn.Module, x: Tensor) -> Tensor:
        """r_adv (same shape as x), ‖r_adv[i]‖ = ε, detached."""
        cfg: VATConfig = self.cfg
        d = self.sample_noise(x)
        with torch.autocast(x.device.type, enabled=False):
            with torch.no_grad():
                target = acc(forward_batch_stats(model, x)).softmax(-1)  # same precision as below

            def divergence(r: Tensor) -> Tensor:
                return kl(forward_batch_stats(model, x + r), target).sum()

            for _ in range(cfg.power_iters):
                d = grad(divergence)(cfg.xi * l2_normalize(d))
        return cfg.eps * l2_normalize(d.detach())

    def forward(self, student: nn.Module, teacher: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        cfg: VATConfig = self.cfg
        sup_loss = F.cross_entropy(acc(student(batch.x_lb)), batch.y_lb)
        logits_ulb = forward_batch_stats(student, batch.x_ulb_w)
        target = acc(logits_ulb.detach()).softmax(-1)
        r_adv = self.adversarial_perturbation(student, batch.x_ulb_w)
        unsup_loss = kl(forward_batch_stats(student, batch.x_ulb_w + r_adv), target).mean()
        ent_loss = entropy(logits_ulb).mean()
        weight = cfg.lambda_u * ramp_up(step, cfg.unsup_warmup * self.total_steps, "linear")
        # add-ons on the clean weak view, the logits `lambda_ent` reads too (entmin_weight adds to lambda_ent)
        reg_loss, reg_metrics = regularizers(logits_ulb, cfg)
        loss = sup_loss + weight * unsup_loss + cfg.lambda_ent * ent_loss + reg_loss
        metrics = {"sup_loss": sup_loss.detach(), "unsup_loss": unsup_loss.detach(), "unsup_weight": weight,
                   "ent_loss": ent_loss.detach(), **reg_metrics}
        return StepOutput(loss, metrics, None)
