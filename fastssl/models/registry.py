"""Model registry: one entry per model, plain data (no torch until a model is built).

Adding a model is one builder function and one entry here. `fastssl info` prints the entries; `build_model`
imports the builder's module when a model is built.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    builder: str
    """"module:function" under fastssl.models; called as builder(num_classes=..., in_channels=...)"""
    summary: str
    """one line for `fastssl info`: what it is and the setups it belongs to"""
    min_image_size: int
    """smallest input side it accepts: padded stride-2 convs map 1x1 to 1x1, the CNN's two 2x2 max-pools need 4"""


MODELS: dict[str, ModelEntry] = {
    "wrn_28_2": ModelEntry("wrn:wrn_28_2", "WRN-28-2, 1.47M parameters: CIFAR-10, SVHN (32x32)", 1),
    "wrn_28_8": ModelEntry("wrn:wrn_28_8", "WRN-28-8, 23.4M parameters: CIFAR-100 (32x32)", 1),
    "wrn_37_2": ModelEntry("wrn:wrn_37_2", "USB's wrn_var_37_2, 5.93M parameters: STL-10 (96x96)", 1),
    "cnn_small": ModelEntry("cnn:cnn_small", "3-conv CNN, 94k parameters: CPU runs (digits 16x16, quick checks)", 4),
}


def build_model(name: str, *, num_classes: int, in_channels: int = 3, image_size: int = 32,
                pretrained: str | None = None):
    """Builds a freshly initialised model: `forward(x)` -> (N, num_classes) logits, `forward_features(x)` ->
    (N, model.num_features), `model.head` the final Linear.

    Every model ends in a global mean, so `image_size` only has to reach the model's minimum; it is checked
    here so that a wrong `--data` setting fails at build time rather than inside the first step.
    `timm/<name>` is any timm model, `pretrained` its local weights (fastssl/models/timm_backbone.py).
    """
    if name.startswith("timm/"):
        from fastssl.models.timm_backbone import build_timm  # timm is an optional extra

        return build_timm(name[5:], num_classes=num_classes, in_channels=in_channels, pretrained=pretrained)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes={num_classes} and in_channels={in_channels} must both be >= 1")
    entry = MODELS[name]
    if image_size < entry.min_image_size:
        raise ValueError(
            f"image_size={image_size} is too small for {name}; use at least {entry.min_image_size} pixels"
        )
    module, fn = entry.builder.split(":")
    return getattr(importlib.import_module(f"fastssl.models.{module}"), fn)(num_classes=num_classes,
                                                                           in_channels=in_channels)
