"""TrainLoader / EvalLoader: shapes, sharding, seeded shuffles, exact resume, eval padding, image folders."""
import numpy as np
import pytest
import torch
from PIL import Image

from fastssl.data.augment import AugmentConfig
from fastssl.batch import SSLBatch, ViewSpec
from fastssl.data.pipeline import EpochSampler, EvalLoader, TrainLoader, _KeepAlive

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
NO_AUG = AugmentConfig(flip_prob=0.0, crop_pad_frac=0.0, num_ops=0, cutout_max_frac=0.0)
SMALL_POOL = AugmentConfig(ops=("Identity", "Rotate", "Solarize", "Equalize"), num_ops=2, flip_prob=0.5)  # quick to build


def _data(n, hw=8, seed=0):
    """Image i is a constant image with value i % 251 in channel 0 (so a batch row names its sample)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, hw, hw, 3), dtype=np.uint8)
    x[..., 0] = (np.arange(n) % 251)[:, None, None]
    return x, rng.integers(0, 10, n).astype(np.int64)


def _loader(aug=SMALL_POOL, n_lb=20, n_ulb=60, views=ViewSpec(), **kw):
    x, y = _data(n_ulb)
    args = dict(batch_size=4, uratio=3, views=views, aug=aug, mean=MEAN, std=STD, seed=7, num_threads=1)
    return TrainLoader(x[:n_lb], y[:n_lb], x, y, **{**args, **kw}), x, y


def _unnorm(t, c=0):
    return t[:, c] * STD[c] * 255 + MEAN[c] * 255  # (B, H, W)


def test_shapes_dtypes_layout_and_range():
    loader, x, y = _loader()
    b = next(iter(loader))
    assert isinstance(b, SSLBatch)
    assert b.x_lb.shape == (4, 3, 8, 8) and b.x_ulb_w.shape == b.x_ulb_s.shape == (12, 3, 8, 8)
    assert b.y_lb.dtype == b.idx_ulb.dtype == b.y_ulb.dtype == torch.int64 and b.x_lb.dtype == torch.float32
    assert b.x_ulb_s.is_contiguous(memory_format=torch.channels_last)
    for c in range(3):
        lo, hi = (0 - MEAN[c] * 255) / (STD[c] * 255), (255 - MEAN[c] * 255) / (STD[c] * 255)
        for t in (b.x_lb, b.x_ulb_w, b.x_ulb_s):
            assert lo - 1e-5 <= t[:, c].min() and t[:, c].max() <= hi + 1e-5
    assert torch.equal(b.y_ulb, torch.from_numpy(y[b.idx_ulb.numpy()]))
    assert not torch.equal(b.x_ulb_w, b.x_ulb_s)


def test_views_match_their_samples_without_augmentation():
    """With every augmentation off, each weak row is exactly the normalized image its index names."""
    loader, x, y = _loader(aug=NO_AUG)
    it = iter(loader)
    for _ in range(3):
        b = next(it)
        ref = (torch.from_numpy(x[b.idx_ulb.numpy()]).float() - torch.tensor(MEAN) * 255) / (torch.tensor(STD) * 255)
        torch.testing.assert_close(b.x_ulb_w, ref.permute(0, 3, 1, 2), rtol=0, atol=1e-5)
        torch.testing.assert_close(b.x_ulb_s, b.x_ulb_w, rtol=0, atol=0)
        lb_ids = torch.round(_unnorm(b.x_lb)[:, 0, 0]).long()
        assert torch.equal(torch.from_numpy(y[lb_ids.numpy()]), b.y_lb)


def test_sampler_epochs_are_permutations_of_disjoint_covering_shards():
    n, world = 23, 3
    shards = []
    for r in range(world):
        s = EpochSampler(n, 5, seed=1, stream=1, rank=r, world_size=world)
        m = len(s.shard)
        stream = np.concatenate([s.indices(i) for i in range(4 * m // 5 + 2)])
        for e in range(3):  # each epoch visits the shard once, in a new order
            assert sorted(stream[e * m:(e + 1) * m]) == sorted(s.shard)
        assert not np.array_equal(stream[:m], stream[m:2 * m])
        shards.append(set(s.shard.tolist()))
    assert set().union(*shards) == set(range(n)) and sum(map(len, shards)) == n


def test_ranks_get_their_share_and_disjoint_indices():
    seen = []
    for r in range(2):
        loader, x, _ = _loader(aug=NO_AUG, rank=r, world_size=2)
        b = next(iter(loader))
        assert b.x_lb.shape[0] == 2 and b.x_ulb_w.shape[0] == 6  # global 4 and 12, halved
        assert set((b.idx_ulb % 2).tolist()) == {r}
        lb_ids = torch.round(_unnorm(b.x_lb)[:, 0, 0]).long()
        assert set((lb_ids % 2).tolist()) == {r}
        seen.append(set(b.idx_ulb.tolist()))
    assert not seen[0] & seen[1]
    with pytest.raises(ValueError, match="use a multiple of 3"):
        _loader(world_size=3)


def test_seeded_reproducibility():
    a, _, _ = _loader(aug=AugmentConfig(ops=("Rotate", "Solarize"), flip_prob=0.5))
    b, _, _ = _loader(aug=AugmentConfig(ops=("Rotate", "Solarize"), flip_prob=0.5))
    c, _, _ = _loader(aug=AugmentConfig(ops=("Rotate", "Solarize"), flip_prob=0.5), seed=8)
    ba, bb, bc = next(iter(a)), next(iter(b)), next(iter(c))
    for ta, tb in zip(ba[:6], bb[:6]):
        assert torch.equal(ta, tb)
    assert not torch.equal(ba.idx_ulb, bc.idx_ulb)


def _take(loader, k):
    it = iter(loader)
    return [tuple(t.clone() for t in next(it)[:6]) for _ in range(k)]


def test_exact_resume_from_checkpoint():
    """Full FixMatch pool: k batches, checkpoint, k more == restore in a fresh loader, k more (bit-exact),
    across an epoch boundary of the labeled set (20 samples, 4 per batch)."""
    loader, _, _ = _loader(aug=AugmentConfig(flip_prob=0.5), views=ViewSpec(2, 1))
    _take(loader, 3)
    state = loader.state_dict()
    expected = _take(loader, 6)
    fresh, _, _ = _loader(aug=AugmentConfig(flip_prob=0.5), views=ViewSpec(2, 1))
    fresh.load_state_dict(state)
    got = _take(fresh, 6)
    for e, g in zip(expected, got):
        for te, tg in zip(e, g):
            assert torch.equal(te, tg)
    with pytest.raises(KeyError, match="state_dict"):
        fresh.load_state_dict({})


def _all(batch):
    return [t.clone() for t in batch[:6]]


def test_batches_do_not_depend_on_steps_per_run_and_resume_mid_iteration():
    """k steps per DALI iteration hand out the batches of k = 1, bit for bit; a state saved in the middle of
    an iteration (step 5 with k = 4) resumes exactly, also into a loader with another k."""
    aug = AugmentConfig(flip_prob=0.5)
    ref = _take(_loader(aug=aug, views=ViewSpec(2, 1), steps_per_run=1)[0], 11)
    four, _, _ = _loader(aug=aug, views=ViewSpec(2, 1), steps_per_run=4)
    got = _take(four, 5)
    state = four.state_dict()
    assert state == {"step": 5}
    got += _take(four, 6)
    for k in (4, 3, 1):
        fresh, _, _ = _loader(aug=aug, views=ViewSpec(2, 1), steps_per_run=k)
        fresh.load_state_dict(state)
        resumed = _take(fresh, 6)
        for e, g in zip(ref[5:], resumed):
            assert all(torch.equal(a, b) for a, b in zip(e, g)), k
    for e, g in zip(ref, got):
        assert all(torch.equal(a, b) for a, b in zip(e, g))


@pytest.mark.parametrize("k", [1, 11])
def test_grouped_cpu_graph_gives_the_same_batches_as_the_gpu_graph(k):
    """On the CPU backend RandAugment's strong views take one DALI conditional per group of ops
    (augment.stage_grouped); the unbranched graph is the one a GPU runs. Same batches, bit for bit, with the
    full op pool, at 1 and 11 steps per iteration (12 and 132 unlabeled rows)."""
    aug = AugmentConfig(flip_prob=0.5)
    grouped, _, _ = _loader(aug=aug, steps_per_run=k)
    plain, _, _ = _loader(aug=aug, steps_per_run=k, branch=False)
    assert grouped._specs["ulb"]["branch"] and not plain._specs["ulb"]["branch"]
    for e, g in zip(_take(plain, 11), _take(grouped, 11)):
        assert all(torch.equal(a, b) for a, b in zip(e, g))


def test_default_steps_per_run_fills_a_small_budget():
    """Small batches are grouped (the fixed per-iteration cost is shared) up to the cap, or as many as fit
    4 MiB of float views (CIFAR FixMatch at B=1: 15 views of 32x32x3 per step, so 22); CTAugment keeps its
    weights fresher with a lower cap; large batches are not grouped."""
    from fastssl.data.pipeline import MAX_STEPS_PER_RUN, MAX_STEPS_PER_RUN_CT

    assert _loader()[0].steps_per_run == MAX_STEPS_PER_RUN == 32
    assert _loader(aug=AugmentConfig(policy="ctaugment", flip_prob=0.5))[0].steps_per_run == MAX_STEPS_PER_RUN_CT
    x, y = _data(600, hw=32)
    kw = dict(views=ViewSpec(), aug=NO_AUG, mean=MEAN, std=STD, seed=0, num_threads=1)
    assert TrainLoader(x[:100], y[:100], x, y, batch_size=1, uratio=7, **kw).steps_per_run == 22
    big = TrainLoader(x[:100], y[:100], x, y, batch_size=64, uratio=7, **kw)
    assert big.steps_per_run == 1


class _FakeEvent:
    """A CUDA event stand-in: `done` says whether the GPU is past it; synchronize() makes it so."""

    made: list = []

    def __init__(self):
        self.done, self.recorded = False, False
        _FakeEvent.made.append(self)

    def record(self):
        self.recorded = True

    def query(self):
        return self.done

    def synchronize(self):
        self.done = True


def test_keepalive_holds_outputs_until_the_stream_is_past_their_readers():
    """An iteration's outputs (last step s) stay referenced until an event recorded when step
    s + in_flight + 1 is handed out has completed; past max_held iterations the oldest is waited for."""
    _FakeEvent.made = []
    keep = _KeepAlive(in_flight=2, event=_FakeEvent, max_held=3)
    keep.hold("it0", last_step=3)  # steps 0..3
    for step in range(0, 6):
        keep.handed_out(step)
    assert [e[0] for e in keep.held] == ["it0"] and not _FakeEvent.made  # steps 4, 5 may still be reading it
    keep.handed_out(6)
    assert len(_FakeEvent.made) == 1 and _FakeEvent.made[0].recorded and len(keep.held) == 1  # GPU not past
    keep.handed_out(7)
    assert len(keep.held) == 1
    _FakeEvent.made[0].done = True
    keep.handed_out(8)
    assert not keep.held
    for i in range(4):  # the GPU never catches up: iterations 1..4, one step each
        keep.hold(f"it{i + 1}", last_step=9 + i)
        keep.handed_out(9 + i)
    keep.handed_out(13), keep.handed_out(14), keep.handed_out(15)
    assert [e[0] for e in keep.held] == ["it2", "it3", "it4"]  # it1 waited for (synchronize), the rest held
    assert _FakeEvent.made[1].done and not any(e.done for e in _FakeEvent.made[2:])
    cpu = _KeepAlive(in_flight=0)
    cpu.hold("x", last_step=0)
    cpu.handed_out(0)
    assert cpu.held
    cpu.handed_out(1)
    assert not cpu.held


def test_eval_batch_size_error_names_the_real_option():
    x, y = _data(8)
    with pytest.raises(ValueError, match="--data.eval_batch_size=3 is not divisible by world_size=2"):
        EvalLoader(x, y, batch_size=3, mean=MEAN, std=STD, world_size=2)


@pytest.mark.gpu
def test_gpu_batch_stays_valid_while_the_stream_still_reads_it():
    """The host runs ahead of the GPU: batch 0 is read by a kernel queued behind a long sleep, the host drops
    its references and pulls many later batches (DALI reuses freed buffers). The kernel must still see batch
    0 as it was."""
    loader, _, _ = _loader(aug=AugmentConfig(flip_prob=0.5), device=torch.device("cuda"), steps_per_run=2)
    b = next(loader)
    torch.cuda.synchronize()
    want = [t.clone() for t in b[:6]]
    torch.cuda._sleep(2_000_000_000)  # ~1 s of GPU time on the current stream
    seen = [t * 1 if t.is_floating_point() else t + 0 for t in b[:6]]  # runs after the sleep
    del b
    for _ in range(40):
        later = next(loader)
        _ = later.x_ulb_s.sum()  # a consumer: the host keeps queueing work
    torch.cuda.synchronize()
    for w, s in zip(want, seen):
        assert torch.equal(w, s)


def test_memmap_input(tmp_path):
    """STL-10's unlabeled set arrives as a np.memmap: the callback reads only the rows it needs."""
    x, y = _data(30)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=x.shape)
    mm[:] = x
    mm.flush()
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    args = dict(batch_size=4, uratio=3, views=ViewSpec(), aug=NO_AUG, mean=MEAN, std=STD, seed=7, num_threads=1)
    b = next(iter(TrainLoader(mm[:10], y[:10], mm, y, **args)))
    ref = (torch.from_numpy(x[b.idx_ulb.numpy()]).float() - torch.tensor(MEAN) * 255) / (torch.tensor(STD) * 255)
    torch.testing.assert_close(b.x_ulb_w, ref.permute(0, 3, 1, 2), rtol=0, atol=1e-5)


