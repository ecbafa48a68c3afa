"""Meta Pseudo Labels against references by hand: the student's loss and the teacher's (with the feedback h from
two explicit student evaluations around a hand-made student update) as per-sample loops in fp64; the teacher's
step against torch.optim.SGD on that per-sample loss; the contract (teacher outside the trainer's optimizer,
compiled forward, sync-free step, state round trip, identical teachers on 2 gloo ranks with a control); a
short run; a Trainer run that resumes bit-exactly."""
from __future__ import annotations

import copy
import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from algo_testing import (ConfidentNet, build_algo, ce_by_hand, random_image_batch, separable_batch, soft_ce_by_hand,
                          softmax_by_hand, teacher_copy, tiny_net)
from fastssl.algorithms import mpl as mpl_module
from fastssl.algorithms.mpl import MPL, MPLConfig
from fastssl.train.optim import param_groups
from fastssl.train.syncs import HostSyncTrace

C, TOTAL = 5, 1000
CFG = dict(tau=0.3, T=0.7, uda_weight=2.0, unsup_warmup=0.5, label_smoothing=0.1, teacher_lr=0.05,
           teacher_momentum=0.9, teacher_weight_decay=0.01, baseline_decay=0.99)
STEP = 99  # inside the UDA ramp: weight uda_weight · (STEP + 1) / (0.5 · TOTAL) = 0.4


def make_algo(**overrides) -> MPL:
    """MPL over bias-free-of-BN fp64 tiny nets, so a network's batch forward equals its per-sample forwards."""
    return MPL(MPLConfig(**{**CFG, **overrides}), num_classes=C, num_ulb=64, total_steps=TOTAL,
               make_model=lambda: tiny_net(seed=7, bn=False, num_classes=C))


def rows(net, x):
    """The network's logits one sample at a time (no batch statistics involved)."""
    return [net(x[i:i + 1])[0] for i in range(x.shape[0])]


def student_loss_by_hand(t_s, s_s, tau, T):
    total = 0.0
    for t, s in zip(t_s, s_s):
        if max(softmax_by_hand(t)) >= tau:
            total += soft_ce_by_hand(s, softmax_by_hand(t, T))
    return total / len(t_s)


def teacher_loss_by_hand(teacher, batch, pseudo, h, cfg, step):
    """The teacher's loss as a per-sample loop of differentiable torch ops (so torch.autograd gives the
    reference gradient); the masks and targets are read as Python floats."""
    eps = cfg["label_smoothing"]
    sup = 0.0
    for z, y in zip(rows(teacher, batch.x_lb), batch.y_lb.tolist()):
        target = [1 - eps if c == y else eps / (C - 1) for c in range(C)]
        sup = sup - sum(target[c] * z.log_softmax(-1)[c] for c in range(C))
    sup = sup / len(batch.y_lb)
    t_w, t_s = rows(teacher, batch.x_ulb_w), rows(teacher, batch.x_ulb_s)
    uda, mpl = 0.0, 0.0
    for w, s, yhat in zip(t_w, t_s, pseudo.tolist()):
        if max(softmax_by_hand(w)) >= cfg["tau"]:
            target = softmax_by_hand(w, cfg["T"])
            uda = uda - sum(target[c] * s.log_softmax(-1)[c] for c in range(C))
        mpl = mpl - s.log_softmax(-1)[yhat]
    n = len(t_s)
    ramp = min(1.0, (step + 1) / (cfg["unsup_warmup"] * TOTAL))
    return sup + cfg["uda_weight"] * ramp * uda / n + h * mpl / n


def mean_ce_rows(net, x, y):
    return sum(ce_by_hand(z, t) for z, t in zip(rows(net, x), y.tolist())) / len(y)


