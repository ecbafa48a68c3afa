"""A reference-style FixMatch trainer: the way USB (microsoft/Semi-supervised-learning) and TorchSSL train.

This is the "before" of every speed-up we claim, written fresh for the benchmark and kept faithful: nothing
here is tuned down, and nothing is tuned up. What it does, each the reference's way (GUIDE §1):

- data: two torch DataLoaders (labeled, unlabeled), each with its own worker processes (USB's classic-CV
  configs: `num_workers: 1`), sampling with replacement; `__getitem__` turns the uint8 array into a PIL
  image and runs the weak view (reflect-pad 4 + random crop + horizontal flip) and, for unlabeled samples,
  the strong view: FixMatch RandAugment (3 ops drawn from the 14-op pool, each with its own uniform random
  magnitude) then Cutout of a random size up to half the side, filled with grey (125, 123, 114); then
  to-tensor and normalise, per sample;
- model: eager fp32, one forward over the concatenated batch (USB's `use_cat: True`);
- loss: supervised CE plus the pseudo-label CE on the confident rows, selected by boolean indexing (a
  dynamic shape and a device->host sync to size the selection);
- four `.item()` calls every step for the log dict (USB's `process_log_dict(sup_loss=...item(), ...)`);
- SGD Nesterov, weight decay off for BatchNorm and biases, cosine LambdaLR stepped every iteration;
- EMA: a per-parameter Python loop into a `shadow` dict of fresh tensors, buffers cloned, then two
  `load_state_dict` calls into the EMA model (USB's `EMAHook.after_train_step`).
"""
from __future__ import annotations

import copy
import math
import random
from typing import Iterator

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageEnhance
import PIL.ImageOps
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)
CUTOUT_FILL = (125, 123, 114)
"""the reference's Cutout colour (roughly the CIFAR mean in 0..255)"""


# ---- FixMatch RandAugment on PIL images: op(img, v) with v drawn uniformly from [lo, hi] per op ----------

def _affine(img: PIL.Image.Image, coeffs: tuple[float, ...]) -> PIL.Image.Image:
    return img.transform(img.size, PIL.Image.AFFINE, coeffs)


FIXMATCH_POOL: list[tuple[str, object, float, float]] = [
    ("AutoContrast", lambda img, v: PIL.ImageOps.autocontrast(img), 0.0, 1.0),
    ("Brightness", lambda img, v: PIL.ImageEnhance.Brightness(img).enhance(v), 0.05, 0.95),
    ("Color", lambda img, v: PIL.ImageEnhance.Color(img).enhance(v), 0.05, 0.95),
    ("Contrast", lambda img, v: PIL.ImageEnhance.Contrast(img).enhance(v), 0.05, 0.95),
    ("Equalize", lambda img, v: PIL.ImageOps.equalize(img), 0.0, 1.0),
    ("Identity", lambda img, v: img, 0.0, 1.0),
    ("Posterize", lambda img, v: PIL.ImageOps.posterize(img, max(1, int(v))), 4.0, 8.0),
    ("Rotate", lambda img, v: img.rotate(v), -30.0, 30.0),
    ("Sharpness", lambda img, v: PIL.ImageEnhance.Sharpness(img).enhance(v), 0.05, 0.95),
    ("ShearX", lambda img, v: _affine(img, (1, v, 0, 0, 1, 0)), -0.3, 0.3),
    ("ShearY", lambda img, v: _affine(img, (1, 0, 0, v, 1, 0)), -0.3, 0.3),
    ("Solarize", lambda img, v: PIL.ImageOps.solarize(img, int(v)), 0.0, 256.0),
    ("TranslateX", lambda img, v: _affine(img, (1, 0, v * img.size[0], 0, 1, 0)), -0.3, 0.3),
    ("TranslateY", lambda img, v: _affine(img, (1, 0, 0, 0, 1, v * img.size[1])), -0.3, 0.3),
]
"""the 14-op FixMatch pool with the reference's magnitude ranges"""


def cutout(img: PIL.Image.Image, frac: float) -> PIL.Image.Image:
    """Grey square of side `frac`·width centred at a uniform random point, clipped to the image."""
    if frac <= 0:
        return img
    side = frac * img.size[0]
    w, h = img.size
    x0 = int(max(0.0, np.random.uniform(w) - side / 2))
    y0 = int(max(0.0, np.random.uniform(h) - side / 2))
    img = img.copy()
    PIL.ImageDraw.Draw(img).rectangle((x0, y0, min(w, x0 + side), min(h, y0 + side)), CUTOUT_FILL)
    return img


