"""DALI's cost per training step (`TrainLoader.__next__`), CPU backend, CIFAR shapes (32x32x3), labeled batch
B and unlabeled 7B: ms per step at B=1 (the fixed cost: operators run once per iteration whatever the batch)
and B=64 (with CTAugment: its host work per step included), and the DALI operators per iteration of the CPU pipelines and of the CUDA-built graph (defined in
Python, never run, so no GPU is needed).

    PYTHONPATH=$PWD python -m benchmarks.bench_dali_cost [--rounds 15] [--threads 2]

Prints a Markdown table: ms per `next()` with one step per DALI iteration (k=1) and with the loader's
default steps per iteration (k > 1 only for small batches).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time

import numpy as np
import torch
from nvidia import dali

from fastssl.batch import ViewSpec
from fastssl.data import pipeline as P
from fastssl.data.augment import AugmentConfig
from fastssl.data.ctaugment import CTAugment

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
ROWS = {  # name → (views, aug)
    "weak only": (ViewSpec(num_weak=1, num_strong=0), AugmentConfig(flip_prob=0.5)),
    "FixMatch, num_ops=0 (Cutout only)": (ViewSpec(), AugmentConfig(flip_prob=0.5, num_ops=0)),
    "FixMatch, 1 op": (ViewSpec(), AugmentConfig(flip_prob=0.5, num_ops=1)),
    "FixMatch, 3 ops (default)": (ViewSpec(), AugmentConfig(flip_prob=0.5)),
    "FixMatch, 3 ops, labeled strong view": (ViewSpec(lb_strong=True), AugmentConfig(flip_prob=0.5)),
    "FixMatch, CTAugment 3 ops (+ probe view, + weight update)": (
        ViewSpec(), AugmentConfig(flip_prob=0.5, policy="ctaugment")),
}


def _loader(views, aug, batch, threads, x, y, k):
    return P.TrainLoader(x[:1000], y[:1000], x, y, batch_size=batch, uratio=7, views=views, aug=aug,
                         mean=CIFAR_MEAN, std=CIFAR_STD, seed=0, num_threads=threads, steps_per_run=k)


def _next(loader) -> None:
    """One step; with CTAugment also its host work: the probe's bins and the weight update (with a made-up
    accuracy measure: the model's probe forward is the trainer's cost, not the pipeline's)."""
    next(loader)
    if loader.ctaugment is not None:
        bins = loader.probe_bins()
        loader.ctaugment.update(bins, np.full(len(bins), 0.5))


def step_ms(loader, warmup: int, rounds: int) -> tuple[float, float]:
    """(wall, CPU) ms per next(): medians over `rounds` rounds of the mean over 8·k calls (whole DALI
    iterations: with k steps per iteration, k - 1 of k calls only slice, so a median of single calls would
    hide the cost). CPU time counts every thread of the process (DALI's workers included): on a shared
    machine it is the steadier of the two."""
    n = 8 * loader.steps_per_run
    for _ in range(warmup):
        _next(loader)
    wall, cpu = [], []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            _next(loader)
        wall.append((time.perf_counter() - t0) / n)
        cpu.append((time.process_time() - c0) / n)
    return float(np.median(wall)) * 1e3, float(np.median(cpu)) * 1e3


def gpu_operator_count(views, aug) -> int:
    """Operators of the loader's pipelines as built for cuda:0 (graph only)."""
    x = np.zeros((16, 32, 32, 3), np.uint8)
    total, ct = 0, CTAugment(aug.num_ops) if aug.policy == "ctaugment" else None
    for probe, nw, ns in ((True, 1, int(views.lb_strong or ct is not None)), (False, views.num_weak, views.num_strong)):
        src = P._Source(x, np.zeros(16, np.int64), P.EpochSampler(16, 8, 0, 1))
        pipe = P._train_graph(src, **P.graph_kwargs(aug, (32, 32), 3, CIFAR_MEAN, CIFAR_STD, nw, ns, gpu=True),
                              encoded=False, batch_size=8, num_threads=1, device_id=0, prefetch_queue_depth=2,
                              ct=ct, probe=probe and ct is not None)
        total += sum(P.operator_counts(pipe).values())
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15, help="timed rounds per cell (median reported)")
    p.add_argument("--warmup", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="DALI CPU threads per pipeline")
    p.add_argument("--only", default="", help="run the rows whose name contains this text")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4096, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, len(x)).astype(np.int64)
    print(f"DALI {dali.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {args.threads} DALI threads, "
          f"wall / CPU ms per next() = medians over {args.rounds} rounds of the mean over 8·k calls, after "
          f"{args.warmup}; k = steps per DALI iteration\n")
    print("| views | B=1, k=1 | B=1, default k | B=64, default k | DALI ops / iteration (CPU, B=1 / B=64) "
          "| DALI ops / iteration (CUDA graph) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (views, aug) in ROWS.items():
        if args.only not in name:
            continue
        cells, ops = [], {}
        for b, k in ((1, 1), (1, None), (64, None)):
            loader = _loader(views, aug, b, args.threads, x, y, k)
            wall, cpu = step_ms(loader, args.warmup, args.rounds if b == 1 else max(args.rounds // 3, 3))
            cells.append(f"{wall:.2f} / {cpu:.2f}" + ("" if k == 1 else f" (k={loader.steps_per_run})"))
            ops[b] = sum(sum(P.operator_counts(pp).values()) for pp in loader._pipes.values())
            del loader
        print(f"| {name} | {' | '.join(cells)} | {ops[1]} / {ops[64]} | {gpu_operator_count(views, aug)} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
