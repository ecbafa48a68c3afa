"""Self-Tuning: Wang, Wu, Long & Wang, "Self-Tuning for Data-Efficient Deep Learning", ICML 2021
(arXiv:2102.12903).

Labeled cross-entropy plus a pseudo-group contrastive (PGC) loss on labeled and unlabeled data. A query
projection h_q = normalize(projector(f)) of one view (student features f, with gradient) is contrasted
with a key projection h_k of another view from a momentum encoder, and with a per-class queue of K past
keys per class. A sample's label (the true label, or for unlabeled data the student's argmax pseudo-label,
no threshold) picks its group: its own key and the K queued keys of its class are positives, the K·(C−1)
keys of the other classes negatives. With s = [h_q·h_k, h_q·queue] / T (1 + C·K logits) and the target
uniform over the K + 1 positives, the loss is KL(target ‖ softmax(s)) per sample (tllib's
`KLDivLoss(batchmean)` on the log-softmax, the constant −log(K+1) included):

    loss = CE(h(f_l), y) + mean_l PGC + λ_u · mean_u PGC

Momentum encoder: the key backbone is the EMA teacher handed to `forward` (decay `--train.ema_decay`; the
recipes set 0.999, the paper's m), and the key projector is a momentum copy of the algorithm's projector,
kept in buffers (`proj_k_weight`, `proj_k_bias`) and moved by `key_momentum` (0.999, keep it equal to the
teacher's decay) in `update_state`, after the optimizer step — the same order as tllib's update of the key
encoder from the current weights before the keys of the next step are computed.

The queue (`queue` (C, K, D), unit rows, initialised from a fixed seed so every rank starts equal;
`queue_ptr` (C,)) is updated in `update_state` from the keys and labels gathered from every rank
(`all_gather_cat`, rank order, labeled keys before unlabeled ones within a rank): each key goes to its class's
ring at the class pointer, the pointer advances by one per key (when a class has more than K keys in a
step, its last K are kept — the result of tllib's one-at-a-time writes), with static shapes and no host sync.

Views (`ViewSpec(num_weak=1, num_strong=1, lb_strong=True)`): queries are the strong views (x_lb_s,
x_ulb_s), keys the weak ones (x_lb, x_ulb_w).

Defaults: tllib examples/semi_supervised_learning/image_classification/self_tuning.py (T = 0.07, K = 32,
projection 1024, m = 0.999). Deliberate differences from tllib:
- tllib's two views are both strongly augmented (two RandAugment draws); the pipeline's second labeled view
  is the weak one, so the keys see the weak views;
- both PGC terms read the queue as it was before the step, and the key encoder moves once per step (tllib
  enqueues the labeled keys, and moves its key encoder again, before computing the unlabeled term);
- the key backbone runs with BatchNorm on batch statistics, as tllib's key encoder (training mode), its
  running statistics untouched (`features_batch_stats`); the projector reads the backbone's
  pooled features directly (tllib puts a 1024-wide bottleneck, Linear → BN → ReLU → Dropout, before the
  classifier and the projector, part of its classifier for fine-tuning pretrained backbones);
- one query forward over [labeled strong, unlabeled strong] (BatchNorm over both); tllib runs the student
  once on the labeled and twice on the unlabeled queries.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput
from fastssl.algorithms.losses import acc, one_hot, regularizers
from fastssl.batch import SSLBatch, ViewSpec
from fastssl.collectives import all_gather_cat


@dataclasses.dataclass
class SelfTuningConfig(AlgorithmConfig):
    lambda_u: float = 1.0
    """weight of the pseudo-group contrastive loss on the unlabeled data"""
    T: float = 0.07
    """temperature of the contrastive logits"""
    queue_size: int = 32
    """K: keys kept per class in the queue"""
    proj_dim: int = 1024
    """width D of the projector (and of the queued keys)"""
    key_momentum: float = 0.999
    """momentum of the key projector (a momentum copy of the projector); keep it equal to --train.ema_decay,
    since the key backbone is the EMA teacher"""

    def __post_init__(self):
        if not self.T > 0 or self.queue_size < 1 or self.proj_dim < 1 or not 0 <= self.key_momentum < 1:
            raise ValueError(f"--algo.T={self.T} must be > 0, --algo.queue_size={self.queue_size} and --algo.proj_dim="
                             f"{self.proj_dim} ≥ 1, --algo.key_momentum={self.key_momentum} in [0, 1) "
                             "(Self-Tuning: 0.07, 32, 1024, 0.999)")


def features_batch_stats(model: nn.Module, x: Tensor) -> Tensor:
    """`model.forward_features(x)` in training mode (BatchNorm on batch statistics), the model's buffers
    (running statistics) restored afterwards: `forward_batch_stats` for the features, which
    `torch.func.functional_call` cannot reach (it calls `forward` only). Run under `no_grad`."""
    saved = [b.clone() for b in model.buffers()]
    was_training = model.training
    model.train()
    try:
        return model.forward_features(x)
    finally:
        model.train(was_training)
        for b, s in zip(model.buffers(), saved):
            b.copy_(s)


class SelfTuningState(NamedTuple):
    keys: Tensor
    """(B + μB, D) unit key projections of this rank's batch, labeled rows first, detached"""
    labels: Tensor
    """(B + μB,) int64 their groups: true labels, then the unlabeled pseudo-labels"""


