"""Pieces shared by the algorithms that learn embeddings next to the classifier (CoMatch, SimMatch): the
projection head they attach to the backbone's pooled features, and the fixed-size ring their memory
banks are written through. A ring's buffers are written from rows gathered over the ranks, so every rank
holds the same memory and a checkpoint (the buffers and their pointer) restores it exactly."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastssl.algorithms.losses import acc


class ProjectionHead(nn.Module):
    """`num` MLPs (Linear–ReLU–Linear) averaged, then L2-normalised: (N, F) → (N, out) unit rows in the
    accumulation dtype. num > 1 is EPASS (Nguyen et al. 2023), USB's classic-CV setting for both methods."""

    def __init__(self, in_features: int, out_features: int, num: int):
        super().__init__()
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(in_features, in_features), nn.ReLU(),
                                                nn.Linear(in_features, out_features)) for _ in range(num))

    def forward(self, h: Tensor) -> Tensor:
        z = sum(mlp(h) for mlp in self.mlps) / len(self.mlps)
        return F.normalize(acc(z), dim=-1)


@torch.no_grad()
def ring_write(banks: list[Tensor], rows: list[Tensor], ptr: Tensor, filled: Tensor | None = None) -> None:
    """Writes `rows[i]` (k rows each) into `banks[i]` (S rows each) at positions ptr, ptr+1, ... mod S, in
    place, and advances the 0-d int64 `ptr` (mod S) and, if given, `filled` (capped at S). A push of k > S
    rows keeps its last S (each position is written once, so the write is deterministic). Static shapes,
    no host sync."""
    S, k = banks[0].shape[0], rows[0].shape[0]
    pos = (ptr + torch.arange(k, device=ptr.device)) % S
    if k > S:
        pos, rows = pos[-S:], [r[-S:] for r in rows]
    for bank, r in zip(banks, rows):
        bank.index_copy_(0, pos, r.to(bank.dtype))
    ptr.copy_((ptr + k) % S)
    if filled is not None:
        filled.copy_(torch.clamp(filled + k, max=S))
