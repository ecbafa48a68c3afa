"""Backbones: WideResNets of the FixMatch/USB setups and a small CPU CNN, behind one registry.

Every model: `forward(x) -> (N, num_classes)` logits, `forward_features(x) -> (N, num_features)` pooled
features, `head` (the final Linear) and `num_features`, so algorithms can attach extra heads on features.
"""
from fastssl.models.cnn import SmallCNN
from fastssl.models.registry import MODELS, build_model
from fastssl.models.wrn import WideResNet

__all__ = ["MODELS", "SmallCNN", "WideResNet", "build_model"]
