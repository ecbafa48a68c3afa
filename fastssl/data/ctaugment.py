"""CTAugment (ReMixMatch, Berthelot et al. 2020, §3.2.2; the rule of Google's FixMatch `libml/ctaugment.py`):
an augmentation policy whose per-op, per-magnitude-bin weights are learnt online from how well the model
classifies labeled images augmented at known bins ("probes").

- Every op's magnitude level l ∈ [0, 1) is split into ``CT_OPS[op]`` bins, each with a weight (rate)
  starting at 1.
- A probe: each labeled image gets `num_ops` ops, each uniform over the pool at a uniform level; the bin
  of level l is ``int(l · bins · 0.999)``. The model (no gradient, eval mode) scores the probe view; the
  sample's accuracy measure is ``1 - ½ Σ_c |softmax_c - onehot_c|`` and every (op, bin) the sample used
  moves toward it: ``rate ← decay · rate + (1 - decay) · measure`` (decay 0.99), applied sample by
  sample in rank-major order, so every rank applies the same gathered outcomes the same way.
- Training draws (the strong views): op uniform over the pool; a bin with probability ∝ its weight
  ``p = rate + (1 - decay)``, normalized by its maximum and zeroed below `threshold` (0.8); the level is
  uniform inside the bin.

Staleness: the DALI strong views' parameters are drawn on the host (`augment.ViewParams`) once per DALI
iteration (k steps) and `prefetch` iterations ahead, so the weights they read are a snapshot: the draws of
step s use the weights after ``max(0, (s // k - prefetch + 1) · k)`` updates (k to 2k - 1 steps old at
prefetch 2). The snapshot schedule is a function of the step only, so a resumed run draws exactly what
an uninterrupted one draws; the snapshots still in that window are part of `state_dict`.
"""
from __future__ import annotations

import numpy as np

CT_OPS: dict[str, int] = {
    "AutoContrast": 17, "Blur": 17, "Brightness": 17, "Color": 17, "Contrast": 17, "Equalize": 17,
    "Identity": 0, "Invert": 17, "Posterize": 8, "Rotate": 17, "Sharpness": 17, "ShearX": 17, "ShearY": 17,
    "Smooth": 17, "Solarize": 17, "TranslateX": 17, "TranslateY": 17,
}
"""the CTAugment pool (FixMatch's, less Rescale and the Cutout op: the strong view ends with its own
Cutout) → magnitude bins (Identity has no magnitude)"""
_NAMES = np.array(list(CT_OPS))
_BINS = np.array(list(CT_OPS.values()))
_OFFSET = np.concatenate([[0], np.cumsum(_BINS)[:-1]])  # op i's bins are rates[_OFFSET[i]:_OFFSET[i] + _BINS[i]]


def ct_magnitudes(names, levels, hw: tuple[int, int]) -> np.ndarray:
    """Level l ∈ [0, 1) → the op's magnitude in `augment.stage_params` units (FixMatch's maps): factor ops
    0.1 + 1.9 l; Posterize int bits 1 + int(7.999 l); Solarize int threshold int(255.999 l); Rotate
    round((2l - 1) · 45)°; Shear (2l - 1) · 0.3; Translate (2l - 1) · 0.3 of the side (as USB's
    RandAugment; FixMatch's code moves (2l - 1) · 0.3 *pixels*, a near no-op); blends (AutoContrast,
    Equalize, Invert, Smooth, Blur) the level itself."""
    names, l = np.asarray(names), np.asarray(levels, np.float64)
    m = l.copy()
    factor = np.isin(names, ["Brightness", "Color", "Contrast", "Sharpness"])
    m[factor] = 0.1 + 1.9 * l[factor]
    m[names == "Posterize"] = 1 + np.floor(l[names == "Posterize"] * 7.999)
    m[names == "Solarize"] = np.floor(l[names == "Solarize"] * 255.999)
    m[names == "Rotate"] = np.round((2 * l[names == "Rotate"] - 1) * 45)
    geo = np.isin(names, ["ShearX", "ShearY", "TranslateX", "TranslateY"])
    m[geo] = (2 * l[geo] - 1) * 0.3
    return m