def test_losses_feedback_and_teacher_step_equal_per_sample_loops_fp64():
    torch.manual_seed(0)
    algo = make_algo()
    student = tiny_net(seed=3, bn=False, num_classes=C)
    batch = random_image_batch(MPL.views, B=4, mu=3, num_classes=C, seed=5)
    teacher0 = copy.deepcopy(algo.teacher)
    out = algo(student, None, batch, torch.tensor(STEP))

    # student: masked soft CE to the teacher's sharpened strong-view prediction; some rows masked, some not
    t_s = rows(teacher0, batch.x_ulb_s)
    kept = [max(softmax_by_hand(t)) >= CFG["tau"] for t in t_s]
    assert any(kept) and not all(kept), "tau must split the batch for the mask to be tested"
    with torch.no_grad():
        ref = student_loss_by_hand(t_s, rows(student, batch.x_ulb_s), CFG["tau"], CFG["T"])
        old = mean_ce_rows(student, batch.x_lb, batch.y_lb)
    assert float(out.loss.detach()) == pytest.approx(ref, rel=1e-12, abs=1e-14)
    assert float(out.metrics["sup_loss"]) == pytest.approx(old, rel=1e-12)
    assert out.state.pseudo.tolist() == [max(range(C), key=lambda c: float(t[c])) for t in t_s]

    # the student's update, by hand; the new labeled loss from a second explicit evaluation
    out.loss.backward()
    with torch.no_grad():
        for p in student.parameters():
            p -= 0.5 * p.grad
        new = mean_ce_rows(student, batch.x_lb, batch.y_lb)
    assert old != new
    h_ref = (old - new) * CFG["baseline_decay"]  # h − b with b = (1 − d)·h after the first update from 0
    with torch.no_grad():
        h = algo.feedback(student, batch, out.state)
    assert float(h) == pytest.approx(h_ref, rel=1e-10)
    assert float(algo.baseline) == pytest.approx((old - new) * (1 - CFG["baseline_decay"]), rel=1e-10)

    # the teacher's loss, and its step against torch.optim.SGD on the per-sample loss
    ref_teacher = copy.deepcopy(teacher0).requires_grad_(True)
    ref_loss = teacher_loss_by_hand(ref_teacher, batch, out.state.pseudo, h_ref, CFG, STEP)
    algo.teacher.requires_grad_(True)
    got = algo.teacher_loss(batch, out.state, h)
    algo.teacher.requires_grad_(False)
    assert float(got.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-10)
    lr = CFG["teacher_lr"] * math.cos(7 * math.pi * STEP / (16 * TOTAL))
    opt = torch.optim.SGD(param_groups([ref_teacher], CFG["teacher_weight_decay"]), lr=lr,
                          momentum=CFG["teacher_momentum"], nesterov=True)
    ref_loss.backward()
    opt.step()
    algo.baseline.zero_()  # after_step advances the baseline again: start it where feedback() found it
    algo.after_step(student, batch, out.state)
    for (name, p), q in zip(algo.teacher.named_parameters(), ref_teacher.parameters()):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12), name
        assert not torch.equal(p, dict(teacher0.named_parameters())[name]), f"{name} did not move"
        assert not p.requires_grad


def test_gradient_reaches_the_student_through_the_unlabeled_term_only():
    """The student's gradient scales with λ_u (its loss is the unlabeled term); the teacher gets none from the
    forward, and the trainer's optimizer (param_groups of [model, algorithm]) leaves it out."""
    def student_grads(lambda_u):
        torch.manual_seed(0)
        algo, student = make_algo(lambda_u=lambda_u), tiny_net(seed=3, bn=False, num_classes=C)
        out = algo(student, None, random_image_batch(MPL.views, B=4, mu=3, num_classes=C, seed=5), torch.tensor(STEP))
        out.loss.backward()
        assert all(p.grad is None for p in algo.teacher.parameters())
        return [p.grad for p in student.parameters()], algo, student
    g1, algo, student = student_grads(1.0)
    g2, _, _ = student_grads(2.0)
    assert any(a.abs().sum() > 0 for a in g1)
    assert all(torch.allclose(2 * a, b, rtol=1e-12) for a, b in zip(g1, g2))
    owned = {id(p) for g in param_groups([student, algo], 5e-4) for p in g["params"]}
    assert owned == {id(p) for p in student.parameters()}


def test_needs_make_model():
    with pytest.raises(ValueError, match="make_model="):
        MPL(MPLConfig(), num_classes=C, num_ulb=8)


def test_forward_compiles_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(0)
    algo, model = build_algo("mpl"), ConfidentNet(scale=1.0)
    ema = teacher_copy(model)
    fwd = torch.compile(lambda b, s: algo(model, ema, b, s), backend="eager", fullgraph=True)
    for s in (0, 1):
        out = fwd(separable_batch(MPL, seed=s), torch.tensor(s))
        out.loss.backward()
        algo.after_step(model, separable_batch(MPL, seed=s), out.state)
    assert torch.isfinite(out.loss)


def test_step_is_sync_free():
    """Forward, backward, the student's step and after_step (the teacher's backward and step) dispatch no
    operator that syncs host and device (the trainer-level check is test_host_syncs[mpl])."""
    torch.manual_seed(0)
    algo, model = build_algo("mpl"), ConfidentNet(scale=1.0)
    batch, ema = separable_batch(MPL, seed=1), teacher_copy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, foreach=True)
    with HostSyncTrace() as trace:
        for s in (0, 1):
            out = algo(model, ema, batch, torch.tensor(s))
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            algo.update_state(batch, out.state)
            algo.after_step(model, batch, out.state)
    assert trace.total == 0, trace.report()


def _run(algo, model, n, seed, opt_lr=0.2):
    """n full steps: the student's SGD step on the forward's loss, then the algorithm's after_step."""
    opt = torch.optim.SGD(model.parameters(), lr=opt_lr)
    teacher = teacher_copy(model)
    for i in range(n):
        b = separable_batch(MPL, seed=seed + i, noise=0.5)
        out = algo(model, teacher, b, torch.tensor(i))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        algo.update_state(b, out.state)
        algo.after_step(model, b, out.state)


