"""The fixed-shape batch every pipeline yields and every algorithm consumes."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class SSLBatch(NamedTuple):
    """One training step's data on one rank. Every shape is fixed for the whole run.

    Images are float, normalized, NCHW in shape; on GPU they are channels_last in memory (the pipeline
    emits NHWC and hands it over as a permuted view, no copy). A NamedTuple so that it is a pytree:
    `torch.compile` and DDP see through it.
    """

    x_lb: Tensor
    """(B, C, H, W) labeled images, weak view"""
    y_lb: Tensor
    """(B,) int64 labels"""
    x_ulb_w: Tensor
    """(μB, C, H, W) unlabeled images, weak view"""
    x_ulb_s: Tensor
    """(μB, C, H, W) unlabeled images, strong view (RandAugment + Cutout)"""
    idx_ulb: Tensor
    """(μB,) int64 index of each unlabeled sample in the unlabeled set (for per-sample state)"""
    y_ulb: Tensor
    """(μB,) int64 true labels of the unlabeled samples: for monitoring pseudo-label accuracy only,
    never read by a loss"""
    x_ulb_w_extra: tuple[Tensor, ...] = ()
    """further weak views of the same unlabeled samples, each (μB, C, H, W) (MixMatch's K views)"""
    x_ulb_s_extra: tuple[Tensor, ...] = ()
    """further strong views, each (μB, C, H, W) (ReMixMatch's augmentation anchoring)"""
    x_lb_s: Tensor | None = None
    """(B, C, H, W) strong view of the labeled images, when the algorithm asks for it (`ViewSpec.lb_strong`:
    DeFixMatch) or CTAugment probes them (`--aug.policy=ctaugment`); None otherwise"""
    x_ulb_m: Tensor | None = None
    """(μB, C, H, W) medium view of the unlabeled images (weak + `aug.medium_num_ops` RandAugment ops +
    Cutout), when the algorithm asks for it (`ViewSpec.medium`: SequenceMatch); None otherwise"""

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "SSLBatch":
        """Moves every tensor (a no-op for tensors already there)."""
        mv = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return SSLBatch(
            *(mv(t) for t in self[:6]),
            x_ulb_w_extra=tuple(mv(t) for t in self.x_ulb_w_extra),
            x_ulb_s_extra=tuple(mv(t) for t in self.x_ulb_s_extra),
            x_lb_s=None if self.x_lb_s is None else mv(self.x_lb_s),
            x_ulb_m=None if self.x_ulb_m is None else mv(self.x_ulb_m),
        )


class ViewSpec(NamedTuple):
    """The views an algorithm needs from the unlabeled pipeline."""

    num_weak: int = 1
    """weak views per unlabeled sample (MixMatch: K=2)"""
    num_strong: int = 1
    """strong views per unlabeled sample (0 for Π-model/MixMatch-style; ReMixMatch: 2)"""
    lb_strong: bool = False
    """the labeled pipeline also emits a strong view of each labeled image, `x_lb_s` (DeFixMatch)"""
    medium: bool = False
    """the unlabeled pipeline also emits a medium view `x_ulb_m` (SequenceMatch; USB's RandAugment(1, 5))"""