def test_view_counts():
    loader, _, _ = _loader(aug=NO_AUG, views=ViewSpec(num_weak=2, num_strong=0))
    b = next(iter(loader))
    assert b.x_ulb_s.shape == (0, 3, 8, 8) and len(b.x_ulb_w_extra) == 1 and b.x_ulb_s_extra == ()
    assert b.x_ulb_w_extra[0].shape == b.x_ulb_w.shape


def test_normalization_scale_is_checked():
    with pytest.raises(ValueError, match="0–1"):
        _loader(mean=(125.0, 123.0, 114.0))


@pytest.mark.parametrize("n,world,batch", [(13, 2, 4), (8, 1, 4), (5, 4, 8)])
def test_eval_padding_covers_every_sample_once(n, world, batch):
    x, y = _data(n)
    rows, counts = [], []
    for r in range(world):
        ev = EvalLoader(x, y, batch_size=batch, mean=MEAN, std=STD, rank=r, world_size=world, num_threads=1)
        batches = list(ev)
        counts.append(len(batches))
        for xb, yb, valid in batches:
            assert xb.shape == (batch // world, 3, 8, 8) and valid.dtype == torch.bool
            ids = torch.round(_unnorm(xb)[:, 0, 0]).long()
            assert torch.equal(yb, torch.from_numpy(y[ids.numpy()]))
            rows += ids[valid].tolist()
        assert [v.sum() for _, _, v in list(ev)] == [v.sum() for _, _, v in batches]  # a second pass is the same
    assert len(set(counts)) == 1 and sorted(rows) == list(range(n))


def test_image_folder_train_and_eval(tmp_path):
    """PNG (lossless) files of the loader's size round-trip exactly; a JPEG of another size is resized."""
    x, y = _data(12, hw=16)
    files = []
    for i, img in enumerate(x):
        f = tmp_path / f"{i}.png"
        Image.fromarray(img).save(f)
        files.append(str(f))
    big = tmp_path / "big.jpg"
    Image.fromarray(np.full((40, 24, 3), 90, np.uint8)).save(big, quality=95)
    kw = dict(batch_size=4, uratio=2, views=ViewSpec(), aug=NO_AUG, mean=MEAN, std=STD, seed=0, num_threads=1)
    loader = TrainLoader.from_files(files[:4], y[:4], files, y, image_size=16, **kw)
    b = next(iter(loader))
    ref = (torch.from_numpy(x[b.idx_ulb.numpy()]).float() - torch.tensor(MEAN) * 255) / (torch.tensor(STD) * 255)
    torch.testing.assert_close(b.x_ulb_w, ref.permute(0, 3, 1, 2), rtol=0, atol=1e-5)
    strong = TrainLoader.from_files(files[:4], y[:4], files + [str(big)], np.append(y, 3), image_size=16,
                                    **{**kw, "aug": SMALL_POOL})
    assert next(iter(strong)).x_ulb_s.shape == (8, 3, 16, 16)
    ev = EvalLoader.from_files(files[:5] + [str(big)], np.append(y[:5], 3), image_size=16, batch_size=4,
                               mean=MEAN, std=STD, num_threads=1)
    (x0, y0, v0), (x1, y1, v1) = list(ev)
    assert x1.shape == (4, 3, 16, 16) and v1.tolist() == [True, True, False, False]
    assert abs(_unnorm(x1)[1].mean().item() - 90) < 3  # the resized JPEG


@pytest.mark.gpu
def test_gpu_loader_hands_cuda_tensors_without_copy():
    loader, x, y = _loader(aug=AugmentConfig(flip_prob=0.5), device=torch.device("cuda"))
    b = next(iter(loader))
    assert all(t.is_cuda for t in b[:6])
    assert b.x_ulb_s.is_contiguous(memory_format=torch.channels_last)
    cpu, _, _ = _loader(aug=NO_AUG)
    gpu, _, _ = _loader(aug=NO_AUG, device=torch.device("cuda"))
    bc, bg = next(iter(cpu)), next(iter(gpu))
    assert torch.equal(bc.idx_ulb, bg.idx_ulb.cpu())
    torch.testing.assert_close(bc.x_ulb_w, bg.x_ulb_w.cpu(), rtol=0, atol=1e-5)


def test_single_channel_digits_full_pool():
    """Digits/MNIST: one channel, no flip; every op of the pool builds and runs on (H, W, 1)."""
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (40, 16, 16, 1), dtype=np.uint8), rng.integers(0, 10, 40)
    aug = AugmentConfig(flip_prob=0.0)
    loader = TrainLoader(x[:8], y[:8], x, y, batch_size=4, uratio=2, views=ViewSpec(), aug=aug, mean=(0.5,),
                         std=(0.25,), seed=0, num_threads=1)
    it = iter(loader)
    for _ in range(3):
        b = next(it)
    assert b.x_ulb_s.shape == (8, 1, 16, 16) and b.x_lb.shape == (4, 1, 16, 16)
    assert -2.0 <= b.x_ulb_s.min() and b.x_ulb_s.max() <= 2.0


