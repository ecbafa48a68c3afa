"""CRMatch: Fan, Kukleva, Dai & Schiele, "Revisiting Consistency Regularization for Semi-Supervised
Learning", GCPR 2021 / IJCV 2023 (arXiv:2112.05825).

FixMatch's confidence-thresholded pseudo-label loss, plus two self-supervised terms on heads of its own:
1. Feature distance (the paper's FeatDistLoss): a linear head g maps the backbone features of the weak and
   of the strong view; for every pseudo-labeled sample (same mask as the pseudo-label loss) the loss is
   max(0, cos(g(strong), g(weak))), i.e. the two views' projected features are pushed *apart* while their
   predictions are pulled together (equivariance instead of invariance, the paper's finding). Mean over
   the μB rows (masked rows count as 0), as USB's `cosine_embedding_loss(.., target −1) * mask`.
2. Rotation prediction: B unlabeled weak-view images, each rotated by 0°, 90°, 180° and 270° (4B rows),
   classified by an MLP head (Linear–ReLU–Linear to 4 classes) on the backbone features; cross-entropy.

    loss = CE(labeled) + λ_u · L_pl + λ_ds · L_ds + λ_rot · L_rot (+ add-ons on the weak logits)

Every gradient-carrying row goes through ONE backbone forward: [x_lb, weak, strong, rotated], class logits
from `model.head`, the two heads of this algorithm on `model.forward_features` (so the model must expose
both, with `model(x) == model.head(model.forward_features(x))`, as every fastssl model does).

Differences from USB's crmatch (deliberate):
- The feature-distance head reads the *pooled* features (Linear(F, F)); USB's reads the flattened last
  feature map (Linear(8·8·F, F) on CIFAR). fastssl's models expose pooled features only, and a head sized
  by the feature map would tie the algorithm to one input resolution.
- The rotated images are the first B rows of the step's unlabeled weak view (fastssl's pipeline is not
  edited for this); USB draws them from a separate unlabeled loader with the labeled (weak) transform, so
  the same augmentation family and the same count (4 × batch size) but independent samples.
- λ_u, λ_ds and λ_rot are options (USB adds the three terms with weight 1, the defaults here).
- The weak view's projection keeps its gradient, as USB's default concatenated forward (`use_cat`) does.

Defaults: USB classic-CV (τ = 0.95, hard labels, uratio 7, rotation on).
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
class CRMatchConfig(AlgorithmConfig):
    tau: float = 0.95
    """confidence threshold τ of the pseudo-labels (and of the feature-distance mask)"""
    lambda_ds: float = 1.0
    """weight of the feature-distance loss; 0 turns it (and its head) off"""
    lambda_rot: float = 1.0
    """weight of the rotation-prediction loss; 0 turns it (and its head) off"""

    def __post_init__(self):
        if self.lambda_ds < 0 or self.lambda_rot < 0:
            raise ValueError(f"--algo.lambda_ds={self.lambda_ds} and --algo.lambda_rot={self.lambda_rot} must be "
                             "≥ 0 (0 turns a term off; CRMatch: 1 and 1)")


class CRMatch(Algorithm):
    name = "crmatch"
    Config = CRMatchConfig
    views = ViewSpec(num_weak=1, num_strong=1)
    recipe = {"algo.tau": 0.95, "algo.lambda_ds": 1.0, "algo.lambda_rot": 1.0}

    def init_state(self) -> None:
        cfg: CRMatchConfig = self.cfg
        F_ = self.num_features
        if (cfg.lambda_ds > 0 or cfg.lambda_rot > 0) and F_ < 1:
            raise ValueError("CRMatch's heads read the model's features: construct it with "
                             "num_features=model.num_features (the trainer does), or set --algo.lambda_ds=0 "
                             "--algo.lambda_rot=0")
        self.ds_head = nn.Linear(F_, F_) if cfg.lambda_ds > 0 else None
        """feature-distance projection of the pooled features (learnable, optimised with the model)"""
        self.rot_head = (nn.Sequential(nn.Linear(F_, F_), nn.ReLU(), nn.Linear(F_, 4))
                         if cfg.lambda_rot > 0 else None)
        """4-way rotation classifier on the pooled features (learnable, optimised with the model)"""

    def forward(self, student: nn.Module, teacher: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        cfg: CRMatchConfig = self.cfg
        B, n = batch.x_lb.shape[0], batch.x_ulb_w.shape[0]
        parts = [batch.x_lb, batch.x_ulb_w, batch.x_ulb_s]
        if self.rot_head is not None:
            src = batch.x_ulb_w[:B]  # as many as USB's rotation loader yields: the labeled batch size
            parts += [src, *(torch.rot90(src, k, dims=(-2, -1)) for k in (1, 2, 3))]
        feats = student.forward_features(torch.cat(parts))  # one backbone forward for every gradient row
        m = B + 2 * n
        logits = student.head(feats[:m])
        logits_lb, logits_w, logits_s = logits.split([B, n, n])
        sup_loss = F.cross_entropy(acc(logits_lb), batch.y_lb)
        pl = pseudo_label_ce(logits_w.detach(), logits_s, cfg.tau)
        reg_loss, reg_metrics = regularizers(logits_w, cfg)
        loss = sup_loss + cfg.lambda_u * pl.loss + reg_loss
        metrics = {"sup_loss": sup_loss.detach(), "unsup_loss": pl.loss.detach(), **reg_metrics,
                   **pseudo_label_metrics(pl.mask, pl.pseudo, batch.y_ulb)}
        if self.ds_head is not None:
            z_w, z_s = acc(self.ds_head(feats[B:m])).split([n, n])
            # cosine embedding loss with target −1 (margin 0): only a positive similarity is penalised
            cos = F.cosine_similarity(z_s, z_w, dim=-1)
            ds_loss = (cos.clamp_min(0.0) * pl.mask.to(cos.dtype)).mean()
            loss = loss + cfg.lambda_ds * ds_loss
            metrics["ds_loss"] = ds_loss.detach()
        if self.rot_head is not None:
            r = feats.shape[0] - m
            rot = torch.arange(r, device=feats.device) // (r // 4)  # [0]*b + [1]*b + [2]*b + [3]*b
            rot_logits = acc(self.rot_head(feats[m:]))
            rot_loss = F.cross_entropy(rot_logits, rot)
            loss = loss + cfg.lambda_rot * rot_loss
            metrics["rot_loss"] = rot_loss.detach()
            metrics["rot_acc"] = (rot_logits.argmax(-1) == rot).float().mean()
        return StepOutput(loss, metrics, None)
