"""CTAugment: every op of its pool against PIL at its mapped magnitudes, the weight update and bin sampling
against the paper's rule written out, rank-identical weights under gloo, exact resume of the loader with
its weight snapshots, the strong view following the weights."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _aug_reference import ref_ct_op  # noqa: E402

from fastssl.batch import ViewSpec  # noqa: E402
from fastssl.data.augment import AugmentConfig, run_op  # noqa: E402
from fastssl.data.ctaugment import CT_OPS, CTAugment, _OFFSET, ct_magnitudes  # noqa: E402
from fastssl.data.pipeline import TrainLoader  # noqa: E402

LEVELS = [0.0, 0.37, 0.5, 0.93]


def _images(c=3):
    yy, xx = np.mgrid[0:32, 0:32]
    img = np.stack([(xx * 7 + yy * 3) % 256, (yy * 8) % 256, ((xx - 16) ** 2 + (yy - 16) ** 2) % 256], -1)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3))
    x = np.stack([img, noise]).astype(np.uint8)
    return x[..., :1] if c == 1 else x


@pytest.mark.parametrize("branch", [False, True], ids=["unbranched", "grouped"])
@pytest.mark.parametrize("c", [3, 1])
@pytest.mark.parametrize("name", [o for o in CT_OPS if o != "Rotate"])
def test_ct_op_matches_pil_exactly(name, c, branch):
    """Bit-exact at both ends and inside the level range (factors up to 1.9: PIL's clipping blend);
    Equalize against OpenCV's formula, which DALI implements (PIL's own: see test_augment). Both stage
    graphs: the unbranched chain (the GPU's) and the CPU backend's grouped one."""
    x = _images(c)
    for lvl in LEVELS:
        m = float(ct_magnitudes([name], [lvl], (32, 32))[0])
        out = run_op(x, name, m, policy="ctaugment", branch=branch)
        ref = np.stack([ref_ct_op(a, name, m) for a in x])
        assert np.array_equal(out, ref), (name, lvl, m, np.abs(out.astype(int) - ref).max())


@pytest.mark.parametrize("branch", [False, True], ids=["unbranched", "grouped"])
def test_ct_rotate_matches_pil_except_edge_rounding(branch):
    """float32 vs PIL's float64 matrix (see test_augment): at most 1% of pixels differ, 4% at exactly ±45°
    (measured 3.9%: cos = sin puts many source coordinates on pixel edges; only levels < 1/180 or > 179/180
    round to ±45°)."""
    x = _images()
    for lvl in LEVELS + [1.0]:
        m = float(ct_magnitudes(["Rotate"], [lvl], (32, 32))[0])
        out = run_op(x, "Rotate", m, policy="ctaugment", branch=branch)
        ref = np.stack([ref_ct_op(a, "Rotate", m) for a in x])
        assert (out != ref).mean() <= (0.04 if abs(m) == 45 else 0.01), (lvl, m)


def test_magnitude_maps_are_fixmatchs():
    m = lambda n, l: float(ct_magnitudes([n], [l], (32, 32))[0])  # noqa: E731
    assert m("Brightness", 0.0) == pytest.approx(0.1) and m("Brightness", 1.0) == pytest.approx(2.0)
    assert [m("Posterize", l) for l in (0.0, 0.5, 0.999)] == [1, 4, 8]
    assert m("Solarize", 0.999) == 255 and m("Solarize", 0.0) == 0
    assert m("Rotate", 0.0) == -45 and m("Rotate", 1.0) == 45 and m("ShearX", 0.25) == pytest.approx(-0.15)


def test_update_follows_the_paper_rule_on_hand_built_probes():
    """rate ← 0.99·rate + 0.01·measure for each (op, bin) a probe sample used, sample by sample."""
    ct = CTAugment(num_ops=2)
    rot = list(CT_OPS).index("Rotate")
    post = list(CT_OPS).index("Posterize")
    a, b = _OFFSET[rot] + 3, _OFFSET[post] + 7
    ct.update(np.array([[a, b], [a, -1]]), np.array([0.2, 0.6]))
    expect_a = (1 * 0.99 + 0.2 * 0.01) * 0.99 + 0.6 * 0.01
    assert ct.rates[a] == pytest.approx(expect_a, abs=1e-15)
    assert ct.rates[b] == pytest.approx(0.99 + 0.002, abs=1e-15)
    untouched = np.ones_like(ct.rates, bool)
    untouched[[a, b]] = False
    assert (ct.rates[untouched] == 1).all()


def test_probe_measure_is_one_minus_half_l1():
    """probe_step's measure on a model with known outputs: 1 - ½ Σ|softmax - onehot|."""
    ct = CTAugment(num_ops=1)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 2])
    bins = np.array([[_OFFSET[0] + 1], [_OFFSET[0] + 2]])
    class Fixed(torch.nn.Module):
        def forward(self, x):
            self.seen = self.training
            return logits

    model = Fixed()
    ct.probe_step(model, torch.zeros(2), y, bins)
    assert model.seen is False and model.training  # scored in eval mode, train mode restored
    p = torch.softmax(logits.double(), -1).numpy()
    meas = [1 - 0.5 * (abs(p[0, 0] - 1) + p[0, 1] + p[0, 2]), 1 - 0.5 * (p[1, 0] + p[1, 1] + abs(p[1, 2] - 1))]
    assert ct.rates[bins[:, 0]] == pytest.approx([0.99 + 0.01 * m for m in meas], abs=1e-7)


