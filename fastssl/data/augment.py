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

Cost (DALI CPU backend, 2 threads, a 2-core machine shared at load ~9, CIFAR-sized 32x32, 448 images,
median of 3 rounds of 10 batches): weak ≈ 26 ms CPU per batch; weak + strong (num_ops=3) ≈ 166 ms, with
num_ops=2 ≈ 128 ms, vs DALI's own ``rand_augment(n=2, m=10)`` + erase (one fixed magnitude) ≈ 109 ms in
the same run. The op selection uses DALI conditionals: each sample runs only its own op.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from fastssl.config import FIXMATCH_POOL, AugmentConfig  # noqa: F401 (the plain config lives on the ground floor)
from fastssl.data._dali import DataNode, dmath, fn, select, types

OP_RANGES: dict[str, tuple[float, float]] = {
    "AutoContrast": (0.0, 1.0), "Brightness": (0.05, 0.95), "Color": (0.05, 0.95),
    "Contrast": (0.05, 0.95), "Equalize": (0.0, 1.0), "Identity": (0.0, 1.0), "Posterize": (4.0, 8.0),
    "Rotate": (-30.0, 30.0), "Sharpness": (0.05, 0.95), "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3),
    "Solarize": (0.0, 256.0), "TranslateX": (-0.3, 0.3), "TranslateY": (-0.3, 0.3),
}
"""USB's ``augment_list()``: the magnitude of each op is drawn uniformly from [lo, hi] per sample."""


# ---------------------------------------------------------------- helpers


def _on(node: DataNode, like: DataNode) -> DataNode:
    """A per-sample parameter computed on the CPU, moved to the device of `like` for arithmetic."""
    return node.gpu() if like.device == "gpu" else node


def _to_u8(x: DataNode) -> DataNode:
    """float → uint8 with PIL's truncating, saturating store (DALI's cast rounds and saturates, so floor
    first). Arithmetic promotes uint8 to float by itself: an explicit cast or clamp would be another full
    pass over the batch (measured: 3x the cost of the expression on the CPU backend)."""
    return fn.cast(dmath.floor(x), dtype=types.UINT8)


def _grey(x: DataNode, channels: int) -> DataNode:
    """PIL's RGB → "L": (19595 R + 38470 G + 7471 B + 2^15) >> 16, as float (H, W, 1)."""
    if channels == 1:
        return x
    w = types.Constant(np.array([19595, 38470, 7471], dtype=np.int32))
    s = fn.reductions.sum(x * w, axis_names="C", keep_dims=True)  # uint8 * int32 → int32, summed as int64
    return (s + 32768) // 65536


def _blend(degenerate: DataNode, x: DataNode, v: DataNode) -> DataNode:
    """PIL's Image.blend(degenerate, x, v): truncate(degenerate + v * (x - degenerate)); v ∈ [0, 1] keeps
    the result inside [0, 255]."""
    return _to_u8(degenerate + _on(v, x) * (x - degenerate))


def _c(a) -> DataNode:
    return types.Constant(np.asarray(a, dtype=np.float32))


def _warp(x: DataNode, mat: DataNode, fill: int) -> DataNode:
    """Nearest-neighbour affine warp with PIL's convention: source = M @ (dst + 0.5), per-sample M (2, 3).
    Each M is one arithmetic expression of the magnitude and constant (2, 3) arrays (one operator; a
    fn.stack of six scalars costs several per branch of the op selection)."""
    return fn.warp_affine(x, matrix=mat, fill_value=fill, interp_type=types.INTERP_NN, inverse_map=True)


# ---------------------------------------------------------------- the ops: (x uint8 HWC, v per-sample float) → uint8


def auto_contrast(x, v, *, hw, channels, fill):
    lo = fn.reductions.min(x, axis_names="HW", keep_dims=True)  # (1, 1, C) uint8
    hi = fn.reductions.max(x, axis_names="HW", keep_dims=True)
    flat = hi == lo  # a single-valued channel stays unchanged (then x - lo = 0 and flat * x = x)
    return _to_u8((x - lo) * (255.0 / (hi - lo + flat)) + flat * x)


