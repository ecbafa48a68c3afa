"""Checkpoints: atomic writes, exact resume, and a loud refusal of anything that does not match.

A checkpoint holds everything the next step depends on: model, EMA teacher, optimizer (momentum), the
algorithm's buffers, the step, every RNG (torch CPU/CUDA, numpy, Python), each rank's data-pipeline
position, the evaluation history (best / last-N), and the resolved config it was written with.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastssl.train.errors import RunError

# Options that may differ between the run that wrote a checkpoint and the one resuming it: where files go,
# how often things are reported, and speed settings that do not change the arithmetic on CPU.
RESUMABLE_CHANGES = {
    "train.out", "train.resume", "train.progress", "train.log_every", "train.eval_every", "train.ckpt_every",
    "train.loggers", "train.compile", "train.compile_mode", "train.cpu_threads", "data.root", "data.num_threads", "data.eval_batch_size",
}

CKPT_RE = re.compile(r"ckpt-(\d+)\.pt$")


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: a crash never leaves a torn file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # a full disk surfaces as torch's RuntimeError around the OSError
        tmp.unlink(missing_ok=True)  # a partial checkpoint would only fill the disk further
        raise CheckpointWriteError(path, e) from e


def _root_cause(e: BaseException) -> BaseException:
    while isinstance(e, RuntimeError) and (e.__cause__ or e.__context__):
        e = e.__cause__ or e.__context__
    return e


class CheckpointWriteError(RunError):
    def __init__(self, path: Path, e: BaseException):
        cause = _root_cause(e)
        reason = os.strerror(cause.errno) if getattr(cause, "errno", None) else str(cause).splitlines()[0]
        super().__init__(f"cannot write checkpoint {path}: {reason}; nothing partial was left. Free space on that "
                         f"disk (or pass another --train.out) and continue with --train.resume={path.parent}")


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def checkpoints(folder: str | Path) -> list[Path]:
    """The `ckpt-<step>.pt` files in `folder`, oldest step first."""
    found = sorted((int(m.group(1)), p) for p in Path(folder).iterdir() if (m := CKPT_RE.search(p.name)))
    return [p for _, p in found]


def find_checkpoint(path: str | Path, option: str = "--train.resume") -> Path:
    """A checkpoint file, or a run directory's newest `ckpt-<step>.pt`; `option` names where the path came from."""
    path = Path(path)
    if path.is_dir():
        found = checkpoints(path)
        if not found:
            raise FileNotFoundError(f"{option}={path}: no ckpt-<step>.pt in this folder; pass a checkpoint "
                                    f"file or the --train.out folder of a run that wrote one")
        return found[-1]
    if not path.is_file():
        raise FileNotFoundError(f"{option}={path}: no such file or folder")
    return path


def load_checkpoint(path: str | Path, option: str = "--train.resume") -> dict[str, Any]:
    path = find_checkpoint(path, option)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a torn or foreign file: never fall back to training from scratch
        fix = ("Nothing was resumed; pass another checkpoint (or drop --train.resume to start a new run)"
               if option == "--train.resume" else f"pass another {option}")
        raise ValueError(f"cannot read checkpoint {path}: {e}. {fix}") from e
    missing = {"model", "ema", "optimizer", "algorithm", "step", "rng", "loader", "config"} - set(ckpt)
    if missing:
        raise ValueError(f"{path} is not a fastssl checkpoint (missing {', '.join(sorted(missing))})")
    ckpt["path"] = str(path)
    return ckpt


def config_mismatches(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The options (flattened keys) whose values differ and that may not change on resume."""
    from fastssl.config import flatten

    a, b = flatten(saved), flatten(current)
    keys = sorted((set(a) | set(b)) - RESUMABLE_CHANGES)
    return [f"--{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def prune(folder: Path, keep: int = 2) -> None:
    """Deletes all but the newest `keep` checkpoints in `folder`."""
    for p in checkpoints(folder)[:-keep]:
        p.unlink(missing_ok=True)
