"""Each DALI op against USB's PIL op at fixed magnitudes; the weak view's crop/flip exactly; the strong
view's per-sample draws and Cutout geometry."""
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def

sys.path.insert(0, str(Path(__file__).parent))
from _aug_reference import ref_cutout, ref_equalize_opencv, ref_op, ref_pad_crop  # noqa: E402

from fastssl.data.augment import OP_RANGES, AugmentConfig, ViewParams, run_op, views  # noqa: E402


def _images(c=3):
    """Two 32x32 test images: a structured one (ramps, rings; exact edges for geometric ops) and noise."""
    yy, xx = np.mgrid[0:32, 0:32]
    img = np.stack([(xx * 7 + yy * 3) % 256, (yy * 8) % 256, ((xx - 16) ** 2 + (yy - 16) ** 2) % 256], -1)
    noise = np.random.default_rng(0).integers(30, 220, (32, 32, 3))
    x = np.stack([img, noise]).astype(np.uint8)
    return x[..., :1] if c == 1 else x


def _diff(out, ref):
    d = np.abs(out.astype(np.int32) - ref.astype(np.int32))
    return d.max(), (d > 0).mean()


# magnitudes at both ends and the middle of each op's range (USB units)
EXACT_CASES = [
    ("Brightness", [0.05, 0.37, 0.95]), ("Color", [0.05, 0.61, 0.95]), ("Contrast", [0.05, 0.29, 0.95]),
    ("Identity", [0.0]), ("Posterize", [4.0, 5.5, 7.99]), ("Sharpness", [0.05, 0.33, 0.95]),
    ("ShearX", [-0.3, 0.21, 0.3]), ("ShearY", [-0.3, -0.17, 0.3]), ("Solarize", [0.0, 100.5, 128.0, 256.0]),
    ("TranslateX", [-0.3, 0.23, 0.3]), ("TranslateY", [-0.3, -0.19, 0.3]), ("Rotate", [17.3]),
]


STAGES = pytest.mark.parametrize("branch", [False, True], ids=["unbranched", "grouped"])
"""both stage graphs: the unbranched chain (the GPU's) and the CPU backend's grouped conditionals"""


@STAGES
@pytest.mark.parametrize("c", [3, 1])
@pytest.mark.parametrize("name,mags", EXACT_CASES, ids=[c[0] for c in EXACT_CASES])
def test_op_matches_pil_exactly(name, mags, c, branch):
    """Bit-exact: PIL's integer grey, rounded SMOOTH filter, truncating blend and its affine matrices are
    reproduced; these magnitudes put no source coordinate on a pixel edge."""
    x = _images(c)
    for v in mags:
        out = run_op(x, name, v, branch=branch)
        ref = np.stack([ref_op(a, name, v) for a in x])
        assert out.shape == ref.shape and out.dtype == np.uint8
        assert _diff(out, ref) == (0, 0.0), (name, v)


@STAGES
@pytest.mark.parametrize("v", [-30.0, -23.0, 9.1, 30.0])
def test_rotate_matches_pil_except_edge_rounding(v, branch):
    """float32 (DALI) vs float64 (PIL) matrices: a source coordinate within ~1e-6 of a pixel edge may pick
    the neighbour. Tolerance: at most 1% of pixels differ."""
    x = _images()
    out = run_op(x, "Rotate", v, branch=branch)
    ref = np.stack([ref_op(a, "Rotate", v) for a in x])
    assert _diff(out, ref)[1] <= 0.01


@STAGES
def test_autocontrast_matches_pil_within_one_level(branch):
    """PIL's LUT int(x*scale - lo*scale) in float64 vs our floor((x - lo) * 255/(hi - lo)) in float32: equal
    up to one grey level at exact integers. Also covers a flat channel (left unchanged)."""
    x = _images()
    x[1, ..., 2] = 77  # single-valued channel
    x[0] = x[0] // 2 + 40  # not already full range
    out = run_op(x, "AutoContrast", 0.0, branch=branch)
    ref = np.stack([ref_op(a, "AutoContrast", 0) for a in x])
    mx, frac = _diff(out, ref)
    assert mx <= 1 and frac <= 0.02