class FixMatchRandAugment:
    """`n` ops drawn with replacement from the pool, each at a fresh uniform magnitude, then Cutout of a
    uniform random size in [0, 0.5] of the side (USB's classic-CV strong view uses n=3)."""

    def __init__(self, n: int = 3):
        self.n = n

    def __call__(self, img: PIL.Image.Image) -> PIL.Image.Image:
        for _, op, lo, hi in random.choices(FIXMATCH_POOL, k=self.n):
            img = op(img, lo + (hi - lo) * random.random())
        return cutout(img, 0.5 * random.random())


def weak_augment(img: PIL.Image.Image, pad: int = 4, flip: bool = True) -> PIL.Image.Image:
    """Reflect-pad by `pad`, random crop back to size, horizontal flip with p=0.5."""
    a = np.asarray(img)
    h, w = a.shape[:2]
    a = np.pad(a, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    y, x = random.randint(0, 2 * pad), random.randint(0, 2 * pad)
    a = a[y:y + h, x:x + w]
    if flip and random.random() < 0.5:
        a = a[:, ::-1]
    return PIL.Image.fromarray(np.ascontiguousarray(a))


def to_normalized_tensor(img: PIL.Image.Image, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 HWC PIL -> float CHW in [0, 1], normalised (to-tensor + normalise, per sample)."""
    t = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
    return (t - mean) / std


class SSLDataset(Dataset):
    """uint8 NHWC images -> (idx, weak[, strong][, label]) per sample, each view made in `__getitem__`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, strong: bool):
        self.images, self.labels, self.strong = images, labels, strong
        self.randaug = FixMatchRandAugment(3)
        self.mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = PIL.Image.fromarray(self.images[i])
        weak = to_normalized_tensor(weak_augment(img), self.mean, self.std)
        if not self.strong:
            return i, weak, int(self.labels[i])
        strong = to_normalized_tensor(self.randaug(weak_augment(img)), self.mean, self.std)
        return i, weak, strong, int(self.labels[i])


def _worker_init(worker_id: int) -> None:
    # the reference relies on torch's per-worker seeding of `random`; numpy's global state is the same in
    # every forked worker unless reseeded, so reseed it too (Cutout draws from numpy)
    np.random.seed(torch.initial_seed() % 2**32)
    torch.set_num_threads(1)


def make_loader(ds: Dataset, batch: int, steps: int, workers: int, seed: int, pin: bool) -> DataLoader:
    """A DataLoader that yields `steps` batches of `batch` samples drawn with replacement (the reference's
    RandomSampler(num_samples=steps*batch))."""
    g = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(ds, replacement=True, num_samples=steps * batch, generator=g)
    return DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=pin, worker_init_fn=_worker_init if workers > 0 else None,
                      persistent_workers=workers > 0)


# ---- loss and EMA, the reference's way ------------------------------------------------------------------

