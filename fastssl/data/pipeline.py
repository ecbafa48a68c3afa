"""DALI pipelines → fixed-shape torch batches: the sharded train loader (SSLBatch forever) and the eval loader.

Sampling is done by us, not by a DALI reader: an `external_source` with ``batch_info=True`` whose callback
is a pure function of (iteration, seed, rank). Rank r owns the shard ``arange(r, N, world_size)`` of the
labeled and of the unlabeled set (disjoint, covering); each epoch of a shard is a fresh permutation
seeded by (seed, stream, rank, epoch), and a batch that crosses an epoch boundary takes the tail of one
permutation and the head of the next. Every augmentation draw is made the same way (`ViewParams`: numpy,
seeded by (seed, stream, rank, step)), so the graphs hold no DALI random operators and a batch is a pure
function of its step: `state_dict()` is the step, and `load_state_dict()` rebuilds the pipelines there.

One DALI iteration makes `steps_per_run` (k) training steps: a batch of k·B rows, handed out as k slices
(views, no copy). DALI's cost per iteration is mostly per operator, not per sample, so small batches share
it k ways. Resuming at step s starts the pipelines at the iteration holding s and skips the s mod k steps
before it; draws are per step, so the batches are the same whatever k is.

Image folders use the same sampler: the callback returns the encoded file bytes, decoded by
`fn.decoders.image` ("mixed" on GPU) and resized to ``image_size``. We do not use `fn.readers.file` for
training: its shuffle is a bounded buffer rather than a per-epoch permutation, and it cannot return the
sample index that per-sample algorithm state needs.

Buffer lifetime: the tensors handed to torch share DALI's output buffers (DLPack, no copy). On CUDA the
pipelines run on torch's current stream (`run(cuda_stream=...)`: no host wait), and the training loop
does not synchronize, so the host may drop a batch while kernels queued on the stream still read it; if
DALI then reused that memory for a later iteration the kernels would read the wrong images. `_KeepAlive`
therefore keeps every iteration's outputs referenced until a CUDA event recorded `in_flight` steps after
its last batch was handed out has completed (tested under a long GPU sleep in
tests/test_pipeline.py). Keeping references is cheaper than copying into torch-owned buffers, which
would add a full pass over every view each step.

Mean/std are per channel on the 0–1 scale (torchvision/USB convention), e.g. (0.485, 0.456, 0.406).
"""
from __future__ import annotations

import copy
import math
from collections import Counter, deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from fastssl.data._dali import fn, pipeline_def, types

from fastssl.data.augment import AugmentConfig, ViewParams, normalize, views
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

    def indices(self, it: int, steps: int = 1) -> np.ndarray:
        """Batches it, it + 1, ..., it + steps - 1, concatenated."""
        pos = it * self.batch + np.arange(self.batch * steps)  # positions in the endless stream of epochs
        epoch, j = np.divmod(pos, len(self.shard))
        out = np.empty(len(pos), dtype=np.int64)
        for e in np.unique(epoch):
            out[epoch == e] = self.perm(int(e))[j[epoch == e]]
        return out


class _Source:
    """external_source callback: (images or encoded bytes, labels, indices) of the `steps_per_run` training
    steps that DALI iteration i makes: steps (start + i)·steps_per_run, ... (start is where a resumed
    loader's rebuilt pipeline begins)."""

    def __init__(self, x, y, sampler: EpochSampler, files: Sequence[str] | None = None, steps_per_run: int = 1,
                 start: int = 0):
        self.x, self.y, self.sampler, self.files = x, np.asarray(y, dtype=np.int64), sampler, files
        self.steps_per_run, self.start = steps_per_run, start

    def __call__(self, info):
        k = self.steps_per_run
        idx = self.sampler.indices((info.iteration + self.start) * k, k)
        if self.files is not None:
            imgs = [np.fromfile(self.files[i], dtype=np.uint8) for i in idx]
        else:
            imgs = np.ascontiguousarray(self.x[idx])  # (B, H, W, C) uint8; also reads a np.memmap
        return imgs, self.y[idx], idx


