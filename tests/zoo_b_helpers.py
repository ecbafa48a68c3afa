"""Shared fixtures for the consistency / MixUp algorithm tests: a tiny model with the model interface
(`forward`, `forward_features`, `head`, `num_features`), fixed batches, and per-sample reference losses."""
import copy
import math

import torch
from torch import nn

from fastssl.batch import SSLBatch, ViewSpec


class TinyNet(nn.Module):
    """conv → (BatchNorm) → ReLU → global average pool → features (N, F) → Linear head."""

    def __init__(self, in_ch=3, num_classes=5, num_features=6, bn=True):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, num_features, 3, padding=1)
        self.bn = nn.BatchNorm2d(num_features) if bn else nn.Identity()
        self.num_features = num_features
        self.head = nn.Linear(num_features, num_classes)

    def forward_features(self, x):
        return torch.relu(self.bn(self.conv(x))).mean((2, 3))

    def forward(self, x):
        return self.head(self.forward_features(x))


def tiny(seed=0, bn=True, num_classes=5):
    torch.manual_seed(seed)
    return TinyNet(num_classes=num_classes, bn=bn).double()


def teacher_of(model, seed=1):
    """An EMA-teacher stand-in: a copy in eval mode with perturbed weights (so it differs from the student)."""
    t = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return t.requires_grad_(False).eval()


def make_batch(views: ViewSpec, B=4, mu=2, num_classes=5, hw=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = mu * B
    img = lambda m: torch.randn(m, 3, hw, hw, generator=g, dtype=torch.float64)  # noqa: E731
    return SSLBatch(
        x_lb=img(B), y_lb=torch.randint(0, num_classes, (B,), generator=g),
        x_ulb_w=img(n) if views.num_weak else img(0), x_ulb_s=img(n) if views.num_strong else img(0),
        idx_ulb=torch.arange(n), y_ulb=torch.randint(0, num_classes, (n,), generator=g),
        x_ulb_w_extra=tuple(img(n) for _ in range(max(views.num_weak - 1, 0))),
        x_ulb_s_extra=tuple(img(n) for _ in range(max(views.num_strong - 1, 0))),
    )


def softmax_row(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def ref_ce(logits, y):
    """mean_i −log softmax(logits_i)[y_i], one sample at a time."""
    return sum(-math.log(softmax_row(z)[int(t)]) for z, t in zip(logits.tolist(), y.tolist())) / len(y)


def ref_soft_ce(logits, target):
    return sum(-sum(t * math.log(p) for t, p in zip(trow, softmax_row(z)))
               for z, trow in zip(logits.tolist(), target.tolist())) / len(target)


def ref_mse(logits, target):
    """mean_i (1/C) Σ_c (softmax(logits_i)_c − target_ic)²."""
    rows = [sum((p - t) ** 2 for p, t in zip(softmax_row(z), trow)) / len(trow)
            for z, trow in zip(logits.tolist(), target.tolist())]
    return sum(rows) / len(rows)


def grads(module):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def grad_with_lambda(algo_cls, cfg_kwargs, model, batch, step, *, teacher=None, lambda_u, extra=None, **init):
    """The model's gradient from one step with the given λ_u (the registry contract: λ_u matters)."""
    algo = algo_cls(algo_cls.Config(**{**cfg_kwargs, "lambda_u": lambda_u}), **init).double()
    if teacher is not None:
        algo.set_teacher(teacher)
    model.zero_grad()
    torch.manual_seed(0)
    algo(model, batch, step).loss.backward()
    return grads(model)