@STAGES
def test_equalize_is_opencv_formula_and_close_to_pil(branch):
    """DALI's equalize is OpenCV's formula (exact); PIL's differs (documented deviation) but both are the same
    monotone map of grey levels: equal inputs stay equal, order is kept."""
    x = _images()
    out = run_op(x, "Equalize", 0.0, branch=branch)
    assert _diff(out, np.stack([ref_equalize_opencv(a) for a in x]))[0] == 0
    pil = np.stack([ref_op(a, "Equalize", 0) for a in x])
    for o, p, a in zip(out.reshape(-1, 32 * 32, 3), pil.reshape(-1, 32 * 32, 3), x.reshape(-1, 32 * 32, 3)):
        for c in range(3):  # per image, per channel
            order = np.argsort(a[:, c], kind="stable")
            assert (np.diff(o[order, c].astype(int)) >= 0).all() and (np.diff(p[order, c].astype(int)) >= 0).all()
    assert np.abs(out.astype(int) - pil).mean() < 40  # measured 20 on these images


@pytest.mark.parametrize("side,cx,cy", [(10.7, 3.3, 20.1), (5.2, 30.0, 31.5), (16.0, 0.0, 0.0), (0.4, 12.0, 9.9)])
def test_cutout_matches_usb_exactly(side, cx, cy):
    x = _images()
    out = run_op(x, "Cutout", side, cx=[cx, cx], cy=[cy, cy])
    ref = np.stack([ref_cutout(a, side, cx, cy) for a in x])
    assert _diff(out, ref)[0] == 0


def _run_view(x, cfg, n, strong=False, seed=3):
    """One weak (or strong) uint8 view of `n` copies of the single image `x` on DALI's CPU backend, with the
    loader's per-sample draws (`ViewParams`)."""
    batch, hw, c = [x] * n, x.shape[:2], x.shape[2]

    @pipeline_def(batch_size=n, num_threads=1, device_id=None, enable_conditionals=True)
    def pipe():
        params = ViewParams(cfg, hw, c, int(not strong), int(strong), key=(seed,)).nodes(per_step=n)
        img = fn.external_source(source=lambda: batch, batch=True, layout="HWC")
        return views(img, cfg, hw, c, None, None, int(not strong), int(strong), params)[0]

    p = pipe()
    p.build()
    return np.array(p.run()[0].as_tensor())


RAMP = (np.arange(32)[:, None, None] * 8 + np.arange(32)[None, :, None] * 3 + np.arange(3) * 50).astype(
    np.uint8
)  # every (row, col) distinct per channel up to wrap


def test_pad_crop_is_a_window_of_the_reflect_padded_image():
    cfg = AugmentConfig(flip_prob=0.0)
    out = _run_view(RAMP, cfg, 128)
    seen = set()
    for o in out:
        hits = [(dy, dx) for dy in range(9) for dx in range(9) if np.array_equal(o, ref_pad_crop(RAMP, 4, dy, dx))]
        assert len(hits) == 1
        seen.add(hits[0])
    ys, xs = {s[0] for s in seen}, {s[1] for s in seen}
    assert {0, 8} <= ys and {0, 8} <= xs  # offsets reach both ends of [0, 2·pad]


def test_flip_exact_and_probability():
    always = _run_view(RAMP, AugmentConfig(flip_prob=1.0, crop_pad_frac=0.0), 8)
    assert all(np.array_equal(o, RAMP[:, ::-1]) for o in always)
    never = _run_view(RAMP, AugmentConfig(flip_prob=0.0, crop_pad_frac=0.0), 8)
    assert all(np.array_equal(o, RAMP) for o in never)
    half = _run_view(RAMP, AugmentConfig(flip_prob=0.5, crop_pad_frac=0.0), 256)
    flipped = np.mean([np.array_equal(o, RAMP[:, ::-1]) for o in half])
    assert 0.38 < flipped < 0.62  # Binomial(256, 0.5): ±3.7σ


def _strong_only(**kw):
    base = dict(flip_prob=0.0, crop_pad_frac=0.0, cutout_max_frac=0.0, num_ops=1)
    return AugmentConfig(**{**base, **kw})


def test_magnitude_is_drawn_per_sample_over_the_range():
    """Brightness on a flat 200 image gives floor(200 v): one value per sample, spread over USB's range."""
    cfg = _strong_only(ops=("Brightness",))
    out = _run_view(np.full((32, 32, 3), 200, np.uint8), cfg, 256, strong=True)
    per_sample = out.reshape(256, -1)
    assert np.all(per_sample.min(1) == per_sample.max(1))
    v = per_sample[:, 0] / 200.0
    lo, hi = OP_RANGES["Brightness"]
    assert v.min() >= lo - 0.01 and v.max() <= hi and len(np.unique(per_sample[:, 0])) > 100
    assert abs(v.mean() - (lo + hi) / 2) < 0.05  # uniform: sd of the mean 0.016


