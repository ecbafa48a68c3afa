"""build_data: the unlabeled set is a view of its sources (STL-10's 100k unlabeled images stay memory-mapped
on disk), the flip default and reader options come from the dataset registry."""
import numpy as np
import pytest
import torch

from _readers_formats import write_stl10
from fastssl.batch import ViewSpec
from fastssl.config import AugmentConfig, DataConfig
from fastssl.data.build import RowView, build_data
from fastssl.data.registry import DATASETS

NO_AUG = AugmentConfig(flip_prob=0.0, crop_pad_frac=0.0, num_ops=0, cutout_max_frac=0.0)


def test_row_view_equals_concatenation():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (9, 2, 2, 1), np.uint8), rng.integers(0, 256, (5, 2, 2, 1), np.uint8)
    rows = np.array([7, 0, 3, 3])
    view = RowView([(a, rows), (b, None)])
    ref = np.concatenate([a[rows], b])
    idx = rng.integers(0, len(ref), 40)
    assert len(view) == 9 and view.shape == ref.shape and view.dtype == np.uint8 and view.ndim == 4
    assert np.array_equal(view[idx], ref[idx])


def test_stl10_unlabeled_stays_on_disk_and_batches_are_the_files_images(tmp_path):
    (train_x, train_y), _, unlabeled, folder = write_stl10(tmp_path, np.random.default_rng(1), n_train=20,
                                                           n_test=3, n_unlabeled=37)
    d = DataConfig(name="stl10", root=str(folder), num_labels=10, batch_size=2, uratio=8, eval_batch_size=4,
                   num_threads=1)
    bundle = build_data(d, NO_AUG, ViewSpec(1, 0), seed=0, rank=0, world=1, device=torch.device("cpu"))
    assert bundle.num_ulb == 20 + 37
    ulb = bundle.train._specs["ulb"]["source"].x  # what the unlabeled pipeline's callback reads from
    assert isinstance(ulb, RowView)
    (base, rows), (extra, _) = ulb.parts
    assert isinstance(extra, np.memmap) and len(extra) == 37  # the file, not a copy in memory
    assert base is not None and len(base) == 20  # the training array itself, indexed by the split's rows
    expected = np.concatenate([train_x[bundle.split.ulb_idx], unlabeled])  # (57, 96, 96, 3)
    expected_y = np.concatenate([train_y[bundle.split.ulb_idx], np.full(37, -1)])  # no labels: -1
    mean, std = torch.tensor((112.4, 109.1, 98.6)), torch.tensor((68.4, 66.6, 68.5))  # STL-10 stats × 255
    it = iter(bundle.train)
    seen = set()
    for _ in range(8):
        b = next(it)
        idx = b.idx_ulb.numpy()
        seen |= set(idx.tolist())
        pixels = b.x_ulb_w.permute(0, 2, 3, 1) * std + mean  # back to 0..255
        torch.testing.assert_close(pixels, torch.from_numpy(expected[idx]).float(), rtol=0, atol=1e-3)
        assert torch.equal(b.y_ulb, torch.from_numpy(expected_y[idx]))
    assert max(seen) >= 20  # unlabeled-file rows were drawn


@pytest.mark.parametrize("name,flip", [("digits", 0.0), ("npz", 0.5)])
def test_flip_default_comes_from_the_registry(tmp_path, name, flip):
    root = None
    if name == "npz":
        rng = np.random.default_rng(0)
        root = tmp_path / "d.npz"
        np.savez(root, x_train=rng.integers(0, 256, (40, 8, 8, 3), np.uint8), y_train=np.arange(40) % 10,
                 x_test=rng.integers(0, 256, (10, 8, 8, 3), np.uint8), y_test=np.arange(10))
    d = DataConfig(name=name, root=str(root) if root else None, num_labels=10, batch_size=2, uratio=1,
                   eval_batch_size=4, num_threads=1)
    bundle = build_data(d, AugmentConfig(), ViewSpec(1, 1), seed=0, rank=0, world=1, device=torch.device("cpu"))
    assert DATASETS[name].flip == (flip > 0)
    assert {s["aug"].flip_prob for s in bundle.train._specs.values()} == {flip}
    explicit = build_data(d, AugmentConfig(flip_prob=0.25), ViewSpec(1, 1), seed=0, rank=0, world=1,
                          device=torch.device("cpu"), build_train=True)
    assert {s["aug"].flip_prob for s in explicit.train._specs.values()} == {0.25}  # an explicit value wins
