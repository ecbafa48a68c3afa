"""What `build_data` (and the synthetic data mode) hand the trainer: this rank's loaders and the facts about the
data the model and the algorithm are built from."""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class DataBundle:
    train: Any
    """TrainLoader: iterates SSLBatch forever"""
    eval: Any
    """EvalLoader: one pass yields (x, y, valid) fixed-shape batches"""
    num_classes: int
    in_channels: int
    image_size: int
    num_lb: int
    num_ulb: int
    split: Any
    split_meta: dict
