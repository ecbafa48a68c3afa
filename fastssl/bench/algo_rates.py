"""CPU step rate of every registered algorithm relative to FixMatch.

One step = the algorithm's forward (one forward over its concatenated views) + backward + SGD step +
`update_state`, on the same small CNN and batch for every algorithm, with the views each declares.
Algorithms are timed interleaved, one step each per round, so that load drift on a shared machine hits
all of them alike; the figure is the median over rounds after warm-up. Absolute times only mean something
on the machine they were taken on: quote the ratios. On a shared (oversubscribed) CPU use `--threads 1`:
with 2 threads and a load of ~4 on the 2-core machines, every op waits for a descheduled worker thread
and a fixed ~450 ms per step swamps the work (supervised 496 ms vs FixMatch 604 ms; with 1 thread
8.3 ms vs 96 ms, measured back to back on 2026-11-21).

    python -m fastssl.bench.algo_rates [--rounds 30] [--warmup 5] [--batch 16] [--uratio 7] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import subprocess
import time

import torch
from torch import nn

from fastssl.algorithms import ALGORITHMS, get_algorithm
from fastssl.batch import SSLBatch

C, HW = 10, 16


class SmallCNN(nn.Module):
    """Three conv blocks → pooled features (N, 128) → linear head. Exposes `forward_features`, `head` and
    `num_features`, the model interface ReMixMatch's rotation head needs (as the models in fastssl.models)."""

    num_features = 128

    def __init__(self):
        super().__init__()

        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*block(3, 32), *block(32, 64), *block(64, self.num_features),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(self.num_features, C)

    def forward_features(self, x):
        return self.features(x)

    def forward(self, x):
        return self.head(self.features(x))


def make_batch(cls, B: int, mu: int, num_ulb: int, g: torch.Generator) -> SSLBatch:
    spec = cls.views
    img = lambda n: torch.randn(n, 3, HW, HW, generator=g)  # noqa: E731
    n = B * mu
    w = [img(n) for _ in range(spec.num_weak)]
    s = [img(n) for _ in range(spec.num_strong)]
    empty = img(0)
    kw = {"x_lb_s": img(B)} if getattr(spec, "lb_strong", False) else {}
    return SSLBatch(img(B), torch.randint(0, C, (B,), generator=g), w[0] if w else empty, s[0] if s else empty,
                    torch.randperm(num_ulb, generator=g)[:n], torch.randint(0, C, (n,), generator=g),
                    x_ulb_w_extra=tuple(w[1:]), x_ulb_s_extra=tuple(s[1:]), **kw)


class Runner:
    def __init__(self, name: str, B: int, mu: int, total_steps: int):
        torch.manual_seed(0)
        cls = get_algorithm(name)
        self.model = SmallCNN()
        self.algo = cls(cls.Config(), num_classes=C, num_ulb=4096, total_steps=total_steps,
                        num_features=self.model.num_features, make_model=SmallCNN)
        self.teacher = copy.deepcopy(self.model).requires_grad_(False).eval()
        params = list(self.model.parameters()) + list(self.algo.parameters())
        self.opt = torch.optim.SGD(params, lr=0.03, momentum=0.9, nesterov=True)
        self.batch = make_batch(cls, B, mu, 4096, torch.Generator().manual_seed(1))
        self.step = torch.tensor(total_steps // 2)

    def __call__(self) -> float:
        t0 = time.perf_counter()
        out = self.algo(self.model, self.teacher, self.batch, self.step)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.opt.step()
        self.algo.update_state(self.batch, out.state)
        self.algo.after_step(self.model, self.batch, out.state)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16, help="labeled batch B")
    ap.add_argument("--uratio", type=int, default=7, help="μ")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--algos", default="", help="comma-separated subset (default: the whole registry)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in (args.algos.split(",") if args.algos else sorted(ALGORITHMS))]
    if "fixmatch" not in names:
        names.append("fixmatch")
    runners = {n: Runner(n, args.batch, args.uratio, total_steps=1000) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.warmup + args.rounds):
        for n, run in runners.items():
            t = run()
            if r >= args.warmup:
                times[n].append(t)
    med = {n: statistics.median(ts) for n, ts in times.items()}
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# algorithm step rate vs FixMatch — git {sha}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, B={args.batch} μ={args.uratio} {HW}x{HW} small CNN, median of {args.rounds} rounds")
    print("| algorithm | median step (ms) | rate vs FixMatch |")
    print("|---|---:|---:|")
    for n in sorted(med, key=med.get):
        print(f"| {n} | {1e3 * med[n]:.1f} | {med['fixmatch'] / med[n]:.2f} |")


if __name__ == "__main__":
    main()