def test_posterize_bits_uniform_over_4_to_7():
    cfg = _strong_only(ops=("Posterize",))
    out = _run_view(np.full((8, 8, 3), 255, np.uint8), cfg, 256, strong=True)
    values, counts = np.unique(out[:, 0, 0, 0], return_counts=True)
    assert values.tolist() == [240, 248, 252, 254] and counts.min() > 40  # expected 64 each


def test_op_selection_is_per_sample():
    """A pool of Identity and Solarize(threshold < 256 inverts 255): both outcomes occur in one batch,
    about half each; with two stages, all four combinations (0, 255, 255, 0)."""
    cfg = _strong_only(ops=("Identity", "Solarize"))
    out = _run_view(np.full((4, 4, 3), 255, np.uint8), cfg, 256, strong=True)
    inverted = np.mean(out[:, 0, 0, 0] == 0)
    assert 0.38 < inverted < 0.62


def test_cutout_area_in_range():
    """Cutout side int(v)+1 px, v ~ U(0, 0.5·32): every sample has one grey square of side 1..17 (clipped
    at the right/bottom edges), and the mean unclipped side is about 8.5."""
    cfg = _strong_only(num_ops=0, cutout_max_frac=0.5)
    out = _run_view(np.zeros((32, 32, 3), np.uint8), cfg, 256, strong=True)
    sides = []
    for o in out:
        m = np.all(o == (125, 123, 114), axis=-1)
        rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        assert m.sum() == len(rows) * len(cols) and (o[~m] == 0).all()  # exactly one filled rectangle
        assert 1 <= len(rows) <= 17 and 1 <= len(cols) <= 17
        if rows[-1] < 31 and cols[-1] < 31:
            assert len(rows) == len(cols)
            sides.append(len(rows))
    assert 6.5 < np.mean(sides) < 10.5


def test_strong_differs_from_weak_and_keeps_shape():
    cfg = AugmentConfig(flip_prob=0.5)
    x = _images()[0]
    w = _run_view(x, cfg, 16)
    s = _run_view(x, cfg, 16, strong=True)
    assert s.shape == w.shape == (16, 32, 32, 3) and s.dtype == np.uint8
    assert np.mean([not any(np.array_equal(a, b) for b in w) for a in s]) > 0.9


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="unknown ops"):
        AugmentConfig(ops=("Invert2",))
    with pytest.raises(ValueError, match="flip_prob"):
        dataclasses.replace(AugmentConfig(), flip_prob=1.5)


@pytest.mark.gpu
@pytest.mark.parametrize("name,mags", EXACT_CASES + [("AutoContrast", [0.0]), ("Equalize", [0.0])],
                         ids=[c[0] for c in EXACT_CASES] + ["AutoContrast", "Equalize"])
