"""From the config to this rank's loaders: read the dataset, split it, build the DALI pipelines."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastssl.config import Config
from fastssl.batch import ViewSpec


NO_FLIP = ("digits", "mnist", "svhn")
"""datasets where a horizontal flip changes the class (or makes a non-image): flip_prob defaults to 0"""


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


def _select(x, idx: np.ndarray):
    """Rows of an array (copied), or of a file list."""
    return x[idx] if isinstance(x, np.ndarray) else [x[i] for i in idx]


def build_data(cfg: Config, views: ViewSpec, *, rank: int, world: int, device: torch.device,
               build_train: bool = True) -> DataBundle:
    """This rank's loaders; `build_train=False` builds only the eval loader (`fastssl eval`)."""
    if cfg.data.name == "synthetic":  # pre-made device batches: no files, no DALI (fastssl/data/synthetic.py)
        from fastssl.data.synthetic import build_synthetic
        return build_synthetic(cfg, views, rank=rank, world=world, device=device, build_train=build_train)
    from fastssl.data.pipeline import EvalLoader, TrainLoader
    from fastssl.data.sources import load_dataset
    from fastssl.data.splits import make_split

    d = cfg.data
    opts = {"svhn": {"extra": d.svhn_extra}, "imagefolder": {"image_size": d.image_size or 224}}.get(d.name, {})
    ds = load_dataset(d.name, d.root, **opts)
    files = ds.train_x is None
    train_x = ds.train_files if files else ds.train_x
    split, split_meta = make_split(d, ds)
    lb_x, lb_y = _select(train_x, split.lb_idx), np.asarray(ds.train_y)[split.lb_idx]
    ulb_x, ulb_y = _select(train_x, split.ulb_idx), np.asarray(ds.train_y)[split.ulb_idx]
    if ds.extra_unlabeled_x is not None:
        # STL-10's unlabeled images / SVHN extra: no labels; y = -1 (monitoring metrics ignore them).
        ulb_x = np.concatenate([ulb_x, np.asarray(ds.extra_unlabeled_x)])
        ulb_y = np.concatenate([ulb_y, np.full(len(ds.extra_unlabeled_x), -1, dtype=np.int64)])
    image_size = d.image_size or ds.image_size[0]
    common = dict(mean=ds.mean, std=ds.std, rank=rank, world_size=world, device=device, num_threads=d.num_threads)
    if files:
        common["image_size"] = image_size
    aug = cfg.aug
    if aug.flip_prob is None:
        aug = dataclasses.replace(aug, flip_prob=0.0 if d.name in NO_FLIP else 0.5)
    train = None
    if build_train:
        make = TrainLoader.from_files if files else TrainLoader
        train = make(lb_x, lb_y, ulb_x, ulb_y, batch_size=d.batch_size, uratio=d.uratio, views=views, aug=aug,
                     seed=cfg.train.seed, **common)
    make_eval = EvalLoader.from_files if files else EvalLoader
    test_x = ds.test_files if files else ds.test_x
    evl = make_eval(test_x, np.asarray(ds.test_y), batch_size=d.eval_batch_size, **common)
    return DataBundle(train, evl, ds.num_classes, ds.channels, image_size, len(lb_y), len(ulb_y), split, split_meta)