@pipeline_def(enable_conditionals=True)
def _train_graph(source: _Source, *, hw, channels, aug, mean, std, num_weak, num_strong, gpu, encoded, key=(0,),
                 branch=False, ct=None, probe=False, num_medium=0):
    """The views of `source`'s images with every random draw from ViewParams(..., key, ct=ct, probe=probe)
    (no DALI random operators: the pipeline's output is a pure function of the source's iteration, and of
    CTAugment's weight snapshot for it). `branch`: build the strong views with augment.stage_grouped."""
    imgs, labels, idx = fn.external_source(source=source, num_outputs=3, batch=True, batch_info=True,
                                           layout=[None if encoded else "HWC", None, None])
    imgs = _load(imgs, hw, channels, gpu, encoded)
    params = ViewParams(aug, hw, channels, num_weak, num_strong, key, branch, ct, probe, num_medium).nodes(
        source.sampler.batch, source.steps_per_run, source.start, gpu)
    out = views(imgs, aug, hw, channels, mean, std, num_weak, num_strong, params, num_medium)
    if gpu:
        labels, idx = labels.gpu(), idx.gpu()
    return (*out, labels, idx)


def graph_kwargs(aug: AugmentConfig, hw, channels: int, mean, std, num_weak: int, num_strong: int,
                 gpu: bool) -> dict:
    """`_train_graph`'s image arguments (mean/std on the 0–1 scale, checked)."""
    mean255, std255 = _norm_stats(mean, std, channels)
    return dict(hw=hw, channels=channels, aug=aug, mean=mean255, std=std255, num_weak=num_weak,
                num_strong=num_strong, gpu=gpu)


def _load(imgs, hw, channels, gpu, encoded):
    """uint8 HWC on the pipeline's device: decode + resize for files, a host→device copy for arrays."""
    if encoded:
        imgs = fn.decoders.image(imgs, device="mixed" if gpu else "cpu",
                                 output_type=types.RGB if channels == 3 else types.GRAY)
        return fn.resize(imgs, resize_y=hw[0], resize_x=hw[1], dtype=types.UINT8)
    return imgs.gpu() if gpu else imgs


def operator_counts(pipe) -> Counter:
    """(operator schema name, device) → how many of it a DALI pipeline's graph holds, read from the Python
    graph (defined, not run: a pipeline built for cuda:0 can be counted on a machine without a GPU). Each
    operator costs per iteration, not per sample, so this is the pipeline's fixed cost in units."""
    if not hasattr(pipe, "_ops") or pipe._ops is None:
        pipe._build_graph()  # DALI 2.4 internals; tests/test_pipeline_gpu_graph.py skips if they go away
    return Counter((node._op.schema.Name() if node._op.schema is not None else type(node._op).__name__,
                    node._op.device) for node in pipe._ops)


def _to_torch(out) -> torch.Tensor:
    """DALI TensorList → torch tensor sharing its memory (DLPack; CPU or CUDA)."""
    return torch.from_dlpack(out.as_tensor())


def _nchw(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)  # NHWC memory, NCHW shape: channels_last, no copy


MAX_STEPS_PER_RUN = 32
"""The most training steps one DALI iteration makes by default (the 4 MiB budget binds first for CIFAR at
B=1: k = 22). Measured on the CPU backend, FixMatch with 3 ops at B=1, wall / CPU ms per step, two passes
on the 2-core machine (2026-11-30): k=4 1.90–3.25 / 3.3–4.5, k=8 2.11–2.24 / 3.10, k=16 1.34–1.49 /
1.96–2.12, k=22 1.06–1.22 / 1.71–2.01."""
MAX_STEPS_PER_RUN_CT = 8
"""The same with CTAugment, whose draws read its weights once per iteration: k to 2k - 1 steps old."""


