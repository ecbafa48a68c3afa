"""pytest-benchmark suite of the data pipelines (one benchmark per loader, run one after another); the
side-by-side harness it reuses is `fastssl bench pipeline` (fastssl/bench/pipeline.py).

    pytest benchmarks/bench_pipeline.py --benchmark-enable --benchmark-json=pipeline.json

Sizes from $FASTSSL_BENCH_B (16), $FASTSSL_BENCH_MU (7), $FASTSSL_BENCH_BATCHES (3 per round).
"""
from __future__ import annotations

import os

import pytest
import torch

from fastssl.bench import common
from fastssl.bench.pipeline import DALILoader, PILLoader


B = int(os.environ.get("FASTSSL_BENCH_B", "16"))
MU = int(os.environ.get("FASTSSL_BENCH_MU", "7"))
BATCHES = int(os.environ.get("FASTSSL_BENCH_BATCHES", "3"))


@pytest.fixture(scope="module")
def images():
    torch.set_num_threads(1)
    x, y, source = common.load_images("auto", 32, 50000)
    return x, y, common.balanced_labeled(y, 4000)


def _bench(benchmark, loader, views_per_batch: int):
    try:
        benchmark.extra_info.update(views_per_batch=views_per_batch, batches_per_round=BATCHES)
        # each round first uses up what the workers made ahead (setup, untimed), then times BATCHES batches
        drain = lambda: ([loader.next() for _ in range(max(loader.depth, 1))], ((), {}))[1]  # noqa: E731
        benchmark.pedantic(lambda: [loader.next() for _ in range(BATCHES)], setup=drain, rounds=5, iterations=1)
        if benchmark.stats is not None:  # None under --benchmark-disable
            benchmark.extra_info["views_s"] = views_per_batch * BATCHES / benchmark.stats.stats.median
    finally:
        loader.close()


@pytest.mark.parametrize("workers", sorted({0, 1, 2, os.cpu_count() or 1}))
def test_pil_workers(benchmark, images, workers):
    x, y, lb = images
    _bench(benchmark, PILLoader(x, y, lb, B, MU, workers), B * (1 + 2 * MU))


def test_dali_trainloader(benchmark, images):
    pytest.importorskip("fastssl.data.pipeline", reason="fastssl.data.pipeline not on this branch yet")
    x, y, lb = images
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _bench(benchmark, DALILoader(x, y, lb, B, MU, 2, device), B * (1 + 2 * MU))