def test_gpu_op_matches_cpu_op(name, mags):
    """Same graph on device "gpu": GPU float math (FMA contraction) may move a value across an integer or a
    pixel edge, so at most one grey level on 1% of pixels, or 1% of pixels for the warps."""
    x = _images()
    for v in mags:
        cpu, gpu = run_op(x, name, v), run_op(x, name, v, device="gpu")
        mx, frac = _diff(gpu, cpu)
        assert frac <= 0.01 and (mx <= 1 or name in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"))
    cut = dict(cx=[3.3, 30.0], cy=[20.1, 31.5])
    assert _diff(run_op(x, "Cutout", [10.7, 5.2], device="gpu", **cut), run_op(x, "Cutout", [10.7, 5.2], **cut))[0] == 0


@STAGES
def test_each_sample_gets_exactly_its_own_op(branch):
    """One stage over a batch whose samples draw different ops (the whole pool, up to two magnitudes each): every
    sample equals PIL's result of its own op, i.e. the identity values of the ops not drawn are exact. Same
    with each group of ops in its own conditional."""
    base = _images()
    names, mags, imgs = [], [], []
    exact = {**dict(EXACT_CASES), "AutoContrast": [0.0], "Equalize": [0.0]}  # no pixel-edge ties for warps
    for i, name in enumerate(OP_RANGES):
        for j, v in enumerate(exact[name][-2:]):
            names.append(name)
            mags.append(v)
            imgs.append(base[(i + j) % 2])
    x = np.stack(imgs)
    out = run_op(x, names, np.array(mags, np.float32), branch=branch)
    for o, a, name, v in zip(out, x, names, np.float32(mags)):
        ref = ref_equalize_opencv(a) if name == "Equalize" else ref_op(a, name, float(v))
        mx, frac = _diff(o, ref)
        assert mx <= (1 if name == "AutoContrast" else 0), (name, v, mx, frac)


@pytest.mark.parametrize("c", [3, 1])
def test_grouped_stage_equals_unbranched_stage_on_random_draws(c):
    """The CPU backend's grouped stage and the unbranched one (the GPU's) give the same bytes over 600 random
    (image, op, magnitude) draws, magnitudes' edges included (Solarize at 0 and 256, Posterize near 8,
    factors at the range ends), on noise, flat, ramp and saturated images."""
    rng = np.random.default_rng(3)
    n = 600
    x = rng.integers(0, 256, (n, 32, 32, c)).astype(np.uint8)
    x[1::4] = rng.integers(0, 256, (len(x[1::4]), 1, 1, c))  # flat: AutoContrast's hi == lo, Contrast exact
    ramp = (np.add.outer(np.arange(32), np.arange(32)) * 4).clip(0, 255).astype(np.uint8)[..., None]
    x[2::4] = ramp
    x[3::8] = x[3::8] // 64 * 255  # only 0 and 255 (and 3·64 levels): ties in every op
    pool = np.array(list(OP_RANGES))
    names = pool[rng.integers(0, len(pool), n)]
    lo, hi = np.array([OP_RANGES[o] for o in names]).T
    mags = lo + (hi - lo) * rng.random(n)
    edge = rng.random(n) < 0.2
    mags[edge] = np.where(rng.random(edge.sum()) < 0.5, lo[edge], np.nextafter(hi[edge], -np.inf))
    mags = mags.astype(np.float32)
    grouped, plain = run_op(x, list(names), mags, branch=True), run_op(x, list(names), mags)
    bad = sorted({str(a) for a in names[(grouped != plain).any((1, 2, 3))]})
    assert not bad, f"grouped stage differs on {bad}"


def test_solarize_table_and_floor_store_match_their_closed_forms():
    """`_solarize_table`: key v + 255·T is Solarize_T(v) for every T in 0…256 and v in 0…255 (the overlapping
    keys agree); `_floor_u8` is floor(x) for floats on, just above and just below every integer 0…255."""
    from nvidia.dali import types

    from fastssl.data.augment import _floor_u8, _solarize_table

    table = np.asarray(_solarize_table())
    v = np.arange(256)
    for t in range(257):
        key = v + 255 * t
        assert np.array_equal(table[key], np.where(v < t, v, 255 - v)), t
    base = np.arange(256, dtype=np.float32)
    x = np.concatenate([base, np.nextafter(base, np.float32(1e9)), np.nextafter(base[1:], np.float32(-1)),
                        base + np.float32(0.5), np.float32(np.random.default_rng(0).uniform(0, 256, 4000))])

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        return _floor_u8(fn.external_source(source=lambda: [x.reshape(1, -1, 1)], batch=True, layout="HWC",
                                            dtype=types.FLOAT))

    p = pipe()
    p.build()
    out = np.array(p.run()[0].as_tensor()).ravel()
    assert np.array_equal(out, np.floor(x).clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("policy", ["randaugment", "ctaugment"])
@pytest.mark.parametrize("branch", [False, True])
def test_draws_of_many_steps_at_once_equal_the_steps_one_by_one(policy, branch):
    """An iteration's draws are made for its k steps at once (`draw_steps`, one numpy pass for the argument
    arithmetic), and must equal the steps' own draws concatenated: batches do not depend on k."""
    from fastssl.data.ctaugment import CTAugment

    cfg = AugmentConfig(flip_prob=0.5, policy=policy, medium_num_ops=1)

    def params(probe):
        ct = None
        if policy == "ctaugment":
            ct = CTAugment(cfg.num_ops)
            ct.steps_per_run, ct.lag = 8, 1
        return ViewParams(cfg, (32, 32), 3, 2, 1, (4, 1, 0), branch=branch, ct=ct, probe=probe, num_medium=1)

    for probe in ([False, True] if policy == "ctaugment" else [False]):
        one = [params(probe).draw(s, 5) for s in range(8)]
        many = params(probe).draw_steps(range(8), 5)
        assert many.keys() == one[0].keys()
        for k, v in many.items():
            assert v.dtype == one[0][k].dtype and np.array_equal(v, np.concatenate([d[k] for d in one])), k
