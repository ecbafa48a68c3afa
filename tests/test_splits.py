"""Labeled/unlabeled split: class balance, seeding, disjointness, USB's include-labeled default, and the
saved file catching a mismatched reuse."""
import numpy as np
import pytest

from fastssl.data.splits import (Split, labels_hash, load_split, save_split, split_for_run,
                                 split_labeled)


def _labels(n_per_class=(30, 25, 40, 31), seed=0):
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)]).astype(np.int64)
    return np.random.default_rng(seed).permutation(y)


def test_class_balanced_and_usb_default_includes_labeled():
    y = _labels()
    s = split_labeled(y, num_labels=20, num_classes=4, seed=1)
    assert s.lb_idx.dtype == np.int64 and len(s.lb_idx) == 20 == len(np.unique(s.lb_idx))
    assert np.bincount(y[s.lb_idx], minlength=4).tolist() == [5, 5, 5, 5]
    assert np.array_equal(s.ulb_idx, np.arange(len(y)))  # USB include_lb_to_ulb=True: all samples


def test_exclude_labeled_gives_disjoint_cover():
    y = _labels()
    s = split_labeled(y, 8, 4, seed=3, include_labeled_in_unlabeled=False)
    assert np.intersect1d(s.lb_idx, s.ulb_idx).size == 0
    assert np.array_equal(np.sort(np.concatenate(s)), np.arange(len(y)))


def test_reproducible_by_seed_and_independent_of_global_rng():
    y = _labels()
    np.random.seed(0)
    a = split_labeled(y, 20, 4, seed=7)
    np.random.seed(123)
    np.random.rand(99)
    b = split_labeled(y, 20, 4, seed=7)
    assert np.array_equal(a.lb_idx, b.lb_idx)
    c = split_labeled(y, 20, 4, seed=8)
    assert not np.array_equal(a.lb_idx, c.lb_idx)


def test_matches_naive_per_class_draw():
    """Pins the algorithm: per class in order 0..C-1, rng.choice of that class's indices."""
    y = _labels()
    rng = np.random.default_rng(5)
    want = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), 3, replace=False) for c in range(4)]))
    assert np.array_equal(split_labeled(y, 12, 4, seed=5).lb_idx, want)


def test_errors_name_the_fix():
    y = _labels()
    with pytest.raises(ValueError, match=r"--data.num_labels=45 is not divisible by 10 classes; use a multiple of 10"):
        split_labeled(np.arange(100) % 10, 45, 10, seed=0)
    with pytest.raises(ValueError, match=r"class 1 has only 25 .* --data.num_labels <= 100"):
        split_labeled(y, 4 * 26, 4, seed=0)
    with pytest.raises(ValueError, match="outside"):
        split_labeled(y, 8, 3, seed=0)
    with pytest.raises(ValueError, match="positive"):
        split_labeled(y, 0, 4, seed=0)


def test_fully_supervised():
    y = _labels()
    for n in (-1, len(y)):
        s = split_labeled(y, n, 4, seed=0)
        assert np.array_equal(s.lb_idx, np.arange(len(y))) and np.array_equal(s.ulb_idx, np.arange(len(y)))
    assert split_labeled(y, -1, 4, 0, include_labeled_in_unlabeled=False).ulb_idx.size == 0


def test_save_load_round_trip_and_mismatch(tmp_path):
    y = _labels()
    s = split_labeled(y, 20, 4, seed=2, include_labeled_in_unlabeled=False)
    meta = dict(dataset="toy", num_labels=20, seed=2, labels_sha256=labels_hash(y))
    save_split(tmp_path / "split.npz", s, meta)
    s2, meta2 = load_split(tmp_path / "split.npz", y, dataset="toy", num_labels=20, seed=2)
    assert isinstance(s2, Split) and meta2 == meta
    assert all(np.array_equal(a, b) and b.dtype == np.int64 for a, b in zip(s, s2))
    with pytest.raises(ValueError, match="seed: saved 2 vs now 3"):
        load_split(tmp_path / "split.npz", y, seed=3)
    y_other = y.copy()
    y_other[[0, 1]] = y_other[[1, 0]] if y[0] != y[1] else (y[0] + 1) % 4
    with pytest.raises(ValueError, match="labels_sha256"):
        load_split(tmp_path / "split.npz", y_other)
    (tmp_path / "torn.npz").write_bytes((tmp_path / "split.npz").read_bytes()[:40])
    with pytest.raises(ValueError, match="torn.npz is unreadable"):
        load_split(tmp_path / "torn.npz")
    with pytest.raises(ValueError, match="lacks"):
        save_split(tmp_path / "bad.npz", s, {"dataset": "toy"})


def test_split_for_run_reuses_saved_split(tmp_path):
    y = _labels()
    a = split_for_run(tmp_path / "run", "toy", y, 20, 4, seed=4)
    assert (tmp_path / "run" / "split.npz").exists()
    b = split_for_run(tmp_path / "run", "toy", y, 20, 4, seed=4)
    assert np.array_equal(a.lb_idx, b.lb_idx)
    with pytest.raises(ValueError, match="num_labels"):
        split_for_run(tmp_path / "run", "toy", y, 40, 4, seed=4)
