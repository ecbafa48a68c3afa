"""The compiled step (two graphs: forward+loss, and after-backward) equals the eager step, for every algorithm.

Every registered algorithm (parametrized over `ALGORITHMS`, so later ones are covered too) runs the same
synthetic batches eagerly and compiled with `aot_eager` (Dynamo + AOTAutograd: the real graph capture,
without code generation), over steps that span the learning-rate warm-up and the algorithms' ramps
(fractions of `train.steps`). After every step the running metric sums (loss included) agree; at the end the
parameters, momentum buffers, EMA teacher and algorithm state agree to fp32 tolerance, and exactly two graphs
were compiled: no graph break, no recompile. Inductor (the default backend) is checked on FixMatch, with
`reduce-overhead` (CUDA graphs are skipped on CPU; the step marks and static addresses run all the same).
"""
from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch
import torch.multiprocessing as mp
from torch._dynamo.testing import CompileCounterWithBackend

from fastssl.algorithms import ALGORITHMS, get_algorithm
from fastssl.algorithms.losses import mixup_lambda
from fastssl.config import Config, OptimConfig, apply_overrides
from fastssl.train.optim import lr_at, lr_tensor
from fastssl.train.trainer import Trainer

STEPS = 6
TINY = {"data.name": "synthetic", "model.name": "cnn_small", "data.batch_size": 4, "data.uratio": 2,
        "data.num_labels": 40, "train.steps": 8, "train.progress": False, "train.ema_decay": 0.9,
        "optim.warmup_steps": 2}
"""8-step runs, 6 steps taken: the lr warm-up (2 steps) and ramps over fractions of 8 steps move every step"""


def _cfg(out, name: str, compile: str, **extra) -> Config:
    cfg = Config()
    overrides = {**TINY, "algo.name": name, "train.compile": compile, "train.out": str(out), **extra}
    if "tau" in {f.name for f in dataclasses.fields(get_algorithm(name).Config)}:
        overrides["algo.tau"] = 0.05  # every unlabeled sample goes through the pseudo-label loss
    apply_overrides(cfg, overrides)
    return cfg


def _state(tr: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in tr.model.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in tr.ema.module.state_dict().items()})
    out.update({f"algorithm.{k}": v for k, v in tr.algorithm.state_dict().items()})
    for i, p in enumerate(p for g in tr.optimizer.param_groups for p in g["params"]):
        out[f"momentum.{i}"] = tr.optimizer.state[p]["momentum_buffer"]
    out["lr"], out["step_t"], out["metric_sum"] = tr.lr, tr.step_t, tr._metric_sum
    return out


def _fp32_close(got, want, where):
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m: f"{where}: {m}")


def _lockstep(eager: Trainer, comp: Trainer, steps: int, close=_fp32_close) -> None:
    """Each step starts the eager trainer from the compiled one's state (copied in place) and the same RNG
    seed, then compares everything after it. Without the re-sync, fp32 rounding differences (~1e-7) turn
    into visible ones within a few steps: an untrained net on noise has near-tied logits, and a pseudo-label
    whose argmax flips moves that sample's gradient by O(1) while the loss moves by ~1e-7."""
    for k in range(steps):
        if k:
            for key, v in _state(comp).items():
                _state(eager)[key].copy_(v)
        for tr in (eager, comp):
            torch.manual_seed(k)
            tr.train_step()
        a, b = _state(eager), _state(comp)
        assert a.keys() == b.keys()
        for key in a:
            close(b[key], a[key], f"step {k}, {key}")


@pytest.fixture
def backend(monkeypatch):
    counter = CompileCounterWithBackend("aot_eager")
    monkeypatch.setattr(Trainer, "compile_backend", counter)
    torch._dynamo.reset()
    yield counter
    torch._dynamo.reset()


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_compiled_step_equals_eager_in_two_graphs(name, backend, tmp_path):
    eager = Trainer(_cfg(tmp_path / "e", name, "off"))
    comp = Trainer(_cfg(tmp_path / "c", name, "on"))
    assert comp.forward is not comp._forward and comp.after_backward is not comp._after_backward
    _lockstep(eager, comp, STEPS)
    assert comp.step_t.item() == comp.step == STEPS
    # forward+loss and after-backward, each once: fullgraph=True would have raised at a graph break, and a
    # recompile (a new lr, step, ramp value or optimizer state) would have compiled a third graph
    assert backend.frame_count == 2, f"{backend.frame_count} graphs compiled"


