"""Cross-cutting checks for the consistency / MixUp algorithms: documented options, recipes that name real
options, a bf16-autocast step, and a 2-process gloo run proving ReMixMatch's history is identical on every rank."""
import dataclasses
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from algo_testing import perturbed_teacher, random_image_batch, tiny_net
from fastssl.algorithms import get_algorithm

NAMES = ["pimodel", "meanteacher", "mixmatch", "remixmatch", "vat", "ict"]
INIT = dict(num_classes=5, num_ulb=64, total_steps=100)


def _build(name, **cfg):
    cls = get_algorithm(name)
    return cls(cls.Config(**cfg), **INIT, num_features=6)


@pytest.mark.parametrize("name", NAMES)
def test_every_option_is_documented(name):
    from fastssl.config import field_docs

    docs = field_docs(get_algorithm(name).Config)
    for f in dataclasses.fields(get_algorithm(name).Config):
        assert docs.get(f.name), f"{name}: --algo.{f.name} has no docstring"


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_step(name):
    model = tiny_net(bn=True).float()
    algo = _build(name)
    b = random_image_batch(get_algorithm(name).views)
    b = b._replace(x_lb=b.x_lb.float(), x_ulb_w=b.x_ulb_w.float(), x_ulb_s=b.x_ulb_s.float(),
                   x_ulb_w_extra=tuple(x.float() for x in b.x_ulb_w_extra),
                   x_ulb_s_extra=tuple(x.float() for x in b.x_ulb_s_extra))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = algo(model, perturbed_teacher(model), b, torch.tensor(50))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    for v in out.metrics.values():
        assert v.dim() == 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _remix_rank(rank, world, port, q):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = tiny_net(bn=True)
        algo = _build("remixmatch", da_len=3).double()
        for s in range(2):
            batch = random_image_batch(get_algorithm("remixmatch").views, seed=10 * rank + s)  # different data per rank
            out = algo(model, perturbed_teacher(model), batch, torch.tensor(s))
            algo.update_state(batch, out.state)
        q.put((rank, algo.p_model_hist.tolist(), out.state.probs_mean.tolist()))  # plain lists: no shared fds
    finally:
        dist.destroy_process_group()


def test_remixmatch_history_identical_across_ranks():
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_remix_rank, args=(r, 2, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = {r: (torch.tensor(h, dtype=torch.float64), torch.tensor(m, dtype=torch.float64))
               for r, h, m in (q.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (h0, m0), (h1, m1) = results[0], results[1]
    assert not torch.allclose(m0, m1)  # the ranks saw different data...
    torch.testing.assert_close(h0, h1, rtol=0, atol=0)  # ...and hold the same history
    torch.testing.assert_close(h0[-1], (m0 + m1) / 2, rtol=1e-12, atol=1e-14)  # the global mean