class SelfTuning(Algorithm):
    name = "selftuning"
    Config = SelfTuningConfig
    views = ViewSpec(num_weak=1, num_strong=1, lb_strong=True)
    recipe = {"algo.T": 0.07, "algo.queue_size": 32, "algo.proj_dim": 1024, "algo.key_momentum": 0.999,
              "train.ema_decay": 0.999}

    def init_state(self) -> None:
        cfg: SelfTuningConfig = self.cfg
        if self.num_features < 1:
            raise ValueError("Self-Tuning's projector reads the model's features: construct it with "
                             "num_features=model.num_features (the trainer does)")
        C, K, D = self.num_classes, cfg.queue_size, cfg.proj_dim
        self.projector = nn.Linear(self.num_features, D)
        """query projector on the backbone features (learnable)"""
        self.register_buffer("proj_k_weight", self.projector.weight.detach().clone())
        """momentum copy of the projector's weight (the key projector)"""
        self.register_buffer("proj_k_bias", self.projector.bias.detach().clone())
        """momentum copy of the projector's bias"""
        g = torch.Generator().manual_seed(0)  # the same initial queue on every rank, whatever its RNG state
        self.register_buffer("queue", F.normalize(torch.randn(C, K, D, generator=g), dim=-1))
        """(C, K, D) the last K unit keys of each class (random unit vectors before the first steps)"""
        self.register_buffer("queue_ptr", torch.zeros(C, dtype=torch.long))
        """(C,) next slot of each class's ring"""

    def pgc_loss(self, h_q: Tensor, h_k: Tensor, labels: Tensor) -> Tensor:
        """(N,) KL(uniform over the K + 1 positives ‖ softmax([h_q·h_k, h_q·queue] / T)) per sample."""
        cfg: SelfTuningConfig = self.cfg
        C, K, D = self.queue.shape
        pos = (h_q * h_k).sum(-1) / cfg.T  # (N,)
        sims = h_q @ self.queue.reshape(C * K, D).to(h_q.dtype).T / cfg.T  # (N, C·K), class-major
        log_z = torch.logsumexp(torch.cat([pos[:, None], sims], 1), 1)
        group = one_hot(labels, C, h_q.dtype)[:, :, None].expand(-1, C, K).reshape(-1, C * K)
        log_p_pos = (pos - log_z) + ((sims - log_z[:, None]) * group).sum(1)  # Σ over the K + 1 positives
        return -math.log(K + 1) - log_p_pos / (K + 1)

    def forward(self, student: nn.Module, teacher: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        cfg: SelfTuningConfig = self.cfg
        if batch.x_lb_s is None:
            raise ValueError("Self-Tuning needs a strong view of the labeled images (batch.x_lb_s): build the "
                             "pipeline from the algorithm's ViewSpec (lb_strong=True)")
        B = batch.x_lb.shape[0]
        f = student.forward_features(torch.cat([batch.x_lb_s, batch.x_ulb_s]))
        logits = acc(student.head(f))
        logits_lb, logits_ulb = logits[:B], logits[B:]
        h_q = F.normalize(acc(self.projector(f)), dim=-1)
        with torch.no_grad():
            f_k = features_batch_stats(teacher, torch.cat([batch.x_lb, batch.x_ulb_w]))
            h_k = F.normalize(acc(F.linear(f_k, self.proj_k_weight.to(f_k.dtype), self.proj_k_bias.to(f_k.dtype))), dim=-1)
        labels = torch.cat([batch.y_lb, logits_ulb.detach().argmax(-1)])
        pgc = self.pgc_loss(h_q, h_k, labels)
        pgc_lb, pgc_ulb = pgc[:B].mean(), pgc[B:].mean()
        sup_loss = F.cross_entropy(logits_lb, batch.y_lb)
        reg_loss, reg_metrics = regularizers(logits_ulb, cfg)
        loss = sup_loss + pgc_lb + cfg.lambda_u * pgc_ulb + reg_loss
        metrics = {"sup_loss": sup_loss.detach(), "pgc_lb_loss": pgc_lb.detach(), "unsup_loss": pgc_ulb.detach(),
                   "pl_acc": (labels[B:] == batch.y_ulb).float().mean(), **reg_metrics}
        return StepOutput(loss, metrics, SelfTuningState(h_k, labels))

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor) -> None:
        """Writes each key into its class's ring at the class pointer, in order (static shapes)."""
        C, K, D = self.queue.shape
        oh = one_hot(labels, C, torch.int64)  # (M, C)
        rank = ((oh.cumsum(0) - oh) * oh).sum(1)  # position of each key among its class's keys of this step
        count = oh.sum(0)  # (C,)
        keep = rank >= count[labels] - K  # a class with more than K keys keeps its last K
        slot = torch.where(keep, labels * K + (self.queue_ptr[labels] + rank) % K, C * K)  # dropped: scratch row
        flat = torch.cat([self.queue.reshape(C * K, D), self.queue.new_zeros(1, D)])
        flat = flat.index_put((slot,), keys.to(flat.dtype))
        self.queue.copy_(flat[:-1].reshape(C, K, D))
        self.queue_ptr.copy_((self.queue_ptr + count) % K)

    @torch.no_grad()
    def update_state(self, batch: SSLBatch, state: SelfTuningState) -> None:
        self.enqueue(all_gather_cat(state.keys), all_gather_cat(state.labels))
        m = self.cfg.key_momentum
        self.proj_k_weight.lerp_(self.projector.weight.detach().to(self.proj_k_weight.dtype), 1 - m)
        self.proj_k_bias.lerp_(self.projector.bias.detach().to(self.proj_k_bias.dtype), 1 - m)
