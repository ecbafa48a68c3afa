"""Pure loss and mixing functions shared by the consistency and MixUp algorithms.

Conventions (one for every function here):
- The prediction is given as LOGITS (the gradient flows through it); a target is given as PROBABILITIES
  (the caller detaches it: a teacher's `softmax`, a sharpened guess, a mixed one-hot).
- Distances return one value per sample, shape (N,), so that masks can multiply them; callers `.mean()`.
- Logs come from `log_softmax`, and `0·log 0` is taken as 0 (`xlogy`), so KL and JS are never negative
  (up to rounding) and never NaN for one-hot or underflowed targets. The defect this guards against:
  `F.kl_div(softmax(a), softmax(b))` treats its first argument as log-probabilities and returns negative
  "divergences" (see tests/test_losses.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastssl.kernels.reference import acc_dtype


def acc(t: Tensor) -> Tensor:
    """`t` in the accumulation dtype for losses: bf16/fp16 (under AMP) → fp32; fp32 and fp64 pass through
    (the tests compare in fp64). The one place this rule lives (kernels/reference.py: `acc_dtype`)."""
    return t.to(acc_dtype(t.dtype))


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """(N,) int64 → (N, C) one-hot in `dtype`, by a scatter: an out-of-range label is an error (CPU) or a
    device assert (CUDA), and nothing reads a value back. `F.one_hot` on a CPU reads min and max back to
    the host to check the labels, which would hide real host syncs from `fastssl.train.syncs`."""
    out = torch.zeros(labels.shape[0], num_classes, dtype=dtype, device=labels.device)
    return out.scatter_(1, labels[:, None], 1.0)


def mse(logits: Tensor, target: Tensor) -> Tensor:
    """Squared error between softmax(logits) and `target`, averaged over the C classes: (N,).

    The 1/C average is MixMatch's L_U = 1/(C|U'|) Σ ||q − p||² and Mean Teacher's softmax MSE."""
    return (acc(logits).softmax(-1) - target).square().mean(-1)


def l1(logits: Tensor, target: Tensor) -> Tensor:
    """Absolute error between softmax(logits) and `target`, averaged over the classes: (N,)."""
    return (acc(logits).softmax(-1) - target).abs().mean(-1)


def kl(logits: Tensor, target: Tensor) -> Tensor:
    """KL(target ‖ softmax(logits)) = Σ_c t_c (log t_c − log p_c): (N,), ≥ 0."""
    log_p = acc(logits).log_softmax(-1)
    return (torch.xlogy(target, target) - target * log_p).sum(-1)


def js(logits: Tensor, target: Tensor) -> Tensor:
    """Jensen–Shannon divergence ½ KL(t ‖ m) + ½ KL(p ‖ m), m = (t + p)/2, p = softmax(logits): (N,), in [0, log 2]."""
    log_p = acc(logits).log_softmax(-1)
    p = log_p.exp()
    m = 0.5 * (target + p)
    kl_t = (torch.xlogy(target, target) - torch.xlogy(target, m)).sum(-1)
    kl_p = (p * (log_p - m.log())).sum(-1)
    return 0.5 * (kl_t + kl_p)


DISTANCES = {"mse": mse, "l1": l1, "kl": kl, "js": js}
"""consistency distances by name (the `consistency` option of Π-Model and Mean Teacher)"""


def soft_ce(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy with a soft target, −Σ_c t_c log softmax(logits)_c: (N,)."""
    return -(target * acc(logits).log_softmax(-1)).sum(-1)


def entropy(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits), −Σ p log p: (N,)."""
    log_p = acc(logits).log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)


def sharpen(p: Tensor, T: float) -> Tensor:
    """MixMatch's temperature sharpening p_c^(1/T) / Σ_k p_k^(1/T), row-wise."""
    q = p.pow(1.0 / T)
    return q / q.sum(-1, keepdim=True)


def mixup_lambda(alpha: float, like: Tensor, *, biased: bool) -> Tensor:
    """λ ~ Beta(α, α) as a 0-d tensor on `like`'s device (no host round trip). `biased`: λ' = max(λ, 1 − λ),
    MixMatch's choice, so the mixed sample stays closer to its first input (whose loss it is counted in)."""
    conc = torch.full((), alpha, dtype=torch.float32, device=like.device)
    # validate_args=False: checking the concentration's range would read it back to the host
    lam = torch.distributions.Beta(conc, conc, validate_args=False).sample()
    return torch.maximum(lam, 1.0 - lam) if biased else lam


def random_permutation(n: int, device: torch.device) -> Tensor:
    """A uniformly random permutation of range(n), as the argsort of n i.i.d. uniforms, on the device.

    Not `torch.randperm`: with torch 2.13, inductor's pattern matcher crashes when `randperm` feeds an index
    ("Not all inputs to pattern found ... slice_shape"; reproduced on CPU, fullgraph), argsort does not."""
    return torch.argsort(torch.rand(n, device=device))


def mixup(x: Tensor, y: Tensor, lam: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """(λ x + (1 − λ) x[perm], λ y + (1 − λ) y[perm]) with one λ for the batch; `perm` from
    `random_permutation` (a gather with a fixed-size index, so shapes stay static). Inputs and targets are
    mixed identically."""
    lam_x = lam.to(x.dtype)
    lam_y = lam.to(y.dtype)
    return lam_x * x + (1 - lam_x) * x[perm], lam_y * y + (1 - lam_y) * y[perm]


def ramp_up(step: Tensor, length: float, kind: str = "linear") -> Tensor:
    """Weight schedule in [0, 1] as tensor math on the 0-d `step` (no recompiles, no host sync).

    t = clamp(step/length, 0, 1); linear: t; sigmoid: exp(−5(1 − t)²) (Laine & Aila, Mean Teacher).
    length ≤ 0 means no ramp (always 1)."""
    if length <= 0:
        return torch.ones((), dtype=torch.float32, device=step.device)
    t = (step.float() / length).clamp(0.0, 1.0)
    if kind == "linear":
        return t
    if kind == "sigmoid":
        return torch.exp(-5.0 * (1.0 - t).square())
    raise ValueError(f"unknown ramp {kind!r}; use linear or sigmoid")


def rotate90(x: Tensor, k: Tensor) -> Tensor:
    """Rotates each image x[i] (N, C, H, W), H == W, by k[i]·90° (k in 0..3) with `torch.rot90` over (H, W).

    Static shapes: all four rotations are formed and the right one is selected per sample by `torch.where`
    (4x the memory of one view; a view is small next to the activations)."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(x.shape[-2:])}; crop to a square first")
    k = k.view(-1, *([1] * (x.dim() - 1)))
    out = x
    for r in (1, 2, 3):
        out = torch.where(k == r, torch.rot90(x, r, dims=(-2, -1)), out)
    return out


__all__ = ["DISTANCES", "entropy", "js", "kl", "l1", "mixup", "mixup_lambda", "mse", "ramp_up",
           "random_permutation", "rotate90", "sharpen", "soft_ce", "acc"]
