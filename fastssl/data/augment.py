"""Weak and strong views as DALI graph fragments: uint8 HWC in; uint8 HWC out, or normalized float32 HWC
when mean/std (0–255 scale) are given. `views()` is what the pipelines call.

Reference: USB (microsoft/Semi-supervised-learning), `semilearn/datasets/augmentation/randaugment.py` and
the CIFAR dataset transforms. The views are

- **weak**: reflect-pad by ``int(crop_pad_frac * side)`` pixels (4 px at 32x32), random crop back to the
  original size, horizontal flip with probability ``flip_prob`` (0 for digits/SVHN);
- **strong**: weak, then RandAugment over the FixMatch pool (``num_ops`` ops drawn *with replacement*,
  each with its own magnitude drawn uniformly from the op's range, per sample), then Cutout.

USB's strong transform is ``RandAugment(3, 5)``: three ops (the ``5`` is unused); the FixMatch paper and
kekmodel's port draw two. ``num_ops`` defaults to USB's 3.

Op pool and magnitude ranges (USB's, uniform, per sample; "factor" ops blend with PIL's degenerate image):

=============  ======================  ===================================================
op             magnitude v             meaning
=============  ======================  ===================================================
AutoContrast   --                      per-channel min/max stretch to [0, 255]
Brightness     U(0.05, 0.95)           blend with black by factor v (USB only darkens)
Color          U(0.05, 0.95)           blend with the grey (PIL "L") image
Contrast       U(0.05, 0.95)           blend with the mean grey level
Equalize       --                      per-channel histogram equalization
Identity       --
Posterize      U(4, 8) -> int          keep int(v) high bits (4..7 each with p=1/4)
Rotate         U(-30, 30) degrees      counter-clockwise about the image centre
Sharpness      U(0.05, 0.95)           blend with PIL's SMOOTH-filtered image
ShearX/Y       U(-0.3, 0.3)            PIL affine (1, v, 0, 0, 1, 0) / (1, 0, 0, v, 1, 0)
Solarize       U(0, 256) threshold     invert pixels >= v
TranslateX/Y   U(-0.3, 0.3) x W / H    shift by a fraction of the width / height
Cutout         U(0, 0.5) x W           square of side int(v)+1 px, fill (125, 123, 114)
=============  ======================  ===================================================

Deviations from the PIL reference, each pinned by a test in ``tests/test_augment.py``:

- Geometric ops (Rotate, Shear, Translate) use PIL's own inverse matrix, nearest-neighbour sampling and
  fill 0 like PIL's defaults (translation in pixels = v x side, as USB), but DALI evaluates the matrix in
  float32 (PIL in float64): a source coordinate within ~1e-6 of a pixel edge may pick the neighbour.
  Shear/Translate and Rotate(17.3°) are bit-exact on the test images; Rotate(-23°) differs on 0.08% of
  pixels (tolerance 1%).
- Equalize is DALI's ``fn.equalize`` (OpenCV's formula: lut = round((cdf - cdf_min) * 255 / (N - cdf_min))),
  bit-exact against that formula. PIL uses ``(cdf_before + step // 2) // step`` with the integer
  ``step = (N - count_of_top_level) // 255``; on a 32x32 image (N = 1024) step is 3 or 4, so PIL saturates
  up to a quarter of the pixels at 255. Measured on a smooth 32x32 image: 8.9% of PIL's pixels at 255 vs
  0.6% of ours, median |Δ| 1, mean 11, max 65 grey levels; at 96x96: mean 3.7, max 8. Both maps are
  monotone in the input level (tested).
- AutoContrast computes ``floor((x - lo) * 255 / (hi - lo))`` in float32; PIL builds its LUT as
  ``int(x * scale - lo * scale)`` in float64, so at exact integers the two can differ by one grey level.
- Brightness, Color, Contrast, Sharpness, Posterize, Solarize follow PIL's integer grey conversion
  (ITU-R 601-2, rounded fixed point), its rounded SMOOTH filter with an untouched 1-px border, its
  truncating float32 blend and its LUTs: bit-exact against Pillow 13.0 at both ends and the middle of
  each range.
- Interpolation: nearest everywhere, as USB's PIL calls (DALI's own rand_augment uses linear, fill 128).
- The crop's reflect padding and the flip are exact; USB crops before flipping, we do too.
- Cutout is placed exactly as USB does (centre U(0, W) x U(0, H), corner clamped at 0, PIL's inclusive
  rectangle so the side is int(v)+1 px, clipped at the right/bottom edge).
- Single-channel images (digits, MNIST): Color is the identity (PIL's grey of a grey image is itself),
  Contrast's centre is the channel mean, Cutout fills with the mean of ``cutout_fill``.

Structure: one RandAugment stage is ONE fixed chain of DALI operators for every sample (`stage`): a warp
with a per-sample matrix (the identity unless Rotate/Shear/Translate was drawn), the ops that read image
statistics (a PIL-style blend whose degenerate image and factor are per-sample weights, AutoContrast,
Equalize), then Brightness, Posterize and Solarize, each switched by a per-sample weight that makes it an
exact identity when not drawn. All draws (op, magnitude, crop, flip, Cutout box) and the arithmetic that
turns them into matrices and weights are vectorised numpy in `ViewParams` (host), so the graph holds image
operators only: a strong view with 3 ops went from 761 operators (a 14-way conditional per stage) to 211.
That chain is what a GPU runs (operators cost launches there). On the CPU backend an operator costs per
sample instead, and every sample running every op's arithmetic is the expensive part: there RandAugment
takes `stage_grouped`, the same ops bit for bit with each group of ops (Posterize/Solarize, the four
blends, AutoContrast, Equalize) in its own DALI conditional, so a sample runs its own op's few operators
(3 ops, 56 samples per iteration: 11 ms per iteration for the three stages against 32 unbranched; tested
equal byte for byte on random draws).
"""
from __future__ import annotations