def test_state_round_trip_resumes_the_teacher_exactly():
    torch.manual_seed(0)
    model, algo = ConfidentNet(scale=1.0), build_algo("mpl")
    _run(algo, model, 3, seed=10)
    saved = {k: v.clone() for k, v in algo.state_dict().items()}
    assert {"teacher_momentum", "baseline"} <= saved.keys() and any(k.startswith("teacher.") for k in saved)
    assert saved["teacher_momentum"].abs().sum() > 0 and saved["baseline"] != 0
    torch.manual_seed(1)
    fresh = build_algo("mpl")  # a differently initialised teacher
    assert not torch.equal(fresh.teacher.fc.weight, algo.teacher.fc.weight)
    fresh.load_state_dict(saved)
    models = [model, copy.deepcopy(model)]
    for a, m in zip((algo, fresh), models):
        _run(a, m, 2, seed=50)
    for k, v in algo.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    assert not torch.equal(algo.teacher_momentum, saved["teacher_momentum"])


def _rank_worker(rank: int, store: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        teachers = {}
        for synced in (True, False):
            torch.manual_seed(0)  # same student and teacher on both ranks; batches differ by rank
            model, algo = ConfidentNet(scale=1.0), build_algo("mpl")
            saved = mpl_module.all_reduce_sum
            if not synced:
                mpl_module.all_reduce_sum = lambda t: t
            try:
                _run(algo, model, 4, seed=1000 * (rank + 1))
            finally:
                mpl_module.all_reduce_sum = saved
            teachers[synced] = {k: v.clone() for k, v in algo.state_dict().items()}
        torch.save(teachers, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_hold_identical_teachers():
    """The teacher's gradients and h are all-reduced: both ranks step the same teacher (and baseline) from
    different batches. Control: with rank-local gradients and h the teachers differ."""
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_rank_worker, args=(os.path.join(d, "store"), d), nprocs=2, join=True)
        r0, r1 = (torch.load(os.path.join(d, f"rank{r}.pt")) for r in range(2))
    for k in r0[True]:
        assert torch.equal(r0[True][k], r1[True][k]), f"{k} differs between ranks"
    assert not torch.equal(r0[False]["teacher.fc.weight"], r1[False]["teacher.fc.weight"])
    assert not torch.equal(r0[False]["baseline"], r1[False]["baseline"])


def test_short_run_lowers_the_losses():
    """On separable data, 60 full steps lower the teacher's labeled loss and the student's labeled loss (the
    student never sees a label: it learns them through the teacher's pseudo-labels, which become right).
    Unscaled teacher logits and a slow UDA ramp: a saturated teacher has no gradient to learn from."""
    from algo_testing import C as C4, NUM_ULB, TOTAL as T4

    torch.manual_seed(0)
    model = ConfidentNet(scale=1.0)
    algo = MPL(MPLConfig(tau=0.3, teacher_lr=0.1, unsup_warmup=0.5), num_classes=C4, num_ulb=NUM_ULB,
               total_steps=T4, make_model=lambda: ConfidentNet(scale=1.0))
    eval_batch = separable_batch(MPL, seed=999, noise=0.5)

    def metrics():
        with torch.no_grad():
            m = algo(model, None, eval_batch, torch.tensor(0)).metrics
        return float(m["teacher_sup_loss"]), float(m["sup_loss"]), float(m["pl_acc"])

    t0, s0, acc0 = metrics()
    _run(algo, model, 60, seed=0)
    t1, s1, acc1 = metrics()
    # measured: teacher 1.46 → 0.54, student 1.42 → 0.88, pseudo-label accuracy 0 → 1
    assert t1 < t0 - 0.3 and s1 < s0 - 0.2 and acc1 > acc0, (t0, t1, s0, s1, acc0, acc1)


def test_trainer_resume_is_bit_identical(tmp_path):
    from fastssl.config import Config, apply_overrides
    from fastssl.train.trainer import Trainer

    def cfg(out, **extra):
        c = Config()
        apply_overrides(c, {"algo.name": "mpl", "data.batch_size": 8, "data.uratio": 2, "data.eval_batch_size": 450,
                            "train.steps": 4, "train.eval_every": 2, "train.log_every": 2, "train.ckpt_every": 2,
                            "train.progress": False, "train.compile": "off", "train.out": str(out), **extra})
        return c

    Trainer(cfg(tmp_path / "full")).fit()
    Trainer(cfg(tmp_path / "resumed", **{"train.resume": str(tmp_path / "full" / "ckpt-2.pt")})).fit()
    ref = torch.load(tmp_path / "full" / "ckpt-4.pt", weights_only=False)
    got = torch.load(tmp_path / "resumed" / "ckpt-4.pt", weights_only=False)
    mid = torch.load(tmp_path / "full" / "ckpt-2.pt", weights_only=False)
    assert not torch.equal(mid["algorithm"]["teacher_momentum"], ref["algorithm"]["teacher_momentum"])
    assert any(not torch.equal(v, mid["algorithm"][k]) for k, v in ref["algorithm"].items() if k.startswith("teacher."))
    for part in ("model", "ema", "algorithm"):
        for k, v in ref[part].items():
            assert torch.equal(v, got[part][k]), f"{part}.{k} differs after resume"