def test_two_mixup_draws_stay_two_in_a_compiled_graph():
    """Two λ draws in one graph (ICT's labeled and unlabeled MixUp) are two draws, the same ones as eager's.
    With Beta.sample(), AOTAutograd's common-subexpression pass merged them into one (its op,
    _sample_dirichlet, is not on the pass's list of random ops), so compiled ICT mixed both batches with
    one λ; the trainer's default backend, inductor, runs the same pass."""
    x = torch.randn(4, 3)

    def two(x):  # the draws stay inside the graph (returned, they were kept apart)
        return (mixup_lambda(1.0, x, biased=False) * x).sum() + (mixup_lambda(1.0, x, biased=False) * x.square()).sum()

    torch.manual_seed(0)
    lams = [mixup_lambda(1.0, x, biased=False) for _ in range(2)]
    assert lams[0] != lams[1]
    want = (lams[0] * x).sum() + (lams[1] * x.square()).sum()
    torch.manual_seed(0)
    got = torch.compile(two, backend="aot_eager", fullgraph=True)(x.clone().requires_grad_())
    torch.testing.assert_close(got.detach(), want)


def test_lr_tensor_follows_the_host_schedule():
    """The device schedule (what the step uses) against the host one (what the logs report), warm-up and
    cosine, to fp64 rounding."""
    cfg = OptimConfig(lr=0.03, warmup_steps=5)
    total = 40
    for k in range(total):
        got = lr_tensor(torch.tensor(k), total, cfg).item()
        assert math.isclose(got, lr_at(k, total, cfg), rel_tol=1e-15), k
    plain = OptimConfig(lr=0.03)
    assert lr_tensor(torch.tensor(7), total, plain).item() == pytest.approx(0.03 * math.cos(math.pi * 7 / 16 * 7 / 40))


def test_eager_step_writes_the_scheduled_lr(tmp_path):
    """The optimizer reads the 0-d lr tensor: after step k it holds lr_at(k), in every group."""
    tr = Trainer(_cfg(tmp_path, "fixmatch", "off"))
    for k in range(3):
        tr.train_step()
        assert all(g["lr"] is tr.lr for g in tr.optimizer.param_groups)
        assert tr.lr.item() == pytest.approx(lr_at(k, tr.cfg.train.steps, tr.cfg.optim), rel=1e-6)


def _norm_close(got, want, where):
    got, want = got.double(), want.double()
    assert (got - want).norm() <= 1e-3 * want.norm() + 1e-6, f"{where}: {(got - want).norm()} vs {want.norm()}"


@pytest.mark.slow
def test_inductor_reduce_overhead_step_equals_eager(tmp_path, monkeypatch):
    """The default backend (inductor) with --train.compile_mode=reduce-overhead, over a few steps of FixMatch
    (no random ops in its step: inductor draws random numbers its own way): eager's losses and weights.
    Compared in norm (0.1%): inductor reorders sums, and on noise images BatchNorm's backward subtracts
    nearly equal terms, so single entries move more than fp32 rounding."""
    torch._dynamo.reset()
    eager = Trainer(_cfg(tmp_path / "e", "fixmatch", "off"))
    comp = Trainer(_cfg(tmp_path / "c", "fixmatch", "on", **{"train.compile_mode": "reduce-overhead"}))
    assert comp.cudagraphs
    _lockstep(eager, comp, 3, close=_norm_close)
    torch._dynamo.reset()


def _ddp_worker(rank: int, port: int, out: str, q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    import torch.distributed as dist

    try:
        Trainer.compile_backend = counter = CompileCounterWithBackend("aot_eager")
        eager = Trainer(_cfg(f"{out}/e", "flexmatch", "off", **{"train.cpu_threads": 1}))
        comp = Trainer(_cfg(f"{out}/c", "flexmatch", "on", **{"train.cpu_threads": 1}))
        _lockstep(eager, comp, 4)
        # BatchNorm statistics and metric sums are per rank (made identical only at evaluations)
        shared = [*comp.model.parameters(), *comp.ema.module.parameters(), *comp.algorithm.state_dict().values(),
                  *(comp.optimizer.state[p]["momentum_buffer"] for p in comp.model.parameters())]
        flat = torch.cat([v.detach().flatten().double() for v in shared])
        gathered = [torch.empty_like(flat) for _ in range(2)]
        dist.all_gather(gathered, flat)
        q.put((rank, None, torch.equal(*gathered), counter.frame_count))
    except Exception as e:  # the parent reports it
        q.put((rank, repr(e), False, -1))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~40 s: two processes, each compiling
def test_compiled_step_under_ddp_equals_eager_on_two_gloo_ranks(tmp_path):
    """Two gloo ranks, FlexMatch (its update_state gathers indices and pseudo-labels from every rank, inside
    the after-backward graph as functional collectives): the compiled DDP step equals the eager DDP step
    on each rank, and the ranks hold identical weights, momentum, EMA weights and algorithm state."""
    from test_distributed import free_port

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, port, str(tmp_path), q)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(q.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for rank, err, same, graphs in results:
        assert err is None, f"rank {rank}: {err}"
        assert same, "compiled ranks diverged"
        assert graphs == 3, f"rank {rank}: {graphs} graphs"  # the DDP module's (per bucket: 2), after-backward
