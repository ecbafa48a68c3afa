"""How a run stops when something goes wrong: signals, divergence, strict JSON (the errors and their exit
codes are in fastssl.train.errors)."""
from __future__ import annotations

import json
import math
import signal
import sys
from pathlib import Path
from typing import Any

from fastssl.train.checkpoint import checkpoints
from fastssl.train.errors import EXIT_DIVERGED, RunError

class Preempted(RunError):
    def __init__(self, signum: int, step: int, path: Path | None):
        self.code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint "
                         f"{path or '(written by rank 0)'}. Continue with --train.resume={path.parent if path else 'DIR'} "
                         f"(or --train.resume=auto with the same --train.out); exit code {self.code}")


class Diverged(RunError):
    code = EXIT_DIVERGED

    def __init__(self, step: int, what: str, out: Path | None):
        last = _newest_checkpoint(out)
        super().__init__(f"training diverged at step {step}: {what} is not finite. Last good checkpoint: "
                         f"{last or 'none'} (no non-finite checkpoint was written). Lower --optim.lr or check the "
                         f"data; {'resume with --train.resume=' + str(last) if last else 'start a new run'}")


def _newest_checkpoint(out: Path | None) -> Path | None:
    found = checkpoints(out) if out is not None and Path(out).is_dir() else []
    return found[-1] if found else None


def check_metrics(means: dict[str, float], step: int, out: Path | None) -> None:
    """On the metrics the trainer already read back (every log_every steps): free, no extra sync."""
    bad = [k for k, v in means.items() if not math.isfinite(v)]
    if bad:
        raise Diverged(step, f"the mean {', '.join(bad)} of the last steps", out)


def check_weights(modules: list, step: int, out: Path | None) -> None:
    """Before a checkpoint is written (which reads everything back anyway): one reduction, one read."""
    import torch

    with torch.no_grad():
        tensors = [t for m in modules for t in m.state_dict().values() if t.is_floating_point()]
        finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all()
    if not finite.item():  # host sync (checkpoint only)
        raise Diverged(step, "the model's weights", out)


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite_or_none(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite_or_none(x) for x in v]
    return v


def strict_json(obj: Any, **kw) -> str:
    """JSON every parser accepts: NaN/±inf (not JSON) are written as null."""
    return json.dumps(_finite_or_none(obj), allow_nan=False, **kw)


class StopOnSignal:
    """SIGTERM/SIGINT ask the run to stop after the current step; a second one acts as usual (kills).

    `requested` costs nothing per step on one process (a Python attribute). Under torchrun the ranks must stop
    at the same step, so they agree only at `log_every` points, where the trainer already waits for the
    metrics: one extra 1-element MAX all-reduce there, nothing per step."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self.restore()  # the next signal kills as it would without us
        print(f"fastssl: {signal.Signals(signum).name}: stopping after this step with a checkpoint "
              f"(send it again to abort at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopOnSignal:
        import threading

        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self.restore()

    def requested(self, at_sync_point: bool, device) -> int | None:
        """The signal to stop for, identical on every rank; None to go on."""
        from fastssl.collectives import is_dist

        if not is_dist():
            return self.signum
        if not at_sync_point:
            return None
        import torch
        import torch.distributed as dist

        flag = torch.tensor([self.signum or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None  # host sync (every log_every steps, next to the metrics read)
