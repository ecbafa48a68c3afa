"""Find the operations that make the host wait for the GPU, on any device.

On CUDA, `torch.cuda.set_sync_debug_mode` counts the synchronisations themselves. A CPU has none to
count, but a step runs the same operators there, and the ones that synchronise on a GPU are known: they
need a device value on the host (`.item()`, `float(t)`, `if t:`), or an output whose size depends on the
data (boolean-mask indexing, `masked_select`, `nonzero`, `unique`, `repeat_interleave` without
`output_size`, `bincount`). `HostSyncTrace` records those operators as they are dispatched, so a CPU test
can prove a step free of them (what the GPU's sync debug mode would report as 0 syncs per step) and the
CPU benchmark can count them per step for each system.

Not seen by the trace: copies to the host that bypass the dispatcher on a CPU (`Tensor.tolist()`,
`.numpy()`, `.cpu()` of a tensor already there). The trainer's only `.tolist()` is in `_read_metrics`,
once every `log_every` steps, outside `train_step`.
"""
from __future__ import annotations

import traceback
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = frozenset({
    "aten::_local_scalar_dense",  # .item(), float(t), int(t)
    "aten::item",
    "aten::is_nonzero",  # bool(t), `if t:`
    "aten::equal",
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",
    "aten::bincount",
})
"""operators that need a device value on the host, or whose output size depends on the data"""

_INDEXING = frozenset({"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"})


def _is_mask(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)


def sync_reason(func, args, kwargs) -> str | None:
    """Why `func(*args, **kwargs)` would synchronise on CUDA, or None."""
    name = func._schema.name
    if name in SYNC_OPS:
        return name
    if name in _INDEXING and len(args) > 1 and any(_is_mask(i) for i in (args[1] or ())):
        return f"{name} with a boolean mask"
    if name == "aten::repeat_interleave" and kwargs.get("output_size") is None:  # keyword-only in every overload
        return f"{name} without output_size"
    return None


class HostSyncTrace(TorchDispatchMode):
    """Context manager recording every would-be host sync dispatched inside it.

    `counts`: Counter of reasons; `where`: for each reason, the innermost fastssl/benchmarks frame of its
    first occurrence (file:line), so a failure names the line to fix.
    """

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.where: dict[str, str] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reason = sync_reason(func, args, kwargs)
        if reason is not None:
            self.counts[reason] += 1
            if reason not in self.where:
                self.where[reason] = _caller()
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self) -> str:
        return "; ".join(f"{r} x{n} (first at {self.where[r]})" for r, n in self.counts.most_common())


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()):
        if ("/fastssl/" in frame.filename or "/benchmarks/" in frame.filename or "/kernels/" in frame.filename) \
                and not frame.filename.endswith("syncs.py"):
            return f"{frame.filename.rsplit('/', 2)[-2]}/{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
    return "outside fastssl"
