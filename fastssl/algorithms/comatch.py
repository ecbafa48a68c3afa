"""CoMatch: Li, Xiong & Hoi, "CoMatch: Semi-supervised Learning with Contrastive Graph Regularization",
ICCV 2021 (arXiv:2011.11183).

Class probabilities and low-dimensional embeddings are learned jointly and regularise each other:
1. Embeddings: a projection head (Linear–ReLU–Linear to `proj_size`, L2-normalised) on the backbone's
   pooled features; `num_proj` > 1 heads are averaged before normalising (EPASS, as USB's classic-CV
   configs; 1 = the paper's single head).
2. Pseudo-labels (no gradient): softmax of the weak view, distribution alignment p · p(y) / p̃(y) (p(y)
   uniform, p̃(y) the mean of the last `da_len` steps' mean weak-view predictions), then *memory-smoothed*:
   q = α p + (1 − α) Σ_k a_k p_k with a = softmax(z_w · Z_queueᵀ / T) over a queue of past weak-view
   embeddings Z and their (aligned) probabilities (labeled samples enter it with their one-hot labels).
3. Unlabeled loss: soft cross-entropy of the first strong view against q, on the rows with max q ≥ τ.
4. Graph-contrastive loss: the pseudo-label graph W = q qᵀ (diagonal 1, entries below `contrast_tau`
   cut, rows normalised) is the target of the embedding graph between the two strong views,
   softmax_j(z_s0,i · z_s1,j / T): L_c = mean_i −Σ_j W_ij log softmax_j(...).

    loss = CE(labeled) + λ_u · L_u + λ_c · L_c (+ add-ons on the weak logits)

One backbone forward over [x_lb, weak, strong 0, strong 1]; class logits from `model.head` (not computed
for strong 1, which only the contrastive term reads), embeddings from this algorithm's `proj`.

State (registered buffers, checkpointed): the queue `queue_feats` (S, proj_size) / `queue_probs` (S, C),
its write pointer and fill count, and the distribution-alignment history. `update_state` writes this step's
rows gathered from every rank (`all_gather_cat`, rank order) at the pointer, wrapping around; the history
takes the all-reduced mean. So every rank holds the same queue, and a checkpoint restores it exactly.

Differences from USB's comatch (deliberate):
- The second strong view is a second RandAugment draw (fastssl's pipeline: `num_strong=2`, x_ulb_s and
  x_ulb_s_extra[0]); USB's is a SimCLR-style augmentation (colour jitter, grayscale). Both views are
  strong and independent, which is what the contrastive graph needs; the pipeline is not edited for one
  algorithm.
- The queue size is an option in rows (`queue_size`, default 2560 = USB's queue_batch 5 × (1 + μ = 7) ×
  B = 64); USB derives it from the batch size, which the algorithm does not see. A push that passes the
  end wraps to the start (USB truncates it), so every row of every step is kept.
- Memory smoothing starts when the queue is full (the fill count, a buffer); USB starts it after the
  first epoch and `queue_batch` steps, by the step counter.
- Distribution alignment (USB's formula, ε = 1e-6) uses the history up to the previous step (uniform at
  the start); USB pushes the current batch first and averages a zero-initialised queue. One step of lag
  in a 32-step average.
- log softmax instead of USB's log(softmax + 1e-7) in the contrastive loss.
- The queue stores what USB stores (weak-view embeddings and aligned, unsmoothed probabilities; labeled
  embeddings and one-hot labels), in the order [unlabeled rows, labeled rows] of each rank, rank after rank.

Defaults: USB classic-CV (T = 0.2, τ = 0.95, contrast τ = 0.8, λ_c = 1, α = 0.9, proj 64, da_len 32).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput
from fastssl.algorithms.losses import acc, dist_align, one_hot, pseudo_label_metrics, regularizers, soft_ce
from fastssl.algorithms.memory import ProjectionHead, ring_write
from fastssl.batch import SSLBatch, ViewSpec
from fastssl.collectives import all_gather_cat, all_reduce_sum, world_size


@dataclasses.dataclass
class CoMatchConfig(AlgorithmConfig):
    tau: float = 0.95
    """confidence threshold τ on the smoothed pseudo-label q (rows below it get no unlabeled loss)"""
    T: float = 0.2
    """temperature of the embedding similarities (memory smoothing and the contrastive loss)"""
    contrast_tau: float = 0.8
    """pseudo-label graph entries q_i·q_j below this are cut (no positive pair)"""
    lambda_c: float = 1.0
    """weight of the graph-contrastive loss"""
    smoothing_alpha: float = 0.9
    """α: weight of the sample's own aligned prediction in the memory-smoothed pseudo-label"""
    queue_size: int = 2560
    """rows of the memory queue (USB: queue_batch 5 × (1 + μ) × B = 5·8·64)"""
    proj_size: int = 64
    """embedding width of the projection head"""
    num_proj: int = 3
    """projection heads averaged before normalising (EPASS, USB's classic-CV setting); 1 = the paper's single head"""
    da_len: int = 32
    """distribution alignment: p̃(y) is the mean weak-view prediction over the last da_len steps"""

    def __post_init__(self):
        if not self.T > 0 or self.queue_size < 1 or self.proj_size < 1 or self.num_proj < 1 or self.da_len < 1:
            raise ValueError(f"--algo.T={self.T} must be > 0 and --algo.queue_size={self.queue_size}, "
                             f"--algo.proj_size={self.proj_size}, --algo.num_proj={self.num_proj}, "
                             f"--algo.da_len={self.da_len} ≥ 1 (CoMatch: 0.2, 2560, 64, 3, 32)")
        if not 0 <= self.smoothing_alpha <= 1 or not self.contrast_tau <= 1:
            raise ValueError(f"--algo.smoothing_alpha={self.smoothing_alpha} must be in [0, 1] and "
                             f"--algo.contrast_tau={self.contrast_tau} ≤ 1, so that each sample stays its own "
                             "positive (CoMatch: 0.9, 0.8)")


