"""`--data.name=synthetic`: a few pre-made batches on the device, handed out in turn. No files, no DALI.

What it is for: timing the trainer's own step apart from the data path (bench_step's `fastssl_synth`
system, phase A of scripts/gpu_check.sh), and running the trainer where DALI is not installed. The images
are Gaussian noise (as if already normalized) and the labels balanced by construction, so nothing is
learnt; what matters is that every batch has the shapes, dtypes and memory layout the DALI loaders give
(float32 NHWC memory in NCHW shape, int64 labels and indices, the views the algorithm declares), so the
compiled step is the same graph. The labeled/unlabeled split is drawn by `split_labeled` as for a real
dataset, and `idx_ulb` indexes the unlabeled set, so per-sample algorithm state (FlexMatch) is exercised.

Every batch is a pure function of (seed, rank, batch number mod NUM_BATCHES): `state_dict()` is the count
of batches handed out, and a loader resumed from it continues with the batch an uninterrupted one gives.
The batches are handed out as they are, never copied: consumers must not write into them (the trainer's
step does not; the synthetic-data test checks the batches are unchanged after training steps).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fastssl.batch import SSLBatch, ViewSpec
from fastssl.config import DataConfig
from fastssl.data.bundle import DataBundle
from fastssl.data.splits import labels_hash, split_labeled

NUM_BATCHES = 4
"""distinct training batches in the cycle: few enough to stay resident (4 × 11.8 MB at CIFAR shapes, B=64,
μ=7), more than one so that consecutive steps never read the same input"""
EVAL_BATCHES = 2
"""evaluation batches per pass"""


def _per_rank(global_batch: int, world_size: int, flag: str) -> int:
    if global_batch % world_size:
        raise ValueError(f"{flag}={global_batch} is not divisible by world_size={world_size}; "
                         f"use a multiple of {world_size} (the batch is global and split across ranks)")
    return global_batch // world_size


class _Maker:
    """Noise images and sampled indices from one seeded CPU generator, moved to the device once."""

    def __init__(self, seed: int, shape: tuple[int, int, int], device: torch.device):
        self.g = torch.Generator().manual_seed(seed)
        self.shape, self.device = shape, device

    def images(self, n: int) -> Tensor:
        c, h, w = self.shape
        return torch.randn(n, h, w, c, generator=self.g).to(self.device).permute(0, 3, 1, 2)  # NHWC memory

    def pick(self, pool: np.ndarray, n: int) -> Tensor:
        return torch.as_tensor(pool)[torch.randint(len(pool), (n,), generator=self.g)]


class SyntheticTrainLoader:
    """Iterating yields `SSLBatch`es forever, cycling through NUM_BATCHES pre-made ones (the interface of
    `pipeline.TrainLoader`). `labels`: the class of every training sample; `lb_idx`/`ulb_idx`: the split."""

    def __init__(self, labels: np.ndarray, lb_idx: np.ndarray, ulb_idx: np.ndarray, *, batch_size: int,
                 uratio: int, views: ViewSpec, shape: tuple[int, int, int], seed: int, rank: int = 0,
                 world_size: int = 1, device: torch.device = torch.device("cpu")):
        b_lb = _per_rank(batch_size, world_size, "--data.batch_size")
        b_ulb = _per_rank(batch_size * uratio, world_size, "--data.batch_size × --data.uratio")
        make = _Maker(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]), shape, device)
        y = torch.as_tensor(labels, dtype=torch.int64)
        shard = np.arange(rank, len(ulb_idx), world_size)  # this rank's positions in the unlabeled set
        nw, ns = views.num_weak, views.num_strong
        self._batches = []
        for _ in range(NUM_BATCHES):
            lb = make.pick(lb_idx, b_lb)
            pos = make.pick(shard, b_ulb if nw + ns else 0)  # no unlabeled view: empty, as TrainLoader
            weak = [make.images(len(pos)) for _ in range(max(nw, 1))]
            strong = [make.images(len(pos)) for _ in range(max(ns, 1))] if ns else [make.images(0)]
            self._batches.append(SSLBatch(
                x_lb=make.images(b_lb), y_lb=y[lb].to(device), x_ulb_w=weak[0], x_ulb_s=strong[0],
                idx_ulb=pos.to(device), y_ulb=y[torch.as_tensor(ulb_idx)[pos]].to(device),
                x_ulb_w_extra=tuple(weak[1:]), x_ulb_s_extra=tuple(strong[1:]),
                x_lb_s=make.images(b_lb) if views.lb_strong else None,
                x_ulb_m=make.images(len(pos)) if views.medium else None))
        self._next = 0

    def __iter__(self):
        return self

    def __next__(self) -> SSLBatch:
        batch = self._batches[self._next % NUM_BATCHES]
        self._next += 1
        return batch

    def state_dict(self) -> dict:
        """Batches handed out so far: all a resume needs, as every batch is a function of that count."""
        return {"synthetic_next": self._next}

    def load_state_dict(self, state: dict) -> None:
        if "synthetic_next" not in state:
            raise KeyError(f"loader state has {sorted(state)}, not a synthetic loader's; resume with the "
                           "--data.name the checkpoint was written with")
        self._next = int(state["synthetic_next"])


class SyntheticEvalLoader:
    """EVAL_BATCHES fixed (x, y, valid) batches per pass, every row valid (the interface of `EvalLoader`)."""

    def __init__(self, labels: np.ndarray, *, batch_size: int, shape: tuple[int, int, int], seed: int,
                 rank: int = 0, world_size: int = 1, device: torch.device = torch.device("cpu")):
        b = _per_rank(batch_size, world_size, "--data.eval_batch_size")
        make = _Maker(int(np.random.SeedSequence([seed, rank, 1]).generate_state(1)[0]), shape, device)
        y = torch.as_tensor(labels, dtype=torch.int64)
        self._batches = [(make.images(b), y[make.pick(np.arange(len(labels)), b)].to(device),
                          torch.ones(b, dtype=torch.bool, device=device)) for _ in range(EVAL_BATCHES)]

    def __len__(self) -> int:
        return EVAL_BATCHES

    def __iter__(self):
        return iter(self._batches)


def build_synthetic(d: DataConfig, views: ViewSpec, *, seed: int, rank: int, world: int, device: torch.device,
                    build_train: bool = True) -> DataBundle:
    """`build_data` for --data.name=synthetic: sizes from --data.synthetic_* and --data.image_size (32 if 0)."""
    side = d.image_size or 32
    shape = (d.synthetic_channels, side, side)
    labels = np.arange(d.synthetic_samples, dtype=np.int64) % d.synthetic_classes  # balanced classes
    split = split_labeled(labels, d.num_labels, d.synthetic_classes, d.split_seed,
                          include_labeled_in_unlabeled=d.include_labeled_in_unlabeled)
    train = None
    if build_train:
        train = SyntheticTrainLoader(labels, split.lb_idx, split.ulb_idx, batch_size=d.batch_size, uratio=d.uratio,
                                     views=views, shape=shape, seed=seed, rank=rank, world_size=world,
                                     device=device)
    evl = SyntheticEvalLoader(labels, batch_size=d.eval_batch_size, shape=shape, seed=seed, rank=rank,
                              world_size=world, device=device)
    meta = {"dataset": "synthetic", "num_labels": d.num_labels, "seed": d.split_seed,
            "num_classes": d.synthetic_classes, "include_labeled_in_unlabeled": d.include_labeled_in_unlabeled,
            "labels_sha256": labels_hash(labels)}
    return DataBundle(train, evl, d.synthetic_classes, d.synthetic_channels, side, len(split.lb_idx),
                      len(split.ulb_idx), split, meta)
