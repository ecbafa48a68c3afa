"""Two gloo processes: global-batch semantics, disjoint shards, identical parameters on every rank."""
import json
import os
import subprocess
import sys

import torch

from _gloo import free_port, run_two_ranks, set_rank_env


def _worker(rank: int, port: int, out: str, q) -> None:
    set_rank_env(rank, port)
    import torch.distributed as dist

    from fastssl.config import Config, apply_overrides
    from fastssl.train.trainer import Trainer

    cfg = Config()
    apply_overrides(cfg, {"data.batch_size": 8, "data.uratio": 2, "train.steps": 4, "train.compile": "off",
                          "train.progress": False, "data.eval_batch_size": 450, "train.out": out})
    tr = Trainer(cfg)
    seen = []
    batches = tr._batches
    tr._batches = (seen.append(b.idx_ulb.clone()) or b for b in batches)
    tr.run_steps(4)
    tr._sync_buffers()  # what evaluate() and save() do first
    flat = torch.cat([p.detach().flatten() for p in tr.model.parameters()]
                     + [b.flatten().float() for b in tr.model.buffers()])
    ema = torch.cat([p.detach().flatten() for p in tr.ema.module.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    gathered_ema = [torch.empty_like(ema) for _ in range(2)]
    dist.all_gather(gathered_ema, ema)
    ev = tr.evaluate()
    q.put((rank, torch.equal(*gathered), torch.equal(*gathered_ema), torch.cat(seen).tolist(),
           tuple(seen[0].shape), ev))
    dist.destroy_process_group()


def test_two_gloo_ranks_stay_identical(tmp_path):
    results = run_two_ranks(_worker, str(tmp_path))
    (r0, same0, ema0, idx0, shape0, ev0), (r1, same1, ema1, idx1, shape1, ev1) = results
    assert same0 and same1, "model parameters/buffers differ across ranks"
    assert ema0 and ema1, "EMA teacher differs across ranks"
    assert shape0 == shape1 == (8,)  # global batch 8·μ2 = 16 unlabeled, split over 2 ranks
    assert not set(idx0) & set(idx1), "unlabeled shards overlap"
    assert ev0 == ev1 and ev0["eval_samples"] == 450  # every test sample counted exactly once


def test_torchrun_cli(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
           "-m", "fastssl", "train", "--data.batch_size=8", "--data.uratio=2", "--train.steps=4",
           "--train.eval_every=4", "--train.progress=false", f"--train.out={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("fastssl: done.") == 1  # rank 0 alone logs
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 4 and rows[0]["eval_samples"] == 450
    meta = json.loads((out / "config.json").read_text())
    assert meta["world_size"] == 2