def brightness(x, v, *, hw, channels, fill):
    return _blend(0.0, x, v)


def color(x, v, *, hw, channels, fill):
    return x if channels == 1 else _blend(_grey(x, channels), x, v)


def contrast(x, v, *, hw, channels, fill):
    mean = fn.reductions.mean(_grey(x, channels), axis_names="HWC", keep_dims=True)
    return _blend(dmath.floor(mean + 0.5), x, v)  # PIL: int(mean + 0.5)


def equalize(x, v, *, hw, channels, fill):
    return fn.equalize(x)


def identity(x, v, *, hw, channels, fill):
    return x


def posterize(x, v, *, hw, channels, fill):
    bits = dmath.floor(v)  # USB: int(v), v ∈ [4, 8)
    mask = fn.cast(256.0 - dmath.pow(2.0, 8.0 - bits), dtype=types.UINT8)
    return x & _on(mask, x)


def rotate(x, v, *, hw, channels, fill):
    # PIL: counter-clockwise about (w/2, h/2); inverse matrix [[c, s, cx - c·cx - s·cy], [-s, c, cy + s·cx - c·cy]]
    cx, cy = hw[1] / 2.0, hw[0] / 2.0
    t = v * (-np.pi / 180.0)
    mat = (dmath.cos(t) * _c([[1, 0, -cx], [0, 1, -cy]]) + dmath.sin(t) * _c([[0, 1, -cy], [-1, 0, cx]])
           + _c([[0, 0, cx], [0, 0, cy]]))
    return _warp(x, mat, fill)


def sharpness(x, v, *, hw, channels, fill):
    h, w = hw
    k = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0
    smooth = dmath.floor(fn.filter(x, k, dtype=types.FLOAT) + 0.5)  # PIL rounds the filtered value
    inner = np.zeros((h, w, 1), dtype=np.float32)
    inner[1:-1, 1:-1] = 1.0  # PIL's filter leaves the 1-px border as it was
    inner = types.Constant(inner, device="gpu" if x.device == "gpu" else "cpu")
    return _blend(inner * smooth + (1.0 - inner) * x, x, v)


def shear_x(x, v, *, hw, channels, fill):
    return _warp(x, _c([[1, 0, 0], [0, 1, 0]]) + v * _c([[0, 1, 0], [0, 0, 0]]), fill)


def shear_y(x, v, *, hw, channels, fill):
    return _warp(x, _c([[1, 0, 0], [0, 1, 0]]) + v * _c([[0, 0, 0], [1, 0, 0]]), fill)


def solarize(x, v, *, hw, channels, fill):
    keep = x < _on(v, x)  # PIL inverts pixels >= threshold; bool * uint8 stays uint8
    return keep * x + (keep ^ True) * (types.Constant(255, dtype=types.UINT8) - x)


def translate_x(x, v, *, hw, channels, fill):
    return _warp(x, _c([[1, 0, 0], [0, 1, 0]]) + v * _c([[0, 0, hw[1]], [0, 0, 0]]), fill)


def translate_y(x, v, *, hw, channels, fill):
    return _warp(x, _c([[1, 0, 0], [0, 1, 0]]) + v * _c([[0, 0, 0], [0, 0, hw[0]]]), fill)


OPS: dict[str, Callable] = {
    "AutoContrast": auto_contrast, "Brightness": brightness, "Color": color, "Contrast": contrast,
    "Equalize": equalize, "Identity": identity, "Posterize": posterize, "Rotate": rotate,
    "Sharpness": sharpness, "ShearX": shear_x, "ShearY": shear_y, "Solarize": solarize,
    "TranslateX": translate_x, "TranslateY": translate_y,
}
"""name → DALI fragment applying the op with a given per-sample magnitude (USB units, see OP_RANGES)"""


