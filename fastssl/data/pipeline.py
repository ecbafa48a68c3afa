"""DALI pipelines → fixed-shape torch batches: the sharded train loader (SSLBatch forever) and the eval loader.

Sampling is done by us, not by a DALI reader: an `external_source` with ``batch_info=True`` whose callback
is a pure function of (iteration, seed, rank). Rank r owns the shard ``arange(r, N, world_size)`` of the
labeled and of the unlabeled set (disjoint, covering); each epoch of a shard is a fresh permutation
seeded by (seed, stream, rank, epoch), and a batch that crosses an epoch boundary takes the tail of one
permutation and the head of the next. Because the callback is pure and DALI checkpoints both its
iteration counter and every random op's state, `state_dict()`/`load_state_dict()` resume bit-exactly.

Image folders use the same sampler: the callback returns the encoded file bytes, decoded by
`fn.decoders.image` ("mixed" on GPU) and resized to ``image_size``. We do not use `fn.readers.file` for
training: its shuffle is a bounded buffer rather than a per-epoch permutation, and it cannot return the
sample index that per-sample algorithm state needs.

Buffer lifetime: the tensors handed to torch share DALI's output buffers (DLPack, no copy; on CUDA,
`torch.from_dlpack` passes torch's current stream and DALI makes it wait for the batch). With DALI 2.x's
default (dynamic) executor, which these pipelines use, output buffers are reference-counted: a batch stays
valid as long as its tensors live (tested: a batch kept across later batches is unchanged). Under DALI's
legacy executor they would be overwritten after ``prefetch`` further batches; the trainer consumes each
batch immediately, so it is safe either way.

Mean/std are per channel on the 0–1 scale (torchvision/USB convention), e.g. (0.485, 0.456, 0.406).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from fastssl.data._dali import fn, pipeline_def, types
from fastssl.data.augment import AugmentConfig, normalize, views
from fastssl.batch import SSLBatch, ViewSpec

_LB, _ULB = 0, 1  # stream ids: the labeled and unlabeled samplers draw independent permutations


def _shard(n: int, rank: int, world_size: int, what: str) -> np.ndarray:
    """Rank r's disjoint share of range(n): r, r + W, r + 2W, ..."""
    shard = np.arange(rank, n, world_size, dtype=np.int64)
    if len(shard) == 0:
        raise ValueError(f"{what} has {n} samples, fewer than world_size={world_size}; use fewer ranks")
    return shard


def _per_rank(global_batch: int, world_size: int, flag: str) -> int:
    if global_batch % world_size:
        raise ValueError(f"{flag}={global_batch} is not divisible by world_size={world_size}; "
                         f"use a multiple of {world_size} (the batch is global and split across ranks)")
    return global_batch // world_size


def _dali_seed(*key: int) -> int:
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0] & 0x7FFFFFFF)


def _norm_stats(mean, std, channels: int) -> tuple[np.ndarray, np.ndarray]:
    mean, std = np.asarray(mean, np.float64).reshape(-1), np.asarray(std, np.float64).reshape(-1)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for {channels}-channel images")
    if mean.max() > 1.0 or std.max() > 1.0:
        raise ValueError(f"mean={mean.tolist()} std={std.tolist()} look 0–255 scaled; pass them on the 0–1 "
                         "scale (divide by 255)")
    return mean * 255.0, std * 255.0


@dataclass
class EpochSampler:
    """Indices of batch `it` for one rank: a pure function of (it, seed, stream, rank)."""

    n: int
    batch: int
    seed: int
    stream: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        self.shard = _shard(self.n, self.rank, self.world_size, "the labeled set" if self.stream == _LB
                            else "the unlabeled set")
        self._cache: dict[int, np.ndarray] = {}

    def perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) > 4:
                self._cache.clear()
            rng = np.random.default_rng([self.seed, self.stream, self.rank, epoch])
            self._cache[epoch] = self.shard[rng.permutation(len(self.shard))]
        return self._cache[epoch]

    def indices(self, it: int) -> np.ndarray:
        pos = it * self.batch + np.arange(self.batch)  # (B,) positions in the endless stream of epochs
        epoch, j = np.divmod(pos, len(self.shard))
        out = np.empty(self.batch, dtype=np.int64)
        for e in np.unique(epoch):
            out[epoch == e] = self.perm(int(e))[j[epoch == e]]
        return out