def test_handed_out_batch_stays_valid_across_later_batches():
    """Zero-copy DLPack tensors must not be overwritten by the pipelines' later (prefetched) batches."""
    loader, _, _ = _loader(aug=NO_AUG, prefetch=2)
    it = iter(loader)
    kept = next(it)
    copy = [t.clone() for t in kept[:6]]
    for _ in range(5):
        next(it)
    assert all(torch.equal(a, b) for a, b in zip(kept[:6], copy))


def test_no_unlabeled_views_builds_no_unlabeled_pipeline():
    """The supervised baseline declares ViewSpec(0, 0): only the labeled pipeline runs; the unlabeled fields
    are empty, fixed-shape tensors."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    y = np.arange(40) % 4
    loader = TrainLoader(x, y, x, y, batch_size=4, uratio=3, views=ViewSpec(0, 0), aug=AugmentConfig(flip_prob=0.0),
                         mean=(0.5,) * 3, std=(0.25,) * 3, seed=0)
    assert set(loader._pipes) == {"lb"}
    b = next(iter(loader))
    assert b.x_lb.shape == (4, 3, 8, 8) and b.x_ulb_w.shape == (0, 3, 8, 8) and b.x_ulb_s.shape == (0, 3, 8, 8)
    assert b.idx_ulb.shape == (0,) and b.y_ulb.dtype == torch.int64


def test_labeled_strong_view_when_asked():
    """ViewSpec(lb_strong=True) (DeFixMatch): the labeled pipeline also emits a strong view of the same images."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    y = np.arange(40) % 4
    loader = TrainLoader(x, y, x, y, batch_size=4, uratio=2, views=ViewSpec(1, 1, lb_strong=True),
                         aug=AugmentConfig(flip_prob=0.0), mean=(0.5,) * 3, std=(0.25,) * 3, seed=0)
    b = next(iter(loader))
    assert b.x_lb_s is not None and b.x_lb_s.shape == b.x_lb.shape == (4, 3, 8, 8)
    assert not torch.equal(b.x_lb_s, b.x_lb) and b.y_lb.shape == (4,) and b.y_lb.dtype == torch.int64
    plain = next(iter(TrainLoader(x, y, x, y, batch_size=4, uratio=2, views=ViewSpec(1, 1),
                                  aug=AugmentConfig(flip_prob=0.0), mean=(0.5,) * 3, std=(0.25,) * 3, seed=0)))
    assert plain.x_lb_s is None and torch.equal(plain.y_lb, b.y_lb)


def test_host_draws_run_as_plain_python_not_autograph(monkeypatch):
    """The training graph enables DALI conditionals, and DALI's AutoGraph then rewrites every function defined
    inside what the graph definition calls, including the external-source callback that makes each step's
    draws: rewritten, one step's draws measured 12x slower (6 ms instead of 0.5). The callback must run
    `ViewParams.draw_steps` with no AutoGraph frame on the stack."""
    import inspect

    from fastssl.data import augment

    seen = []
    draw = augment.ViewParams.draw_steps

    def recording(self, steps, n):
        seen.append([f.filename for f in inspect.stack(0)])
        return draw(self, steps, n)

    monkeypatch.setattr(augment.ViewParams, "draw_steps", recording)
    loader, _, _ = _loader(aug=AugmentConfig(flip_prob=0.5))
    next(loader)
    assert seen
    converted = sorted({f for stack in seen for f in stack if "autograph" in f.lower()})
    assert not converted, f"draws ran under AutoGraph: {converted}"
