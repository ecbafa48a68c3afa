"""The DALI pipelines' GPU variant, checked without a GPU. DALI defines a pipeline's graph in Python before
anything runs on a device, so the graph that `TrainLoader`/`EvalLoader` build for device cuda:0 can be
built here and inspected: every gpu/mixed operator must have a GPU (mixed) implementation in this DALI,
the image work must run on the GPU, and the GPU graph must be the same definition as the CPU graph that
the rest of the suite runs (same operators, only the device differs). The run itself is
tests/test_pipeline.py::test_gpu_loader_hands_cuda_tensors_without_copy (GPU-marked)."""
from collections import Counter

import numpy as np
import pytest
from nvidia.dali.ops import _registry

from fastssl.data import pipeline as P
from fastssl.data.augment import AugmentConfig

IMAGE_OPS = {"WarpAffine", "Equalize", "Erase", "Filter", "CropMirrorNormalize", "Flip", "Resize",
             "decoders__Image"}
"""operators that touch image data: on the GPU path none may run on the CPU"""


def _ops(pipe) -> Counter:
    """(schema name, device) → count over the pipeline's Python graph (built, not run)."""
    if not (hasattr(pipe, "_build_graph") and hasattr(pipe, "_ops")):  # DALI internals, as of DALI 2.4
        pytest.skip("this DALI has no Pipeline._build_graph/_ops to inspect the graph without running it")
    return P.operator_counts(pipe)


def _train(gpu: bool, *, channels=3, encoded=False, num_weak=1, num_strong=1, aug=AugmentConfig(flip_prob=0.5)):
    x = np.zeros((16, 32, 32, channels), np.uint8)
    y = np.zeros(16, np.int64)
    files = [f"/nonexistent/{i}.jpg" for i in range(16)] if encoded else None  # read only when run
    source = P._Source(None if encoded else x, y, P.EpochSampler(16, 8, 0, 1), files)
    return P._train_graph(source, hw=(32, 32), channels=channels, aug=aug,
                          mean=np.full(channels, 127.0), std=np.full(channels, 64.0), num_weak=num_weak,
                          num_strong=num_strong, gpu=gpu, encoded=encoded, batch_size=8, num_threads=1,
                          device_id=0 if gpu else None, prefetch_queue_depth=2)


def _eval(gpu: bool, *, encoded=False):
    x = np.zeros((16, 32, 32, 3), np.uint8)
    files = [f"/nonexistent/{i}.jpg" for i in range(16)] if encoded else None
    source = P._EvalSource(None if encoded else x, np.zeros(16), np.arange(16), 8, 2, files)
    return P._eval_graph(source, hw=(32, 32), channels=3, mean=np.full(3, 127.0), std=np.full(3, 64.0),
                         gpu=gpu, encoded=encoded, batch_size=8, num_threads=1, device_id=0 if gpu else None,
                         seed=0, prefetch_queue_depth=2)


GRAPHS = {
    "fixmatch arrays": lambda gpu: _train(gpu),
    "grayscale": lambda gpu: _train(gpu, channels=1),
    "2 weak + 2 strong": lambda gpu: _train(gpu, num_weak=2, num_strong=2),
    "weak only": lambda gpu: _train(gpu, num_strong=0),
    "image folder": lambda gpu: _train(gpu, encoded=True),
    "eval arrays": lambda gpu: _eval(gpu),
    "eval image folder": lambda gpu: _eval(gpu, encoded=True),
}


@pytest.mark.parametrize("graph", GRAPHS)
def test_gpu_graph_uses_only_ops_with_a_gpu_backend(graph):
    ops = _ops(GRAPHS[graph](True))
    registered = {"gpu": _registry.gpu_ops(), "mixed": _registry.mixed_ops(), "cpu": _registry.cpu_ops()}
    missing = sorted(f"{name} ({dev})" for name, dev in ops if name not in registered[dev])
    assert not missing, f"no {missing} backend in this DALI"
    on_cpu = sorted(name for name, dev in ops if dev == "cpu" and name in IMAGE_OPS)
    assert not on_cpu, f"image operators on the CPU in the GPU pipeline: {on_cpu}"
    assert any(dev in ("gpu", "mixed") and name in IMAGE_OPS for name, dev in ops)


@pytest.mark.parametrize("graph", GRAPHS)
def test_gpu_and_cpu_graphs_are_one_definition(graph):
    """Same image operators the same number of times on either backend (both unbranched): the CPU runs of
    the unbranched graph in this suite (every Pillow test, and tests/test_pipeline.py's batches equal to
    the grouped graph the CPU loader runs by default) test the GPU graph's augmentation logic."""
    gpu, cpu = _ops(GRAPHS[graph](True)), _ops(GRAPHS[graph](False))
    image = lambda ops: Counter({name: n for (name, _), n in ops.items() if name in IMAGE_OPS})  # noqa: E731
    assert image(gpu) == image(cpu)
    assert {dev for (name, dev) in gpu if name in IMAGE_OPS} <= {"gpu", "mixed"}
    assert {dev for (name, dev) in cpu} == {"cpu"}


@pytest.mark.parametrize("gpu", [True, False])
def test_operator_count_is_bounded_and_independent_of_the_pool(gpu):
    """DALI pays per operator per iteration, not per sample. The FixMatch unlabeled pipeline (weak + strong,
    3 RandAugment ops) has at most 220 operators (measured 211; 761 with per-op conditionals), a stage adds
    at most 65, and the pool's size adds none (per-sample parameters, not per-op branches)."""
    n = {k: sum(_ops(_train(gpu, aug=AugmentConfig(flip_prob=0.5, num_ops=k))).values()) for k in (0, 1, 3)}
    assert n[3] <= 220 and n[3] - n[0] <= 3 * 65 and n[3] - n[1] == 2 * (n[1] - n[0])
    one_op = AugmentConfig(flip_prob=0.5, num_ops=3, ops=("Identity",))
    assert sum(_ops(_train(gpu, aug=one_op)).values()) == n[3]


def test_statistics_branch_operator_bound():
    """The CPU backend's graph (RandAugment's groups of ops each in a conditional: augment.stage_grouped)
    stays under 260 operators (measured 205 with 3 ops, 211 unbranched)."""
    src = P._Source(np.zeros((16, 32, 32, 3), np.uint8), np.zeros(16), P.EpochSampler(16, 8, 0, 1))
    pipe = P._train_graph(src, hw=(32, 32), channels=3, aug=AugmentConfig(flip_prob=0.5), mean=np.full(3, 127.0),
                          std=np.full(3, 64.0), num_weak=1, num_strong=1, gpu=False, encoded=False, branch=True,
                          batch_size=8, num_threads=1, device_id=None, prefetch_queue_depth=2)
    assert sum(_ops(pipe).values()) <= 260
