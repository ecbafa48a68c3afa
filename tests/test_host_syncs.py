"""No host syncs in a training step, for every algorithm, proven on CPU.

`fastssl.train.syncs.HostSyncTrace` records the operators that synchronise host and device on a GPU
(`.item()`, `bool(t)`, boolean-mask indexing, `nonzero`, `unique`, ...). The trace is checked first against
operators with known behaviour, then run over whole `Trainer` steps (data, forward, backward, optimizer,
EMA, algorithm state) of every registered algorithm: zero such operators per step. The reference-style
baseline of the benchmarks is the positive control (its `.item()` calls and boolean indexing are found).
On a GPU, tests/test_trainer_gpu.py runs the compiled step under `torch.cuda.set_sync_debug_mode("error")`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fastssl.algorithms import ALGORITHMS
from fastssl.algorithms.losses import one_hot
from fastssl.config import Config, apply_overrides
from fastssl.train.syncs import HostSyncTrace
from fastssl.train.trainer import Trainer

# benchmarks/ (the positive control's baseline) is a source-tree harness, not installed: found from this file,
# so the test passes alone and from any directory, not only after another test file has set sys.path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

x = torch.arange(-3.0, 5.0)
SYNCING = {
    "item": lambda: x[0].item(),
    "float": lambda: float(x.sum()),
    "if tensor": lambda: bool(x.sum() > 0),
    "boolean index": lambda: x[x > 0],
    "boolean index_put": lambda: x.clone().__setitem__(x > 0, 0.0),
    "masked_select": lambda: torch.masked_select(x, x > 0),
    "nonzero": lambda: torch.nonzero(x),
    "where (1 arg)": lambda: torch.where(x > 0),
    "unique": lambda: torch.unique(x),
    "repeat_interleave": lambda: torch.repeat_interleave(torch.tensor([1, 2])),
    "F.one_hot (CPU)": lambda: torch.nn.functional.one_hot(torch.tensor([0, 2]), 3),
}
SYNC_FREE = {
    "mask multiply": lambda: (x * (x > 0)).sum(),
    "where (3 args)": lambda: torch.where(x > 0, x, 0.0),
    "integer index": lambda: x[torch.tensor([1, 3])],
    "repeat_interleave(output_size)": lambda: torch.repeat_interleave(torch.tensor([1, 2]), output_size=3),
    "one_hot (scatter)": lambda: one_hot(torch.tensor([0, 2]), 3, torch.float32),
    "argmax / max": lambda: x.max(0),
}


@pytest.mark.parametrize("name", SYNCING)
def test_trace_finds_syncing_ops(name):
    with HostSyncTrace() as trace:
        SYNCING[name]()
    assert trace.total >= 1, name


@pytest.mark.parametrize("name", SYNC_FREE)
def test_trace_passes_sync_free_ops(name):
    with HostSyncTrace() as trace:
        SYNC_FREE[name]()
    assert trace.total == 0, trace.report()


SMOKE = {"data.batch_size": 8, "data.uratio": 2, "data.eval_batch_size": 450, "train.steps": 100,
         "train.eval_every": 100, "train.progress": False, "train.compile": "off"}
CASES = {name: {} for name in sorted(ALGORITHMS)}
CASES.update({  # option paths with code of their own
    "freematch+quantile": {"algo.name": "freematch", "algo.use_quantile": True},
    "softmatch-no-align": {"algo.name": "softmatch", "algo.dist_align": False},
    "fixmatch+regularizers": {"algo.name": "fixmatch", "algo.entmin_weight": 0.1, "algo.cbl_weight": 0.1,
                              "algo.mcc_weight": 0.1},
    "fixmatch+soft": {"algo.name": "fixmatch", "algo.hard_label": False},
})


@pytest.mark.parametrize("case", CASES)
def test_training_step_has_no_host_sync(case, tmp_path):
    overrides = {"algo.name": case, **CASES[case]}
    cfg = Config()
    apply_overrides(cfg, {**SMOKE, **overrides, "train.out": str(tmp_path)})
    trainer = Trainer(cfg)
    trainer.run_steps(1)  # the first step may set up lazily
    with HostSyncTrace() as trace:
        trainer.run_steps(2)
    assert trace.total == 0, f"{case}: {trace.report()}"
    assert trainer.step == 3


def test_baseline_is_caught():
    """Positive control on a whole step: the reference-style FixMatch step syncs 7 times (4 `.item()`,
    the boolean-indexed loss forward twice and its backward once)."""
    from fastssl.bench.baseline import BaselineTrainer
    from fastssl.models import build_model

    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (64, 32, 32, 3), generator=g, dtype=torch.uint8).numpy()
    labels = (torch.arange(64) % 10).numpy()
    tr = BaselineTrainer(build_model("cnn_small", num_classes=10), imgs[:20], labels[:20], imgs, labels,
                         batch_size=4, uratio=2, workers=0, total_steps=100, device=torch.device("cpu"), seed=0)
    tr.run_steps(1)
    with HostSyncTrace() as trace:
        tr.run_steps(2)
    assert trace.counts["aten::_local_scalar_dense"] == 8, trace.report()
    assert trace.total == 14, trace.report()
