"""The algorithm contract: `Algorithm`, and `PseudoLabelAlgorithm`, the base of the thresholded pseudo-label family.

An algorithm is an `nn.Module` so that its state (FlexMatch's per-sample labels, FreeMatch's running
statistics, distribution-alignment history) lives in registered buffers: moved by `.to()`, saved by
`state_dict()`, restored exactly on resume. Its learnable parts, if any (ReMixMatch's rotation head), are
parameters and are optimised with the model.

Parameters the algorithm updates itself (Meta Pseudo Labels' teacher network, from the student's feedback)
are kept `requires_grad=False` outside `after_step`: the trainer's optimizer takes only the parameters that
require grad (`fastssl.train.optim.param_groups`) and DDP all-reduces only those, so neither touches them.
The algorithm steps them in `after_step` with an optimizer of its own, whose state lives in buffers (so the
checkpoint, through `state_dict()`, resumes it exactly), and all-reduces their gradients itself.

A step, as the trainer runs it:

    out = algorithm(student, teacher, batch, step)   # forward: StepOutput(loss, metrics, state)
    out.loss.backward(); optimizer.step(); ema.update()
    algorithm.update_state(batch, out.state)          # commit the state, identically on every rank
    algorithm.after_step(student, batch, out.state)   # eager: work that needs the updated student (MPL)

Contract (what keeps the step compiled, static and sync-free):
- `forward` uses fixed shapes only: masks multiply, they never index; no `.item()`/`.tolist()`; Python
  branches read the config or class attributes, never tensor values.
- `step` is a 0-d int64 tensor on the device, so schedules (ramps, warm-ups) never recompile.
- `teacher` is the EMA teacher, handed in like the student (the trainer passes `EMATeacher.module`, in eval
  mode, parameters without gradient); an algorithm that does not read it ignores it.
- `update_state` is applied identically on every rank: anything derived from a rank's own batch is first
  gathered with `fastssl.collectives.all_gather_cat` (fixed-size) or all-reduced.
- Metrics are 0-d tensors; the trainer reads them on the host once every `log_every` steps.
- `after_step` is not compiled with the step (it may run a backward pass of its own) but stays sync-free,
  and leaves every rank with the same parameters and buffers.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastssl.algorithms.losses import (DISTANCES, acc, forward_cat, pseudo_label_ce, pseudo_label_metrics, ramp_up,
                                      regularizers)
from fastssl.batch import SSLBatch, ViewSpec

S = TypeVar("S")


class StepOutput(NamedTuple, Generic[S]):
    loss: Tensor
    """0-d total loss to backpropagate"""
    metrics: dict[str, Tensor]
    """0-d tensors to log, e.g. sup_loss, unsup_loss, mask_ratio (no host sync here)"""
    state: S
    """what `update_state` needs from this step, detached: a NamedTuple of the algorithm's family
    (`PseudoLabelState`, ...), or None for an algorithm without state"""


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
    """Base class. A subclass sets `name`, `Config`, `views` (and `recipe`), registers its state in
    `init_state`, and implements `forward` (and `update_state` if it has state)."""

    name: ClassVar[str] = ""
    """registry key, e.g. "fixmatch" (also the `--algo.name` value)"""
    Config: ClassVar[type[AlgorithmConfig]] = AlgorithmConfig
    """the algorithm's hyper-parameters, documented in place (they become `--algo.<field>` options)"""
    views: ClassVar[ViewSpec] = ViewSpec(num_weak=1, num_strong=1)
    """the views the pipeline must produce (unlabeled weak/strong counts, a labeled strong view)"""
    recipe: ClassVar[dict[str, Any]] = {}
    """the published protocol's options on top of the common base recipe (fastssl/recipes.py), e.g.
    {"algo.tau": 0.95, "data.uratio": 1}: the recipes cifar10_<name>_{40,250,4000} are derived from it; a
    value may be a function of the recipe's label count (SimMatch's bank: `lambda num_labels: num_labels`)"""

    def __init__(self, cfg: AlgorithmConfig, *, num_classes: int, num_ulb: int, total_steps: int = 1 << 20,
                 num_features: int = 0, make_model: Callable[[], nn.Module] | None = None):
        """`num_ulb`: size of the (global) unlabeled set, for per-sample state; `total_steps`: the run's
        length K, for ramps and warm-ups defined as fractions of training; `num_features`: the model's pooled
        feature width (`model.num_features`), for algorithms with heads of their own (ReMixMatch's rotation
        head); 0 = not given; `make_model`: builds a freshly initialised network like the student (same
        architecture, classes, device and memory format), for algorithms that train a second network (Meta
        Pseudo Labels' teacher); None = not given. Subclasses do not override this: they declare their state
        in `init_state`."""
        super().__init__()
        if not isinstance(cfg, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.num_ulb = num_ulb
        self.total_steps = total_steps
        self.num_features = num_features
        self.make_model = make_model
        self.init_state()

    def init_state(self) -> None:
        """Registers the algorithm's state: buffers (`self.register_buffer(name, tensor)`, a docstring line
        under each) and learnable parts (modules). Runs at the end of `__init__`, with `cfg`, `num_classes`,
        `num_ulb`, `total_steps`, `num_features` and `make_model` set. Default: no state."""

    def forward(self, student: nn.Module, teacher: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        raise NotImplementedError  # pragma: no cover

    @torch.no_grad()
    def update_state(self, batch: SSLBatch, state: Any) -> None:
        """Commits `state` (this step's `StepOutput.state`) into the buffers, after the optimizer step and
        identically on every rank. Default: nothing (no state)."""

    def after_step(self, student: nn.Module, batch: SSLBatch, state: Any) -> None:
        """Runs eagerly after `update_state`, with the student already updated by this step's optimizer
        step: where an algorithm updates the parameters it owns itself (kept `requires_grad=False`, see the
        module docstring), with a backward pass of its own under `torch.enable_grad()` and gradients
        all-reduced over ranks. Called under the step's autocast. Default: nothing."""


# --- the thresholded pseudo-label family -----------------------------------------------------------------
class Predictions(NamedTuple):
    """One forward of the family over [x_lb, (x_lb_s), x_ulb_w, (x_ulb_s)], handed to its hooks."""

    logits_lb: Tensor
    """(B, C) labeled weak view, with gradient"""
    logits_lb_s: Tensor | None
    """(B, C) labeled strong view, with gradient (only when `views.lb_strong`)"""
    logits_ulb_w: Tensor
    """(μB, C) unlabeled weak view, with gradient"""
    logits_ulb_s: Tensor
    """(μB, C) the view trained towards the pseudo-labels: the strong view, or the weak view itself when the
    algorithm declares no strong view (Pseudo-Label)"""
    probs_lb: Tensor
    """(B, C) softmax of the detached labeled logits, accumulation dtype"""
    probs_ulb_w: Tensor
    """(μB, C) softmax of the detached unlabeled weak logits, accumulation dtype"""
    logits_ulb_m: Tensor | None = None
    """(μB, C) unlabeled medium view, with gradient (only when `views.medium`: SequenceMatch)"""


class PseudoLabels(NamedTuple):
    """What a member of the family decides for this step: how the pseudo-labels are read and weighted.
    `pseudo_label_ce` gets (logits_w, threshold, T, soft, sample_weight)."""

    threshold: Tensor | float = 0.0
    """mask = max softmax(logits_w) ≥ threshold: a float, a 0-d tensor, or (C,) read at the pseudo-label's class"""
    sample_weight: Tensor | None = None
    """(μB,) per-sample weights used instead of the threshold mask (SoftMatch, Dash)"""
    logits_w: Tensor | None = None
    """(μB, C) detached logits the pseudo-labels (argmax) and soft targets softmax(logits_w/T) are read
    from; None: the weak view's own (AdaMatch passes its aligned log-probabilities)"""
    T: float = 1.0
    """temperature of the soft targets"""
    soft: bool = False
    """soft targets softmax(logits_w/T) instead of one-hot pseudo-labels"""
    unsup_weight: Tensor | float = 1.0
    """0-d factor on the whole unlabeled part (λ_u·L_u + extra_loss + add-ons): Pseudo-Label's ramp, Dash's warm-up"""
    metrics: dict[str, Tensor] | None = None
    """the algorithm's own 0-d metrics (thresholds, EMA statistics)"""
    aux: tuple[Tensor, ...] = ()
    """tensors computed here that `extra_loss` reads again (FreeMatch: p̃ and h̃ after this step's EMA)"""


class PseudoLabelState(NamedTuple):
    """The family's `StepOutput.state`: every tensor detached, from this rank's batch."""

    probs_lb: Tensor
    """(B, C) labeled weak-view probabilities"""
    probs_ulb: Tensor
    """(μB, C) unlabeled weak-view probabilities"""
    pseudo: Tensor
    """(μB,) int64 pseudo-labels"""
    mask: Tensor
    """(μB,) weight each pseudo-label got (0/1 from the threshold, or the sample weights)"""
    maxprob: Tensor
    """(μB,) max-probability of `logits_w`"""
    sup_loss: Tensor
    """0-d labeled loss"""
    step: Tensor
    """0-d step this state was computed at"""


class PseudoLabelAlgorithm(Algorithm):
    """FixMatch and every method that differs from it only in how pseudo-labels are thresholded or weighted.

    One forward for the family: one `forward_cat` over the declared views, the labeled loss, the fused
    masked pseudo-label cross-entropy (`pseudo_label_ce`), the add-on regularizers on the weak view, the
    pseudo-label metrics, and a `PseudoLabelState` for `update_state`:

        loss = supervised_loss + unsup_weight · (λ_u · L_u + extra_loss + add-ons)

    A member implements `pseudo_labels` (its threshold or weights, from its state) and, if it has state,
    `init_state` and `update_state`; `supervised_loss` (UDA's annealing, DeFixMatch's two views) and
    `extra_loss` (FreeMatch's fairness, DeFixMatch's debiasing) are optional."""

    def pseudo_labels(self, p: Predictions, step: Tensor) -> PseudoLabels:
        """This step's thresholds or sample weights (and target logits, temperature, soft/hard), read from
        the state *before* this step's update."""
        raise NotImplementedError  # pragma: no cover

    def supervised_loss(self, p: Predictions, batch: SSLBatch, step: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(0-d labeled loss, extra metrics). Default: cross-entropy on the labeled weak view."""
        return F.cross_entropy(acc(p.logits_lb), batch.y_lb), {}

    def extra_loss(self, p: Predictions, pl: Any, sel: PseudoLabels) -> tuple[Tensor | float, dict[str, Tensor]]:
        """(weighted term added to the unlabeled part, metrics); `pl` is the `PseudoLabelOutput` of the
        unlabeled batch (loss, mask, pseudo, maxprob). Default: nothing."""
        return 0.0, {}

    def predict(self, student: nn.Module, batch: SSLBatch) -> Predictions:
        xs = [batch.x_lb]
        if self.views.lb_strong:
            if batch.x_lb_s is None:
                raise ValueError(f"{self.name} needs a strong view of the labeled images (batch.x_lb_s): build "
                                 "the pipeline from the algorithm's ViewSpec (lb_strong=True)")
            xs.append(batch.x_lb_s)
        xs.append(batch.x_ulb_w)
        if self.views.num_strong:
            xs.append(batch.x_ulb_s)
        if self.views.medium:
            if batch.x_ulb_m is None:
                raise ValueError(f"{self.name} needs a medium view of the unlabeled images (batch.x_ulb_m): build "
                                 "the pipeline from the algorithm's ViewSpec (medium=True)")
            xs.append(batch.x_ulb_m)
        logits = list(forward_cat(student, *xs))
        logits_lb = logits.pop(0)
        logits_lb_s = logits.pop(0) if self.views.lb_strong else None
        logits_ulb_w = logits.pop(0)
        logits_ulb_s = logits.pop(0) if self.views.num_strong else logits_ulb_w
        logits_ulb_m = logits.pop(0) if self.views.medium else None
        return Predictions(logits_lb, logits_lb_s, logits_ulb_w, logits_ulb_s,
                           acc(logits_lb.detach()).softmax(-1), acc(logits_ulb_w.detach()).softmax(-1), logits_ulb_m)

    def forward(self, student: nn.Module, teacher: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        p = self.predict(student, batch)
        sup_loss, sup_metrics = self.supervised_loss(p, batch, step)
        sel = self.pseudo_labels(p, step)
        logits_w = p.logits_ulb_w.detach() if sel.logits_w is None else sel.logits_w
        pl = pseudo_label_ce(logits_w, p.logits_ulb_s, sel.threshold, sel.T, soft=sel.soft, weight=sel.sample_weight)
        extra, extra_metrics = self.extra_loss(p, pl, sel)
        reg_loss, reg_metrics = regularizers(p.logits_ulb_w, self.cfg)
        loss = sup_loss + sel.unsup_weight * (self.cfg.lambda_u * pl.loss + extra + reg_loss)
        metrics = {"sup_loss": sup_loss.detach(), "unsup_loss": pl.loss.detach(), **sup_metrics,
                   **(sel.metrics or {}), **extra_metrics, **pseudo_label_metrics(pl.mask, pl.pseudo, batch.y_ulb),
                   **reg_metrics}
        state = PseudoLabelState(p.probs_lb, p.probs_ulb_w, pl.pseudo, pl.mask, pl.maxprob, sup_loss.detach(), step)
        return StepOutput(loss, metrics, state)


# --- consistency to a target prediction (Π-Model, Mean Teacher) ------------------------------------------
@dataclasses.dataclass
class ConsistencyConfig(AlgorithmConfig):
    """Options shared by Π-Model and Mean Teacher."""

    consistency: str = "mse"
    """distance between the prediction and its target: mse (softmax MSE, the papers'), l1, kl, js"""
    unsup_warmup: float = 0.4
    """the unlabeled weight ramps up over this fraction of train.steps (0 = full weight from step 0)"""
    ramp: str = "linear"
    """ramp-up shape: linear (USB) or sigmoid exp(-5(1-t)^2) (Laine & Aila, Tarvainen & Valpola)"""

    def __post_init__(self):
        if self.consistency not in DISTANCES:
            raise ValueError(f"--algo.consistency={self.consistency!r}: use one of {', '.join(DISTANCES)}")
        if self.ramp not in ("linear", "sigmoid"):
            raise ValueError(f"--algo.ramp={self.ramp!r}: use linear or sigmoid")
        if not 0 <= self.unsup_warmup <= 1:
            raise ValueError(f"--algo.unsup_warmup={self.unsup_warmup} is a fraction of train.steps: use [0, 1]")


class ConsistencyAlgorithm(Algorithm):
    """Labeled cross-entropy plus a ramped consistency distance between the student's prediction on one
    weak view and a detached target prediction on another. A member implements `predict`: where the
    target comes from (the student itself, the EMA teacher)."""

    Config = ConsistencyConfig
    views = ViewSpec(num_weak=2, num_strong=0)

    def predict(self, student: nn.Module, teacher: nn.Module, batch: SSLBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(labeled logits, student logits trained towards the target, detached target probabilities,
        unlabeled logits with gradient for the add-on regularizers)."""
        raise NotImplementedError  # pragma: no cover

    def forward(self, student: nn.Module, teacher: nn.Module, batch: SSLBatch, step: Tensor) -> StepOutput:
        cfg: ConsistencyConfig = self.cfg
        logits_lb, logits_student, target, reg_logits = self.predict(student, teacher, batch)
        sup_loss = F.cross_entropy(acc(logits_lb), batch.y_lb)
        unsup_loss = DISTANCES[cfg.consistency](logits_student, target).mean()
        weight = cfg.lambda_u * ramp_up(step, cfg.unsup_warmup * self.total_steps, cfg.ramp)
        reg_loss, reg_metrics = regularizers(reg_logits, cfg)
        loss = sup_loss + weight * unsup_loss + reg_loss
        metrics = {"sup_loss": sup_loss.detach(), "unsup_loss": unsup_loss.detach(), "unsup_weight": weight,
                   **reg_metrics}
        return StepOutput(loss, metrics, None)
