"""Data-parallel scaling: the same global batch on 1 vs N processes (gloo on CPU, NCCL on CUDA).

    fastssl bench scaling --model cnn_small --batch-size 16 --uratio 7 --nprocs 1,2 --json out.json

`--data.batch_size` is the global batch (GUIDE §3): each of N ranks gets B/N labeled and μB/N unlabeled
samples, so N processes doing the same run N times sooner is speedup N and efficiency 1. Every launch is
`python -m torch.distributed.run --standalone --nproc_per_node=N -m fastssl.bench.scaling --worker ...`,
each rank building `fastssl.train.trainer.Trainer` exactly as `fastssl train` does; rank 0 times whole
steps between barriers after warm-up. Launch counts alternate (1, 2, 2, 1, ...) over `--repeats` so a
change in machine load does not favour one of them.

On CPU each rank gets `--threads` intra-op threads (1 by default): N ranks on a 2-core machine share the
same cores, so this measures the overhead of the gradient all-reduce and of the sharded pipelines more than
a speed-up. The meaningful run is on 2+ GPUs (NCCL), e.g. `--nprocs 1,2` on a 2-GPU machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fastssl.bench import common


def worker(args) -> None:
    import torch.distributed as dist

    from fastssl.bench.step import build_fastssl

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    tr, cfg = build_fastssl(args, args.npz, "auto")
    build_s = time.perf_counter() - t0

    def barrier():
        tr.sync()
        if dist.is_initialized():
            dist.barrier()

    t0 = time.perf_counter()
    tr.run_steps(args.warmup)
    barrier()
    warmup_s = time.perf_counter() - t0
    secs = []
    for _ in range(args.rounds):
        barrier()
        t0 = time.perf_counter()
        tr.run_steps(args.chunk)
        barrier()
        secs.append((time.perf_counter() - t0) / args.chunk)
    if tr.rank == 0:
        out = {"world_size": tr.world, "build_s": build_s, "warmup_s": warmup_s, "sec_per_step": secs,
               "config": cfg, "backend": dist.get_backend() if dist.is_initialized() else None}
        Path(args.worker_out).write_text(json.dumps(out))
    if dist.is_initialized():
        dist.destroy_process_group()


def launch(n: int, args, npz: str, passthrough: list[str]) -> dict:
    fd, out = tempfile.mkstemp(suffix=".json", prefix="fastssl-scaling-")
    os.close(fd)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "fastssl.bench.scaling", "--worker", "--worker-out", out, "--npz", npz, *passthrough]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=common.REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    try:
        if proc.returncode != 0:
            return {"world_size": n, "error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
        res = json.loads(Path(out).read_text())
        res["launch_wall_s"] = wall
        return res
    finally:
        os.remove(out)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="fastssl bench scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--algo", default="fixmatch")
    p.add_argument("--model", default="cnn_small")
    p.add_argument("--batch-size", type=int, default=16, help="GLOBAL labeled batch")
    p.add_argument("--uratio", type=int, default=7)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--data", default="auto")
    p.add_argument("--num-train", type=int, default=50000)
    p.add_argument("--num-labels", type=int, default=4000)
    p.add_argument("--nprocs", default="1,2")
    p.add_argument("--repeats", type=int, default=1, help="launches per process count (alternating order)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--chunk", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    p.add_argument("--dali-threads", type=int, default=1, help="DALI threads per rank's pipeline")
    p.add_argument("--horizon", type=int, default=1 << 20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--json", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--npz", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


_CHILD_FLAGS = ("algo", "model", "batch_size", "uratio", "num_labels", "warmup", "rounds", "chunk", "threads",
                "dali_threads", "horizon", "seed")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    x, y, source = common.load_images(args.data, args.image_size, args.num_train, args.seed)
    npz, cleanup = common.npz_for_fastssl(x, y, source)
    passthrough = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in _CHILD_FLAGS]
    counts = [int(n) for n in args.nprocs.split(",")]
    order = [c for r in range(args.repeats) for c in (counts if r % 2 == 0 else counts[::-1])]
    runs = []
    try:
        for n in order:
            print(f"[bench_scaling] launching {n} process(es)", file=sys.stderr)
            runs.append(launch(n, args, npz, passthrough))
    finally:
        cleanup()
    ims = args.batch_size * (1 + 2 * args.uratio)
    per_n: dict[int, list[float]] = {}
    for r in runs:
        if "sec_per_step" in r:
            per_n.setdefault(r["world_size"], []).extend(r["sec_per_step"])
    summary = {str(n): common.summarize(s, ims) for n, s in sorted(per_n.items())}
    base = per_n.get(min(per_n)) if per_n else None
    for n, s in per_n.items():
        speedup = statistics.median(base) / statistics.median(s)
        summary[str(n)].update(speedup_vs_min=speedup, efficiency=speedup * min(per_n) / n)
    result = {"env": common.environment(),
              "setup": {"model": args.model, "global_batch_size": args.batch_size, "uratio": args.uratio,
                        "images_per_step": ims, "data_source": source, "threads_per_rank": args.threads,
                        "device": "cuda" if torch.cuda.is_available() else "cpu", "order": order},
              "by_world_size": summary, "runs": runs}
    for n, e in summary.items():
        print(f"{n} proc: {e['it_s']:.2f} it/s ({e['img_s']:.0f} img/s), speedup {e['speedup_vs_min']:.2f}x, "
              f"efficiency {e['efficiency']:.2f}")
    for r in runs:
        if "error" in r:
            print(f"{r['world_size']} proc: FAILED {r['error'][-500:]}")
    if args.json:
        common.write_json(args.json, result)
        print(f"wrote {args.json}")
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
