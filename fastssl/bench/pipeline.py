"""Data-pipeline throughput alone: fastssl's DALI TrainLoader vs the reference's PIL DataLoader workers.

One "batch" is a full FixMatch step's data: B labeled weak views + μB unlabeled weak + μB strong views,
normalised float, made from uint8 images. Views/s = (B + 2μB) · batches/s. Nothing trains here.

Two ways to run it:
  fastssl bench pipeline --batch-size 16 --uratio 7 --workers 0,1,2 --json out.json
      all loaders alive at once, timed in interleaved rounds (ratios hold on a loaded machine)
  pytest benchmarks/bench_pipeline.py --benchmark-enable --benchmark-json=pipeline.json  (source checkout)
      the pytest-benchmark suite (one benchmark per loader, run one after another); sizes from
      $FASTSSL_BENCH_B (16), $FASTSSL_BENCH_MU (7), $FASTSSL_BENCH_BATCHES (3 per round)

PIL "workers" counts worker processes per DataLoader; the reference has two loaders (labeled, unlabeled),
so N workers means 2N processes; 0 runs the augmentations in the main process (the per-core cost).
Batched torch ops on the GPU are not included: DALI's GPU backend already runs the same graph there.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from fastssl.bench import common
from fastssl.bench.baseline import CIFAR_MEAN, CIFAR_STD, SSLDataset, make_loader


class PILLoader:
    """The reference's two DataLoaders, zipped: yields (lb, ulb) batches of normalised float views."""

    def __init__(self, x, y, lb_idx, batch: int, uratio: int, workers: int, seed: int = 0):
        steps = 1 << 20
        self.lb = make_loader(SSLDataset(x[lb_idx], y[lb_idx], strong=False), batch, steps, workers, seed, False)
        self.ulb = make_loader(SSLDataset(x, y, strong=True), batch * uratio, steps, workers, seed + 1, False)
        self._it = zip(self.lb, self.ulb)
        self.depth = 2 * workers
        """batches the workers make ahead (prefetch_factor 2 per worker)"""

    def next(self):
        return next(self._it)

    def worker_pids(self) -> list[int]:
        return [w.pid for ld in (self.lb, self.ulb) for w in getattr(getattr(ld, "_iterator", None), "_workers", [])]

    def close(self):
        self._it = iter(())
        for loader in (self.lb, self.ulb):
            it = getattr(loader, "_iterator", None)
            if it is not None:
                it._shutdown_workers()


class DALILoader:
    """fastssl's TrainLoader (DALI; "gpu" ops on CUDA, CPU backend elsewhere)."""

    def __init__(self, x, y, lb_idx, batch: int, uratio: int, threads: int, device: torch.device, seed: int = 0):
        from fastssl.data.augment import AugmentConfig
        from fastssl.batch import ViewSpec
        from fastssl.data.pipeline import TrainLoader

        self.device = device
        self.loader = TrainLoader(x[lb_idx], y[lb_idx], x, y, batch_size=batch, uratio=uratio,
                                  views=ViewSpec(1, 1), aug=AugmentConfig(flip_prob=0.5), mean=CIFAR_MEAN, std=CIFAR_STD,
                                  seed=seed, device=device, num_threads=threads)
        self.depth = 2
        """DALI's default prefetch queue depth"""

    def next(self):
        b = next(self.loader)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # count the views as made, not as queued
        return b

    def close(self):
        pass


def build_loaders(x, y, lb_idx, batch, uratio, workers, threads, device) -> tuple[dict, dict]:
    loaders, errors = {}, {}
    specs = [(f"pil_workers{w}", lambda w=w: PILLoader(x, y, lb_idx, batch, uratio, w)) for w in workers]
    specs.append((f"dali_{device.type}_threads{threads}",
                  lambda: DALILoader(x, y, lb_idx, batch, uratio, threads, device)))
    for name, make in specs:
        try:
            loaders[name] = make()
        except Exception as e:  # noqa: BLE001 - a loader that cannot be built (DALI not landed) is reported
            errors[name] = f"{type(e).__name__}: {e}"
            print(f"[bench_pipeline] {name}: not run: {errors[name]}", file=sys.stderr)
    return loaders, errors


