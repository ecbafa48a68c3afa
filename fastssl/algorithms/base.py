"""The interface every algorithm implements, and the pieces they share.

An algorithm is an `nn.Module` so that its state (FlexMatch's per-sample labels, FreeMatch's running
statistics, distribution-alignment history) lives in registered buffers: moved by `.to()`, saved by
`state_dict()`, restored exactly on resume. Its learnable parts, if any (ReMixMatch's rotation head), are
parameters and are optimised with the model.

Contract (what keeps the step compiled, static and sync-free):
- `forward` uses fixed shapes only: masks multiply, they never index; no `.item()`/`.tolist()`.
- `step` is a 0-d int64 tensor on the device, so schedules (ramps, warm-ups) never recompile.
- `update_state` is applied identically on every rank: anything derived from a rank's own batch is first
  gathered with `fastssl.train.distributed.all_gather_cat` (fixed-size) or all-reduced.
- Metrics are 0-d tensors; the trainer reads them on the host once every `log_every` steps.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from fastssl.algorithms.losses import acc, entropy  # noqa: F401 (acc re-exported for the algorithms)
from fastssl.batch import SSLBatch, ViewSpec


class StepOutput(NamedTuple):
    loss: Tensor
    """0-d total loss to backpropagate"""
    metrics: dict[str, Tensor]
    """0-d tensors to log, e.g. sup_loss, unsup_loss, mask_ratio (no host sync here)"""
    state: dict[str, Tensor]
    """what `update_state` needs from this step (detached), e.g. pseudo, mask, maxprob"""


@dataclasses.dataclass
class AlgorithmConfig:
    """Fields every algorithm has. An algorithm's own `Config` subclasses this."""

    lambda_u: float = 1.0
    """weight of the unlabeled loss"""
    entmin_weight: float = 0.0
    """add-on: weight of entropy minimisation on the unlabeled weak-view predictions (Grandvalet & Bengio 2004); 0 = off"""
    cbl_weight: float = 0.0
    """add-on: weight of the class-balance loss, BCE between the batch-mean prediction and uniform (French et al. 2018); 0 = off"""
    mcc_weight: float = 0.0
    """add-on: weight of the Minimum Class Confusion loss on the unlabeled predictions (Jin et al. 2020); 0 = off"""
    mcc_T: float = 2.5
    """temperature of the MCC softmax (the MCC paper's 2.5)"""


class Algorithm(nn.Module):
    """Base class. Subclasses set `name`, `Config`, `views`, and implement `forward`."""

    name: ClassVar[str] = ""
    """registry key, e.g. "fixmatch" (also the `--algo.name` value)"""
    Config: ClassVar[type[AlgorithmConfig]] = AlgorithmConfig
    """the algorithm's hyper-parameters, documented in place"""
    views: ClassVar[ViewSpec] = ViewSpec(num_weak=1, num_strong=1)
    """the unlabeled views the pipeline must produce"""
    uses_teacher: ClassVar[bool] = False
    """True if `forward` reads the EMA teacher (Mean Teacher, ICT): the trainer then calls `set_teacher`"""

    def __init__(self, cfg: AlgorithmConfig, *, num_classes: int, num_ulb: int, total_steps: int = 1 << 20,
                 num_features: int = 0):
        """`num_ulb`: size of the (global) unlabeled set, for per-sample state; `total_steps`: the run's
        length K, for ramps and warm-ups defined as fractions of training; `num_features`: the model's pooled
        feature width (`model.num_features`), for algorithms with heads of their own (ReMixMatch's rotation
        head); 0 = not given."""
        super().__init__()
        if not isinstance(cfg, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.num_ulb = num_ulb
        self.total_steps = total_steps
        self.num_features = num_features
        self._teacher: list[nn.Module] = []  # a list, so the teacher is not registered as a submodule

    def set_teacher(self, teacher: nn.Module) -> None:
        """Gives the algorithm the EMA teacher (not owned: not in this module's state_dict)."""
        self._teacher[:] = [teacher]

    @property
    def teacher(self) -> nn.Module:
        if not self._teacher:
            raise RuntimeError(f"{self.name} reads the EMA teacher, but set_teacher() was never called")
        return self._teacher[0]

    def forward(self, model: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def update_state(self, batch: SSLBatch, out: StepOutput) -> None:
        """Updates buffers after the optimizer step. No-op unless the algorithm has state."""

    def regularizers(self, logits_ulb: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The opt-in add-ons (`entmin_weight`, `cbl_weight`, `mcc_weight`) on `logits_ulb` (N, C), the
        unlabeled weak view's logits *with* gradient (where an algorithm has no weak-view pass with gradient,
        the unlabeled logits that carry it, named in its forward: Mean Teacher the student's second weak
        view, MixMatch and ICT the mixed unlabeled rows, ReMixMatch the first strong view). Returns
        (weighted sum to add to the loss, metrics). Every SSL algorithm adds this to its loss (`supervised`
        has no unlabeled logits and rejects nonzero weights); with all weights 0 it is a constant 0 and adds nothing to
        the graph (the branches read the config, never tensor values)."""
        cfg = self.cfg
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


def dist_align(probs: Tensor, p_target: Tensor, p_model: Tensor) -> Tensor:
    """Distribution alignment (ReMixMatch, AdaMatch, SoftMatch): probs · (p_target + ε) / (p_model + ε),
    renormalised per row; ε = 1e-6 as the reference code."""
    aligned = probs * (p_target + 1e-6) / (p_model + 1e-6)
    return aligned / aligned.sum(-1, keepdim=True)


def forward_cat(model: nn.Module, *xs: Tensor) -> tuple[Tensor, ...]:
    """One forward over the concatenation of `xs`, split back into one output per input.

    One forward instead of several: one kernel launch per layer, and BatchNorm statistics over the
    whole batch (the FixMatch convention). Empty inputs (0 rows) are allowed and give empty outputs.
    """
    sizes = [x.shape[0] for x in xs]
    logits = model(torch.cat(xs)) if len(xs) > 1 else model(xs[0])
    return tuple(logits.split(sizes))


def config_from_dict(cls: type[AlgorithmConfig], values: dict[str, Any]) -> AlgorithmConfig:
    """Builds `cls` from `values`, with an error that names unknown keys and the valid ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join('--algo.' + k for k in unknown)} for this algorithm; "
            f"valid: {', '.join('--algo.' + n for n in sorted(names))}"
        )
    return cls(**values)
