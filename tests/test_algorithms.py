"""Contracts every registered algorithm must meet, parametrized over the whole registry `ALGORITHMS`.

(1) the unlabeled term carries gradient (λ_u=1 vs λ_u=0 gradients differ; `supervised`: identical), and so
    do the add-on regularizers (`entmin_weight=1` vs 0; `supervised` refuses them);
(2) forward (with its backward traced by AOT autograd) and `update_state` compile with no graph break;
(3) state: an algorithm with `update_state` has buffers that a few updates move, `state_dict()` restores
    them exactly and the restored algorithm computes the same next step; one without has no buffers and
    hands no state;
(4) the state is identical on 2 gloo ranks fed different batches (one spawn for all algorithms);
(5) a short CPU run on separable synthetic data lowers the loss.

The batch is built from the views each algorithm declares (`views`), so any algorithm fits; every
algorithm gets a teacher (a copy of the model), as from the trainer. The model's logits are scaled up so that confidence thresholds are reached
from the first step (otherwise a masked unlabeled term would be zero and (1) would prove nothing).
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from algo_testing import STEP, TOTAL, ConfidentNet, build_algo, separable_batch, teacher_copy
from fastssl.algorithms import ALGORITHMS, get_algorithm
from fastssl.algorithms.base import Algorithm

NAMES = sorted(ALGORITHMS)


# Logit scale of the gradient test. A confidence-thresholded term is exactly 0 unless predictions reach τ,
# so those algorithms are tested with confident (50x) logits. The unthresholded consistency losses are
# tested with unscaled logits: at 50x both of Π-Model's / Mean Teacher's predictions are one-hot, the
# softmax-MSE is ~1e-15 and its gradient p(1 − p)·(p − t) underflows to exactly 0 in fp32, a property of
# saturated softmax, not a missing gradient path.
UNTHRESHOLDED = {"entmin", "ict", "meanteacher", "mixmatch", "pimodel", "remixmatch", "supervised", "vat"}


def grads(name: str, lambda_u: float, scale: float | None = None, **overrides) -> list[torch.Tensor]:
    """The model's gradient after one step at STEP (past every ramp-up, so λ_u is at full weight)."""
    return grads_and_metrics(name, lambda_u, scale, **overrides)[0]


def grads_and_metrics(name, lambda_u, scale=None, **overrides):
    torch.manual_seed(0)  # also fixes the step's own random draws (MixUp, rotations, VAT noise)
    model = ConfidentNet(scale=scale if scale is not None else 1.0 if name in UNTHRESHOLDED else 50.0)
    algo = build_algo(name, lambda_u=lambda_u, **overrides)
    out = algo(model, teacher_copy(model), separable_batch(type(algo), seed=1), torch.tensor(STEP))
    out.loss.backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()], out.metrics


@pytest.mark.parametrize("name", NAMES)
def test_unlabeled_term_has_gradient(name):
    g1, g0 = grads(name, 1.0), grads(name, 0.0)
    same = all(torch.equal(a, b) for a, b in zip(g1, g0))
    if name == "supervised":
        assert same, "supervised must not depend on lambda_u"
    else:
        assert not same, f"{name}: the unlabeled loss has no gradient (λ_u=1 gives the same grads as λ_u=0)"


@pytest.mark.parametrize("name", NAMES)
def test_regularizers_reach_every_algorithm(name):
    """`entmin_weight=1` changes the gradient (the add-on is in the loss, on logits with gradient) and is
    logged; cbl and MCC go through the same `Algorithm.regularizers` call. Unscaled logits: entropy of a
    saturated softmax has an underflowing gradient. `supervised` has no unlabeled logits: it refuses."""
    if name == "supervised":
        for k in ("entmin_weight", "cbl_weight", "mcc_weight"):
            with pytest.raises(ValueError, match="supervised uses no unlabeled data"):
                build_algo(name, **{k: 1.0})
        return
    g0, m0 = grads_and_metrics(name, 1.0, scale=1.0)
    g1, m1 = grads_and_metrics(name, 1.0, scale=1.0, entmin_weight=1.0)
    assert not all(torch.equal(a, b) for a, b in zip(g1, g0)), f"{name}: entmin_weight=1 does not change the gradient"
    assert "entmin_loss" in m1 and "entmin_loss" not in m0
    assert torch.isfinite(m1["entmin_loss"]) and m1["entmin_loss"] > 0
    _, m = grads_and_metrics(name, 1.0, scale=1.0, cbl_weight=1.0, mcc_weight=1.0)
    assert {"cbl_loss", "mcc_loss"} <= m.keys(), f"{name}: cbl/mcc metrics missing"