def run(args) -> dict:
    torch.set_num_threads(args.threads_torch)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          (args.device if args.device != "auto" else "cpu"))
    x, y, source = common.load_images(args.data, args.image_size, args.num_train, args.seed)
    lb_idx = common.balanced_labeled(y, args.num_labels, args.seed)
    workers = sorted({int(w) for w in args.workers.split(",")} | ({os.cpu_count() or 1} if args.all_cores else set()))
    views = args.batch_size * (1 + 2 * args.uratio)
    loaders, errors = build_loaders(x, y, lb_idx, args.batch_size, args.uratio, workers, args.dali_threads, device)
    result = {"env": common.environment(),
              "setup": {"batch_size": args.batch_size, "uratio": args.uratio, "image_size": args.image_size,
                        "views_per_batch": views, "batches_per_round": args.batches, "rounds": args.rounds,
                        "device": str(device), "data_source": source},
              "loaders": {}, "ratios": {}, "cpu_ratios": {}, "errors": errors}
    try:
        for name, ld in loaders.items():  # warm-up: worker start-up, first prefetch, DALI build
            t0 = time.perf_counter()
            for _ in range(args.warmup):
                ld.next()
            result["loaders"][name] = {"warmup_s": time.perf_counter() - t0}
        secs: dict[str, list[float]] = {k: [] for k in loaders}
        cpu: dict[str, list[float]] = {k: [] for k in loaders}
        names = list(loaders)
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                for _ in range(loaders[name].depth):  # made ahead during the others' rounds: not counted
                    loaders[name].next()
                c0, t0 = common.cpu_seconds(loaders[name]), time.perf_counter()
                for _ in range(args.batches):
                    loaders[name].next()
                secs[name].append((time.perf_counter() - t0) / args.batches)
                cpu[name].append((common.cpu_seconds(loaders[name]) - c0) / args.batches)
        for name, s in secs.items():
            summ = common.summarize(s, views, cpu[name])
            result["loaders"][name].update({"batches_s": summ["it_s"], "views_s": summ["img_s"],
                                            "batch_ms_median": summ["step_ms_median"],
                                            "batch_ms_per_round": summ["step_ms_per_round"],
                                            "cpu_ms_per_batch_median": summ["cpu_ms_per_step_median"],
                                            "views_per_cpu_s": views / summ["cpu_ms_per_step_median"] * 1e3})
        dali = [n for n in secs if n.startswith("dali")]
        for d in dali:
            for p in (n for n in secs if n.startswith("pil")):
                result["ratios"][f"{d}/{p}"] = common.paired_ratio(secs[d], secs[p])
                result["cpu_ratios"][f"{d}/{p}"] = common.paired_ratio(cpu[d], cpu[p])
    finally:
        for ld in loaders.values():
            ld.close()
    return result


def parse_args(argv):
    p = argparse.ArgumentParser(prog="fastssl bench pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--uratio", type=int, default=7)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--data", default="auto")
    p.add_argument("--num-train", type=int, default=50000)
    p.add_argument("--num-labels", type=int, default=4000)
    p.add_argument("--workers", default="0,1,2", help="PIL DataLoader workers per loader, comma list")
    p.add_argument("--all-cores", action="store_true", help="add workers = os.cpu_count()")
    p.add_argument("--dali-threads", type=int, default=2)
    p.add_argument("--threads-torch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batches", type=int, default=3, help="batches per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    res = run(args)
    s = res["setup"]
    print(f"B={s['batch_size']} mu={s['uratio']} ({s['views_per_batch']} views/batch) {s['device']}; "
          f"data: {s['data_source']}")
    for name, e in res["loaders"].items():
        if "views_s" in e:
            print(f"{name:<24}{e['views_s']:>10.0f} views/s {e['batch_ms_median']:>9.1f} ms/batch "
                  f"{e['views_per_cpu_s']:>9.0f} views per CPU-second")
    for name, err in res["errors"].items():
        print(f"{name:<24} not run: {err}")
    for k, v in res["ratios"].items():
        print(f"ratio {k} = {v:.2f}x wall, {res['cpu_ratios'][k]:.2f}x CPU time")
    if args.json:
        common.write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
