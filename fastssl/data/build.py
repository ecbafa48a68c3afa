"""From the data and augmentation options to this rank's loaders: read the dataset, split it, build the DALI
pipelines. Takes the plain config sections (`--data.*`, `--aug.*`), nothing from above the data floor."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from fastssl.batch import ViewSpec
from fastssl.config import AugmentConfig, DataConfig
from fastssl.data.bundle import DataBundle
from fastssl.data.registry import DATASETS


class RowView:
    """Rows of several uint8 (N_i, H, W, C) arrays, chosen by index arrays, seen as one array without copying them.

    The unlabeled set is the base training rows of the split plus, for STL-10 (and SVHN extra), an unlabeled
    array that may be a np.memmap of a 2.7 GB file: indexing reads only the requested rows, so the file
    stays on disk until DALI asks for a batch. `x[idx]` with an int array returns a (len(idx), H, W, C) copy."""

    def __init__(self, parts: list[tuple[np.ndarray, np.ndarray | None]]):
        """`parts`: (array, rows of it in order, or None for all of it)."""
        self.parts = [(a, np.arange(len(a)) if rows is None else np.asarray(rows, np.int64)) for a, rows in parts]
        first = self.parts[0][0]
        for a, _ in self.parts:
            if a.shape[1:] != first.shape[1:] or a.dtype != first.dtype:
                raise ValueError(f"unlabeled parts differ: {a.dtype}{a.shape[1:]} vs {first.dtype}{first.shape[1:]}")
        self.offsets = np.cumsum([0] + [len(r) for _, r in self.parts])
        self.shape = (int(self.offsets[-1]), *first.shape[1:])
        self.dtype, self.ndim = first.dtype, first.ndim

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.asarray(idx, np.int64)
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        part = np.searchsorted(self.offsets, idx, side="right") - 1  # which array each index falls in
        for p, (a, rows) in enumerate(self.parts):
            sel = part == p
            if sel.any():
                out[sel] = a[rows[idx[sel] - self.offsets[p]]]
        return out


def _select(x, idx: np.ndarray):
    """Rows of an array (copied), or of a file list."""
    return x[idx] if isinstance(x, np.ndarray) else [x[i] for i in idx]


def _reader_options(d: DataConfig) -> dict[str, Any]:
    """The reader's keyword options from `--data.*` fields (registry.DATASETS), unset ones left to the reader."""
    return {kw: getattr(d, f) for kw, f in DATASETS[d.name].options.items() if getattr(d, f)}


def build_data(d: DataConfig, aug: AugmentConfig, views: ViewSpec, *, seed: int, rank: int, world: int,
               device: torch.device, build_train: bool = True, split: dict | None = None) -> DataBundle:
    """This rank's loaders; `seed` is the training seed (sampling, augmentation); `build_train=False` builds
    only the eval loader (`fastssl eval`), and then `split`, a checkpoint's split state, stands for the
    labeled split instead of making it again."""
    if d.name == "synthetic":  # pre-made device batches: no files, no DALI (fastssl/data/synthetic.py)
        from fastssl.data.synthetic import build_synthetic
        return build_synthetic(d, views, seed=seed, rank=rank, world=world, device=device, build_train=build_train)
    from fastssl.data.pipeline import EvalLoader, TrainLoader
    from fastssl.data.sources import load_dataset
    from fastssl.data.splits import make_split, split_from_state

    ds = load_dataset(d.name, d.root, **_reader_options(d))
    files = ds.train_x is None
    train_x = ds.train_files if files else ds.train_x
    train_y = np.asarray(ds.train_y)
    if split is not None and not build_train:
        split, split_meta = split_from_state(split, len(train_y))
    else:
        split, split_meta = make_split(d, ds)
    lb_x, lb_y = _select(train_x, split.lb_idx), train_y[split.lb_idx]
    ulb_y = train_y[split.ulb_idx]
    if files:
        ulb_x = _select(train_x, split.ulb_idx)
    else:
        # STL-10's unlabeled images / SVHN extra join the split's rows without a copy; y = -1 (no label,
        # monitoring metrics ignore it)
        extra = [] if ds.extra_unlabeled_x is None else [(ds.extra_unlabeled_x, None)]
        ulb_x = RowView([(train_x, split.ulb_idx), *extra])
        ulb_y = np.concatenate([ulb_y, np.full(len(ulb_x) - len(ulb_y), -1, dtype=np.int64)])
    image_size = d.image_size or ds.image_size[0]
    common = dict(mean=ds.mean, std=ds.std, rank=rank, world_size=world, device=device, num_threads=d.num_threads)
    if files:
        common["image_size"] = image_size
    if aug.flip_prob is None:
        aug = dataclasses.replace(aug, flip_prob=0.5 if DATASETS[d.name].flip else 0.0)
    train = None
    if build_train:
        make = TrainLoader.from_files if files else TrainLoader
        train = make(lb_x, lb_y, ulb_x, ulb_y, batch_size=d.batch_size, uratio=d.uratio, views=views, aug=aug,
                     seed=seed, **common)
    make_eval = EvalLoader.from_files if files else EvalLoader
    test_x = ds.test_files if files else ds.test_x
    evl = make_eval(test_x, np.asarray(ds.test_y), batch_size=d.eval_batch_size, **common)
    return DataBundle(train, evl, ds.num_classes, ds.channels, image_size, len(lb_y), len(ulb_y), split, split_meta)
