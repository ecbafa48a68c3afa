"""The one helper module of the algorithm tests: models, batches, references computed by hand.

- Logit batches (the pseudo-label family's tests): `logits_batch` makes an SSLBatch whose "images" are
  logits, so with `IDENTITY` as the model a loss can be checked against a per-sample loop on fixed logits.
- Image batches and tiny fp64 nets (the consistency / MixUp tests): `tiny_net`, `perturbed_teacher`,
  `random_image_batch`.
- The registry-wide contract tests (tests/test_algorithms.py, test_zoo_integration.py): `ConfidentNet`
  (scaled logits, so thresholds are reached), `build_algo`, `separable_batch` (the views an algorithm
  declares, one fixed pattern per class), `teacher_copy`.
- References by hand, on Python floats: `*_by_hand`.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from fastssl.algorithms import get_algorithm
from fastssl.batch import SSLBatch, ViewSpec

IDENTITY = nn.Identity()
"""the model (and teacher) of the logit-batch tests: forward_cat returns the batch's logits"""


# --- references by hand -----------------------------------------------------------------------------------
def softmax_by_hand(row, T: float = 1.0) -> list[float]:
    """softmax(row / T) of a tensor row or a list, on Python floats."""
    vals = [float(v) / T for v in (row.detach() if isinstance(row, Tensor) else row)]
    m = max(vals)
    e = [math.exp(v - m) for v in vals]
    z = sum(e)
    return [x / z for x in e]


def ce_by_hand(row: Tensor, y: int) -> float:
    """−log softmax(row)[y]."""
    vals = [float(v) for v in row.detach()]
    m = max(vals)
    return m + math.log(sum(math.exp(v - m) for v in vals)) - vals[y]


def soft_ce_by_hand(row: Tensor, target: list[float]) -> float:
    """−Σ target · log softmax(row)."""
    return -sum(t * math.log(q) for t, q in zip(target, softmax_by_hand(row)))


def mean_ce_by_hand(logits: Tensor, y: Tensor) -> float:
    """mean_i −log softmax(logits_i)[y_i], one sample at a time."""
    return sum(-math.log(softmax_by_hand(z)[int(t)]) for z, t in zip(logits.tolist(), y.tolist())) / len(y)


def mean_soft_ce_by_hand(logits: Tensor, target: Tensor) -> float:
    return sum(-sum(t * math.log(p) for t, p in zip(trow, softmax_by_hand(z)))
               for z, trow in zip(logits.tolist(), target.tolist())) / len(target)


def mean_softmax_mse_by_hand(logits: Tensor, target: Tensor) -> float:
    """mean_i (1/C) Σ_c (softmax(logits_i)_c − target_ic)²."""
    rows = [sum((p - t) ** 2 for p, t in zip(softmax_by_hand(z), trow)) / len(trow)
            for z, trow in zip(logits.tolist(), target.tolist())]
    return sum(rows) / len(rows)


# --- logit batches -----------------------------------------------------------------------------------------
def logits_batch(w: Tensor, s: Tensor, lb: Tensor, y_lb: Tensor, idx: Tensor | None = None,
                 lb_s: Tensor | None = None, m: Tensor | None = None) -> SSLBatch:
    """An SSLBatch whose 'images' are logits: with `IDENTITY` as the model, forward_cat returns them."""
    n = w.shape[0]
    idx = torch.arange(n) if idx is None else idx
    kw = {} if lb_s is None else {"x_lb_s": lb_s}
    if m is not None:
        kw["x_ulb_m"] = m
    return SSLBatch(lb, y_lb, w, s, idx, torch.zeros(n, dtype=torch.long), **kw)


def random_logits(n: int, c: int, seed: int, scale: float = 3.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g, dtype=torch.float64) * scale).requires_grad_()


def update_twice_mean_probs(algo, lb: Tensor, y: Tensor, n: int = 10) -> list[list[float]]:
    """Two forward + update_state steps of `algo` on fresh fp64 weak logits (n rows); returns each step's
    mean weak-view probability vector, by hand (what distribution-alignment EMAs average)."""
    means = []
    for t in range(2):
        w = random_logits(n, lb.shape[1], 30 + t)
        batch = logits_batch(w, w.clone(), lb, y)
        algo.update_state(batch, algo(IDENTITY, IDENTITY, batch, torch.tensor(t)).state)
        probs = [softmax_by_hand(w[i]) for i in range(n)]
        means.append([sum(p[c] for p in probs) / n for c in range(lb.shape[1])])
    return means


# --- tiny fp64 nets and image batches ---------------------------------------------------------------------
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


def tiny_net(seed=0, bn=True, num_classes=5) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(num_classes=num_classes, bn=bn).double()


def perturbed_teacher(model: nn.Module, seed=1) -> nn.Module:
    """An EMA-teacher stand-in: a copy in eval mode with perturbed weights (so it differs from the student)."""
    t = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return t.requires_grad_(False).eval()


