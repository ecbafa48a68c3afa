"""Evaluation metrics and the progress line."""
from __future__ import annotations

import sys
import time

import torch
from torch import Tensor


def topk_correct(logits: Tensor, y: Tensor, valid: Tensor, ks: tuple[int, ...] = (1, 5)) -> Tensor:
    """Counts of correct top-k predictions over valid rows: a (len(ks),) tensor, no host sync."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (N, kmax)
    hit = top.eq(y[:, None])
    return torch.stack([(hit[:, : min(k, kmax)].any(1) & valid).sum() for k in ks])


def fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Stopwatch:
    """Seconds counted only while running: the training time, with evaluations and checkpoints paused out."""

    def __init__(self):
        self.total, self.since = 0.0, time.perf_counter()

    def __call__(self) -> float:
        return self.total + (time.perf_counter() - self.since if self.since is not None else 0.0)

    def pause(self) -> float:
        """Stops the count; returns the seconds run since the last start."""
        lap = time.perf_counter() - self.since
        self.total, self.since = self.total + lap, None
        return lap

    def start(self) -> None:
        self.since = time.perf_counter()


class Progress:
    """One status line: step/total, it/s (since the last update, timed by `clock`), ETA, and the latest metrics.

    Redrawn in place on a terminal; on a pipe or CI log, one plain line per update."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, stream=sys.stderr, clock=time.perf_counter):
        self.total, self.enabled, self.stream, self.clock = total, enabled, stream, clock
        self.tty = stream.isatty()
        self.t_last = clock()
        self.s_last = start
        self.its = 0.0

    def update(self, step: int, metrics: dict[str, float]) -> float:
        now = self.clock()
        if step > self.s_last:
            self.its = (step - self.s_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.s_last = now, step
        if self.enabled:
            eta = (self.total - step) / self.its if self.its > 0 else 0.0
            width = 24
            filled = int(width * step / self.total)
            bar = "=" * filled + (">" if filled < width else "") + " " * (width - filled - 1)
            vals = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            line = f"step {step}/{self.total} [{bar}] {self.its:.2f} it/s ETA {fmt_duration(eta)} {vals}"
            self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
            self.stream.flush()
        return self.its

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