def test_bin_sampling_respects_threshold_and_weights():
    """Bins whose (rate + 0.01) / max < 0.8 are never drawn; the rest in proportion; levels inside the bin."""
    ct = CTAugment(num_ops=1)
    rot = list(CT_OPS).index("Rotate")
    r = ct.rates[_OFFSET[rot]:_OFFSET[rot] + 17]
    r[:] = 0.1
    r[4], r[9] = 0.99, 0.79  # (0.79 + .01) / 1.0 = 0.8: kept; everything else below
    ct._snapshots[0] = ct.rates.copy()
    names, lvl = ct.draw(np.random.default_rng(0), 60000, step=0)
    sel = lvl[names == "Rotate"]
    bins = np.floor(sel * 17).astype(int)
    assert set(bins) == {4, 9}
    assert (bins == 4).mean() == pytest.approx(1.0 / 1.8, abs=0.02)


# --------------------------------------------------------------------------- the loader

CT = AugmentConfig(policy="ctaugment", num_ops=2, flip_prob=0.5)


def _data(n=40):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def _loader(**kw):
    x, y = _data()
    return TrainLoader(x[:12], y[:12], x, y, **{**dict(batch_size=4, uratio=2, views=ViewSpec(), aug=CT,
                                                         mean=(0.5,) * 3, std=(0.25,) * 3, seed=3, num_threads=1,
                                                         steps_per_run=2), **kw})


def _fake_probe(loader):
    """A deterministic probe outcome (a function of the bins) instead of a model."""
    bins = loader.probe_bins()
    loader.ctaugment.update(bins, (bins.sum(1) % 7) / 7.0)


def _run(loader, n):
    out = []
    for _ in range(n):
        b = next(loader)
        out.append([t.clone() for t in (b.x_ulb_s, b.x_lb_s)])
        _fake_probe(loader)
    return out


def test_loader_emits_the_probe_view_and_its_bins():
    loader = _loader()
    b = next(loader)
    assert b.x_lb_s.shape == b.x_lb.shape and not torch.equal(b.x_lb_s, b.x_lb)
    bins = loader.probe_bins()
    assert bins.shape == (4, 2) and bins.max() < len(loader.ctaugment.rates)


def test_resume_is_exact_with_the_weight_snapshots():
    a = _loader()
    _run(a, 5)
    state, ct_state = a.state_dict(), a.ctaugment.state_dict()
    ref = _run(a, 6)
    b = _loader()
    b.load_state_dict(state)
    b.ctaugment.load_state_dict(ct_state)
    got = _run(b, 6)
    for r, g in zip(ref, got):
        assert all(torch.equal(p, q) for p, q in zip(r, g))
    assert np.array_equal(a.ctaugment.rates, b.ctaugment.rates)


def test_strong_view_follows_the_weights():
    """Control: the same loader with different learnt weights draws different strong views, same weak ones."""
    a, b = _loader(), _loader()
    for lo in (a, b):
        for _ in range(6):
            next(lo)
            _fake_probe(lo)
    b.ctaugment._snapshots = {u: np.where(np.arange(len(r)) % 3, 0.0, 1.0) for u, r in b.ctaugment._snapshots.items()}
    for _ in range(4):  # past the prefetched iterations, into the ones drawn with the new snapshots
        ba, bb = next(a), next(b)
        _fake_probe(a), _fake_probe(b)
    assert torch.equal(ba.x_ulb_w, bb.x_ulb_w) and not torch.equal(ba.x_ulb_s, bb.x_ulb_s)


def test_weights_are_read_from_the_step_snapshot():
    """Iteration c (k steps) reads the weights after (c - prefetch + 1)·k updates; a loader that ran
    ahead of the updates says so."""
    loader = _loader()
    ct = loader.ctaugment
    assert (ct.steps_per_run, ct.lag) == (2, 1)
    for _ in range(2):
        next(loader)
        _fake_probe(loader)
    assert ct.weights_at(5) is ct._snapshots[2]
    with pytest.raises(RuntimeError, match="ahead"):
        ct.weights_at(8)


# --------------------------------------------------------------------------- ranks and the trainer


def _rank_worker(rank: int, port: int, q) -> None:
    import os

    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(rank)  # each rank probes its own images with its own outcomes
    model = torch.nn.Linear(5, 3)
    shared, local = CTAugment(num_ops=2), CTAugment(num_ops=2)
    rng = np.random.default_rng(rank)
    for _ in range(3):
        x, y = torch.randn(4, 5), torch.randint(0, 3, (4,))
        _, _, bins = shared.probe(rng, 4)
        shared.probe_step(model, x, y, bins)
        with torch.no_grad():  # control: the same probes applied without gathering
            p = torch.softmax(model(x), -1)
        local.update(bins, (1 - 0.5 * (p - torch.nn.functional.one_hot(y, 3)).abs().sum(-1)).double().numpy())
    q.put((rank, shared.rates, local.rates))
    dist.destroy_process_group()