import functools

import numpy as np

from fastssl.config import FIXMATCH_POOL, AugmentConfig  # noqa: F401 (the plain config lives on the ground floor)
from fastssl.data._dali import DataNode, dmath, do_not_convert, fn, types

OP_RANGES: dict[str, tuple[float, float]] = {
    "AutoContrast": (0.0, 1.0), "Brightness": (0.05, 0.95), "Color": (0.05, 0.95),
    "Contrast": (0.05, 0.95), "Equalize": (0.0, 1.0), "Identity": (0.0, 1.0), "Posterize": (4.0, 8.0),
    "Rotate": (-30.0, 30.0), "Sharpness": (0.05, 0.95), "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3),
    "Solarize": (0.0, 256.0), "TranslateX": (-0.3, 0.3), "TranslateY": (-0.3, 0.3),
}
"""USB's ``augment_list()``: the magnitude of each op is drawn uniformly from [lo, hi] per sample."""


# ---------------------------------------------------------------- per-sample parameters, drawn on the host

CROP = ("crop_y", "crop_x", "mirror")
"""a view's crop/flip parameters: crop position as k / 2·pad (DALI scales it back to the offset k), flip 0/1"""
STAGE_HOST = ("M",)
"""a RandAugment stage's per-sample operator arguments (host): the warp matrix"""
STAGE_DEVICE = ("v", "vb", "wg", "wc", "ws", "a", "e", "pd", "t")
"""a RandAugment stage's per-sample arithmetic weights (on the images' device; see `stage_params`)"""
CT_DEVICE = ("qa", "qe", "qs", "qb", "qi")
"""the weights CTAugment's stages add: the image its blend (by e) goes toward is the sum of the
autocontrasted, equalized, SMOOTH-filtered, BLUR-filtered and inverted images weighted by these"""


GROUPED = ("M", "lut", "pm", "T255", "blend", "Mz", "K", "v", "sharp", "wc", "ac", "eq")
"""a RandAugment stage's per-sample parameters on the CPU backend (`stage_grouped`, all host arrays): warp
matrix; LUT group flag, Posterize's bit mask and Solarize's table offset; blend group flag, channel matrix,
3x3 filter, factor, Sharpness' border weight and Contrast flag; AutoContrast and Equalize flags"""
GROUPED_CT = GROUPED[:-2] + ("toward", "e", "tac", "teq", "tsm", "tbl")
"""CTAugment's: AutoContrast, Equalize, Smooth, Blur and Invert blend the image toward their result by the
level e (`toward`; the op's flag, Invert when none is set)"""


def grouped_keys(policy: str = "randaugment") -> tuple[str, ...]:
    """`stage_grouped`'s parameter names for `policy`."""
    return GROUPED_CT if policy == "ctaugment" else GROUPED

_GREY = np.array([19595, 38470, 7471], np.float64) / 65536.0
"""PIL's "L" weights as fractions of 2^16: exact in float32, and so is every weighted sum of uint8 pixels"""
_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0
_IDENTITY_K = np.pad(np.ones((1, 1), np.float32), 1)


