"""EMA teacher: a copy of the model whose weights follow the student's by exponential moving average."""
from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from fastssl.kernels import ema_update_

ALIGN = 64
"""each tensor starts at a multiple of 64 elements (256 B for fp32) inside its flat buffer, so views stay
aligned for vectorised kernels (cuDNN, fused optimizers); the padding is 0 in both buffers and stays 0.
The flat length is then a multiple of 64 too, which lets Triton prove the EMA kernel's bounds mask uniform
over 16 elements and emit 16-byte loads/stores (checked in the sm_90a cubin by tests/test_kernels_cubin.py;
at a length not divisible by 16 the same kernel compiles to 4-byte accesses)."""


def _dense_strides(t: Tensor) -> tuple[int, ...]:
    """t's strides if they describe a dense, non-overlapping layout (contiguous, channels_last, ...),
    else the contiguous strides."""
    order = sorted(range(t.ndim), key=lambda i: t.stride(i))
    expect = 1
    for i in order:
        if t.size(i) != 1 and t.stride(i) != expect:
            return torch.empty(t.shape, device="meta").stride()
        expect *= t.size(i)
    return t.stride()


def _flatten_(tensors: list[Tensor]) -> tuple[Tensor, list[int]]:
    """Move `tensors` (parameters or buffers, one dtype and device) into one new flat buffer and rebind
    each one's `.data` to a view of it with the same shape and strides. Returns (flat, data_ptrs)."""
    offsets, n = [], 0
    for t in tensors:
        offsets.append(n)
        n += math.ceil(t.numel() / ALIGN) * ALIGN
    flat = torch.zeros(n, dtype=tensors[0].dtype, device=tensors[0].device)
    for t, off in zip(tensors, offsets):
        view = flat.as_strided(t.shape, _dense_strides(t), off)
        view.copy_(t.detach())
        t.data = view
    return flat, [t.data_ptr() for t in tensors]


def _grouped(a: list[Tensor], b: list[Tensor]) -> dict[tuple, tuple[list[Tensor], list[Tensor]]]:
    groups: dict[tuple, tuple[list[Tensor], list[Tensor]]] = {}
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape or x.dtype != y.dtype:
            raise ValueError("EMATeacher: teacher and student tensors differ; build it from the student model")
        ga, gb = groups.setdefault((x.dtype, x.device), ([], []))
        ga.append(x)
        gb.append(y)
    return groups


class EMATeacher(nn.Module):
    """ema <- d*ema + (1-d)*param for every floating-point parameter, as ONE kernel launch per dtype.

    Floating-point buffers (BN running statistics) are copied from the student (`buffers="copy"`, the
    reference trainers' behaviour) or averaged like the parameters (`buffers="ema"`); other buffers (BN's
    `num_batches_tracked`) are always copied. `update(decay)` takes `decay` as a 0-d device tensor so a
    warm-up schedule never recompiles or syncs. The teacher (`.module`) is what evaluation uses.

    Construction ORDER matters: the student's float parameters and buffers are moved into flat buffers
    (their `.data` become views of one tensor per dtype), so build the teacher AFTER
    `model.to(device, memory_format=channels_last)` and BEFORE the optimizer, DDP and torch.compile, and
    never call `.to()`/`.cuda()` on the student (or this module) afterwards: that would silently replace
    the views. In-place writes (optimizer steps, BN statistics, `load_state_dict`) keep the aliasing.
    `update()` checks it in eager mode and raises if it was broken.
    """

    def __init__(self, model: nn.Module, buffers: str = "copy"):
        super().__init__()
        if buffers not in ("copy", "ema"):
            raise ValueError(f"EMATeacher(buffers={buffers!r}); use 'copy' or 'ema'")
        self.buffers_mode = buffers
        self.module = copy.deepcopy(model).requires_grad_(False).eval()
        self._src = [model]  # not registered: the student is saved by the trainer
        pairs = [(t, s) for t, s in zip(self.module.parameters(), model.parameters()) if s.is_floating_point()]
        bufs = list(zip(self.module.buffers(), model.buffers()))
        fbufs = [(t, s) for t, s in bufs if s.is_floating_point()]
        self._other_bufs = ([t for t, s in bufs if not s.is_floating_point()],
                            [s for t, s in bufs if not s.is_floating_point()])
        # plain lists (not registered): the flat buffers alias tensors that state_dict already holds
        self._param_flats = self._build([t for t, _ in pairs], [s for _, s in pairs])
        self._buf_flats = self._build([t for t, _ in fbufs], [s for _, s in fbufs])
        self._tracked = [t for t, _ in pairs + fbufs] + [s for _, s in pairs + fbufs]
        self._ptrs = [t.data_ptr() for t in self._tracked]

    @staticmethod
    def _build(teacher: list[Tensor], student: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        flats = []
        for ts, ss in _grouped(teacher, student).values():
            flats.append((_flatten_(ts)[0], _flatten_(ss)[0]))
        return flats

    def flat_buffers(self) -> list[Tensor]:
        """Every flat buffer (teacher and student): what `update` reads and writes."""
        return [t for pair in self._param_flats + self._buf_flats for t in pair]

    def check_aliasing(self) -> None:
        """Raise if a parameter or buffer no longer lives in its flat buffer (host-only; no sync)."""
        if [t.data_ptr() for t in self._tracked] != self._ptrs:
            raise RuntimeError("EMATeacher: a parameter/buffer of the student or teacher was replaced (e.g. by "
                               "`.to()` after EMATeacher(model)); build the teacher after moving the model")

    @torch.no_grad()
    def update(self, decay: Tensor) -> None:
        if not torch.compiler.is_compiling():
            self.check_aliasing()
        ema_update_([t for t, _ in self._param_flats], [s for _, s in self._param_flats], decay)
        if self.buffers_mode == "ema":
            ema_update_([t for t, _ in self._buf_flats], [s for _, s in self._buf_flats], decay)
        else:
            for t, s in self._buf_flats:
                t.copy_(s)
        if self._other_bufs[0]:
            torch._foreach_copy_(*self._other_bufs)