class _Source:
    """external_source callback: (images or encoded bytes, labels, indices) of the batch DALI asks for."""

    def __init__(self, x, y, sampler: EpochSampler, files: Sequence[str] | None = None):
        self.x, self.y, self.sampler, self.files = x, np.asarray(y, dtype=np.int64), sampler, files

    def __call__(self, info):
        idx = self.sampler.indices(info.iteration)
        if self.files is not None:
            imgs = [np.fromfile(self.files[i], dtype=np.uint8) for i in idx]
        else:
            imgs = np.ascontiguousarray(self.x[idx])  # (B, H, W, C) uint8; also reads a np.memmap
        return imgs, self.y[idx], idx


@pipeline_def(enable_conditionals=True)
def _train_graph(source, *, hw, channels, aug, mean, std, num_weak, num_strong, gpu, encoded):
    imgs, labels, idx = fn.external_source(source=source, num_outputs=3, batch=True, batch_info=True,
                                           layout=[None if encoded else "HWC", None, None])
    imgs = _load(imgs, hw, channels, gpu, encoded)
    out = views(imgs, aug, hw, channels, mean, std, num_weak, num_strong)
    if gpu:
        labels, idx = labels.gpu(), idx.gpu()
    return (*out, labels, idx)


def _load(imgs, hw, channels, gpu, encoded):
    """uint8 HWC on the pipeline's device: decode + resize for files, a host→device copy for arrays."""
    if encoded:
        imgs = fn.decoders.image(imgs, device="mixed" if gpu else "cpu",
                                 output_type=types.RGB if channels == 3 else types.GRAY)
        return fn.resize(imgs, resize_y=hw[0], resize_x=hw[1], dtype=types.UINT8)
    return imgs.gpu() if gpu else imgs


def _to_torch(out) -> torch.Tensor:
    """DALI TensorList → torch tensor sharing its memory (DLPack; CPU or CUDA)."""
    return torch.from_dlpack(out.as_tensor())


def _nchw(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)  # NHWC memory, NCHW shape: channels_last, no copy