class CoMatchState(NamedTuple):
    feats: Tensor
    """(μB + B, proj_size) weak-view then labeled embeddings, detached"""
    probs: Tensor
    """(μB + B, C) aligned weak-view probabilities (before smoothing), then labeled one-hots"""
    probs_mean: Tensor
    """(C,) this rank's mean weak-view prediction (unaligned), for the alignment history"""


class CoMatch(Algorithm):
    name = "comatch"
    Config = CoMatchConfig
    views = ViewSpec(num_weak=1, num_strong=2)
    recipe = {"algo.tau": 0.95, "algo.T": 0.2, "algo.contrast_tau": 0.8, "algo.lambda_c": 1.0,
              "algo.smoothing_alpha": 0.9, "algo.queue_size": 2560, "algo.proj_size": 64, "algo.da_len": 32}

    def init_state(self) -> None:
        cfg: CoMatchConfig = self.cfg
        C = self.num_classes
        if self.num_features < 1:
            raise ValueError("CoMatch's projection head reads the model's features: construct it with "
                             "num_features=model.num_features (the trainer does)")
        self.proj = ProjectionHead(self.num_features, cfg.proj_size, cfg.num_proj)
        """projection head on the pooled features (learnable: optimised with the model)"""
        self.register_buffer("queue_feats", torch.zeros(cfg.queue_size, cfg.proj_size))
        """(S, proj_size) memory of past weak-view and labeled embeddings"""
        self.register_buffer("queue_probs", torch.zeros(cfg.queue_size, C))
        """(S, C) their aligned probabilities (unlabeled) or one-hot labels (labeled)"""
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        """next row of the queue to write"""
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        """rows written so far, capped at S: smoothing starts when it reaches S"""
        self.register_buffer("p_model_hist", torch.full((cfg.da_len, C), 1.0 / C))
        """(da_len, C) ring of the last da_len steps' mean weak-view predictions (averaged over ranks)"""
        self.register_buffer("p_target", torch.full((C,), 1.0 / C))
        """(C,) labeled class distribution p(y) (uniform: the labeled splits are class-balanced)"""

    def pseudo_labels(self, probs_w: Tensor, z_w: Tensor) -> tuple[Tensor, Tensor]:
        """(aligned probabilities, memory-smoothed pseudo-labels q) of the weak view; no gradient."""
        cfg: CoMatchConfig = self.cfg
        aligned = dist_align(probs_w, self.p_target, self.p_model_hist.mean(0))
        a = (z_w @ self.queue_feats.to(z_w.dtype).T / cfg.T).softmax(-1)  # (μB, S) similarity to the memory
        smoothed = cfg.smoothing_alpha * aligned + (1 - cfg.smoothing_alpha) * (a @ self.queue_probs.to(a.dtype))
        full = self.queue_filled >= cfg.queue_size
        return aligned, torch.where(full, smoothed, aligned)

    def forward(self, student: nn.Module, teacher: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        cfg: CoMatchConfig = self.cfg
        B, n = batch.x_lb.shape[0], batch.x_ulb_w.shape[0]
        feats = student.forward_features(torch.cat([batch.x_lb, batch.x_ulb_w, batch.x_ulb_s, batch.x_ulb_s_extra[0]]))
        logits_lb, logits_w, logits_s0 = student.head(feats[:B + 2 * n]).split([B, n, n])
        z = self.proj(feats)
        z_lb, z_w, z_s0, z_s1 = z.split([B, n, n, n])
        sup_loss = F.cross_entropy(acc(logits_lb), batch.y_lb)
        with torch.no_grad():
            probs_w = acc(logits_w.detach()).softmax(-1)
            aligned, q = self.pseudo_labels(probs_w, z_w.detach())
            maxprob, pseudo = q.max(-1)
            mask = (maxprob >= cfg.tau).to(q.dtype)
            graph = q @ q.T
            graph = torch.where(torch.eye(n, dtype=torch.bool, device=q.device), 1.0, graph)
            graph = graph * (graph >= cfg.contrast_tau)
            graph = graph / graph.sum(-1, keepdim=True)  # the diagonal (1 ≥ contrast_tau) keeps every row > 0
        unsup_loss = (soft_ce(logits_s0, q) * mask).mean()
        contrast_loss = -(graph * (z_s0 @ z_s1.T / cfg.T).log_softmax(-1)).sum(-1).mean()
        reg_loss, reg_metrics = regularizers(logits_w, cfg)
        loss = sup_loss + cfg.lambda_u * unsup_loss + cfg.lambda_c * contrast_loss + reg_loss
        metrics = {"sup_loss": sup_loss.detach(), "unsup_loss": unsup_loss.detach(),
                   "contrast_loss": contrast_loss.detach(), **reg_metrics,
                   **pseudo_label_metrics(mask, pseudo, batch.y_ulb)}
        y_lb = one_hot(batch.y_lb, self.num_classes, aligned.dtype)
        state = CoMatchState(torch.cat([z_w, z_lb]).detach(), torch.cat([aligned, y_lb]), probs_w.mean(0))
        return StepOutput(loss, metrics, state)

    @torch.no_grad()
    def update_state(self, batch: SSLBatch, state: CoMatchState) -> None:
        """Writes every rank's rows (rank order) into the queue at the pointer, wrapping; pushes the
        rank-averaged mean prediction into the alignment history."""
        ring_write([self.queue_feats, self.queue_probs], [all_gather_cat(state.feats), all_gather_cat(state.probs)],
                   self.queue_ptr, self.queue_filled)
        mean = all_reduce_sum(state.probs_mean.to(self.p_model_hist.dtype)) / world_size()
        self.p_model_hist.copy_(torch.cat([self.p_model_hist[1:], mean[None]]))
