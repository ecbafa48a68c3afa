"""EMA teacher: a copy of the model whose weights follow the student's by exponential moving average."""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from fastssl.kernels import ema_update_


class EMATeacher(nn.Module):
    """ema <- d*ema + (1-d)*param for every floating-point parameter; buffers (BN statistics) copied.

    `update(decay)` takes `decay` as a 0-d device tensor so a warm-up schedule never recompiles or syncs.
    The teacher is what evaluation uses.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(model).requires_grad_(False).eval()
        self._src = [model]  # not registered: the student is saved by the trainer

    @torch.no_grad()
    def update(self, decay: Tensor) -> None:
        student = self._src[0]
        ema_p = [p for p in self.module.parameters() if p.is_floating_point()]
        src_p = [p for p in student.parameters() if p.is_floating_point()]
        ema_update_(ema_p, src_p, decay)
        for eb, sb in zip(self.module.buffers(), student.buffers()):
            eb.copy_(sb)
