"""The run directory belongs to one run: never overwrite another run's files, one writer at a time.

A folder "holds a run" when it has any of fastssl's run files (config.json, metrics.jsonl, summary.json, a
checkpoint); other files (a job script's log) do not count. Such a folder is written into only by a run that
resumes it. While a run writes, `.lock` in the folder names it (pid, host, start time); a lock whose process
is gone (same host, pid not alive) is stale and taken over.
"""
from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime
from pathlib import Path

from fastssl.train import checkpoint as ckpt_io
from fastssl.train.errors import RunError

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json")
LOCK = ".lock"


def check_out_path(out: Path) -> None:
    """Before any data is read: `out` must be (or be creatable as) a writable folder."""
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise RunError(f"--train.out={out}: {probe} is a file, not a folder; pass another --train.out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunError(f"--train.out={out}: {probe} is not writable; pass another --train.out")


def holds_run(folder: Path) -> bool:
    return folder.is_dir() and (any((folder / f).exists() for f in RUN_FILES)
                                or any(ckpt_io.CKPT_RE.search(p.name) for p in folder.iterdir()))


def resolve_resume(resume: str | None, out: str | None) -> Path | None:
    """The checkpoint (file or folder) to resume from: `auto` is `out`'s newest checkpoint, or None (start
    fresh) when it has none."""
    if resume != "auto":
        return Path(resume) if resume else None
    if not out:
        raise RunError("--train.resume=auto resumes the run in --train.out; pass --train.out=DIR too")
    out = Path(out)
    return out if out.is_dir() and any(ckpt_io.CKPT_RE.search(p.name) for p in out.iterdir()) else None


def check_not_another_run(out: Path, resume: Path | None, auto: bool) -> None:
    """Refuses a folder that holds a run unless this run resumes it (or was told `--train.resume=auto`)."""
    holder = read_lock(out)
    if holder and _alive(holder):
        raise RunError(_held_message(out, holder))
    if auto or not holds_run(out):
        return
    if resume is not None and (resume if resume.is_dir() else resume.parent).resolve() == out.resolve():
        return
    raise RunError(f"--train.out={out} already holds a run (config.json/metrics.jsonl/checkpoints); refusing to "
                   f"overwrite it. Continue it with --train.resume={out} (or --train.resume=auto), or pass "
                   f"another --train.out")


def default_out_dir(algo: str, dataset: str, root: Path = Path("runs")) -> Path:
    """runs/<algo>-<dataset>-<time>, created exclusively: two runs started in the same second get -2, -3, ..."""
    root.mkdir(parents=True, exist_ok=True)
    base = f"{algo}-{dataset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    for i in range(1, 10_000):
        path = root / (base if i == 1 else f"{base}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunError(f"{root}: 10,000 runs named {base}-*; pass --train.out")


def read_lock(folder: Path) -> dict | None:
    try:
        return json.loads((folder / LOCK).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # torn or foreign: treated as stale below


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return bool(holder)  # another machine's process cannot be checked: assume it runs
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _held_message(out: Path, h: dict) -> str:
    return (f"--train.out={out} is being written by another run (pid {h.get('pid')} on {h.get('host')}, started "
            f"{h.get('started')}); wait for it, pass another --train.out, or, if that process is gone, delete "
            f"{out / LOCK}")


class RunLock:
    """`out/.lock`, created atomically (written under a private name, then hard-linked into place)."""

    def __init__(self, out: Path):
        self.path = out / LOCK
        self.me = {"pid": os.getpid(), "host": socket.gethostname(),
                   "started": datetime.now().isoformat(timespec="seconds")}
        self.held = False

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{LOCK}.{self.me['host']}.{self.me['pid']}.{time.monotonic_ns()}")
        tmp.write_text(json.dumps(self.me))
        try:
            for _ in range(2):
                try:
                    os.link(tmp, self.path)
                    self.held = True
                    return self
                except FileExistsError:
                    holder = read_lock(self.path.parent)
                    if holder is not None and _alive(holder):
                        raise RunError(_held_message(self.path.parent, holder)) from None
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
            raise RunError(_held_message(self.path.parent, read_lock(self.path.parent) or {}))
        finally:
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held and read_lock(self.path.parent) == self.me:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def claim_check(out: str | None, resume: str | None, *, check: bool) -> Path | None:
    """Resolves --train.resume (`auto`) and, when `check` (rank 0 of a training run), checks --train.out before
    any data is read: a writable folder that holds no other run and no live writer."""
    path = resolve_resume(resume, out)
    if check and out:
        check_out_path(Path(out))
        check_not_another_run(Path(out), path, auto=resume == "auto")
    return path