def cutout(x, side, cx, cy, *, hw, channels, fill):
    """USB's CutoutAbs with side `side` px centred at (cx, cy): PIL's inclusive rectangle from
    (int(max(0, cx - side/2)), same for y) to (x0 + side, y0 + side), clipped to the image."""
    h, w = hw
    x0, y0 = dmath.floor(dmath.max(cx - side / 2.0, 0.0)), dmath.floor(dmath.max(cy - side / 2.0, 0.0))
    x1 = dmath.min(dmath.floor(x0 + side), float(w - 1)) + 1.0  # exclusive end
    y1 = dmath.min(dmath.floor(y0 + side), float(h - 1)) + 1.0
    fill_c = [float(f) for f in fill] if channels == 3 else [float(np.mean(fill))]
    return fn.erase(x, anchor=fn.stack(y0, x0), shape=fn.stack(y1 - y0, x1 - x0), axis_names="HW",
                    fill_value=fill_c)


# ---------------------------------------------------------------- views


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


def crop_flip(padded: DataNode, cfg: AugmentConfig, hw: tuple[int, int], mean=None, std=None) -> DataNode:
    """Random crop of size `hw` out of `reflect_pad`'s output (every offset in [0, 2·pad] equally likely,
    per axis), flipped with probability `flip_prob`, in one crop_mirror_normalize. With mean/std (0–255
    scale) the result is normalized float32, else uint8."""
    h, w = hw
    ph, pw = int(cfg.crop_pad_frac * h), int(cfg.crop_pad_frac * w)

    def pos(p):  # offset k ∈ {0..2p} as crop_pos = k / 2p, which DALI scales back by (2p) and rounds to k
        return fn.random.uniform(values=[k / (2 * p) for k in range(2 * p + 1)]) if p else 0.0

    mirror = fn.random.coin_flip(probability=cfg.flip_prob, dtype=types.INT32) if cfg.flip_prob > 0 else 0
    norm = dict(dtype=types.UINT8, mean=0.0, std=1.0) if mean is None else dict(
        dtype=types.FLOAT, mean=[float(m) for m in mean], std=[float(s) for s in std])
    return fn.crop_mirror_normalize(padded, crop=[h, w], crop_pos_y=pos(ph), crop_pos_x=pos(pw), mirror=mirror,
                                    output_layout="HWC", **norm)


def weak_view(x: DataNode, cfg: AugmentConfig, hw: tuple[int, int], mean=None, std=None) -> DataNode:
    """USB's weak transform on uint8 HWC images of static size `hw`: reflect pad, random crop, flip."""
    return crop_flip(reflect_pad(x, hw, cfg.crop_pad_frac), cfg, hw, mean, std)


def rand_augment(x: DataNode, cfg: AugmentConfig, hw: tuple[int, int], channels: int) -> DataNode:
    """`num_ops` chained stages; each draws an op (uniform over the pool) and its magnitude (uniform over
    the op's range) per sample, and routes each sample to its op with DALI conditionals (`select`), so
    every sample pays for its own op only."""
    kw = dict(hw=hw, channels=channels, fill=cfg.geometric_fill)

    def bind(name):  # unit draw u ∈ [0, 1) → the op's magnitude range
        lo, hi = OP_RANGES[name]
        return lambda data, u: OPS[name](data, lo + (hi - lo) * u, **kw)

    ops = [bind(n) for n in cfg.ops]
    for _ in range(cfg.num_ops):
        op_idx = fn.random.uniform(values=list(range(len(ops))), dtype=types.INT32)
        u = fn.random.uniform(range=[0.0, 1.0])
        x = select(ops, op_idx, x, u=u) if len(ops) > 1 else ops[0](x, u)
    return x