def random_image_batch(views: ViewSpec, B=4, mu=2, num_classes=5, hw=6, seed=0) -> SSLBatch:
    """fp64 Gaussian images with exactly the views `views` declares (absent ones: 0 rows)."""
    g = torch.Generator().manual_seed(seed)
    n = mu * B
    img = lambda m: torch.randn(m, 3, hw, hw, generator=g, dtype=torch.float64)  # noqa: E731
    return SSLBatch(
        x_lb=img(B), y_lb=torch.randint(0, num_classes, (B,), generator=g),
        x_ulb_w=img(n) if views.num_weak else img(0), x_ulb_s=img(n) if views.num_strong else img(0),
        idx_ulb=torch.arange(n), y_ulb=torch.randint(0, num_classes, (n,), generator=g),
        x_ulb_w_extra=tuple(img(n) for _ in range(max(views.num_weak - 1, 0))),
        x_ulb_s_extra=tuple(img(n) for _ in range(max(views.num_strong - 1, 0))),
        x_ulb_m=img(n) if views.medium else None,
    )


def param_grads(module: nn.Module) -> list[Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def grad_with_lambda(algo_cls, cfg_kwargs, model, batch, step, *, teacher=None, lambda_u, **init):
    """The model's gradient from one step with the given λ_u (the registry contract: λ_u matters)."""
    algo = algo_cls(algo_cls.Config(**{**cfg_kwargs, "lambda_u": lambda_u}), **init).double()
    model.zero_grad()
    torch.manual_seed(0)
    algo(model, teacher if teacher is not None else teacher_copy(model), batch, step).loss.backward()
    return param_grads(model)


# --- the registry-wide contract tests -----------------------------------------------------------------------
C, B, MU, HW, NUM_ULB, TOTAL = 4, 4, 2, 6, 64, 4096
STEP = int(0.6 * TOTAL)  # past every warm-up/ramp expressed as a fraction of TOTAL (Pseudo-Label 0.4, Dash, TSA)


class ConfidentNet(nn.Module):
    """conv → BatchNorm → ReLU → pool → linear, logits scaled so that predictions are confident."""

    num_features = 8
    """width of `forward_features` (ReMixMatch's rotation head reads it)"""

    def __init__(self, scale: float = 50.0):
        super().__init__()
        self.conv = nn.Conv2d(3, self.num_features, 3, padding=1)
        self.bn = nn.BatchNorm2d(self.num_features)
        self.fc = nn.Linear(self.num_features, C)
        self.scale = scale

    def forward_features(self, x):
        return torch.relu(self.bn(self.conv(x))).mean((2, 3))

    def head(self, h):
        return self.fc(h) * self.scale

    def forward(self, x):
        return self.head(self.forward_features(x))


def build_algo(name: str, **overrides):
    cls = get_algorithm(name)
    return cls(cls.Config(**overrides), num_classes=C, num_ulb=NUM_ULB, total_steps=TOTAL,
               num_features=ConfidentNet.num_features, make_model=ConfidentNet)


PATTERNS = torch.randn(C, 3, HW, HW, generator=torch.Generator().manual_seed(123))


def class_images(y: Tensor, g: torch.Generator, noise: float) -> Tensor:
    """Separable synthetic images: a fixed random pattern per class, plus Gaussian noise."""
    return PATTERNS[y] + noise * torch.randn(len(y), 3, HW, HW, generator=g)


def separable_batch(algo_cls, seed: int = 0, noise: float = 1.0) -> SSLBatch:
    """A batch with exactly the views `algo_cls.views` declares (absent ones: 0 rows)."""
    g = torch.Generator().manual_seed(seed)
    spec = algo_cls.views
    y_lb = torch.arange(B) % C
    y_ulb = torch.randint(0, C, (B * MU,), generator=g)
    idx = torch.randperm(NUM_ULB, generator=g)[: B * MU]
    view = lambda y, k: class_images(y, g, noise * (1.5 if k else 1.0))  # noqa: E731 (strong: noisier)
    empty = torch.empty(0, 3, HW, HW)
    w = [view(y_ulb, 0) for _ in range(spec.num_weak)]
    s = [view(y_ulb, 1) for _ in range(spec.num_strong)]
    kw = {"x_lb_s": view(y_lb, 1)} if spec.lb_strong else {}
    if spec.medium:
        kw["x_ulb_m"] = view(y_ulb, 1)
    return SSLBatch(view(y_lb, 0), y_lb, w[0] if w else empty, s[0] if s else empty, idx, y_ulb,
                    x_ulb_w_extra=tuple(w[1:]), x_ulb_s_extra=tuple(s[1:]), **kw)


def teacher_copy(model: nn.Module) -> nn.Module:
    """The EMA teacher at step 0, as the trainer hands it: a copy, eval mode, no gradient."""
    return copy.deepcopy(model).requires_grad_(False).eval()
