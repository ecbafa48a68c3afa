"""The knobs of the weak and strong views (`fastssl.data.augment` builds them as DALI graphs).

Kept apart from the graphs so that a Config can be made, checked and printed without DALI installed (the
synthetic-data mode never imports it)."""
from __future__ import annotations

from dataclasses import dataclass

FIXMATCH_POOL = (
    "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize",
    "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY",
)

OP_RANGES: dict[str, tuple[float, float]] = {
    "AutoContrast": (0.0, 1.0), "Brightness": (0.05, 0.95), "Color": (0.05, 0.95),
    "Contrast": (0.05, 0.95), "Equalize": (0.0, 1.0), "Identity": (0.0, 1.0), "Posterize": (4.0, 8.0),
    "Rotate": (-30.0, 30.0), "Sharpness": (0.05, 0.95), "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3),
    "Solarize": (0.0, 256.0), "TranslateX": (-0.3, 0.3), "TranslateY": (-0.3, 0.3),
}
"""USB's ``augment_list()``: the magnitude of each op is drawn uniformly from [lo, hi] per sample."""


@dataclass(frozen=True)
class AugmentConfig:
    """Every knob of the weak and strong views."""

    flip_prob: float | None = None
    """probability of a horizontal flip (weak and strong); unset = by dataset: 0.5 for natural images
    (CIFAR, STL-10, image folders), 0 for digits, MNIST and SVHN (a mirrored digit is another digit or none)"""
    crop_pad_frac: float = 0.125
    """reflect padding before the random crop, as a fraction of the side: int(0.125 * 32) = 4 px (USB's
    1 - crop_ratio); 0 disables the crop"""
    num_ops: int = 3
    """RandAugment ops per strong view, drawn with replacement (USB: RandAugment(3, 5) → 3; FixMatch paper: 2)"""
    ops: tuple[str, ...] = FIXMATCH_POOL
    """the RandAugment pool (names from ``OP_RANGES``)"""
    cutout_max_frac: float = 0.5
    """Cutout side is U(0, cutout_max_frac) x width (USB: 0.5); 0 disables Cutout"""
    cutout_fill: tuple[int, int, int] = (125, 123, 114)
    """Cutout fill colour, uint8 RGB (USB's)"""
    geometric_fill: int = 0
    """fill of the area uncovered by Rotate/Shear/Translate (PIL's default, black)"""

    def __post_init__(self):
        unknown = [o for o in self.ops if o not in OP_RANGES]
        if unknown:
            raise ValueError(f"--aug.ops has unknown ops {unknown}; choose from {list(OP_RANGES)}")
        if not self.ops and self.num_ops > 0:
            raise ValueError("--aug.ops is empty; set --aug.num_ops=0 to disable RandAugment")
        if self.flip_prob is not None and not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"--aug.flip_prob={self.flip_prob} must be in [0, 1]")
        if not 0.0 <= self.crop_pad_frac < 1.0:
            raise ValueError(f"--aug.crop_pad_frac={self.crop_pad_frac} must be in [0, 1)")