class TrainLoader:
    """One rank's labeled + unlabeled DALI pipelines; iterating yields `SSLBatch` forever.

    `lb_x`/`ulb_x`: uint8 (N, H, W, C) arrays (a np.memmap is fine) of one fixed size; `lb_y`/`ulb_y`:
    int64 labels; `idx_ulb` values are positions in `ulb_x`. `batch_size` is the global labeled batch and
    `uratio` (μ) the unlabeled:labeled ratio; each rank gets batch_size/world_size labeled and
    μ·batch_size/world_size unlabeled samples (error if not divisible). `device`: cuda:i → DALI
    "gpu"/"mixed" ops on GPU i (pass torch.device("cuda", local_rank) under torchrun) and CUDA tensors;
    cpu → DALI's CPU backend. Unlabeled sets without labels (STL-10) pass -1 for `ulb_y`.
    `num_threads`: DALI CPU threads per pipeline; `prefetch`: DALI iterations computed ahead.
    `steps_per_run` (k): training steps one DALI iteration makes (a batch of k·B, handed out as k slices
    without a copy), so DALI's per-iteration cost is paid once per k steps; default: as many as keep one
    iteration's float views under 4 MiB, at most `MAX_STEPS_PER_RUN` (`MAX_STEPS_PER_RUN_CT` with
    CTAugment, whose weights are read once per iteration). The batches do not depend on k. `in_flight`: steps after
    a batch is handed out during which its consumer may still enqueue GPU reads of it (see `_KeepAlive`).
    `branch`: build the strong views with augment.stage_grouped, one DALI conditional per group of ops
    (default: on the CPU backend, where an operator costs per sample and grouping measured 2.2–2.9x
    cheaper from 7 to 224 samples per iteration; a GPU runs the unbranched chain, where operators cost
    launches and it has fewer). The batches are the same either way, bit for bit. Image folders: `from_files`.
    """

    def __init__(self, lb_x, lb_y, ulb_x, ulb_y, *, batch_size: int, uratio: int, views: ViewSpec,
                 aug: AugmentConfig, mean, std, seed: int, rank: int = 0, world_size: int = 1,
                 device: torch.device = torch.device("cpu"), num_threads: int = 2, prefetch: int = 2,
                 lb_files: Sequence[str] | None = None, ulb_files: Sequence[str] | None = None,
                 image_size: int | None = None, channels: int | None = None, steps_per_run: int | None = None,
                 in_flight: int = 2, branch: bool | None = None):
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
        self.ctaugment = None
        if aug.policy == "ctaugment":  # the labeled strong view is CTAugment's probe: always made
            from fastssl.data.ctaugment import CTAugment
            self.ctaugment = CTAugment(aug.num_ops)
            views = self.views = views._replace(lb_strong=True)
        floats = (b_lb * (1 + int(views.lb_strong))
                  + b_ulb * (views.num_weak + views.num_strong + int(views.medium))) * hw[0] * hw[1] * ch
        cap = MAX_STEPS_PER_RUN if self.ctaugment is None else MAX_STEPS_PER_RUN_CT
        self.steps_per_run = k = steps_per_run or max(1, min(cap, (4 << 20) // (4 * floats)))
        if self.ctaugment is not None:  # DALI asks for iteration c's draws while running iteration c - prefetch + 1
            self.ctaugment.steps_per_run, self.ctaugment.lag = k, max(prefetch - 1, 0)
            self._probe = ViewParams(aug, hw, ch, 1, 1, (seed, _LB, rank), ct=self.ctaugment, probe=True)
            self._b_lb = b_lb
        self._specs = {}
        for key, stream, n, b, x, y, files, nw, ns, nm in (
            ("lb", _LB, n_lb, b_lb, lb_x, lb_y, lb_files, 1, int(views.lb_strong), 0),
            ("ulb", _ULB, n_ulb, b_ulb, ulb_x, ulb_y, ulb_files, views.num_weak, views.num_strong, int(views.medium)),
        ):
            if nw + ns + nm == 0:
                continue  # an algorithm that reads no unlabeled view (supervised): no unlabeled pipeline
            sampler = EpochSampler(n, b, seed, stream, rank, world_size)
            self._specs[key] = dict(
                source=_Source(x, y, sampler, files, k), **graph_kwargs(aug, hw, ch, mean, std, nw, ns, gpu),
                encoded=encoded, key=(seed, stream, rank), batch_size=b * k, num_threads=num_threads,
                branch=not gpu if branch is None else branch, ct=self.ctaugment, probe=key == "lb", num_medium=nm,
                device_id=(self.device.index or 0) if gpu else None, prefetch_queue_depth=prefetch)
        self._keep = _KeepAlive(in_flight, torch.cuda.Event if gpu else None)
        self._start(0)

    @classmethod
    def from_files(cls, lb_files: Sequence[str], lb_y, ulb_files: Sequence[str], ulb_y, *, image_size: int,
                   channels: int = 3, **kw) -> "TrainLoader":
        """Image-folder variant: JPEG/PNG paths, decoded and resized to image_size × image_size."""
        return cls(None, lb_y, None, ulb_y, lb_files=list(lb_files), ulb_files=list(ulb_files),
                   image_size=image_size, channels=channels, **kw)

    def _start(self, step: int) -> None:
        """(Re)builds the pipelines so that the next batch is training step `step`: they start at the DALI
        iteration holding it, and the steps before it in that iteration are skipped."""
        chunk, self._pos = divmod(step, self.steps_per_run)
        self._step, self._out = step, None
        self._pipes = {}
        for key, spec in self._specs.items():
            spec = dict(spec, source=copy.copy(spec["source"]))
            spec["source"].start = chunk
            self._pipes[key] = _train_graph(**spec)
            self._pipes[key].build()

    def __iter__(self):
        return self

    def _run(self) -> None:
        """One DALI iteration of each pipeline, on torch's current CUDA stream (DALI orders its outputs on it:
        no host wait), as torch tensors of k·B rows."""
        stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else None
        outs = {k: p.run(stream) for k, p in self._pipes.items()}
        self._out = {k: [_to_torch(o) for o in v] for k, v in outs.items()}
        self._keep.hold((outs, self._out), self._step + self.steps_per_run - 1 - self._pos)

    def __next__(self) -> SSLBatch:
        if self._out is None or self._pos == self.steps_per_run:
            if self._out is not None:
                self._pos = 0
            self._run()
        j, k = self._pos, self.steps_per_run
        self._keep.handed_out(self._step)
        self._pos, self._step = j + 1, self._step + 1
        part = {key: [t[j * (len(t) // k):(j + 1) * (len(t) // k)] for t in v] for key, v in self._out.items()}
        lb = list(part["lb"])  # x_w (B,H,W,C), [x_s,] y, idx
        x_lb_s = _nchw(lb.pop(1)) if self.views.lb_strong else None
        if "ulb" not in part:  # no unlabeled views: empty, fixed-shape placeholders
            h, w = self.hw
            empty = torch.empty((0, self.channels, h, w), dtype=lb[0].dtype, device=lb[0].device)
            none = torch.empty(0, dtype=torch.int64, device=lb[1].device)
            return SSLBatch(x_lb=_nchw(lb[0]), y_lb=lb[1], x_ulb_w=empty, x_ulb_s=empty, idx_ulb=none, y_ulb=none,
                            x_lb_s=x_lb_s)
        ulb = part["ulb"]  # weak..., strong..., [medium], y, idx
        nw, ns, nm = self.views.num_weak, self.views.num_strong, int(self.views.medium)
        weak, strong = [_nchw(t) for t in ulb[:nw]], [_nchw(t) for t in ulb[nw:nw + ns]]
        x_ulb_m = _nchw(ulb[nw + ns]) if nm else None
        if not strong:
            h, w = self.hw
            empty = torch.empty((0, self.channels, h, w), dtype=weak[0].dtype, device=weak[0].device)
            strong = [empty]
        return SSLBatch(x_lb=_nchw(lb[0]), y_lb=lb[1], x_ulb_w=weak[0], x_ulb_s=strong[0],
                        idx_ulb=ulb[nw + ns + nm + 1], y_ulb=ulb[nw + ns + nm],
                        x_ulb_w_extra=tuple(weak[1:]), x_ulb_s_extra=tuple(strong[1:]), x_lb_s=x_lb_s, x_ulb_m=x_ulb_m)

    def probe_bins(self) -> np.ndarray:
        """--aug.policy=ctaugment: the CTAugment bins (B, num_ops) of the last batch's `x_lb_s`, the probe
        view (its draws again: a pure function of the step)."""
        return self._probe.draw(self._step - 1, self._b_lb)["s0.bins"]

    def state_dict(self) -> dict:
        """The number of batches handed out: every batch is a pure function of (seed, rank, step)."""
        return {"step": self._step}

    def load_state_dict(self, state: dict) -> None:
        """Rebuilds the pipelines at `state`'s step: the next batch is the one an uninterrupted loader gives
        (whatever steps_per_run either loader uses)."""
        if "step" not in state:
            raise KeyError("loader state lacks 'step'; was it saved by TrainLoader.state_dict()?")
        self._start(int(state["step"]))


class _KeepAlive:
    """Keeps each DALI iteration's outputs referenced until the GPU work reading them has run, so DALI
    cannot hand their memory to a later iteration while torch's stream (which the host runs ahead of)
    still reads them. An iteration whose last batch was handed out at step s is retired once step
    s + in_flight + 1 is handed out: an event recorded then on torch's stream follows every read the
    consumer enqueued for it; the outputs are dropped when that event has completed (polled, no host wait)
    or, beyond `max_held` iterations, after waiting for it. `event` = None (CPU): execution is synchronous,
    drop at retirement."""

    def __init__(self, in_flight: int, event=None, max_held: int = 8):
        self.in_flight, self.event, self.max_held = in_flight, event, max_held
        self.held: deque = deque()  # [outputs, last step, event or None]

    def hold(self, outputs, last_step: int) -> None:
        self.held.append([outputs, last_step, None])

    def handed_out(self, step: int) -> None:
        for entry in self.held:
            if entry[2] is None and step > entry[1] + self.in_flight:
                entry[2] = True if self.event is None else self.event()
                if self.event is not None:
                    entry[2].record()
        while self.held and self.held[0][2] is not None and (
                self.held[0][2] is True or self.held[0][2].query() or len(self.held) > self.max_held):
            if self.held[0][2] is not True:
                self.held[0][2].synchronize()  # returns at once unless over max_held
            self.held.popleft()


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
        b = _per_rank(batch_size, world_size, "--data.eval_batch_size")
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
        self._keep, self._handed = _KeepAlive(2, torch.cuda.Event if gpu else None), 0

    @classmethod
    def from_files(cls, files: Sequence[str], y, *, image_size: int, channels: int = 3, **kw) -> "EvalLoader":
        """Image-folder variant: JPEG/PNG paths, decoded and resized to image_size × image_size."""
        return cls(None, y, files=list(files), image_size=image_size, channels=channels, **kw)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        # The pipeline's callback wraps around modulo len(self), so prefetched batches of the next pass
        # are already the right ones.
        stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else None
        for _ in range(self.num_batches):
            outs = self._pipe.run(stream)
            self._keep.hold(outs, self._handed)
            self._keep.handed_out(self._handed)
            self._handed += 1
            x, y, valid = (_to_torch(o) for o in outs)
            yield _nchw(x), y, valid.bool()