class CTAugment:
    """The learnt weights (identical on every rank) and the draws they drive. `num_ops`: ops per view."""

    def __init__(self, num_ops: int, decay: float = 0.99, threshold: float = 0.8):
        self.num_ops, self.decay, self.threshold = num_ops, decay, threshold
        self.rates = np.ones(int(_BINS.sum()))
        self.updates = 0  # probe batches applied
        self.steps_per_run, self.lag = 1, 1  # set by the loader: k and prefetch - 1 iterations
        self._snapshots: dict[int, np.ndarray] = {0: self.rates.copy()}

    # ------------------------------------------------------------ draws
    def probe(self, rng: np.random.Generator, n: int):
        """Probe draws for n samples: (names (n, num_ops), levels, bin index into `rates` or -1)."""
        i = rng.integers(0, len(_NAMES), (n, self.num_ops))
        lvl = rng.random((n, self.num_ops))
        flat = np.where(_BINS[i] > 0, _OFFSET[i] + (lvl * _BINS[i] * 0.999).astype(np.int64), -1)
        return _NAMES[i], lvl, flat

    def probabilities(self, rates: np.ndarray) -> np.ndarray:
        """(ops, 17) bin probabilities of each op (rows of Identity and Posterize padded with 0)."""
        p = np.zeros((len(_NAMES), _BINS.max()))
        for k, (o, b) in enumerate(zip(_OFFSET, _BINS)):
            if b:
                q = rates[o:o + b] + (1 - self.decay)  # never all zero
                q = q / q.max()
                q[q < self.threshold] = 0
                p[k, :b] = q / q.sum()
        return p

    def draw(self, rng: np.random.Generator, n: int, step: int):
        """Training draws for n samples at `step` with that step's weight snapshot: (names, levels)."""
        cum = np.cumsum(self.probabilities(self.weights_at(step)), 1)
        i = rng.integers(0, len(_NAMES), (n, self.num_ops))
        u, r = rng.random((n, self.num_ops)), rng.random((n, self.num_ops))
        b = np.minimum((cum[i] <= u[..., None]).sum(-1), np.maximum(_BINS[i] - 1, 0))
        return _NAMES[i], (b + r) / np.maximum(_BINS[i], 1)

    def weights_at(self, step: int) -> np.ndarray:
        """The rates the draws of training step `step` read (see the module docstring)."""
        u = max(0, (step // self.steps_per_run - self.lag) * self.steps_per_run)
        if u not in self._snapshots:
            why = ("the loader ran further ahead than its prefetch, or the trainer skipped CTAugment.update"
                   if u > self.updates else "that snapshot is no longer kept: draws must follow the updates")
            raise RuntimeError(f"CTAugment: step {step} reads the weights after {u} updates, {self.updates} were "
                               f"applied (snapshots {sorted(self._snapshots)}): {why}")
        return self._snapshots[u]

    # ------------------------------------------------------------ learning
    def update(self, flat_bins: np.ndarray, measure: np.ndarray) -> None:
        """One probe batch: `flat_bins` (n, num_ops) from `probe` (-1: no bin), `measure` (n,) each sample's
        1 - ½ Σ|p - onehot|, applied sample by sample in order."""
        d = self.decay
        for bins, m in zip(np.asarray(flat_bins), np.asarray(measure, np.float64)):
            for j in bins[bins >= 0]:
                self.rates[j] = self.rates[j] * d + m * (1 - d)
        self.updates += 1
        if self.updates % self.steps_per_run == 0:
            self._snapshots[self.updates] = self.rates.copy()
            keep = (self.lag + 1) * self.steps_per_run
            self._snapshots = {u: r for u, r in self._snapshots.items() if u >= self.updates - keep}

    def probe_step(self, model, x, y, flat_bins: np.ndarray) -> None:
        """Scores the probe view `x` (labels `y`, bins `flat_bins`) with `model` (eval mode, no gradient),
        gathers every rank's outcomes (rank-major) and applies them. One host read per step."""
        import torch
        from fastssl.collectives import all_gather_cat

        was = model.training
        model.eval()
        with torch.no_grad():
            p = torch.softmax(model(x).float(), -1)
        model.train(was)
        measure = 1 - 0.5 * (p - torch.nn.functional.one_hot(y, p.shape[-1])).abs().sum(-1)
        bins = torch.as_tensor(flat_bins, device=measure.device)
        self.update(all_gather_cat(bins).cpu().numpy(), all_gather_cat(measure.double()).cpu().numpy())

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {"rates": self.rates.copy(), "updates": self.updates,
                "snapshots": {u: r.copy() for u, r in self._snapshots.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.rates, self.updates = np.array(state["rates"], np.float64), int(state["updates"])
        self._snapshots = {int(u): np.array(r, np.float64) for u, r in state["snapshots"].items()}