def test_weights_identical_across_two_gloo_ranks():
    import torch.multiprocessing as mp

    from test_distributed import free_port
    ctx = mp.get_context("spawn")
    q, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_rank_worker, args=(r, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    (_, s0, l0), (_, s1, l1) = sorted((q.get(timeout=300) for _ in procs), key=lambda r: r[0])
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert np.array_equal(s0, s1) and (s0 != 1).any()
    assert not np.array_equal(l0, l1)  # control: without the gather the ranks drift apart


def test_trainer_runs_and_resumes_exactly_with_ctaugment(tmp_path):
    """--aug.policy=ctaugment end to end on the offline dataset; resuming at step 2 gives the same weights,
    CTAugment state and loss at step 4."""
    from test_trainer import tiny_cfg

    from fastssl.train.trainer import Trainer
    extra = {"aug.policy": "ctaugment", "train.steps": 4, "train.eval_every": 2, "train.log_every": 2,
             "train.ckpt_every": 2}
    Trainer(tiny_cfg(tmp_path / "a", **extra)).fit()
    Trainer(tiny_cfg(tmp_path / "b", **extra, **{"train.resume": str(tmp_path / "a" / "ckpt-2.pt")})).fit()
    ref, got = (torch.load(tmp_path / d / "ckpt-4.pt", weights_only=False) for d in "ab")
    assert ref["ctaugment"]["updates"] == 4 and (ref["ctaugment"]["rates"] != 1).any()
    assert np.array_equal(ref["ctaugment"]["rates"], got["ctaugment"]["rates"])
    for k, v in ref["model"].items():
        assert torch.equal(v, got["model"][k]), k


@pytest.mark.gpu
@pytest.mark.parametrize("name", [o for o in CT_OPS if o not in ("Rotate", "ShearX", "ShearY", "TranslateX",
                                                                 "TranslateY")])
def test_gpu_ct_op_matches_cpu_op(name):
    """The CTAugment stage on device "gpu" (FMA contraction may move a value across an integer): at most
    one grey level on 1% of pixels."""
    x = _images()
    for lvl in LEVELS:
        m = float(ct_magnitudes([name], [lvl], (32, 32))[0])
        cpu = run_op(x, name, m, policy="ctaugment")
        gpu = run_op(x, name, m, device="gpu", policy="ctaugment")
        d = np.abs(gpu.astype(int) - cpu)
        assert (d > 0).mean() <= 0.01 and d.max() <= 1, (name, lvl)


@pytest.mark.parametrize("c", [3, 1])
def test_grouped_ct_stage_equals_unbranched_stage_on_random_draws(c):
    """CTAugment's ops through the CPU backend's grouped stage and the unbranched one (the GPU's): the same
    bytes over 600 random (image, op, level) draws, levels 0 and just below 1 included (factors up to 2:
    clipping, and Sharpness above 1 with its kept border)."""
    rng = np.random.default_rng(5)
    n = 600
    x = rng.integers(0, 256, (n, 32, 32, c)).astype(np.uint8)
    x[1::4] = rng.integers(0, 256, (len(x[1::4]), 1, 1, c))
    x[2::4] = (np.add.outer(np.arange(32), np.arange(32)) * 4).clip(0, 255).astype(np.uint8)[..., None]
    names = np.array(list(CT_OPS))[rng.integers(0, len(CT_OPS), n)]
    lvl = rng.random(n)
    lvl[rng.random(n) < 0.2] = 0.0
    lvl[rng.random(n) < 0.2] = np.nextafter(1.0, 0.0)
    mags = ct_magnitudes(names, lvl, (32, 32)).astype(np.float32)
    grouped = run_op(x, list(names), mags, policy="ctaugment", branch=True)
    plain = run_op(x, list(names), mags, policy="ctaugment")
    bad = sorted({str(a) for a in names[(grouped != plain).any((1, 2, 3))]})
    assert not bad, f"grouped stage differs on {bad}"


def test_sharpness_border_factor_is_exactly_one():
    """The grouped stage keeps Sharpness' border with the factor v + fl(1 - v), which must be exactly 1 in
    float32 for every factor either policy draws (RandAugment 0.05–0.95, CTAugment 0.1–2.0): checked on
    every float32 in [0.05, 2] with a stride of 7 ulps, and on both ends."""
    lo, hi = np.float32(0.05).view(np.int32), np.float32(2.0).view(np.int32)
    v = np.arange(lo, hi + 1, 7, dtype=np.int32).view(np.float32)
    v = np.concatenate([v, np.float32([0.05, 0.95, 0.1, 1.9, 2.0])])
    assert np.all(v + (np.float32(1) - v) == np.float32(1))