def fixmatch_loss_boolean(logits_lb: Tensor, y_lb: Tensor, logits_w: Tensor, logits_s: Tensor,
                          tau: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Supervised CE + pseudo-label CE over the confident rows picked by boolean indexing.

    `logits_s[sel]` has a data-dependent number of rows: the device must report the count to the host
    before the CE can be sized (a sync), and a compiler sees a new shape every step. The sum over the
    selection divided by the full unlabeled batch is the masked mean of FixMatch's definition.
    Returns (total, sup, unsup, mask) with mask the float 0/1 selection.
    """
    sup = F.cross_entropy(logits_lb, y_lb)
    probs = torch.softmax(logits_w.detach(), dim=-1)
    maxprob, pseudo = probs.max(dim=-1)
    sel = maxprob >= tau
    unsup = F.cross_entropy(logits_s[sel], pseudo[sel], reduction="sum") / logits_s.shape[0]
    return sup + unsup, sup, unsup, sel.float()


class ReferenceEMA:
    """The reference's EMA: a `shadow` dict rebuilt parameter by parameter each step, buffers cloned, then
    copied into the EMA model with two `load_state_dict` calls."""

    def __init__(self, model: nn.Module, ema_model: nn.Module, decay: float):
        self.model, self.ema_model, self.decay = model, ema_model, decay
        self.shadow = {name: p.data.clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self) -> None:
        for name, p in self.model.named_parameters():
            self.shadow[name] = ((1.0 - self.decay) * p.data + self.decay * self.shadow[name]).clone()
        for name, b in self.model.named_buffers():
            self.shadow[name] = b.clone()
        self.ema_model.load_state_dict(self.model.state_dict())
        self.ema_model.load_state_dict(self.shadow, strict=False)


def sgd_no_decay_on_bn_bias(model: nn.Module, lr: float, momentum: float, wd: float) -> torch.optim.SGD:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or "bn" in name or "bias" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)


def cosine_lambda(total_steps: int, cycles: float = 7 / 16):
    return lambda k: max(0.0, math.cos(math.pi * cycles * k / total_steps))


# ---- the trainer ----------------------------------------------------------------------------------------

class BaselineTrainer:
    """Reference-style FixMatch: `run_steps(n)` = n x (two loader batches -> device -> eager fp32 step with
    boolean-indexed loss and 4 `.item()` -> SGD -> scheduler -> Python-loop EMA + 2 load_state_dict)."""

    def __init__(self, model: nn.Module, x_lb: np.ndarray, y_lb: np.ndarray, x_ulb: np.ndarray,
                 y_ulb: np.ndarray, *, batch_size: int, uratio: int, workers: int = 1, tau: float = 0.95,
                 lambda_u: float = 1.0, lr: float = 0.03, ema_decay: float = 0.999,
                 total_steps: int = 1 << 20, device: torch.device | str = "cpu", seed: int = 0):
        self.device = torch.device(device)
        self.model = model.to(self.device).train()
        self.ema_model = copy.deepcopy(self.model).eval()
        self.ema = ReferenceEMA(self.model, self.ema_model, ema_decay)
        self.opt = sgd_no_decay_on_bn_bias(self.model, lr, 0.9, 5e-4)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, cosine_lambda(total_steps))
        self.tau, self.lambda_u = tau, lambda_u
        pin = self.device.type == "cuda"
        self.lb_loader = make_loader(SSLDataset(x_lb, y_lb, strong=False), batch_size, total_steps,
                                     workers, seed, pin)
        self.ulb_loader = make_loader(SSLDataset(x_ulb, y_ulb, strong=True), batch_size * uratio,
                                      total_steps, workers, seed + 1, pin)
        self._batches: Iterator = zip(self.lb_loader, self.ulb_loader)
        self.it = 0
        self.last_log: dict[str, float] = {}

    def train_step(self, lb, ulb) -> dict[str, float]:
        _, x_lb, y_lb = lb
        _, x_w, x_s, _ = ulb
        dev = self.device
        x_lb, y_lb = x_lb.to(dev, non_blocking=True), y_lb.to(dev, non_blocking=True)
        x_w, x_s = x_w.to(dev, non_blocking=True), x_s.to(dev, non_blocking=True)
        n_lb = x_lb.shape[0]
        logits = self.model(torch.cat((x_lb, x_w, x_s)))
        logits_w, logits_s = logits[n_lb:].chunk(2)
        total, sup, unsup, mask = fixmatch_loss_boolean(logits[:n_lb], y_lb, logits_w, logits_s, self.tau)
        total = sup + self.lambda_u * unsup
        total.backward()
        self.opt.step()
        self.sched.step()
        self.model.zero_grad()
        self.ema.update()
        self.it += 1
        return {"train/sup_loss": sup.item(), "train/unsup_loss": unsup.item(),  # host sync x4, every step
                "train/total_loss": total.item(), "train/util_ratio": mask.mean().item()}

    def run_steps(self, n: int) -> None:
        for _ in range(n):
            lb, ulb = next(self._batches)
            self.last_log = self.train_step(lb, ulb)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def worker_pids(self) -> list[int]:
        """pids of the DataLoader worker processes (for CPU-time accounting)."""
        pids = []
        for loader in (self.lb_loader, self.ulb_loader):
            it = getattr(loader, "_iterator", None)
            pids += [w.pid for w in getattr(it, "_workers", [])]
        return pids

    def close(self) -> None:
        """Stops the worker processes."""
        self._batches = iter(())
        for loader in (self.lb_loader, self.ulb_loader):
            it = getattr(loader, "_iterator", None)
            if it is not None and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