def random_cutout(x: DataNode, cfg: AugmentConfig, hw: tuple[int, int], channels: int) -> DataNode:
    """USB's Cutout(v), v ~ U(0, cutout_max_frac): side v·W px, centre uniform over the image."""
    if cfg.cutout_max_frac <= 0.0:
        return x
    h, w = hw
    side = fn.random.uniform(range=[0.0, cfg.cutout_max_frac]) * float(w)
    cx, cy = fn.random.uniform(range=[0.0, float(w)]), fn.random.uniform(range=[0.0, float(h)])
    return cutout(x, side, cx, cy, hw=hw, channels=channels, fill=cfg.cutout_fill)


def strong_view(x: DataNode, cfg: AugmentConfig, hw: tuple[int, int], channels: int, mean=None, std=None,
                *, padded: DataNode | None = None) -> DataNode:
    """USB's strong transform: weak, RandAugment(num_ops) over the pool, Cutout (normalized if mean/std).
    Pass `padded` (reflect_pad's output) to share the padding with other views of the same images."""
    padded = reflect_pad(x, hw, cfg.crop_pad_frac) if padded is None else padded
    x = crop_flip(padded, cfg, hw)
    if cfg.num_ops > 0:
        x = rand_augment(x, cfg, hw, channels)
    x = random_cutout(x, cfg, hw, channels)
    return x if mean is None else normalize(x, mean, std)


def views(x: DataNode, cfg: AugmentConfig, hw: tuple[int, int], channels: int, mean, std, num_weak: int,
          num_strong: int) -> list[DataNode]:
    """`num_weak` weak then `num_strong` strong normalized float32 HWC views of the same uint8 images, with
    one shared reflect padding; a weak view is a single fused crop/flip/normalize op."""
    padded = reflect_pad(x, hw, cfg.crop_pad_frac)
    return ([crop_flip(padded, cfg, hw, mean, std) for _ in range(num_weak)]
            + [strong_view(x, cfg, hw, channels, mean, std, padded=padded) for _ in range(num_strong)])


def normalize(x: DataNode, mean: np.ndarray, std: np.ndarray) -> DataNode:
    """uint8 HWC → float32 HWC, (x - mean) / std with mean/std on the 0–255 scale."""
    return fn.crop_mirror_normalize(x, mean=[float(m) for m in mean], std=[float(s) for s in std],
                                    dtype=types.FLOAT, output_layout="HWC")


# ---------------------------------------------------------------- running one op alone (tests, debugging)


def run_op(images: np.ndarray, name: str, magnitudes, device: str = "cpu", **cutout_params) -> np.ndarray:
    """Applies one op (or "Cutout", with per-sample arrays `cx`, `cy` and `magnitudes` as the side in px)
    with fixed per-sample magnitudes to uint8 NHWC `images`, on DALI's CPU backend or on GPU 0
    (device="gpu"); returns uint8 NHWC on the host."""
    from nvidia.dali import pipeline_def

    images = np.ascontiguousarray(images, dtype=np.uint8)
    n, h, w, c = images.shape
    mags = np.broadcast_to(np.asarray(magnitudes, dtype=np.float32), (n,))
    cols = [list(images), [np.float32(m) for m in mags]]
    if name == "Cutout":
        cols += [[np.float32(v) for v in cutout_params[k]] for k in ("cx", "cy")]

    @pipeline_def(batch_size=n, num_threads=1, device_id=0 if device == "gpu" else None)
    def pipe():
        x = fn.external_source(source=lambda: cols[0], batch=True, layout="HWC")
        x = x.gpu() if device == "gpu" else x
        v = fn.external_source(source=lambda: cols[1], batch=True)
        kw = dict(hw=(h, w), channels=c)
        if name == "Cutout":
            cx = fn.external_source(source=lambda: cols[2], batch=True)
            cy = fn.external_source(source=lambda: cols[3], batch=True)
            return cutout(x, v, cx, cy, fill=cutout_params.get("fill", (125, 123, 114)), **kw)
        return OPS[name](x, v, fill=cutout_params.get("fill", 0), **kw)

    p = pipe()
    p.build()
    (out,) = p.run()
    return np.array((out.as_cpu() if device == "gpu" else out).as_tensor())
