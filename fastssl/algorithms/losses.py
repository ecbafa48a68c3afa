"""The pieces every algorithm builds from, in one place: forwards, losses, distances, pseudo-label metrics,
schedules, distribution alignment, mixing and the opt-in regularizers. Pure functions (no state).

Conventions (one for every function here):
- The prediction is given as LOGITS (the gradient flows through it); a target is given as PROBABILITIES
  (the caller detaches it: a teacher's `softmax`, a sharpened guess, a mixed one-hot).
- Distances return one value per sample, shape (N,), so that masks can multiply them; callers `.mean()`.
- Logs come from `log_softmax`, and `0·log 0` is taken as 0 (`xlogy`), so KL and JS are never negative
  (up to rounding) and never NaN for one-hot or underflowed targets. The defect this guards against:
  `F.kl_div(softmax(a), softmax(b))` treats its first argument as log-probabilities and returns negative
  "divergences" (see tests/test_losses.py).

Importing this module imports torch only: the fused kernels (`fastssl.kernels`, which import Triton) are
imported on the first call of `pseudo_label_ce`, so that reading an algorithm's config, views or recipe
(`--help`, `fastssl info`, recipes) never imports Triton.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

if TYPE_CHECKING:
    from fastssl.kernels import PseudoLabelOutput


def acc(t: Tensor) -> Tensor:
    """`t` in the accumulation dtype for losses: bf16/fp16 (under AMP) → fp32; fp32 and fp64 pass through
    (the tests compare in fp64). The kernels' `acc_dtype` states the same rule (tested to agree); it is
    not imported from there so that this module does not import Triton."""
    return t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)


# --- forwards -------------------------------------------------------------------------------------------
def forward_cat(model: nn.Module, *xs: Tensor) -> tuple[Tensor, ...]:
    """One forward over the concatenation of `xs`, split back into one output per input.

    One forward instead of several: one kernel launch per layer, and BatchNorm statistics over the
    whole batch (the FixMatch convention). Empty inputs (0 rows) are allowed and give empty outputs.
    """
    sizes = [x.shape[0] for x in xs]
    logits = model(torch.cat(xs)) if len(xs) > 1 else model(xs[0])
    return tuple(logits.split(sizes))


def forward_batch_stats(model: nn.Module, x: Tensor) -> Tensor:
    """`model(x)` in training mode (BatchNorm on batch statistics), running statistics left as they were.

    For the passes the references run with BatchNorm "frozen" (USB's `bn_controller.freeze_bn`, the TF
    MixMatch code's skipped update ops): label guessing (MixMatch, ReMixMatch), VAT's perturbed passes, and
    the Mean Teacher / ICT teacher. The model is called through `torch.func.functional_call` with *copies*
    of its buffers, so BatchNorm writes its running averages into the copies, which are dropped: no module
    state changes and `torch.compile(fullgraph=True)` traces it (tested). Parameters are the model's own,
    so gradients reach them when grad mode is on. A model in eval mode (the EMA teacher) is switched to
    training mode for this call only: Mean Teacher's and ICT's reference code run the teacher in training
    mode, and the teacher's running statistics are a copy of the *student's* (`EMATeacher.update`), which
    do not match the averaged weights early in training.
    """
    was_training = model.training
    model.train()
    try:
        state = {**dict(model.named_parameters()), **{k: b.clone() for k, b in model.named_buffers()}}
        return functional_call(model, state, (x,))
    finally:
        model.train(was_training)


# --- pseudo-labels --------------------------------------------------------------------------------------
def pseudo_label_ce(logits_w: Tensor, logits_s: Tensor, threshold: Tensor | float, T: float = 1.0, *,
                    soft: bool = False, weight: Tensor | None = None) -> PseudoLabelOutput:
    """The FixMatch family's masked pseudo-label cross-entropy, `fastssl.kernels.pseudo_label_ce` (one fused
    Triton launch on CUDA, the PyTorch reference on CPU; semantics in kernels/reference.py). Imported
    here, on first use, so that importing an algorithm does not import Triton."""
    from fastssl.kernels import pseudo_label_ce as fused

    return fused(logits_w, logits_s, threshold, T, soft=soft, weight=weight)


def pseudo_label_metrics(mask: Tensor, pseudo: Tensor, y_ulb: Tensor) -> dict[str, Tensor]:
    """Mask ratio and accuracy of the selected pseudo-labels, as 0-d tensors (no host sync)."""
    mask = mask.float()
    correct = (pseudo == y_ulb).float()
    return {
        "mask_ratio": mask.mean(),
        "pl_acc": (correct * mask).sum() / mask.sum().clamp_min(1.0),
    }


def dist_align(probs: Tensor, p_target: Tensor, p_model: Tensor) -> Tensor:
    """Distribution alignment (AdaMatch, SoftMatch): probs · (p_target + ε) / (p_model + ε), renormalised
    per row; ε = 1e-6 as the reference code."""
    aligned = probs * (p_target + 1e-6) / (p_model + 1e-6)
    return aligned / aligned.sum(-1, keepdim=True)


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
    """Jensen–Shannon divergence ½ KL(t ‖ m) + ½ KL(p ‖ m), m = (t + p)/2, p = softmax(logits): (N,), in [0, log 2].

    log m = logaddexp(log t, log p) − log 2 is finite wherever t or p is nonzero, so a class whose
    probability underflows to 0 (fp32 logit gaps above ~104) where the target is 0 contributes exactly 0,
    with a finite gradient. (`(t + p).log()` is −inf there, and 0·inf made the loss and every gradient NaN.)"""
    log_p = acc(logits).log_softmax(-1)
    log_m = torch.logaddexp(target.log(), log_p) - math.log(2.0)
    kl_t = (torch.xlogy(target, target) - target * log_m).sum(-1)
    kl_p = (log_p.exp() * (log_p - log_m)).sum(-1)
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


def entropy_loss(logits: Tensor) -> Tensor:
    """Mean Shannon entropy (nats) of softmax(logits) over the rows: entropy minimisation
    (Grandvalet & Bengio, "Semi-supervised Learning by Entropy Minimization", NeurIPS 2004)."""
    return entropy(logits).mean()


def class_balance_loss(logits: Tensor) -> Tensor:
    """Binary cross-entropy between the batch-mean prediction p̄ and the uniform distribution, averaged
    over classes: −(1/C) Σ_c [(1/C) log p̄_c + (1 − 1/C) log(1 − p̄_c)] (French, Mackiewicz & Fisher,
    "Self-ensembling for visual domain adaptation", ICLR 2018, arXiv:1706.05208). Penalises a batch whose
    predictions collapse onto few classes."""
    C = logits.shape[-1]
    pbar = logits.softmax(-1).mean(0)  # (C,)
    eps = torch.finfo(pbar.dtype).tiny
    u = 1.0 / C
    return -(u * pbar.clamp_min(eps).log() + (1 - u) * (1 - pbar).clamp_min(eps).log()).mean()


def mcc_loss(logits: Tensor, T: float = 2.5) -> Tensor:
    """Minimum Class Confusion (Jin, Wang, Long & Wang, "Minimum Class Confusion for Versatile Domain
    Adaptation", ECCV 2020, arXiv:1912.03699): Ŷ = softmax(logits/T); sample weights
    W_i = N(1 + e^{−H(Ŷ_i)}) / Σ_j (1 + e^{−H(Ŷ_j)}) (entropy detached, as the authors' code);
    confusion C = Ŷᵀ diag(W) Ŷ, each column normalised to sum 1; loss = Σ of the off-diagonal / #classes."""
    N, C = logits.shape
    p = (logits / T).softmax(-1)  # (N, C)
    h = -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(-1).detach()
    w = 1 + torch.exp(-h)
    w = N * w / w.sum()
    conf = (p * w[:, None]).T @ p  # (C, C), symmetric
    conf = conf / conf.sum(0, keepdim=True)
    return (conf.sum() - conf.trace()) / C


def regularizers(logits_ulb: Tensor, cfg: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """The opt-in add-ons of every SSL algorithm (`entmin_weight`, `cbl_weight`, `mcc_weight` of
    `AlgorithmConfig`) on `logits_ulb` (N, C): the unlabeled weak view's logits *with* gradient (where an
    algorithm has no weak-view pass with gradient, the unlabeled logits that carry it, named in its forward:
    Mean Teacher the student's second weak view, MixMatch and ICT the mixed unlabeled rows, ReMixMatch the
    first strong view). Returns (weighted sum to add to the loss, metrics). With all weights 0 it is a
    constant 0 and adds nothing to the graph (the branches read the config, never tensor values)."""
    logits = acc(logits_ulb)
    loss = logits.new_zeros(())
    metrics: dict[str, Tensor] = {}
    if cfg.entmin_weight > 0:
        ent = entropy_loss(logits)
        loss = loss + cfg.entmin_weight * ent
        metrics["entmin_loss"] = ent.detach()
    if cfg.cbl_weight > 0:
        cbl = class_balance_loss(logits)
        loss = loss + cfg.cbl_weight * cbl
        metrics["cbl_loss"] = cbl.detach()
    if cfg.mcc_weight > 0:
        mcc = mcc_loss(logits, cfg.mcc_T)
        loss = loss + cfg.mcc_weight * mcc
        metrics["mcc_loss"] = mcc.detach()
    return loss, metrics


def sharpen(p: Tensor, T: float) -> Tensor:
    """MixMatch's temperature sharpening p_c^(1/T) / Σ_k p_k^(1/T), row-wise."""
    q = p.pow(1.0 / T)
    return q / q.sum(-1, keepdim=True)


def mixup_lambda(alpha: float, like: Tensor, *, biased: bool) -> Tensor:
    """λ ~ Beta(α, α) as a 0-d tensor on `like`'s device (no host round trip). `biased`: λ' = max(λ, 1 − λ),
    MixMatch's choice, so the mixed sample stays closer to its first input (whose loss it is counted in)."""
    # Drawn as G1/(G1 + G2), G1, G2 ~ Gamma(α) (Beta's definition), not with Beta.sample(): its op,
    # _sample_dirichlet, is missing from AOTAutograd's list of random ops that common-subexpression
    # elimination keeps apart (torch 2.13), so two draws with the same α in one compiled graph became one
    # (ICT's labeled and unlabeled λ); _standard_gamma is on the list.
    # validate_args=False: checking the concentration's range would read it back to the host
    conc = torch.full((2,), alpha, dtype=torch.float32, device=like.device)
    g = torch.distributions.Gamma(conc, torch.ones_like(conc), validate_args=False).sample()
    lam = g[0] / g.sum()
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