@functools.cache
def _solarize_table() -> list[float]:
    """Every Solarize table in one `fn.lookup_table`: key v + 255·T holds Solarize(v) at integer threshold
    T = 0…256 (256: no pixel inverted, the identity). Neighbouring tables overlap in one key, where both
    give 0 (Solarize_T(255) = 0 for T ≤ 255 and Solarize_{T+1}(0) = 0), so 257 tables fit the operator's
    65 536 keys exactly."""
    key = np.arange(65536)
    t = np.minimum(key // 255, 256)
    v = key - 255 * t
    return np.where(v < t, v, 255 - v).astype(np.float64).tolist()


def stage_device(channels: int, policy: str = "randaugment") -> tuple[str, ...]:
    """The stage's arithmetic weights: `STAGE_DEVICE` (+ `CT_DEVICE` for CTAugment), less the Color weight
    on single-channel images (Color is the identity there)."""
    names = STAGE_DEVICE + (CT_DEVICE if policy == "ctaugment" else ())
    return names if channels == 3 else tuple(q for q in names if q != "wg")


def _warp_matrix(names: np.ndarray, m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(n, 2, 3) float64: PIL's inverse affine matrix of Rotate/ShearX/ShearY/TranslateX/TranslateY at
    magnitude m, the identity for every other op."""
    n, (h, w) = len(names), hw
    M = np.zeros((n, 2, 3))
    M[:, 0, 0] = M[:, 1, 1] = 1.0
    rot = names == "Rotate"  # PIL: counter-clockwise by v degrees about (w/2, h/2), inverse map
    t = np.where(rot, -m * np.pi / 180.0, 0.0)
    c, s, cx, cy = np.cos(t), np.sin(t), w / 2.0, h / 2.0
    M[rot] = np.stack([c, s, cx - c * cx - s * cy, -s, c, cy + s * cx - c * cy], -1).reshape(n, 2, 3)[rot]
    M[names == "ShearX", 0, 1] = m[names == "ShearX"]
    M[names == "ShearY", 1, 0] = m[names == "ShearY"]
    M[names == "TranslateX", 0, 2] = m[names == "TranslateX"] * w
    M[names == "TranslateY", 1, 2] = m[names == "TranslateY"] * h
    return M


def stage_params(names, mags, hw: tuple[int, int], channels: int, policy: str = "randaugment"
                 ) -> dict[str, np.ndarray]:
    """One RandAugment stage's per-sample parameters for op `names[i]` at magnitude `mags[i]` (USB units).
    Every op of the pool is a parameter of one fixed chain of DALI operators, and an op not drawn gets its
    identity value, so the graph has no per-op branches:

    - M (2, 3): the inverse affine matrix of Rotate/ShearX/ShearY/TranslateX/TranslateY (PIL's, float64
      here, float32 in DALI), else the identity;
    - the ops that read image statistics: blend PIL-style with the degenerate image ``ws·smooth + wg·grey +
      wc·round(mean grey)`` by factor v, then AutoContrast on/off (a), then blend by e toward the equalized
      image (RandAugment: e = 0/1), or with `policy` "ctaugment" toward ``qa·autocontrast + qe·equalize +
      qs·smooth + qb·blur + qi·invert`` with e = mags: PIL's ``Image.blend(x, op(x), level)`` (a = 0);
    - vb: Brightness' factor (a blend with black), 1 otherwise: an exact identity on integers;
    - pd: Posterize's step 2^(8 - bits) (1 = none), t: Solarize's threshold (1024 = none: above a
      brightened value, which is clipped to 255 only when stored)."""
    names, m = np.asarray(names), np.asarray(mags, np.float64)
    n = len(names)
    M = _warp_matrix(names, m, hw)
    colour = (names == "Color") & (channels == 3)  # PIL's grey of a grey image is itself: Color = identity
    blend = colour | (names == "Contrast") | (names == "Sharpness")
    ct_blends = ("Smooth", "Blur", "Invert") if policy == "ctaugment" else ()
    toward = np.isin(names, ("AutoContrast", "Equalize") + ct_blends)
    post = names == "Posterize"
    pd = np.where(post, 2.0 ** (8 - np.floor(np.where(post, m, 8.0))), 1.0)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    out = {"M": f32(M), "v": f32(np.where(blend, m, 1.0)),
           "vb": f32(np.where(names == "Brightness", m, 1.0)), "wg": f32(colour), "wc": f32(names == "Contrast"),
           "ws": f32(names == "Sharpness"), "pd": f32(pd), "t": f32(np.where(names == "Solarize", m, 1024.0))}
    if policy == "ctaugment":
        out.update(a=f32(np.zeros(n)), e=f32(np.where(toward, m, 0.0)), qa=f32(names == "AutoContrast"),
                   qe=f32(names == "Equalize"), qs=f32(names == "Smooth"), qb=f32(names == "Blur"),
                   qi=f32(names == "Invert"))
    else:
        out.update(a=f32(names == "AutoContrast"), e=f32(names == "Equalize"))
    return out


def grouped_params(names, mags, hw: tuple[int, int], channels: int, policy: str = "randaugment"
                   ) -> dict[str, np.ndarray]:
    """`stage_grouped`'s per-sample parameters (`grouped_keys(policy)`) for op `names[i]` at magnitude
    `mags[i]` (`stage_params` units): the same ops and arithmetic as `stage_params`, laid out for one DALI
    conditional per group of ops:

    - M: the warp matrix as in `stage_params` (the identity unless Rotate/Shear/Translate);
    - lut (Posterize, Solarize): pm keeps Posterize's high bits (255: all), T255 = 255·ceil(threshold)
      selects Solarize's table (`_solarize_table`; 255·256 = none): a pixel v is inverted iff v ≥ t, i.e.
      v ≥ ceil(t) for integer v;
    - blend (Brightness, Color, Contrast, Sharpness): PIL's blend with the degenerate image
      ``filter(Mz · y, K) + wc·round(mean(Mz · y))`` by factor v, where Mz · y is PIL's grey (Color,
      Contrast), y (Sharpness) or 0 (Brightness) and K the SMOOTH kernel (Sharpness), the identity, or 0
      (Contrast); on Sharpness' 1-px border the factor is v + sharp with sharp = 1 - v in float32, which is
      exactly 1 for every factor in [0.05, 2] (tested), so the border is kept;
    - RandAugment: ac, eq: AutoContrast, Equalize;
    - CTAugment (`policy`): toward (AutoContrast, Equalize, Smooth, Blur, Invert): PIL's blend of the
      image toward the op's result by level e; tac, teq, tsm, tbl: which op (none of them: Invert)."""
    names, m = np.asarray(names), np.asarray(mags, np.float64)
    n = len(names)
    post, sol = names == "Posterize", names == "Solarize"
    colour = (names == "Color") & (channels == 3)  # PIL's grey of a grey image is itself: Color = identity
    sharp, contrast = names == "Sharpness", names == "Contrast"
    blend = colour | contrast | sharp | (names == "Brightness")
    bits = np.floor(np.where(post, m, 8.0)).astype(np.int64)
    Mz = np.zeros((n, channels, channels))
    Mz[colour | contrast] = np.tile(_GREY, (channels, 1)) if channels == 3 else 1.0
    Mz[sharp] = np.eye(channels)
    K = np.repeat(_IDENTITY_K[None], n, 0)
    K[contrast], K[sharp] = 0.0, _SMOOTH
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    v = f32(np.where(blend, m, 1.0))
    out = {"M": f32(_warp_matrix(names, m, hw)), "lut": post | sol,
           "pm": ((0xFF << (8 - bits)) & 0xFF).astype(np.uint8),
           "T255": (255 * np.ceil(np.where(sol, m, 256.0))).astype(np.int32), "blend": blend,
           "Mz": f32(Mz), "K": K, "v": v, "sharp": np.where(sharp, np.float32(1) - v, np.float32(0)),
           "wc": f32(contrast)}
    if policy == "ctaugment":
        flags = {q: names == o for q, o in (("tac", "AutoContrast"), ("teq", "Equalize"), ("tsm", "Smooth"),
                                            ("tbl", "Blur"))}
        toward = np.logical_or.reduce(list(flags.values())) | (names == "Invert")
        out.update(toward=toward, e=f32(np.where(toward, m, 0.0)), **flags)
    else:
        out.update(ac=names == "AutoContrast", eq=names == "Equalize")
    return out


def cutout_box(side, cx, cy, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """USB's CutoutAbs of side `side` px centred at (cx, cy) as erase (anchor, shape), each (n, 2) (y, x):
    PIL's inclusive rectangle from int(max(0, c - side/2)) to that + side, clipped to the image."""
    h, w = hw
    side, cx, cy = (np.asarray(a, np.float64) for a in (side, cx, cy))
    x0, y0 = np.floor(np.maximum(cx - side / 2.0, 0.0)), np.floor(np.maximum(cy - side / 2.0, 0.0))
    x1 = np.minimum(np.floor(x0 + side), w - 1.0) + 1.0  # exclusive end
    y1 = np.minimum(np.floor(y0 + side), h - 1.0) + 1.0
    return np.stack([y0, x0], -1).astype(np.float32), np.stack([y1 - y0, x1 - x0], -1).astype(np.float32)


class ViewParams:
    """Every random choice of `num_weak` weak and `num_strong` strong views, per sample, drawn with numpy as
    a pure function of (key, step): the DALI graph holds no random operators, so a loader resumes at any
    step by asking for that step's draws again, and the draws do not depend on how many steps one DALI
    iteration makes. `host_names` feed operator arguments (CPU), `device_names` feed arithmetic; `branch`:
    the parameters of `stage_grouped` (the CPU backend's stage, all on the host) instead of `stage`'s.

    ``cfg.policy == "ctaugment"``: the strong views' ops and magnitudes are `ct`'s (a
    `ctaugment.CTAugment`): its training draws with the weights of the step's snapshot, or with `probe`
    its probe draws, whose bins `draw` also returns as "s{j}.bins" (not fed to DALI)."""

    def __init__(self, cfg: AugmentConfig, hw: tuple[int, int], channels: int, num_weak: int, num_strong: int,
                 key: tuple[int, ...], branch: bool = False, ct=None, probe: bool = False, num_medium: int = 0):
        self.cfg, self.hw, self.channels, self.nw, self.ns, self.key = cfg, hw, channels, num_weak, num_strong, key
        self.nm = num_medium
        if cfg.policy == "ctaugment" and num_strong + num_medium and ct is None:
            raise ValueError("--aug.policy=ctaugment needs the CTAugment state (ViewParams(..., ct=...))")
        self.ct, self.probe = ct, probe
        self.grouped = branch
        self.host_names, self.device_names = [], []
        for j in range(num_weak):
            self.host_names += [f"w{j}.{k}" for k in CROP]
        for prefix, ops in self._strong_views():
            self.host_names += [f"{prefix}{k}" for k in CROP]
            for k in range(ops):
                if self.grouped:
                    self.host_names += [f"{prefix}{k}.{q}" for q in grouped_keys(cfg.policy)]
                    continue
                self.host_names += [f"{prefix}{k}.{q}" for q in STAGE_HOST]
                self.device_names += [f"{prefix}{k}.{q}" for q in stage_device(channels, cfg.policy)]
            if cfg.cutout_max_frac > 0:
                self.host_names += [f"{prefix}cut_anchor", f"{prefix}cut_shape"]

    def _strong_views(self) -> list[tuple[str, int]]:
        """(name prefix, ops) of every augmented view: strong "s{j}." then medium "m{j}."."""
        return ([(f"s{j}.", self.cfg.num_ops) for j in range(self.ns)]
                + [(f"m{j}.", self.cfg.medium_num_ops) for j in range(self.nm)])

    def draw(self, step: int, n: int) -> dict[str, np.ndarray]:
        """The draws of `n` samples at `step`."""
        return self.draw_steps([step], n)

    def draw_steps(self, steps, n: int) -> dict[str, np.ndarray]:
        """The draws of `n` samples at each of `steps`, concatenated in that order: the same arrays as
        concatenating `draw(s, n)` over the steps (each step reads its own generator, in the same order of
        calls), with the arithmetic that turns draws into operator arguments done once for all of them
        (measured, unlabeled views at B=1: 0.13–0.16 ms per step at k=8, 0.6–0.9 at k=1; one step at a
        time it was 0.55 at k=8)."""
        cfg, (h, w) = self.cfg, self.hw
        rngs = [np.random.default_rng([*self.key, s]) for s in steps]
        out = {}

        def each(f):  # one call per step's generator, results concatenated
            return np.concatenate([f(r) for r in rngs])

        def crop(prefix):  # offset k ∈ {0..2p} uniform per axis, as k / 2p
            for name, p in (("crop_y", int(cfg.crop_pad_frac * h)), ("crop_x", int(cfg.crop_pad_frac * w))):
                out[prefix + name] = (each(lambda r: r.integers(0, 2 * p + 1, n)) / (2 * p) if p
                                      else np.zeros(n * len(rngs))).astype(np.float32)
            out[prefix + "mirror"] = (each(lambda r: r.random(n)) < (cfg.flip_prob or 0.0)).astype(np.int32)

        for j in range(self.nw):
            crop(f"w{j}.")
        pool = np.asarray(cfg.ops)
        lo, hi = np.array([OP_RANGES[o] for o in cfg.ops]).T if len(pool) else (None, None)
        for prefix, ops in self._strong_views():
            crop(prefix)
            if cfg.policy == "ctaugment":  # CTAugment draws num_ops columns; a medium view uses the first ones
                from fastssl.data.ctaugment import ct_magnitudes
                if self.probe:
                    d = [self.ct.probe(r, n) for r in rngs]
                    out[prefix + "bins"] = np.concatenate([b for _, _, b in d])
                else:
                    d = [self.ct.draw(r, n, s) for r, s in zip(rngs, steps)]
                names, lvl = np.concatenate([a for a, *_ in d]), np.concatenate([b[1] for b in d])
                mags = ct_magnitudes(names, lvl, self.hw).astype(np.float32)
            for k in range(ops):  # RandAugment: op uniform over the pool (with replacement), magnitude uniform
                if cfg.policy == "ctaugment":
                    op, mag = names[:, k], mags[:, k]
                else:
                    iu = [(r.integers(0, len(pool), n), r.random(n)) for r in rngs]
                    i, u = np.concatenate([a for a, _ in iu]), np.concatenate([b for _, b in iu])
                    op, mag = pool[i], (lo[i] + (hi[i] - lo[i]) * u).astype(np.float32)
                p = (grouped_params if self.grouped else stage_params)(op, mag, self.hw, self.channels, cfg.policy)
                keys = (grouped_keys(cfg.policy) if self.grouped
                        else STAGE_HOST + stage_device(self.channels, cfg.policy))
                out.update({f"{prefix}{k}.{q}": p[q] for q in keys})
            if cfg.cutout_max_frac > 0:
                scw = [(r.uniform(0.0, cfg.cutout_max_frac, n) * w, r.uniform(0.0, w, n), r.uniform(0.0, h, n))
                       for r in rngs]
                side, cx, cy = (np.concatenate(a) for a in zip(*scw))
                out[prefix + "cut_anchor"], out[prefix + "cut_shape"] = cutout_box(side, cx, cy, self.hw)
        return out

    @do_not_convert
    def nodes(self, per_step: int, steps_per_run: int = 1, start: int = 0, gpu: bool = False) -> dict:
        """name → DataNode: two external sources (host arguments; arithmetic weights on the images' device)
        whose DALI iteration i carries steps (start + i)·steps_per_run … + steps_per_run - 1, `per_step`
        samples each, in order. Not converted by DALI's AutoGraph (pipelines with conditionals convert what
        they call, and a converted callback, with `draw` under it, measured 12x slower per call)."""
        cache: dict[int, dict] = {}

        def batch(names):
            def source(info):
                c = info.iteration + start
                if c not in cache:
                    if len(cache) > 8:
                        cache.clear()
                    cache[c] = self.draw_steps(range(c * steps_per_run, (c + 1) * steps_per_run), per_step)
                return [cache[c][k] for k in names]
            return source

        out = {}
        for names, device in ((self.host_names, "cpu"), (self.device_names, "gpu" if gpu else "cpu")):
            if names:
                nodes = fn.external_source(source=batch(names), num_outputs=len(names), batch=True,
                                           batch_info=True, device=device)
                out.update(zip(names, nodes))
        return out


# ---------------------------------------------------------------- DALI fragments


def _grey(x: DataNode, channels: int) -> DataNode:
    """PIL's RGB → "L": (19595 R + 38470 G + 7471 B + 2^15) >> 16, as an integer (H, W, 1)."""
    if channels == 1:
        return x
    w = types.Constant(np.array([19595, 38470, 7471], dtype=np.int32))
    s = fn.reductions.sum(x * w, axis_names="C", keep_dims=True)  # uint8 * int32 → int32, summed as int64
    return (s + 32768) // 65536


def _smooth(x: DataNode, hw: tuple[int, int]) -> DataNode:
    """PIL's SMOOTH filter: rounded (the uint8 output of fn.filter rounds to nearest; a sum/13 is never
    within float error of a .5), and the 1-px border left as it was."""
    h, w = hw
    k = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0
    inner = np.zeros((h, w, 1), dtype=np.float32)
    inner[1:-1, 1:-1] = 1.0
    dev = "gpu" if x.device == "gpu" else "cpu"
    return (types.Constant(inner, device=dev) * fn.filter(x, k, dtype=types.UINT8)
            + types.Constant(1.0 - inner, device=dev) * x)


def _blur(x: DataNode, hw: tuple[int, int]) -> DataNode:
    """PIL's BLUR filter (5x5 ring of ones / 16), rounded half up as PIL's fixed point does (the sum of
    integers is exact in float; DALI's own rounding of /16 would meet exact halves), 2-px border kept."""
    h, w = hw
    k = np.ones((5, 5), dtype=np.float32)
    k[1:4, 1:4] = 0.0
    inner = np.zeros((h, w, 1), dtype=np.float32)
    inner[2:-2, 2:-2] = 1.0
    dev = "gpu" if x.device == "gpu" else "cpu"
    s = dmath.floor((fn.filter(x, k, dtype=types.FLOAT) + 8.0) / 16.0)
    return types.Constant(inner, device=dev) * s + types.Constant(1.0 - inner, device=dev) * x


def _channel_range(y: DataNode) -> tuple[DataNode, DataNode]:
    """Per-channel (min, max) of each image, (1, 1, C): what AutoContrast stretches."""
    return (fn.reductions.min(y, axis_names="HW", keep_dims=True),
            fn.reductions.max(y, axis_names="HW", keep_dims=True))


def _autocontrast(x: DataNode, lo: DataNode, hi: DataNode, on) -> DataNode:
    """(x - lo) · 255 / (hi - lo) per channel where `on`; a single-valued channel is left as is (lo 0, hi 255)."""
    on = on * (hi != lo)
    lo, hi = lo * on, (hi - 255.0) * on + 255.0
    return (x - lo) * (255.0 / (hi - lo))


def _statistics_ops(y: DataNode, *, ws, wc, v, a, e, wg=None, qa=None, qe=None, qs=None, qb=None, qi=None, hw,
                    channels) -> DataNode:
    """The ops that read image statistics, for the samples that drew one: PIL's blend with the degenerate
    image ``ws·smooth + wg·grey + wc·round(mean grey)`` by v (Color, Contrast, Sharpness), AutoContrast (a),
    then PIL's blend by e toward the equalized image, or, given CTAugment's weights (qa, ...), toward
    ``qa·autocontrast + qe·equalize + qs·smooth + qb·blur + qi·invert``; each an exact identity when its
    weights are 0 (v = 1: the blend is the identity on integers)."""
    grey = _grey(y, channels)
    smooth = _smooth(y, hw)
    deg = ws * smooth + wc * dmath.floor(
        fn.reductions.mean(grey, axis_names="HWC", keep_dims=True) + 0.5)  # PIL: int(mean + 0.5)
    if wg is not None:
        deg = deg + wg * grey
    b = deg + v * (y - deg)
    lo, hi = _channel_range(y)
    b = _autocontrast(b, lo, hi, a)
    target = fn.equalize(y)
    if qa is not None:  # CTAugment: PIL's AutoContrast is an integer LUT, blended afterwards
        target = (qa * dmath.floor(_autocontrast(y, lo, hi, 1.0)) + qe * target + qs * smooth + qb * _blur(y, hw)
                  + qi * (255.0 - y))
    return _to_u8(b + e * (target - b))


def _to_u8(x: DataNode) -> DataNode:
    """float → uint8 with PIL's truncating store (DALI's cast rounds and saturates; values are in [0, 255])."""
    return fn.cast(dmath.floor(x), dtype=types.UINT8)


def stage(x: DataNode, p: dict, *, hw, channels, fill) -> DataNode:
    """One RandAugment stage with `stage_params`'s per-sample parameters `p`: warp; the statistics ops
    (Color, Contrast, Sharpness, AutoContrast, Equalize); Brightness, Posterize, Solarize. Every op is the
    identity unless drawn, and on the drawn op the arithmetic is PIL's, as in the per-op reference
    (float32, truncating store), so each sample gets exactly its op. This is the GPU's stage; the CPU
    backend runs `stage_grouped`, the same bytes."""
    y = fn.warp_affine(x, matrix=p["M"], fill_value=fill, interp_type=types.INTERP_NN, inverse_map=True)
    kw = {q: p[q] for q in ("ws", "wc", "v", "a", "e", "wg") + CT_DEVICE if q in p}
    stats = lambda y, **w: _statistics_ops(y, **w, hw=hw, channels=channels)  # noqa: E731
    y = stats(y, **kw)
    b = p["vb"] * y  # Brightness: PIL's blend with black
    b = dmath.floor(b / p["pd"]) * p["pd"]  # Posterize keeps the high bits; pd = 1 is Brightness' floor
    b = b + (b >= p["t"]) * (255.0 - 2.0 * b)  # Solarize: v → 255 - v at and above the threshold
    return fn.cast(b, dtype=types.UINT8)


def _floor_u8(x: DataNode) -> DataNode:
    """PIL's truncating store of a float x ≥ 0 in one operator: DALI's conversion rounds half away from zero,
    and x - 0.5 is exact, so the result is floor(x) (the same as `_to_u8`, one operator less)."""
    return fn.crop_mirror_normalize(x, mean=[0.5], std=[1.0], dtype=types.UINT8, output_layout="HWC")


def stage_grouped(x: DataNode, p: dict, *, hw, channels, fill) -> DataNode:
    """`stage` for the CPU backend: the same per-sample ops, bit for bit, with each group of ops in its own
    DALI conditional (`grouped_params`), so a sample pays for its own op only. The warp runs for every
    sample (the identity unless drawn); then Posterize/Solarize as one bit mask and one table lookup; the
    blends (Brightness, Color, Contrast, Sharpness) as one chain with per-sample channel matrix and filter;
    AutoContrast; Equalize; with CTAugment's parameters (`GROUPED_CT`) its blends toward AutoContrast,
    Equalize, Smooth, Blur or Invert instead of the last two. On the CPU backend an operator costs per
    sample, and three RandAugment stages took 2.2–2.9x less wall time than the unbranched chain at every
    batch size measured (7, 56 and 224 samples: 6.7 vs 14.5, 11 vs 32, 25 vs 72 ms per iteration, a
    3-stage test pipeline); on a GPU operators cost launches and the unbranched `stage` has fewer."""
    h, w = hw
    y = fn.warp_affine(x, matrix=p["M"], fill_value=fill, interp_type=types.INTERP_NN, inverse_map=True)
    if p["lut"]:
        y = fn.lookup_table((y & p["pm"]) + p["T255"], keys=list(range(65536)), values=_solarize_table(),
                            dtype=types.UINT8)
    if p["blend"]:
        z = fn.coord_transform(y, M=p["Mz"], dtype=types.UINT8)  # PIL's integer grey: x.5 rounds up, as PIL
        mean = dmath.floor(fn.reductions.mean(z, axis_names="HWC", keep_dims=True) + 0.5)  # PIL: int(m + .5)
        deg = fn.filter(z, p["K"], dtype=types.UINT8) + p["wc"] * mean
        outer = np.ones((h, w, 1), np.float32)
        outer[1:-1, 1:-1] = 0.0
        v = p["v"] + p["sharp"] * types.Constant(outer)  # exactly 1 on Sharpness' border: y kept there
        y = _floor_u8(deg + v * (y - deg))
    if "toward" in p:
        if p["toward"]:
            if p["tac"]:
                lo, hi = _channel_range(y)
                t = dmath.floor(_autocontrast(y, lo, hi, 1.0))  # PIL's integer LUT, blended afterwards
            elif p["teq"]:
                t = fn.cast(fn.equalize(y), dtype=types.FLOAT)
            elif p["tsm"]:
                t = _smooth(y, hw)
            elif p["tbl"]:
                t = _blur(y, hw)
            else:
                t = 255.0 - y  # Invert
            y = _floor_u8(y + p["e"] * (t - y))
        return y
    if p["ac"]:
        lo, hi = _channel_range(y)
        y = _floor_u8(_autocontrast(y, lo, hi, 1.0))
    if p["eq"]:
        y = fn.equalize(y)
    return y


def reflect_pad(x: DataNode, hw: tuple[int, int], pad_frac: float) -> DataNode:
    """Reflect-pad by int(pad_frac * side) per axis (numpy/torch "reflect": the edge pixel is not repeated).
    Done once per image and shared by all its views."""
    h, w = hw
    ph, pw = int(pad_frac * h), int(pad_frac * w)
    if pw:
        x = fn.cat(fn.flip(x[:, 1:pw + 1], horizontal=1), x, fn.flip(x[:, w - pw - 1:w - 1], horizontal=1),
                   axis=1)
    if ph:
        x = fn.cat(fn.flip(x[1:ph + 1], vertical=1, horizontal=0), x,
                   fn.flip(x[h - ph - 1:h - 1], vertical=1, horizontal=0), axis=0)
    return x


def crop_flip(padded: DataNode, p: dict, prefix: str, hw: tuple[int, int], mean=None, std=None) -> DataNode:
    """Crop of size `hw` out of `reflect_pad`'s output at the drawn offset, flipped where drawn, in one
    crop_mirror_normalize. With mean/std (0–255 scale) the result is normalized float32, else uint8."""
    norm = dict(dtype=types.UINT8, mean=0.0, std=1.0) if mean is None else dict(
        dtype=types.FLOAT, mean=[float(m) for m in mean], std=[float(s) for s in std])
    return fn.crop_mirror_normalize(padded, crop=list(hw), crop_pos_y=p[prefix + "crop_y"],
                                    crop_pos_x=p[prefix + "crop_x"], mirror=p[prefix + "mirror"],
                                    output_layout="HWC", **norm)


def cutout(x: DataNode, anchor: DataNode, shape: DataNode, channels: int, fill) -> DataNode:
    """Fills the (y, x) box `anchor`, `shape` (see `cutout_box`) with `fill` (its mean on grey images)."""
    fill_c = [float(f) for f in fill] if channels == 3 else [float(np.mean(fill))]
    return fn.erase(x, anchor=anchor, shape=shape, axis_names="HW", fill_value=fill_c)


def strong_view(padded: DataNode, p: dict, prefix: str, cfg: AugmentConfig, hw: tuple[int, int], channels: int,
                mean=None, std=None, num_ops: int | None = None) -> DataNode:
    """USB's strong transform on `reflect_pad`'s output: crop/flip, `num_ops` (default cfg.num_ops)
    RandAugment stages (`stage_grouped` when `p` holds its parameters, else `stage`), Cutout (normalized if
    mean/std)."""
    x = crop_flip(padded, p, prefix, hw)
    for k in range(cfg.num_ops if num_ops is None else num_ops):
        if f"{prefix}{k}.lut" in p:  # ViewParams(branch=True): the CPU backend's grouped stage
            x = stage_grouped(x, {q: p[f"{prefix}{k}.{q}"] for q in grouped_keys(cfg.policy)}, hw=hw,
                              channels=channels, fill=cfg.geometric_fill)
            continue
        names = [q for q in STAGE_HOST + STAGE_DEVICE + CT_DEVICE if f"{prefix}{k}.{q}" in p]
        x = stage(x, {q: p[f"{prefix}{k}.{q}"] for q in names}, hw=hw, channels=channels,
                  fill=cfg.geometric_fill)
    if cfg.cutout_max_frac > 0:
        x = cutout(x, p[prefix + "cut_anchor"], p[prefix + "cut_shape"], channels, cfg.cutout_fill)
    return x if mean is None else normalize(x, mean, std)


def views(x: DataNode, cfg: AugmentConfig, hw: tuple[int, int], channels: int, mean, std, num_weak: int,
          num_strong: int, params: dict, num_medium: int = 0) -> list[DataNode]:
    """`num_weak` weak, `num_strong` strong then `num_medium` medium (`cfg.medium_num_ops` ops) normalized
    float32 HWC views of the same uint8 images, with one shared reflect padding; `params` are
    `ViewParams.nodes` of a ViewParams(cfg, ..., num_weak, num_strong, num_medium=num_medium). A weak view
    is a single fused crop/flip/normalize op. Parameters of ViewParams(branch=True) build `stage_grouped`
    (needs a pipeline with enable_conditionals=True)."""
    padded = reflect_pad(x, hw, cfg.crop_pad_frac)
    return ([crop_flip(padded, params, f"w{j}.", hw, mean, std) for j in range(num_weak)]
            + [strong_view(padded, params, f"s{j}.", cfg, hw, channels, mean, std)
               for j in range(num_strong)]
            + [strong_view(padded, params, f"m{j}.", cfg, hw, channels, mean, std, cfg.medium_num_ops)
               for j in range(num_medium)])


def normalize(x: DataNode, mean: np.ndarray, std: np.ndarray) -> DataNode:
    """uint8 HWC → float32 HWC, (x - mean) / std with mean/std on the 0–255 scale."""
    return fn.crop_mirror_normalize(x, mean=[float(m) for m in mean], std=[float(s) for s in std],
                                    dtype=types.FLOAT, output_layout="HWC")


# ---------------------------------------------------------------- running one op alone (tests, debugging)


def run_op(images: np.ndarray, name, magnitudes, device: str = "cpu", branch: bool = False,
           policy: str = "randaugment", **cutout_params) -> np.ndarray:
    """Applies one op (or per-sample ops: a list of names) through the augmentation `stage` (or "Cutout",
    with per-sample arrays `cx`, `cy` and `magnitudes` as the side in px) with fixed per-sample magnitudes
    to uint8 NHWC `images`, on DALI's CPU backend or on GPU 0 (device="gpu"); returns uint8 NHWC. `policy`:
    "ctaugment" adds its ops (Invert, Smooth, Blur) and reads AutoContrast/Equalize's magnitude as the
    blend level (magnitudes in `stage_params` units: see ctaugment.ct_magnitudes)."""
    from fastssl.data._dali import pipeline_def

    images = np.ascontiguousarray(images, dtype=np.uint8)
    n, h, w, c = images.shape
    mags = np.broadcast_to(np.asarray(magnitudes, dtype=np.float32), (n,))
    if name == "Cutout":
        anchor, shape = cutout_box(mags, cutout_params["cx"], cutout_params["cy"], (h, w))
        host, dev = {"anchor": anchor, "shape": shape}, {}
    elif branch:
        p = grouped_params([name] * n if isinstance(name, str) else list(name), mags, (h, w), c, policy)
        host, dev = {q: p[q] for q in grouped_keys(policy)}, {}
    else:
        p = stage_params([name] * n if isinstance(name, str) else list(name), mags, (h, w), c, policy)
        host = {q: p[q] for q in STAGE_HOST}
        dev = {q: p[q] for q in stage_device(c, policy)}

    @pipeline_def(batch_size=n, num_threads=1, device_id=0 if device == "gpu" else None, enable_conditionals=True)
    def pipe():
        x = fn.external_source(source=lambda: images, batch=True, layout="HWC")
        x = x.gpu() if device == "gpu" else x
        q = dict(zip(host, fn.external_source(source=lambda: list(host.values()), num_outputs=len(host), batch=True)))
        if dev:
            q.update(zip(dev, fn.external_source(source=lambda: list(dev.values()), num_outputs=len(dev),
                                                 batch=True, device=device)))
        if name == "Cutout":
            return cutout(x, q["anchor"], q["shape"], c, cutout_params.get("fill", (125, 123, 114)))
        if "lut" in q:
            return stage_grouped(x, q, hw=(h, w), channels=c, fill=cutout_params.get("fill", 0))
        return stage(x, q, hw=(h, w), channels=c, fill=cutout_params.get("fill", 0))

    p = pipe()
    p.build()
    (out,) = p.run()
    return np.array((out.as_cpu() if device == "gpu" else out).as_tensor())