class TrainLoader:
    """One rank's labeled + unlabeled DALI pipelines; iterating yields `SSLBatch` forever.

    `lb_x`/`ulb_x`: uint8 (N, H, W, C) arrays (a np.memmap is fine) of one fixed size; `lb_y`/`ulb_y`:
    int64 labels; `idx_ulb` values are positions in `ulb_x`. `batch_size` is the global labeled batch and
    `uratio` (μ) the unlabeled:labeled ratio; each rank gets batch_size/world_size labeled and
    μ·batch_size/world_size unlabeled samples (error if not divisible). `device`: cuda:i → DALI
    "gpu"/"mixed" ops on GPU i (pass torch.device("cuda", local_rank) under torchrun) and CUDA tensors;
    cpu → DALI's CPU backend. Unlabeled sets without labels (STL-10) pass -1 for `ulb_y`.
    `num_threads`: DALI CPU threads per pipeline; `prefetch`: batches DALI computes ahead (also how long
    a handed-out batch stays valid, see the module docstring). Image folders: `from_files`.
    """

    def __init__(self, lb_x, lb_y, ulb_x, ulb_y, *, batch_size: int, uratio: int, views: ViewSpec,
                 aug: AugmentConfig, mean, std, seed: int, rank: int = 0, world_size: int = 1,
                 device: torch.device = torch.device("cpu"), num_threads: int = 2, prefetch: int = 2,
                 lb_files: Sequence[str] | None = None, ulb_files: Sequence[str] | None = None,
                 image_size: int | None = None, channels: int | None = None):
        encoded = lb_files is not None
        if encoded:
            hw, ch = (image_size, image_size), channels or 3
            n_lb, n_ulb = len(lb_files), len(ulb_files)
        else:
            for name, a in (("lb_x", lb_x), ("ulb_x", ulb_x)):
                if a.ndim != 4 or a.dtype != np.uint8:
                    raise ValueError(f"{name} must be uint8 (N, H, W, C), got {a.dtype} {a.shape}")
            if lb_x.shape[1:] != ulb_x.shape[1:]:
                raise ValueError(f"lb_x {lb_x.shape[1:]} and ulb_x {ulb_x.shape[1:]} differ in image shape")
            hw, ch = tuple(lb_x.shape[1:3]), lb_x.shape[3]
            n_lb, n_ulb = len(lb_x), len(ulb_x)
        b_lb = _per_rank(batch_size, world_size, "--data.batch_size")
        b_ulb = _per_rank(batch_size * uratio, world_size, "--data.batch_size × --data.uratio")
        self.device, self.views, self.hw, self.channels = torch.device(device), views, hw, ch
        gpu = self.device.type == "cuda"
        mean255, std255 = _norm_stats(mean, std, ch)
        self._specs = {}
        for key, stream, n, b, x, y, files, nw, ns in (
            ("lb", _LB, n_lb, b_lb, lb_x, lb_y, lb_files, 1, int(views.lb_strong)),
            ("ulb", _ULB, n_ulb, b_ulb, ulb_x, ulb_y, ulb_files, views.num_weak, views.num_strong),
        ):
            if nw + ns == 0:
                continue  # an algorithm that reads no unlabeled view (supervised): no unlabeled pipeline
            sampler = EpochSampler(n, b, seed, stream, rank, world_size)
            self._specs[key] = dict(
                source=_Source(x, y, sampler, files), hw=hw, channels=ch, aug=aug, mean=mean255,
                std=std255, num_weak=nw, num_strong=ns, gpu=gpu, encoded=encoded, batch_size=b,
                num_threads=num_threads, device_id=(self.device.index or 0) if gpu else None,
                seed=_dali_seed(seed, stream, rank), prefetch_queue_depth=prefetch,
                enable_checkpointing=True)
        self._pipes = {k: self._build(k) for k in self._specs}

    @classmethod
    def from_files(cls, lb_files: Sequence[str], lb_y, ulb_files: Sequence[str], ulb_y, *, image_size: int,
                   channels: int = 3, **kw) -> "TrainLoader":
        """Image-folder variant: JPEG/PNG paths, decoded and resized to image_size × image_size."""
        return cls(None, lb_y, None, ulb_y, lb_files=list(lb_files), ulb_files=list(ulb_files),
                   image_size=image_size, channels=channels, **kw)

    def _build(self, key: str, checkpoint: str | None = None):
        pipe = _train_graph(**self._specs[key], checkpoint=checkpoint)
        pipe.build()
        return pipe

    def __iter__(self):
        return self

    def __next__(self) -> SSLBatch:
        lb = [_to_torch(o) for o in self._pipes["lb"].run()]  # x_w (B,H,W,C), [x_s,] y, idx
        x_lb_s = _nchw(lb.pop(1)) if self.views.lb_strong else None
        if "ulb" not in self._pipes:  # no unlabeled views: empty, fixed-shape placeholders
            h, w = self.hw
            empty = torch.empty((0, self.channels, h, w), dtype=lb[0].dtype, device=lb[0].device)
            none = torch.empty(0, dtype=torch.int64, device=lb[1].device)
            return SSLBatch(x_lb=_nchw(lb[0]), y_lb=lb[1], x_ulb_w=empty, x_ulb_s=empty, idx_ulb=none, y_ulb=none,
                            x_lb_s=x_lb_s)
        ulb = [_to_torch(o) for o in self._pipes["ulb"].run()]
        nw, ns = self.views.num_weak, self.views.num_strong
        weak, strong = [_nchw(t) for t in ulb[:nw]], [_nchw(t) for t in ulb[nw:nw + ns]]
        if not strong:
            h, w = self.hw
            empty = torch.empty((0, self.channels, h, w), dtype=weak[0].dtype, device=weak[0].device)
            strong = [empty]
        return SSLBatch(x_lb=_nchw(lb[0]), y_lb=lb[1], x_ulb_w=weak[0], x_ulb_s=strong[0],
                        idx_ulb=ulb[nw + ns + 1], y_ulb=ulb[nw + ns],
                        x_ulb_w_extra=tuple(weak[1:]), x_ulb_s_extra=tuple(strong[1:]), x_lb_s=x_lb_s)

    def state_dict(self) -> dict:
        """DALI checkpoints of both pipelines (sampler position and every random op's state) taken after
        the last batch handed out."""
        return {k: p.checkpoint() for k, p in self._pipes.items()}

    def load_state_dict(self, state: dict) -> None:
        """Rebuilds both pipelines from `state`: the next batch is the one an uninterrupted loader gives."""
        missing = set(self._specs) - set(state)
        if missing:
            raise KeyError(f"loader state lacks {sorted(missing)}; was it saved by TrainLoader.state_dict()?")
        self._pipes = {k: self._build(k, state[k]) for k in self._specs}


