"""Contract checks for one algorithm, by name, called from its own test file (tests/test_<name>.py).

The registry-wide tests (test_algorithms.py, test_zoo_integration.py) run these contracts over every
algorithm at once; an algorithm's own test calls them for itself so that the file proves its algorithm's
contract alone, with checks the registry-wide versions do not make (host syncs of the bare step, gathered
state equal to both ranks' rows, the views a real loader yields being the ones the step reads).
"""
from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from algo_testing import STEP, ConfidentNet, build_algo, separable_batch, teacher_copy
from fastssl.train.syncs import HostSyncTrace


def check_compiles_and_sync_free(name: str, **overrides) -> None:
    """forward (+ backward traced by AOT autograd) and update_state compile with fullgraph=True, and the
    eager step (forward, backward, update_state) dispatches no host-syncing operator."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ConfidentNet()
    teacher = teacher_copy(model)
    algo = build_algo(name, **overrides)
    batch, step = separable_batch(type(algo)), torch.tensor(STEP)
    fwd = torch.compile(lambda b, s: algo(model, teacher, b, s), backend="aot_eager", fullgraph=True)
    out = fwd(batch, step)
    out.loss.backward()
    torch.compile(algo.update_state, backend="eager", fullgraph=True)(batch, out.state)
    assert torch.isfinite(out.loss)
    with HostSyncTrace() as trace:
        out = algo(model, teacher, separable_batch(type(algo), seed=1), step)
        out.loss.backward()
        algo.update_state(batch, out.state)
    assert trace.total == 0, trace.report()


def state_round_trip(name: str, steps: int = 3, **overrides) -> None:
    """A few updates move the buffers; `state_dict` restores them exactly into a fresh algorithm (the
    parameters of its heads too), and the restored one computes the same next step."""
    torch.manual_seed(0)
    model = ConfidentNet()
    algo = build_algo(name, **overrides)
    init = {k: v.clone() for k, v in algo.state_dict().items()}
    teacher = teacher_copy(model)
    for i in range(steps):
        b = separable_batch(type(algo), seed=10 + i)
        algo.update_state(b, algo(model, teacher, b, torch.tensor(i)).state)
    saved = {k: v.clone() for k, v in algo.state_dict().items()}
    assert any(not torch.equal(init[k], saved[k]) for k in algo.state_dict() if k in dict(algo.named_buffers()))
    fresh = build_algo(name, **overrides)
    fresh.load_state_dict(saved)
    assert all(torch.equal(fresh.state_dict()[k], saved[k]) for k in saved)
    batch, step = separable_batch(type(algo), seed=99), torch.tensor(steps)
    outs = []
    for a in (algo, fresh):
        torch.manual_seed(5)
        outs.append(a(model, teacher, batch, step))
    assert torch.equal(outs[0].loss, outs[1].loss)


def _worker(rank: int, store: str, out_dir: str, name: str, overrides: dict, steps: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        import sys

        mod = sys.modules[build_algo(name, **overrides).__module__]
        states = {}
        for synced in (True, False):
            torch.manual_seed(0)  # same model and heads on both ranks; the batches differ by rank
            model = ConfidentNet(scale=8.0)
            algo = build_algo(name, **overrides)
            teacher = teacher_copy(model)
            saved = {k: getattr(mod, k) for k in ("all_gather_cat", "all_reduce_sum") if hasattr(mod, k)}
            if not synced:  # the control: each rank keeps its own rows and sums
                for k in saved:
                    setattr(mod, k, lambda t: t)
            try:
                for i in range(steps):
                    b = separable_batch(type(algo), seed=1000 * (rank + 1) + i)
                    algo.update_state(b, algo(model, teacher, b, torch.tensor(i)).state)
            finally:
                for k, v in saved.items():
                    setattr(mod, k, v)
            states[synced] = {k: v.clone() for k, v in algo.state_dict().items()}
        torch.save(states, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def two_rank_states(name: str, steps: int = 3, **overrides) -> list[dict]:
    """Each rank's state_dict after `steps` steps on rank-dependent batches: [rank0, rank1], each
    {True: with the gather, False: with an identity gather (the control)}."""
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(os.path.join(d, "store"), d, name, overrides, steps), nprocs=2, join=True)
        return [torch.load(os.path.join(d, f"rank{r}.pt")) for r in range(2)]


def dali_batch(views):
    """One batch of a real DALI `TrainLoader` built for `views` (the integration test's small loader)."""
    import test_zoo_integration as zoo

    return next(iter(zoo._loader(views)))
