"""Model registry: name -> builder. Adding a model is one builder function and one line here."""
from __future__ import annotations

from typing import Callable

from torch import nn

from fastssl.models.cnn import cnn_small
from fastssl.models.wrn import wrn_28_2, wrn_28_8, wrn_37_2

MODELS: dict[str, Callable[..., nn.Module]] = {
    "wrn_28_2": wrn_28_2,  # CIFAR-10, SVHN (32x32)
    "wrn_28_8": wrn_28_8,  # CIFAR-100 (32x32)
    "wrn_37_2": wrn_37_2,  # STL-10 (96x96)
    "cnn_small": cnn_small,  # CPU runs: digits 16x16, quick 32x32 checks
}

MIN_IMAGE_SIZE = {"wrn_28_2": 1, "wrn_28_8": 1, "wrn_37_2": 1, "cnn_small": 4}
"""smallest input side a model accepts: padded stride-2 convs map 1x1 to 1x1, the CNN's two 2x2 max-pools need 4"""


def build_model(name: str, *, num_classes: int, in_channels: int = 3, image_size: int = 32,
                pretrained: str | None = None) -> nn.Module:
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
    if image_size < MIN_IMAGE_SIZE[name]:
        raise ValueError(
            f"image_size={image_size} is too small for {name}; use at least {MIN_IMAGE_SIZE[name]} pixels"
        )
    return MODELS[name](num_classes=num_classes, in_channels=in_channels)
