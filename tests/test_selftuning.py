"""Self-Tuning: the loss (CE + pseudo-group contrastive terms) against a per-sample loop in fp64; the queue
update against tllib's one-key-at-a-time writes (pointer wrap, a class with more than K keys); the key
projector's momentum; the key pass on batch statistics leaves the teacher untouched; the unlabeled term
reaches the backbone; the step and the update compile with fullgraph and are sync-free. (Registry-wide:
tests/test_algorithms.py — state round trip, identical state on 2 gloo ranks with its rank-local control,
a falling loss —, test_zoo_integration.py — the real DALI loader's views —, test_host_syncs.py.)"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from algo_testing import (STEP, ConfidentNet, build_algo, param_grads, perturbed_teacher, random_image_batch,
                          separable_batch, softmax_by_hand, teacher_copy, tiny_net)
from fastssl.algorithms.selftuning import SelfTuning, SelfTuningState, features_batch_stats
from fastssl.train.syncs import HostSyncTrace

C = 5
INIT = dict(num_classes=C, num_ulb=64, total_steps=640, num_features=6)


def make(**kw):
    torch.manual_seed(3)
    return SelfTuning(SelfTuning.Config(**{"proj_dim": 4, "queue_size": 3, **kw}), **INIT).double()


def st_batch():
    b = random_image_batch(SelfTuning.views)
    return b._replace(x_lb_s=torch.randn(b.x_lb.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64))


def randomize(algo, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        algo.queue.copy_(F.normalize(torch.randn(algo.queue.shape, generator=g, dtype=torch.float64), dim=-1))
        algo.proj_k_weight.add_(0.5 * torch.randn(algo.proj_k_weight.shape, generator=g, dtype=torch.float64))


def pgc_by_hand(hq, hk, label, queue, T):
    K = len(queue[0])
    logits = [sum(a * b for a, b in zip(hq, hk)) / T]
    logits += [sum(a * b for a, b in zip(hq, queue[c][k])) / T for c in range(len(queue)) for k in range(K)]
    logp = [math.log(p) for p in softmax_by_hand(logits)]
    pos = [0] + [1 + label * K + k for k in range(K)]
    return sum((math.log(1 / (K + 1)) - logp[j]) / (K + 1) for j in pos)


def test_loss_matches_per_sample_loop():
    model = tiny_net(bn=False)
    teacher = perturbed_teacher(model)
    batch = st_batch()
    algo = make(T=0.3, lambda_u=1.7)
    randomize(algo)
    out = algo(model, teacher, batch, torch.tensor(7))

    queue = algo.queue.tolist()

    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    def one(xq, xk):
        f = model.forward_features(xq[None])
        logits = model.head(f)[0]
        hq = unit(algo.projector(f)[0].tolist())
        hk = unit(F.linear(teacher.forward_features(xk[None]), algo.proj_k_weight, algo.proj_k_bias)[0].tolist())
        return logits, hq, hk

    sup = pgc_l = pgc_u = 0.0
    B, n = batch.x_lb.shape[0], batch.x_ulb_w.shape[0]
    for xq, xk, y in zip(batch.x_lb_s, batch.x_lb, batch.y_lb):
        logits, hq, hk = one(xq, xk)
        sup += -math.log(softmax_by_hand(logits)[int(y)]) / B
        pgc_l += pgc_by_hand(hq, hk, int(y), queue, 0.3) / B
    labels = []
    for xq, xk in zip(batch.x_ulb_s, batch.x_ulb_w):
        logits, hq, hk = one(xq, xk)
        p = softmax_by_hand(logits)
        labels.append(p.index(max(p)))
        pgc_u += pgc_by_hand(hq, hk, labels[-1], queue, 0.3) / n
    assert len(set(batch.y_lb.tolist())) > 1  # several groups (the tiny net's pseudo-labels agree: one group)
    assert float(out.loss.detach()) == pytest.approx(sup + pgc_l + 1.7 * pgc_u, rel=1e-12)
    assert float(out.metrics["pgc_lb_loss"]) == pytest.approx(pgc_l, rel=1e-12)
    assert float(out.metrics["unsup_loss"]) == pytest.approx(pgc_u, rel=1e-12)
    assert out.state.labels.tolist() == [int(y) for y in batch.y_lb] + labels


def test_enqueue_matches_one_at_a_time_writes():
    algo = make(queue_size=3)
    randomize(algo)
    with torch.no_grad():
        algo.queue_ptr.copy_(torch.tensor([0, 2, 1, 0, 2]))
    labels = torch.tensor([1, 1, 3, 1, 1, 0, 1, 3])  # class 1: 5 keys > K = 3 (wraps and overwrites)
    keys = F.normalize(torch.randn(8, 4, dtype=torch.float64), dim=-1)
    queue, ptr = algo.queue.clone(), algo.queue_ptr.tolist()
    for k, c in zip(keys, labels.tolist()):  # tllib: one key at a time
        queue[c, ptr[c]] = k
        ptr[c] = (ptr[c] + 1) % 3
    algo.update_state(None, SelfTuningState(keys, labels))
    assert torch.equal(algo.queue, queue)
    assert algo.queue_ptr.tolist() == ptr


def test_key_projector_momentum():
    algo = make(key_momentum=0.9)
    randomize(algo)
    old = algo.proj_k_weight.clone(), algo.proj_k_bias.clone()
    algo.update_state(None, SelfTuningState(torch.zeros(2, 4, dtype=torch.float64), torch.tensor([0, 1])))
    torch.testing.assert_close(algo.proj_k_weight, 0.9 * old[0] + 0.1 * algo.projector.weight.detach(), rtol=1e-14, atol=0)
    torch.testing.assert_close(algo.proj_k_bias, 0.9 * old[1] + 0.1 * algo.projector.bias.detach(), rtol=1e-14, atol=0)


def test_key_pass_uses_batch_statistics_and_leaves_the_teacher_alone():
    model = tiny_net(bn=True)
    teacher = teacher_copy(model)
    with torch.no_grad():
        teacher.bn.running_mean.fill_(0.3)
    before = copy.deepcopy(teacher.state_dict())
    x = torch.randn(6, 3, 6, 6, dtype=torch.float64)
    got = features_batch_stats(teacher, x)
    ref = copy.deepcopy(teacher).train().forward_features(x)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    assert not teacher.training
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


def test_unlabeled_term_reaches_the_backbone():
    model = tiny_net(bn=False)
    teacher = perturbed_teacher(model)
    batch = st_batch()
    grads = {}
    for lam in (0.0, 1.0):
        algo = make(lambda_u=lam)
        randomize(algo)
        model.zero_grad()
        algo(model, teacher, batch, torch.tensor(0)).loss.backward()
        grads[lam] = param_grads(model)[0]
    assert (grads[1.0] - grads[0.0]).abs().max() > 1e-8


def test_step_and_update_compile_and_are_sync_free():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ConfidentNet(scale=3.0)
    teacher = teacher_copy(model)
    algo, twin = build_algo("selftuning"), None
    twin = copy.deepcopy(algo)
    batch = separable_batch(SelfTuning)
    step = torch.tensor(STEP)
    with HostSyncTrace() as trace:
        eager = algo(model, teacher, batch, step)
        eager.loss.backward()
        algo.update_state(batch, eager.state)
    assert trace.total == 0, trace
    out = torch.compile(lambda b, t: twin(model, teacher, b, t), backend="aot_eager", fullgraph=True)(batch, step)
    torch.compile(twin.update_state, backend="eager", fullgraph=True)(batch, out.state)
    torch.testing.assert_close(out.loss, eager.loss)
    for k, v in algo.state_dict().items():
        torch.testing.assert_close(twin.state_dict()[k], v, msg=k)


def test_state_round_trips_through_state_dict():
    model = tiny_net(bn=False)
    teacher = perturbed_teacher(model)
    algo = make()
    for s in range(3):
        batch = st_batch()._replace(x_ulb_s=torch.randn(8, 3, 6, 6, dtype=torch.float64) * (1 + s))
        algo.update_state(batch, algo(model, teacher, batch, torch.tensor(s)).state)
    assert int(algo.queue_ptr.sum()) > 0
    fresh = make(lambda_u=1.0)
    with torch.no_grad():
        fresh.projector.weight.zero_()  # nothing carried over but the state_dict
    fresh.load_state_dict(algo.state_dict())
    for k, v in algo.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    batch = st_batch()
    a, b = algo(model, teacher, batch, torch.tensor(3)), fresh(model, teacher, batch, torch.tensor(3))
    assert torch.equal(a.loss, b.loss) and all(torch.equal(x, y) for x, y in zip(a.state, b.state))


def _rank_worker(rank, store, out_dir):
    import os

    import torch.distributed as dist

    import fastssl.algorithms.selftuning as mod
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        result = {}
        for synced in (True, False):
            algo = make()
            saved = mod.all_gather_cat
            if not synced:
                mod.all_gather_cat = lambda t: t  # control: each rank enqueues its own keys only
            try:
                g = torch.Generator().manual_seed(100 + rank)  # different batches on the two ranks
                for _ in range(3):
                    keys = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=-1)
                    algo.update_state(None, SelfTuningState(keys, torch.randint(0, C, (6,), generator=g)))
            finally:
                mod.all_gather_cat = saved
            result[synced] = {k: v.clone() for k, v in algo.state_dict().items()}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_hold_identical_queues(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_rank_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for k in r0[True]:
        assert torch.equal(r0[True][k], r1[True][k]), k
    assert not torch.equal(r0[False]["queue"], r1[False]["queue"])  # without the gather they differ
