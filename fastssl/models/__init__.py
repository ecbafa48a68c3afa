"""Backbones: WideResNets of the FixMatch/USB setups and a small CPU CNN, behind one registry.

Every model: `forward(x) -> (N, num_classes)` logits, `forward_features(x) -> (N, num_features)` pooled
features, `head` (the final Linear) and `num_features`, so algorithms can attach extra heads on features.
Importing the package (or its registry) imports no torch; the classes load on first use.
"""
from __future__ import annotations

import importlib

from fastssl.models.registry import MODELS, build_model

_CLASSES = {"SmallCNN": "cnn", "WideResNet": "wrn"}


def __getattr__(name: str):
    if name in _CLASSES:
        return getattr(importlib.import_module(f"{__name__}.{_CLASSES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MODELS", "SmallCNN", "WideResNet", "build_model"]
