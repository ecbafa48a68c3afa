"""SequenceMatch: Nguyen, "SequenceMatch: Revisiting the design of weak-strong augmentations for
Semi-supervised learning", WACV 2024 (arXiv:2310.15787).

FlexMatch (class-wise thresholds, its state and update) with a *medium* view between weak and strong
(`views.medium`: the pipeline's `x_ulb_m`, weak + `--aug.medium_num_ops` (1) RandAugment op + Cutout, as
USB's RandAugment(1, 5)) and three masked KL terms chaining the views, weak → medium → strong:

    L = CE(x_lb) + λ_u · (L_pl + L_mw + L_sm + L_sw)
    L_ab = mean_i mask_i · KL(t_b,i ‖ softmax(logits_a,i)),   t_w = softmax(p_w / T),  t_m = softmax(p_m / T)

with p_w, p_m the detached softmax of the weak and medium logits, mask FlexMatch's (class-wise thresholds
on p_w) and L_pl FlexMatch's masked pseudo-label cross-entropy on the strong view. The targets soften the
*probabilities* divided by T, as the author's implementation in USB (semilearn/algorithms/sequencematch)
does; the paper writes the sharpened prediction. One forward over the four concatenated views.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastssl.algorithms.base import Predictions, PseudoLabels
from fastssl.algorithms.flexmatch import FlexMatch, FlexMatchConfig
from fastssl.algorithms.losses import acc
from fastssl.batch import ViewSpec


def masked_kl(logits: Tensor, target_probs: Tensor, T: float, mask: Tensor) -> Tensor:
    """mean_i mask_i · KL(softmax(target_probs_i / T) ‖ softmax(logits_i)); the target detached."""
    t = (acc(target_probs.detach()) / T).softmax(-1)
    kl = (t * (t.log() - acc(logits).log_softmax(-1))).sum(-1)
    return (kl * mask).mean()


class SequenceMatch(FlexMatch):
    name = "sequencematch"
    Config = FlexMatchConfig
    views = ViewSpec(num_weak=1, num_strong=1, medium=True)
    recipe = {"algo.tau": 0.95, "algo.thresh_warmup": True, "algo.mapping": "convex"}

    def extra_loss(self, p: Predictions, pl, sel: PseudoLabels) -> tuple[Tensor, dict[str, Tensor]]:
        """λ_u · (L_mw + L_sm + L_sw) with FlexMatch's mask of this step."""
        T, mask = self.cfg.T, pl.mask.to(p.probs_ulb_w.dtype)
        probs_m = acc(p.logits_ulb_m.detach()).softmax(-1)
        mw = masked_kl(p.logits_ulb_m, p.probs_ulb_w, T, mask)
        sm = masked_kl(p.logits_ulb_s, probs_m, T, mask)
        sw = masked_kl(p.logits_ulb_s, p.probs_ulb_w, T, mask)
        with torch.no_grad():
            metrics = {"kl_mw": mw.detach(), "kl_sm": sm.detach(), "kl_sw": sw.detach()}
        return self.cfg.lambda_u * (mw + sm + sw), metrics
