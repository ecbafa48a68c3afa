"""SimMatch: Zheng, You, Wang, Qian, Zhang & Xu, "SimMatch: Semi-supervised Learning with Similarity
Matching", CVPR 2022 (arXiv:2203.06915).

Semantic (class) similarity and instance similarity to a labeled memory bank, each used to calibrate the
other:
1. Embeddings: a projection head (Linear–ReLU–Linear to `proj_size`, L2-normalised; `num_proj` heads
   averaged, EPASS as USB's classic-CV configs) on the backbone's pooled features.
2. Weak view (no gradient): class probabilities p = softmax, distribution-aligned (p(y) uniform, p̃(y) the
   mean of the last `da_len` steps' mean predictions); instance similarities to the K labeled embeddings
   of the bank, s = softmax_k(z_w · b_k / T).
3. *Unfolding*: the instance target is s scaled by p at each bank entry's label, renormalised:
   t_k ∝ s_k · p[label_k]. *Aggregation*: the class pseudo-label is q = α p + (1 − α) Σ_k s_k onehot(label_k).
4. Losses: soft cross-entropy of the strong view's class logits against q on the rows with max q ≥ τ
   (λ_u); cross-entropy between t and the strong view's instance similarities softmax_k(z_s · b_k / T)
   (λ_in). During the first `warmup` fraction of training (USB: the first epoch) q = p and the instance
   loss is 0; q = p also until the bank has been written through once (its initial random entries are
   no labels to aggregate; in a real run it is full after one step, long before the warm-up ends).

    loss = CE(labeled) + λ_u · L_u + λ_in · L_in (+ add-ons on the weak logits)

One backbone forward over [x_lb, weak, strong]; the labeled embeddings of that forward (detached) are what
the bank stores, with their labels.

State (registered buffers, checkpointed): the bank `bank_feats` (K, proj_size), `bank_labels` (K,), its
write pointer and fill count, and the distribution-alignment history. The bank starts as USB's: random unit vectors
(drawn from a fixed seed, so every rank starts alike) with label 0. `update_state` writes this step's
labeled rows gathered from every rank (`all_gather_cat`, rank order) at the pointer; the history takes the
all-reduced mean. Every rank holds the same bank; a checkpoint restores it exactly.

Differences from USB's simmatch (deliberate):
- The bank is a FIFO ring of the most recent K labeled embeddings and their labels; USB's has one slot per
  labeled sample, addressed by its index in the labeled set (`idx_lb`), which fastssl's batches do not
  carry (the pipeline is not edited for one algorithm). Set `bank_size` to the number of labeled samples
  (USB's K): the ring then holds as many entries as USB's, about as fresh (USB rewrites a slot once per
  pass over the labeled set, the ring every K labeled rows), but a sample may appear in it more than once
  and another not at all.
- No per-slot momentum: USB's CIFAR setting averages a slot's old and new embeddings (0.7 / 0.3, then
  normalises); a ring entry is one embedding, written once.
- Aggregation waits for the bank to be written through once (see 4.); USB's bank is complete after its
  first epoch, when it is first used.
- The warm-up is a fraction of training (1/1024, USB's first of 1024 epochs at its default length); USB
  counts epochs of its labeled loader.
- Distribution alignment (USB's formula, ε = 1e-6) uses the history up to the previous step (uniform at
  the start); USB pushes the current batch first into a zero-initialised queue.
- log softmax instead of USB's log(softmax) in the instance loss (same value, finite for underflows).
- The bank stores the student's labeled embeddings, USB's CIFAR / SVHN / STL setting; its ImageNet setting
  (embeddings from the EMA teacher, no per-slot momentum) is not implemented.

Defaults: USB classic-CV CIFAR-10 (T = 0.1, τ = 0.95, α = 0.9, λ_in = 1, proj 128, da_len 32, K = 40:
the 40-label split); the recipes set K to their label count (cifar10_simmatch_250: 250), USB's K; set
`--algo.bank_size` to the split's labeled count outside the recipes.
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
class SimMatchConfig(AlgorithmConfig):
    tau: float = 0.95
    """confidence threshold τ on the aggregated pseudo-label q"""
    T: float = 0.1
    """temperature of the instance similarities to the bank"""
    lambda_in: float = 1.0
    """weight of the instance-similarity loss"""
    smoothing_alpha: float = 0.9
    """α: weight of the class prediction in the aggregated pseudo-label (1 = no aggregation)"""
    bank_size: int = 40
    """K: labeled embeddings in the memory bank; set it to the number of labeled samples (USB's K)"""
    proj_size: int = 128
    """embedding width of the projection head"""
    num_proj: int = 3
    """projection heads averaged before normalising (EPASS, USB's classic-CV setting); 1 = the paper's single head"""
    da_len: int = 32
    """distribution alignment: p̃(y) is the mean weak-view prediction over the last da_len steps"""
    warmup: float = 1 / 1024
    """fraction of train.steps without the bank (USB: the first of 1024 epochs)"""

    def __post_init__(self):
        if not self.T > 0 or self.bank_size < 1 or self.proj_size < 1 or self.num_proj < 1 or self.da_len < 1:
            raise ValueError(f"--algo.T={self.T} must be > 0 and --algo.bank_size={self.bank_size}, "
                             f"--algo.proj_size={self.proj_size}, --algo.num_proj={self.num_proj}, "
                             f"--algo.da_len={self.da_len} ≥ 1 (SimMatch: 0.1, 40, 128, 3, 32)")
        if not 0 <= self.smoothing_alpha <= 1 or not 0 <= self.warmup <= 1:
            raise ValueError(f"--algo.smoothing_alpha={self.smoothing_alpha} and --algo.warmup={self.warmup}: "
                             "use [0, 1] (SimMatch: 0.9, 1/1024)")


class SimMatchState(NamedTuple):
    feats_lb: Tensor
    """(B, proj_size) labeled embeddings, detached"""
    y_lb: Tensor
    """(B,) their labels"""
    probs_mean: Tensor
    """(C,) this rank's mean weak-view prediction (unaligned), for the alignment history"""


class SimMatch(Algorithm):
    name = "simmatch"
    Config = SimMatchConfig
    views = ViewSpec(num_weak=1, num_strong=1)
    recipe = {"algo.tau": 0.95, "algo.T": 0.1, "algo.lambda_in": 1.0, "algo.smoothing_alpha": 0.9,
              "algo.proj_size": 128, "algo.da_len": 32, "algo.bank_size": lambda num_labels: num_labels}

    def init_state(self) -> None:
        cfg: SimMatchConfig = self.cfg
        C = self.num_classes
        if self.num_features < 1:
            raise ValueError("SimMatch's projection head reads the model's features: construct it with "
                             "num_features=model.num_features (the trainer does)")
        self.proj = ProjectionHead(self.num_features, cfg.proj_size, cfg.num_proj)
        """projection head on the pooled features (learnable: optimised with the model)"""
        init = torch.randn(cfg.bank_size, cfg.proj_size, generator=torch.Generator().manual_seed(0))
        self.register_buffer("bank_feats", F.normalize(init, dim=-1))
        """(K, proj_size) the most recent K labeled embeddings (random unit vectors until written)"""
        self.register_buffer("bank_labels", torch.zeros(cfg.bank_size, dtype=torch.long))
        """(K,) their labels"""
        self.register_buffer("bank_ptr", torch.zeros((), dtype=torch.long))
        """next row of the bank to write"""
        self.register_buffer("bank_filled", torch.zeros((), dtype=torch.long))
        """rows written so far, capped at K: aggregation starts when it reaches K"""
        self.register_buffer("p_model_hist", torch.full((cfg.da_len, C), 1.0 / C))
        """(da_len, C) ring of the last da_len steps' mean weak-view predictions (averaged over ranks)"""
        self.register_buffer("p_target", torch.full((C,), 1.0 / C))
        """(C,) labeled class distribution p(y) (uniform: the labeled splits are class-balanced)"""

    def forward(self, student: nn.Module, teacher: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        cfg: SimMatchConfig = self.cfg
        B, n = batch.x_lb.shape[0], batch.x_ulb_w.shape[0]
        feats = student.forward_features(torch.cat([batch.x_lb, batch.x_ulb_w, batch.x_ulb_s]))
        logits_lb, logits_w, logits_s = student.head(feats).split([B, n, n])
        z_lb, z_w, z_s = self.proj(feats).split([B, n, n])
        sup_loss = F.cross_entropy(acc(logits_lb), batch.y_lb)
        bank = self.bank_feats.to(z_s.dtype)
        active = step >= cfg.warmup * self.total_steps
        aggregate = active & (self.bank_filled >= cfg.bank_size)
        with torch.no_grad():
            probs_raw = acc(logits_w.detach()).softmax(-1)
            probs = dist_align(probs_raw, self.p_target, self.p_model_hist.mean(0))
            sim = (z_w.detach() @ bank.T / cfg.T).softmax(-1)  # (μB, K) instance similarity
            unfolded = sim * probs.index_select(1, self.bank_labels)  # scaled by p at each entry's label
            # clamped: a row whose p underflows at every entry's label is 0, not 0/0 (NaN would pass the
            # inactive gate's multiplication, and its gradient)
            unfolded = unfolded / unfolded.sum(-1, keepdim=True).clamp_min(torch.finfo(unfolded.dtype).tiny)
            labels = one_hot(self.bank_labels, self.num_classes, sim.dtype)  # (K, C)
            aggregated = cfg.smoothing_alpha * probs + (1 - cfg.smoothing_alpha) * (sim @ labels)
            q = torch.where(aggregate, aggregated, probs)
            maxprob, pseudo = q.max(-1)
            mask = (maxprob >= cfg.tau).to(q.dtype)
        unsup_loss = (soft_ce(logits_s, q) * mask).mean()
        in_loss = -(unfolded * (z_s @ bank.T / cfg.T).log_softmax(-1)).sum(-1).mean() * active
        reg_loss, reg_metrics = regularizers(logits_w, cfg)
        loss = sup_loss + cfg.lambda_u * unsup_loss + cfg.lambda_in * in_loss + reg_loss
        metrics = {"sup_loss": sup_loss.detach(), "unsup_loss": unsup_loss.detach(), "in_loss": in_loss.detach(),
                   **reg_metrics, **pseudo_label_metrics(mask, pseudo, batch.y_ulb)}
        return StepOutput(loss, metrics, SimMatchState(z_lb.detach(), batch.y_lb, probs_raw.mean(0)))

    @torch.no_grad()
    def update_state(self, batch: SSLBatch, state: SimMatchState) -> None:
        """Writes every rank's labeled rows (rank order) into the bank at the pointer, wrapping; pushes the
        rank-averaged mean prediction into the alignment history."""
        ring_write([self.bank_feats, self.bank_labels], [all_gather_cat(state.feats_lb), all_gather_cat(state.y_lb)],
                   self.bank_ptr, self.bank_filled)
        mean = all_reduce_sum(state.probs_mean.to(self.p_model_hist.dtype)) / world_size()
        self.p_model_hist.copy_(torch.cat([self.p_model_hist[1:], mean[None]]))