@pytest.mark.parametrize("name", NAMES)
def test_compiles_without_graph_break(name):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ConfidentNet()
    teacher = teacher_copy(model)
    algo = build_algo(name)
    batch = separable_batch(type(algo))
    step = torch.tensor(STEP)
    # aot_eager traces the joint forward+backward graph: a data-dependent op in either would fail here.
    fwd = torch.compile(lambda b, s: algo(model, teacher, b, s), backend="aot_eager", fullgraph=True)
    out = fwd(batch, step)
    out.loss.backward()
    upd = torch.compile(algo.update_state, backend="eager", fullgraph=True)
    upd(batch, out.state)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("name", NAMES)
def test_schedules_and_state_never_recompile(name):
    """New batches, state updates and steps across every warm-up and ramp (0 → TOTAL) run the one graph
    compiled at the first step: the step is a 0-d tensor and the state lives in buffers."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ConfidentNet()
    teacher = teacher_copy(model)
    algo = build_algo(name)
    fwd_count, upd_count = CompileCounterWithBackend("eager"), CompileCounterWithBackend("eager")
    fwd = torch.compile(lambda b, s: algo(model, teacher, b, s), backend=fwd_count, fullgraph=True)
    upd = torch.compile(algo.update_state, backend=upd_count, fullgraph=True)
    step = torch.zeros((), dtype=torch.long)
    for i, s in enumerate((0, 1, TOTAL // 10, STEP, TOTAL - 1)):
        batch = separable_batch(type(algo), seed=i)
        step.fill_(s)
        out = fwd(batch, step)
        out.loss.backward()
        upd(batch, out.state)
    assert fwd_count.frame_count == 1, f"{name}: the step compiled {fwd_count.frame_count} times"
    assert upd_count.frame_count <= 1, f"{name}: update_state compiled {upd_count.frame_count} times"


def buffers(algo) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in algo.state_dict().items()}


def run_updates(algo, model, n: int, seed: int, start: int = STEP) -> None:
    teacher = teacher_copy(model)
    for i in range(n):
        b = separable_batch(type(algo), seed=seed + i)
        out = algo(model, teacher, b, torch.tensor(start + i))
        algo.update_state(b, out.state)
        algo.after_step(model, b, out.state)


def has_state(algo_cls) -> bool:
    """The contract: an algorithm keeps state exactly when it implements `update_state` or `after_step`."""
    return algo_cls.update_state is not Algorithm.update_state or algo_cls.after_step is not Algorithm.after_step


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_or_no_state(name):
    """Stateful: a few updates (from step 0, so warm-up state moves too) change every buffer's content as a
    whole, `state_dict` → a fresh algorithm restores each exactly, and the restored algorithm computes the
    same next step (loss, metrics and the state handed to update_state) as the original. Stateless: no
    buffers at all (the family's `StepOutput.state` may still be handed; nothing keeps it)."""
    torch.manual_seed(0)
    model = ConfidentNet()
    algo = build_algo(name)
    init = buffers(algo)
    run_updates(algo, model, 3, seed=10, start=0)
    saved = buffers(algo)
    batch, step = separable_batch(type(algo), seed=99), torch.tensor(3)
    if not has_state(type(algo)):
        assert not list(algo.buffers()), f"{name}: buffers without update_state"
        return
    assert list(algo.buffers()), f"{name}: update_state without buffers"
    moved = [k for k in init if not torch.equal(init[k], saved[k])]
    assert moved, f"{name}: 3 updates left every buffer at its initial value; the round trip would prove nothing"
    fresh = build_algo(name)
    fresh.load_state_dict(saved)
    restored = buffers(fresh)
    assert restored.keys() == saved.keys()
    for k in saved:
        assert torch.equal(restored[k], saved[k]), f"{name}: buffer {k} not restored"
    outs = []
    for a in (algo, fresh):
        torch.manual_seed(5)  # the step's own draws (MixUp, rotations) alike
        outs.append(a(model, teacher_copy(model), batch, step))
    assert torch.equal(outs[0].loss, outs[1].loss)
    assert outs[0].metrics.keys() == outs[1].metrics.keys()
    assert all(torch.equal(x, y) for x, y in zip(outs[0].state, outs[1].state))


def _unsynced(name):
    """Context: the modules of the algorithm's class and its bases (SequenceMatch updates with FlexMatch's
    code) see identity collectives (each rank updates from its own batch)."""
    mods = {sys.modules[c.__module__] for c in get_algorithm(name).__mro__ if c.__module__.startswith("fastssl.")}

    @contextlib.contextmanager
    def patch():
        saved = {(m, k): getattr(m, k) for m in mods for k in ("all_gather_cat", "all_reduce_sum") if hasattr(m, k)}
        for m, k in saved:
            setattr(m, k, lambda t: t)
        try:
            yield
        finally:
            for (m, k), v in saved.items():
                setattr(m, k, v)
    return patch()


def _rank_worker(rank: int, store: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        states = {}
        for name in NAMES:
            for synced in (True, False):
                torch.manual_seed(0)  # same model on both ranks; different batches (seed depends on the rank)
                model = ConfidentNet(scale=8.0)  # varied predictions: states that depend on the batch's content
                algo = build_algo(name)
                init = buffers(algo)
                # from step 0: warm-up phases (Dash's ρ̂ over its first 8 steps of 4096) are covered too
                if synced:
                    run_updates(algo, model, 10, seed=1000 * (rank + 1), start=0)
                else:
                    with _unsynced(name):
                        run_updates(algo, model, 10, seed=1000 * (rank + 1), start=0)
                states[name, synced] = buffers(algo)
                states[name, "init"] = init
        torch.save(states, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_states():
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_rank_worker, args=(os.path.join(d, "store"), d), nprocs=2, join=True)
        return [torch.load(os.path.join(d, f"rank{r}.pt")) for r in range(2)]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", NAMES)
def test_state_identical_across_ranks(name, two_rank_states):
    r0, r1 = two_rank_states
    s0, s1 = r0[name, True], r1[name, True]
    assert s0.keys() == s1.keys()
    for k in s0:
        assert torch.equal(s0[k], s1[k]), f"{name}: buffer {k} differs between ranks"
    # Power check: with each rank updating from its own batch only, any state that moves must differ
    # between ranks, so the equality above is not vacuous.
    u0, u1 = r0[name, False], r1[name, False]
    if not _same(u0, r0[name, "init"]):
        assert not _same(u0, u1), f"{name}: rank-local updates agree anyway; the batches are not rank-dependent"


@pytest.mark.parametrize("name", NAMES)
def test_short_run_lowers_loss(name):
    torch.manual_seed(0)
    model = ConfidentNet(scale=1.0)
    teacher = teacher_copy(model)
    algo = build_algo(name)
    params = list(model.parameters()) + list(algo.parameters())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    eval_batch = separable_batch(type(algo), seed=999, noise=0.5)
    # MixMatch: λ_u = 100 reaches full weight 40% into the run; in 40 steps that is 16 steps, before the
    # labeled term has made its guesses useful (guess accuracy stays at chance, measured), so the model
    # fits its own wrong guesses and the loss rises (2.24 → 2.41; with 80 steps 2.24 → 2.10).
    steps = 80 if name == "mixmatch" else 40

    def eval_loss():
        # same random draws (MixUp λ and permutation, rotations, VAT noise) before and after training
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(1234)
            return float(algo(model, teacher, eval_batch, torch.tensor(TOTAL - 1)).loss)

    before = eval_loss()
    for i in range(steps):
        b = separable_batch(type(algo), seed=i, noise=0.5)
        out = algo(model, teacher, b, torch.tensor(i * TOTAL // steps))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        algo.update_state(b, out.state)
    after = eval_loss()
    assert after < before, f"{name}: loss {before:.4f} → {after:.4f}"


# Non-default options change the traced graph: each must compile without a graph break as well.
VARIANTS = [
    ("fixmatch", {"entmin_weight": 0.1, "cbl_weight": 0.1, "mcc_weight": 0.1}),
    ("flexmatch", {"mapping": "concave", "thresh_warmup": False, "hard_label": False}),
    ("freematch", {"use_quantile": True, "clip_thresh": True}),
    ("softmatch", {"dist_uniform": False, "hard_label": False}),
    ("uda", {"tsa_schedule": "exp"}),
    ("adamatch", {"hard_label": False}),
    ("defixmatch", {"hard_label": False}),
    # the add-on regularizers in each Zoo B algorithm (placed on different logits in each)
    *((n, {"entmin_weight": 0.1, "cbl_weight": 0.1, "mcc_weight": 0.1})
      for n in ("ict", "meanteacher", "mixmatch", "pimodel", "remixmatch", "vat")),
]


@pytest.mark.parametrize("name,options", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_option_variants_compile(name, options):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ConfidentNet()
    teacher = teacher_copy(model)
    algo = build_algo(name, **options)
    batch = separable_batch(type(algo))
    out = torch.compile(lambda b, s: algo(model, teacher, b, s), backend="aot_eager", fullgraph=True)(batch, torch.tensor(STEP))
    out.loss.backward()
    torch.compile(algo.update_state, backend="eager", fullgraph=True)(batch, out.state)
    assert torch.isfinite(out.loss)
