"""FlexMatch: Zhang, Wang, Hou, Wu, Wang, Okumura & Shinozaki, "FlexMatch: Boosting Semi-Supervised
Learning with Curriculum Pseudo Labeling", NeurIPS 2021 (arXiv:2110.08263).

FixMatch with class-wise thresholds (curriculum pseudo-labelling). Each unlabeled sample remembers the
class it was last confidently predicted as (`selected_label`, −1 = never). With σ(c) the number of
samples whose remembered class is c and N the size of the unlabeled set, the learning effect is

    β(c) = σ(c) / max_c' σ(c')                               (thresh_warmup = false)
    β(c) = σ(c) / max(max_c' σ(c'), N − Σ_c' σ(c'))           (thresh_warmup = true: the unused count
                                                                competes, so β stays small early on)

and the threshold of class c is τ·M(β(c)) with the mapping M: convex x/(2−x) (the paper's default),
linear x, or concave ln(x+1)/ln 2. A weak-view prediction of class c is a pseudo-label when its
confidence reaches that threshold; the mask is read from the state *before* this step's update, and
the remembered classes are updated only from predictions above the fixed τ (as the reference code).

Differences from the reference trainers (USB, TorchSSL), on purpose:
- The counts are a static-shape scatter on the device, not `Counter(selected_label.tolist())` each step.
- The update is applied to the (idx, pseudo, confidence) gathered from every rank, so the state is
  identical on every rank (the references update each rank from its own batch and drift apart), and
  `selected_label`/`classwise_acc` are buffers, so they are checkpointed (TorchSSL does not).
- β follows the paper's formulas at every step. The references skip the update while one entry (the
  unused count early on) equals N, keeping the previous β; the only observable difference is the corner
  case where every sample is remembered as one class (theirs keeps a stale β, ours gives that class 1).
- A sample seen twice in one global batch with two different confident classes keeps the larger class
  index (an order-independent, hence rank-identical, rule); the references keep whichever write lands last.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from fastssl.algorithms.base import AlgorithmConfig, Predictions, PseudoLabelAlgorithm, PseudoLabels, PseudoLabelState
from fastssl.batch import SSLBatch
from fastssl.collectives import all_gather_cat

MAPPINGS = ("convex", "linear", "concave")


@dataclasses.dataclass
class FlexMatchConfig(AlgorithmConfig):
    tau: float = 0.95
    """upper threshold τ: class thresholds are τ·M(β(c)); also the fixed cut for updating the class counts"""
    T: float = 0.5
    """temperature of the soft pseudo-label softmax(weak/T) (used only with hard_label=false)"""
    hard_label: bool = True
    """one-hot pseudo-labels (argmax) rather than soft targets"""
    thresh_warmup: bool = True
    """threshold warm-up: the count of never-selected samples takes part in the normaliser of β"""
    mapping: str = "convex"
    """mapping M of the learning effect β to a threshold scale: convex x/(2−x), linear x, concave ln(x+1)/ln2"""

    def __post_init__(self):
        if self.mapping not in MAPPINGS:
            raise ValueError(f"--algo.mapping={self.mapping!r}: use one of {', '.join(MAPPINGS)}")


def learning_effect(counts: Tensor, num_unused: Tensor, warmup: bool) -> Tensor:
    """β(c) from the per-class counts σ (C,) and the never-selected count (0-d); static shapes, no sync."""
    denom = counts.max()
    if warmup:
        denom = torch.maximum(denom, num_unused)
    return counts / denom.clamp_min(1)


def map_effect(beta: Tensor, mapping: str) -> Tensor:
    """M(β): the scale of τ for each class."""
    if mapping == "convex":
        return beta / (2 - beta)
    if mapping == "linear":
        return beta
    return torch.log1p(beta) / math.log(2)


class FlexMatch(PseudoLabelAlgorithm):
    name = "flexmatch"
    Config = FlexMatchConfig
    recipe = {"algo.tau": 0.95, "algo.thresh_warmup": True, "algo.mapping": "convex"}

    def init_state(self) -> None:
        self.register_buffer("selected_label", torch.full((self.num_ulb,), -1, dtype=torch.long))
        """(num_ulb,) class each unlabeled sample was last predicted as with confidence ≥ τ; −1 = never"""
        self.register_buffer("classwise_acc", torch.zeros(self.num_classes))
        """(C,) learning effect β(c) from `selected_label` (kept in step with it by `update_state`)"""

    def thresholds(self) -> Tensor:
        """(C,) class-wise thresholds τ·M(β(c)) for the current state."""
        return self.cfg.tau * map_effect(self.classwise_acc, self.cfg.mapping)

    def pseudo_labels(self, p: Predictions, step: Tensor) -> PseudoLabels:
        cfg: FlexMatchConfig = self.cfg
        return PseudoLabels(self.thresholds(), T=cfg.T, soft=not cfg.hard_label,
                            metrics={"beta_mean": self.classwise_acc.mean()})

    @torch.no_grad()
    def update_state(self, batch: SSLBatch, state: PseudoLabelState) -> None:
        idx = all_gather_cat(batch.idx_ulb)  # (world·μB,) identical on every rank from here on
        pseudo = all_gather_cat(state.pseudo)
        select = all_gather_cat(state.maxprob) >= self.cfg.tau
        # Unselected rows write into a dump slot at index num_ulb; amax makes duplicates order-independent.
        target = torch.where(select, idx, torch.full_like(idx, self.num_ulb))
        ext = torch.cat([self.selected_label, self.selected_label.new_full((1,), -1)])
        ext.scatter_reduce_(0, target, pseudo, reduce="amax", include_self=False)
        self.selected_label.copy_(ext[: self.num_ulb])
        counts = torch.zeros(self.num_classes + 1, device=idx.device).index_add_(
            0, self.selected_label + 1, torch.ones_like(self.selected_label, dtype=torch.float32))  # [unused, σ(0..C-1)]
        self.classwise_acc.copy_(learning_effect(counts[1:], counts[0], self.cfg.thresh_warmup))
