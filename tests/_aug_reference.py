"""The reference ops, PIL the way USB calls them (semilearn/datasets/augmentation/randaugment.py), one fixed
magnitude at a time, on uint8 HWC numpy images. Written from PIL's documented behaviour."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps


def _pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x)


def _np(img: Image.Image, channels: int) -> np.ndarray:
    a = np.asarray(img)
    return a[..., None] if channels == 1 else a


def _affine(img, m):
    return img.transform(img.size, Image.AFFINE, m)  # USB: default NEAREST, fill 0


REF = {
    "AutoContrast": lambda img, v: ImageOps.autocontrast(img),
    "Brightness": lambda img, v: ImageEnhance.Brightness(img).enhance(v),
    "Color": lambda img, v: ImageEnhance.Color(img).enhance(v),
    "Contrast": lambda img, v: ImageEnhance.Contrast(img).enhance(v),
    "Equalize": lambda img, v: ImageOps.equalize(img),
    "Identity": lambda img, v: img,
    "Posterize": lambda img, v: ImageOps.posterize(img, max(1, int(v))),
    "Rotate": lambda img, v: img.rotate(v),
    "Sharpness": lambda img, v: ImageEnhance.Sharpness(img).enhance(v),
    "ShearX": lambda img, v: _affine(img, (1, v, 0, 0, 1, 0)),
    "ShearY": lambda img, v: _affine(img, (1, 0, 0, v, 1, 0)),
    "Solarize": lambda img, v: ImageOps.solarize(img, v),
    "TranslateX": lambda img, v: _affine(img, (1, 0, v * img.size[0], 0, 1, 0)),
    "TranslateY": lambda img, v: _affine(img, (1, 0, 0, 0, 1, v * img.size[1])),
}


def ref_op(x: np.ndarray, name: str, v: float) -> np.ndarray:
    """USB's op `name` with magnitude `v` on one uint8 HWC image."""
    return _np(REF[name](_pil(x), v), x.shape[-1])


def ref_cutout(x: np.ndarray, side: float, cx: float, cy: float, fill=(125, 123, 114)) -> np.ndarray:
    """USB's CutoutAbs with the random centre given."""
    img = _pil(x).copy()
    w, h = img.size
    x0, y0 = int(max(0, cx - side / 2.0)), int(max(0, cy - side / 2.0))
    x1, y1 = min(w, x0 + side), min(h, y0 + side)
    fill = tuple(fill) if x.shape[-1] == 3 else int(np.mean(fill))
    ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), fill)
    return _np(img, x.shape[-1])


def ref_equalize_opencv(x: np.ndarray) -> np.ndarray:
    """OpenCV's per-channel equalizeHist formula (what DALI's fn.equalize implements)."""
    out = np.empty_like(x)
    for c in range(x.shape[-1]):
        ch = x[..., c]
        hist = np.bincount(ch.ravel(), minlength=256)
        cdf = np.cumsum(hist)
        n, cmin = cdf[-1], cdf[hist > 0][0] if hist.any() else 0
        if n == cmin:
            out[..., c] = ch
            continue
        lut = np.clip(np.round((cdf - cmin) * 255.0 / (n - cmin)), 0, 255).astype(np.uint8)
        out[..., c] = lut[ch]
    return out


def ref_pad_crop(x: np.ndarray, pad: int, dy: int, dx: int) -> np.ndarray:
    p = np.pad(x, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return p[dy:dy + x.shape[0], dx:dx + x.shape[1]]


def _blend_with(op):
    return lambda img, level: Image.blend(img, op(img), level)


def _equalize_opencv(img):
    a = np.asarray(img)
    return _pil(ref_equalize_opencv(a[..., None] if a.ndim == 2 else a))


CT_REF = {
    **REF,
    "AutoContrast": _blend_with(ImageOps.autocontrast),
    "Equalize": _blend_with(_equalize_opencv),  # DALI's equalize is OpenCV's formula (see test_augment)
    "Invert": _blend_with(ImageOps.invert),
    "Smooth": _blend_with(lambda img: img.filter(ImageFilter.SMOOTH)),
    "Blur": _blend_with(lambda img: img.filter(ImageFilter.BLUR)),
}
"""FixMatch's CTAugment ops with their magnitude already mapped (ctaugment.ct_magnitudes): factor ops are
PIL's enhancers (factor up to 2), the "blend" ops PIL's Image.blend(x, op(x), level)."""


def ref_ct_op(x: np.ndarray, name: str, v: float) -> np.ndarray:
    return _np(CT_REF[name](_pil(x), v), x.shape[-1])
