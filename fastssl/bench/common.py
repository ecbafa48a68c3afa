"""Shared pieces of the benchmarks: provenance, benchmark inputs, and the interleaved side-by-side timer."""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

REPO = Path(__file__).absolute().parents[2]
"""the folder holding the fastssl package: the checkout root (for the git SHA), or site-packages"""
CIFAR10_NPZ = Path(os.environ.get("FASTSSL_CIFAR10_NPZ", "/work/shared/data/cifar10.npz"))
"""real CIFAR-10 (uint8 NHWC) used for benchmark inputs when present; override with $FASTSSL_CIFAR10_NPZ"""


# ---- provenance -------------------------------------------------------------------------------------------

def _version(mod: str) -> str | None:
    try:
        m = __import__(mod, fromlist=["__version__"])
        return getattr(m, "__version__", "unknown")
    except Exception:  # noqa: BLE001 - absent or broken optional package: record that, do not fail
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "") if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _command() -> str:
    """The command line as typed: `fastssl bench step ...` rather than the module's file path."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.suffix == ".py" and argv0.parent.name == "bench":
        return " ".join(["python", "-m", f"fastssl.bench.{argv0.stem}", *sys.argv[1:]])
    if argv0 is not None and argv0.name == "__main__.py" and argv0.parent.name == "fastssl":
        return " ".join(["fastssl", *sys.argv[1:]])
    return " ".join(["python", *sys.argv])


def environment() -> dict:
    """Everything needed to read a number later: versions, hardware, commit, command, time, machine load."""
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": _command(),
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "dali": _version("nvidia.dali"),
        "numpy": np.__version__,
        "pillow": _version("PIL"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "gpu_count": torch.cuda.device_count(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["gpu_memory_gib"] = round(p.total_memory / 2**30, 1)
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def peak_rss_gib() -> float:
    """Peak resident memory of this process (not its DataLoader workers), GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write_json(path: str | os.PathLike, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


# ---- inputs ---------------------------------------------------------------------------------------------

def load_images(data: str, image_size: int, num_train: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 (N, S, S, 3) images and int64 labels (10 classes, balanced) for the benchmark, and where they
    came from. `data`: "auto" (CIFAR-10 when present and S=32, else random), "random", or an .npz path.
    Random images are fine here: the benchmarks measure speed, not accuracy."""
    path = CIFAR10_NPZ if data == "auto" else (None if data == "random" else Path(data))
    if path is not None and path.is_file() and image_size == 32:
        with np.load(path) as z:
            x, y = z["x_train"][:num_train], z["y_train"][:num_train].astype(np.int64)
        return np.ascontiguousarray(x), y, f"cifar10.npz x_train[:{len(x)}] ({path})"
    if data not in ("auto", "random"):
        raise FileNotFoundError(f"--data={data}: not a file (or image size {image_size} != 32); "
                                f"use --data=random or a CIFAR-shaped .npz")
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(num_train, image_size, image_size, 3), dtype=np.uint8)
    y = (np.arange(num_train) % 10).astype(np.int64)
    return x, y, f"random uint8 ({num_train}, {image_size}, {image_size}, 3), seed {seed}"


def balanced_labeled(y: np.ndarray, num_labels: int, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced labeled subset (num_labels // classes per class)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per = max(1, num_labels // len(classes))
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per, replace=False) for c in classes])


def npz_for_fastssl(x: np.ndarray, y: np.ndarray, source: str) -> tuple[str, Callable[[], None]]:
    """A path to an npz that `--data.name=npz` reads: the real file when the inputs are CIFAR-10 as is,
    else a temporary file with these arrays (removed by the returned cleanup)."""
    if source.startswith("cifar10.npz") and len(x) == 50000:
        return str(CIFAR10_NPZ), lambda: None
    fd, tmp = tempfile.mkstemp(suffix=".npz", prefix="fastssl-bench-")
    os.close(fd)
    n_test = min(len(x), 256)
    np.savez(tmp, x_train=x, y_train=y, x_test=x[:n_test], y_test=y[:n_test])
    return tmp, lambda: os.path.exists(tmp) and os.remove(tmp)


# ---- interleaved timing ---------------------------------------------------------------------------------

class Steppable(Protocol):
    def run_steps(self, n: int) -> None: ...
    def sync(self) -> None: ...


def _children_cpu_s(pids: list[int]) -> float:
    """utime + stime of other processes (DataLoader workers), from /proc; 0 where unavailable."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def cpu_seconds(system) -> float:
    """CPU time of this process (all its threads: DALI's included) plus the system's worker processes."""
    pids = system.worker_pids() if hasattr(system, "worker_pids") else []
    return time.process_time() + _children_cpu_s(pids)


def time_chunk(system: Steppable, n: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) for `n` steps, the device idle at both ends (so queued work is counted
    where it runs). CPU seconds add every thread and worker process: on a shared machine the wall time of
    a system with more processes also depends on how much of the machine the scheduler grants it, the CPU
    time much less."""
    system.sync()
    c0, t0 = cpu_seconds(system), time.perf_counter()
    system.run_steps(n)
    system.sync()
    return time.perf_counter() - t0, cpu_seconds(system) - c0


def interleaved(systems: dict[str, Steppable], rounds: int, chunk: int,
                settle: int = 0) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall, CPU) seconds per step for each system, one chunk of `chunk` steps per system per round,
    round-robin.

    Interleaving puts every system under the same machine load (other users' jobs come and go on a
    shared machine), and the order alternates between rounds. Each timed chunk is preceded by `settle`
    untimed steps: while the other systems ran, this one's DataLoader workers / DALI threads filled their
    prefetch queues, and batches made in someone else's time must not be counted (set `settle` to the
    prefetch depth: 2 batches for a 1-worker DataLoader and for DALI's default queue).
    """
    wall: dict[str, list[float]] = {k: [] for k in systems}
    cpu: dict[str, list[float]] = {k: [] for k in systems}
    names = list(systems)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            if settle:
                systems[name].run_steps(settle)
            w, c = time_chunk(systems[name], chunk)
            wall[name].append(w / chunk)
            cpu[name].append(c / chunk)
    return wall, cpu


def summarize(sec_per_step: list[float], images_per_step: int, cpu_per_step: list[float] | None = None) -> dict:
    med = statistics.median(sec_per_step)
    q = statistics.quantiles(sec_per_step, n=4) if len(sec_per_step) >= 2 else [med, med, med]
    return {
        "it_s": 1.0 / med,
        "img_s": images_per_step / med,
        "step_ms_median": 1e3 * med,
        "step_ms_q1": 1e3 * q[0],
        "step_ms_q3": 1e3 * q[2],
        "step_ms_min": 1e3 * min(sec_per_step),
        "step_ms_per_round": [round(1e3 * s, 3) for s in sec_per_step],
        **({"cpu_ms_per_step_median": 1e3 * statistics.median(cpu_per_step),
            "cpu_ms_per_step_per_round": [round(1e3 * s, 3) for s in cpu_per_step]} if cpu_per_step else {}),
    }


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Speed ratio num/den (>1: `num` is faster) as the median of per-round ratios of seconds per step:
    each round's two chunks ran back to back, so the machine's load cancels in the ratio."""
    return statistics.median(d / n for n, d in zip(num, den))