class _EvalSource:
    """Batch b of this rank's shard; rows past the shard's end repeat its last sample with valid=0."""

    def __init__(self, x, y, shard: np.ndarray, batch: int, num_batches: int, files=None):
        self.x, self.y, self.shard, self.batch, self.nb, self.files = x, np.asarray(y, np.int64), shard, \
            batch, num_batches, files

    def __call__(self, info):
        pos = (info.iteration % self.nb) * self.batch + np.arange(self.batch)
        valid = pos < len(self.shard)
        idx = self.shard[np.minimum(pos, len(self.shard) - 1)]
        imgs = ([np.fromfile(self.files[i], dtype=np.uint8) for i in idx] if self.files is not None
                else np.ascontiguousarray(self.x[idx]))
        return imgs, self.y[idx], valid.astype(np.uint8)


@pipeline_def
def _eval_graph(source, *, hw, channels, mean, std, gpu, encoded):
    imgs, labels, valid = fn.external_source(source=source, num_outputs=3, batch=True, batch_info=True,
                                             layout=[None if encoded else "HWC", None, None])
    x = normalize(_load(imgs, hw, channels, gpu, encoded), mean, std)
    return (x, labels.gpu(), valid.gpu()) if gpu else (x, labels, valid)


class EvalLoader:
    """Normalized images only, sharded per rank, fixed-shape batches: iterating yields `len(self)` tuples
    (x (B, C, H, W) float, y (B,) int64, valid (B,) bool). Every rank yields the same number of batches;
    padding rows (valid False) repeat a real sample, so gathering over ranks and keeping valid rows
    counts every sample exactly once. `batch_size` is global (split across ranks)."""

    def __init__(self, x, y, *, batch_size: int, mean, std, rank: int = 0, world_size: int = 1,
                 device: torch.device = torch.device("cpu"), num_threads: int = 2,
                 files: Sequence[str] | None = None, image_size: int | None = None, channels: int | None = None):
        encoded = files is not None
        n = len(files) if encoded else len(x)
        if encoded:
            hw, ch = (image_size, image_size), channels or 3
        else:
            if x.ndim != 4 or x.dtype != np.uint8:
                raise ValueError(f"x must be uint8 (N, H, W, C), got {x.dtype} {x.shape}")
            hw, ch = tuple(x.shape[1:3]), x.shape[3]
        b = _per_rank(batch_size, world_size, "--eval.batch_size")
        self.num_batches = math.ceil(math.ceil(n / world_size) / b)
        self.device = torch.device(device)
        gpu = self.device.type == "cuda"
        mean255, std255 = _norm_stats(mean, std, ch)
        shard = _shard(n, rank, world_size, "the eval set")
        self._pipe = _eval_graph(_EvalSource(x, y, shard, b, self.num_batches, files), hw=hw, channels=ch,
                                 mean=mean255, std=std255, gpu=gpu, encoded=encoded, batch_size=b,
                                 num_threads=num_threads, device_id=(self.device.index or 0) if gpu else None,
                                 seed=0, prefetch_queue_depth=2)
        self._pipe.build()

    @classmethod
    def from_files(cls, files: Sequence[str], y, *, image_size: int, channels: int = 3, **kw) -> "EvalLoader":
        """Image-folder variant: JPEG/PNG paths, decoded and resized to image_size × image_size."""
        return cls(None, y, files=list(files), image_size=image_size, channels=channels, **kw)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        # The pipeline's callback wraps around modulo len(self), so prefetched batches of the next pass
        # are already the right ones.
        for _ in range(self.num_batches):
            x, y, valid = (_to_torch(o) for o in self._pipe.run())
            yield _nchw(x), y, valid.bool()
