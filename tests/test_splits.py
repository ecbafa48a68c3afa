"""Labeled/unlabeled split: every strategy class-balanced and reproducible, (un)representative picks against a
naive fp64 medoid, index files round-tripping and refused when wrong, and the resume check naming what changed."""
from types import SimpleNamespace

import numpy as np
import pytest

from fastssl.config import Config, DataConfig, apply_overrides
from fastssl.data import splits as S
from fastssl.data.splits import (check_same_split, labels_hash, load_split, make_split, pixel_features, save_split,
                                 split_labeled, split_state)


def _labels(n_per_class=(30, 25, 40, 31), seed=0):
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)]).astype(np.int64)
    return np.random.default_rng(seed).permutation(y)


def _features(n, seed=0, d=5):
    """Small integer-valued features: many exact distance ties, so the tie rule is exercised."""
    return np.random.default_rng(seed).integers(0, 4, (n, d)).astype(np.float64)


# ------------------------------------------------------------------------------------------------ random
def test_class_balanced_and_usb_default_includes_labeled():
    y = _labels()
    s = split_labeled(y, num_labels=20, num_classes=4, seed=1)
    assert s.lb_idx.dtype == np.int64 and len(s.lb_idx) == 20 == len(np.unique(s.lb_idx))
    assert np.bincount(y[s.lb_idx], minlength=4).tolist() == [5, 5, 5, 5]
    assert np.array_equal(s.lb_y, y[s.lb_idx])
    assert np.array_equal(s.ulb_idx, np.arange(len(y)))  # USB include_lb_to_ulb=True: all samples


@pytest.mark.parametrize("strategy", ["random", "representative", "unrepresentative"])
def test_exclude_labeled_gives_disjoint_cover(strategy):
    y = _labels()
    s = split_labeled(y, 8, 4, seed=3, include_labeled_in_unlabeled=False, strategy=strategy,
                      features=_features(len(y)))
    assert np.intersect1d(s.lb_idx, s.ulb_idx).size == 0
    assert np.array_equal(np.sort(np.concatenate([s.lb_idx, s.ulb_idx])), np.arange(len(y)))


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
    with pytest.raises(ValueError, match="positive"):
        split_labeled(y, 0, 4, seed=0)
    with pytest.raises(ValueError, match="use random, representative, unrepresentative or file:PATH"):
        split_labeled(y, 8, 4, seed=0, strategy="medoid")
    with pytest.raises(ValueError, match="needs features; give --data.split_features"):
        split_labeled(y, 8, 4, seed=0, strategy="representative")


def test_labels_outside_the_classes_name_the_data_not_a_missing_option():
    """There is no --data.num_classes: the class count comes from the reader, so the data files are at fault."""
    with pytest.raises(ValueError) as e:
        split_labeled(_labels(), 8, 3, seed=0)
    msg = str(e.value)
    assert "lie in 0..3, outside the dataset's 3 classes [0, 3)" in msg and "--data.root" in msg
    assert "--data.num_classes" not in msg


def test_fully_supervised():
    y = _labels()
    for strategy in ("random", "representative"):
        for n in (-1, len(y)):
            s = split_labeled(y, n, 4, seed=0, strategy=strategy)
            assert np.array_equal(s.lb_idx, np.arange(len(y))) and np.array_equal(s.ulb_idx, np.arange(len(y)))
    assert split_labeled(y, -1, 4, 0, include_labeled_in_unlabeled=False).ulb_idx.size == 0


# ------------------------------------------------------------------------------------ (un)representative
def _naive_pick(x, y, per_class, farthest):
    """fp64 loops: medoid = first member with the least sum of distances; order by (distance, index)."""
    picked = []
    for c in sorted(set(y.tolist())):
        members = [i for i in range(len(y)) if y[i] == c]
        dist = lambda i, j: float(np.sqrt(sum((x[i, k] - x[j, k]) ** 2 for k in range(x.shape[1]))))  # noqa: E731
        sums = [sum(dist(i, j) for j in members) for i in members]
        m = members[sums.index(min(sums))]
        key = (lambda i: (-dist(i, m), i)) if farthest else (lambda i: (dist(i, m), i))
        picked += sorted(members, key=key)[:per_class]
    return np.sort(np.array(picked))


@pytest.mark.parametrize("farthest", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_representative_picks_match_naive_medoid(farthest, seed):
    y = _labels((18, 13, 22), seed=seed)
    x = _features(len(y), seed=seed)
    strategy = "unrepresentative" if farthest else "representative"
    s = split_labeled(y, 12, 3, seed=99, strategy=strategy, features=x)
    assert np.array_equal(s.lb_idx, _naive_pick(x, y, 4, farthest))
    # a function of the indices gives the same as the array; the seed plays no part
    again = split_labeled(y, 12, 3, seed=0, strategy=strategy, features=lambda idx: x[idx])
    assert np.array_equal(again.lb_idx, s.lb_idx)


def test_representative_contains_medoid_and_differs_from_unrepresentative():
    y = _labels((10, 10))
    x = _features(len(y), seed=4)
    rep = split_labeled(y, 2, 2, 0, strategy="representative", features=x).lb_idx
    unrep = split_labeled(y, 2, 2, 0, strategy="unrepresentative", features=x).lb_idx
    for c in range(2):  # with one label per class, representative is exactly the medoid
        members = np.flatnonzero(y == c)
        sums = [np.sqrt(((x[members] - x[i]) ** 2).sum(1)).sum() for i in members]
        assert rep[c == y[rep]][0] == members[int(np.argmin(sums))]
    assert np.intersect1d(rep, unrep).size == 0


@pytest.mark.parametrize("chunk_bytes", [64, 1000, 1 << 24])
def test_blocked_medoid_equals_fp64_loop(chunk_bytes):
    """The fp32 screen in row blocks (several, uneven) against the exact fp64 loop, with spread-out data."""
    x = np.random.default_rng(3).normal(size=(57, 40)) * np.linspace(0.1, 3, 40)
    x -= x.mean(0)
    sums = [np.sqrt(((x - x[i]) ** 2).sum(1)).sum() for i in range(len(x))]
    assert S._medoid(x, chunk_bytes=chunk_bytes) == int(np.argmin(sums))


def test_medoid_ties_go_to_the_lowest_row():
    x = np.array([[0.0], [1.0], [1.0], [2.0]])  # rows 1 and 2 tie exactly
    assert S._medoid(x) == 1


def test_pixel_features_are_box_means_in_unit_range():
    x = np.random.default_rng(0).integers(0, 256, (3, 70, 50, 3), dtype=np.uint8)
    got = pixel_features(x)
    f = 3  # ceil(70 / 32): 69×48 cropped, 23×16 cells
    want = np.zeros((3, 23, 16, 3))
    for i in range(23):
        for j in range(16):
            want[:, i, j] = x[:, f * i:f * i + f, f * j:f * j + f].reshape(3, -1, 3).mean(1) / 255
    assert got.shape == (3, 23 * 16 * 3) and np.allclose(got, want.reshape(3, -1), atol=1e-6)
    small = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert np.allclose(pixel_features(small), small.reshape(2, -1) / 255)


# ----------------------------------------------------------------------------------------- index files
def _ds(y, x=None):
    return SimpleNamespace(train_y=y, train_x=x, num_classes=int(y.max()) + 1)


def _dcfg(**kw):
    return DataConfig(**{"name": "toy", "num_labels": 20, **kw})


def test_run_split_file_round_trips_exactly(tmp_path):
    y = _labels()
    x = np.random.default_rng(0).integers(0, 256, (len(y), 8, 8, 1), dtype=np.uint8)
    for strategy in ("random", "representative"):
        split, meta = make_split(_dcfg(split=strategy, split_seed=3), _ds(y, x))
        save_split(tmp_path / "split.npz", split, meta)
        again, meta2 = make_split(_dcfg(split=f"file:{tmp_path / 'split.npz'}"), _ds(y, x))
        assert all(np.array_equal(a, b) for a, b in zip(split, again))
        assert meta2["split_sha256"] == meta["split_sha256"] and meta2["labels_sha256"] == labels_hash(y)
        idx, read_meta = load_split(tmp_path / "split.npz")
        assert np.array_equal(idx, split.lb_idx) and read_meta == meta


def test_npy_and_text_index_files(tmp_path):
    y = _labels()
    want = split_labeled(y, 20, 4, seed=1)
    np.save(tmp_path / "idx.npy", want.lb_idx[::-1])  # order does not matter
    body = "# published split\n" + ", ".join(map(str, want.lb_idx[:10])) + "\n" + " ".join(map(str, want.lb_idx[10:]))
    (tmp_path / "idx.txt").write_text(body + "  # end\n")
    for name in ("idx.npy", "idx.txt"):
        got = split_labeled(y, 20, 4, seed=0, strategy=f"file:{tmp_path / name}")
        assert np.array_equal(got.lb_idx, want.lb_idx) and np.array_equal(got.ulb_idx, want.ulb_idx)


def test_bad_index_files_are_refused_by_name(tmp_path):
    y = _labels()
    good = split_labeled(y, 8, 4, seed=0).lb_idx
    cases = {
        "out.txt": (np.r_[good[:-1], 500], r"indices \[500\] lie outside the 126 training samples"),
        "dup.txt": (np.r_[good[:-1], good[0]], rf"indices \[{good[0]}\] appear more than once"),
        "few.txt": (good[:4], r"holds 4 labeled indices but --data.num_labels=8 asks for 8; use --data.num_labels=4"),
        "skew.txt": (np.flatnonzero(y == 0)[:8], r"per class are \[8, 0, 0, 0\], not class-balanced \(2 each\)"),
    }
    for name, (idx, msg) in cases.items():
        (tmp_path / name).write_text(" ".join(map(str, idx)))
        with pytest.raises(ValueError, match=rf"--data.split=file:.*{name}.*{msg}|--data.split=file:.*{name}: {msg}"):
            split_labeled(y, 8, 4, 0, strategy=f"file:{tmp_path / name}")
    (tmp_path / "word.txt").write_text("1 2 three")
    with pytest.raises(ValueError, match=r"word.txt: 'three' is not an integer index"):
        split_labeled(y, 8, 4, 0, strategy=f"file:{tmp_path / 'word.txt'}")
    np.save(tmp_path / "float.npy", good.astype(np.float32))
    with pytest.raises(ValueError, match=r"float.npy holds float32\[8\]; it must be a 1-d list of integer indices"):
        split_labeled(y, 8, 4, 0, strategy=f"file:{tmp_path / 'float.npy'}")
    with pytest.raises(ValueError, match=r"file:.*missing.txt: no such file"):
        split_labeled(y, 8, 4, 0, strategy=f"file:{tmp_path / 'missing.txt'}")
    (tmp_path / "torn.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match="torn.npz is unreadable"):
        split_labeled(y, 8, 4, 0, strategy=f"file:{tmp_path / 'torn.npz'}")


def test_run_split_of_other_labels_is_refused(tmp_path):
    y = _labels()
    split, meta = make_split(_dcfg(num_labels=8), _ds(y))
    save_split(tmp_path / "split.npz", split, meta)
    other = y.copy()
    other[[0, 1]] = (y[0] + 1) % 4, y[0]
    with pytest.raises(ValueError, match=r"split.npz was saved for other training labels .* dataset 'toy'"):
        make_split(_dcfg(num_labels=8, split=f"file:{tmp_path / 'split.npz'}"), _ds(other))


# ---------------------------------------------------------------------------------- features and meta
def test_meta_states_strategy_and_parameters(tmp_path):
    y = _labels()
    x = np.random.default_rng(0).integers(0, 256, (len(y), 40, 40, 3), dtype=np.uint8)
    _, meta = make_split(_dcfg(split="random", split_seed=5), _ds(y, x))
    assert meta["split"] == "random" and meta["seed"] == 5 and meta["labels_sha256"] == labels_hash(y)
    split, meta = make_split(_dcfg(split="unrepresentative"), _ds(y, x))
    assert "seed" not in meta and meta["features"] == "pixels/255, 2x2 box mean → 20x20"
    assert np.array_equal(split.lb_idx, split_labeled(y, 20, 4, 0, strategy="unrepresentative",
                                                      features=pixel_features(x)).lb_idx)
    feats = _features(len(y))
    np.save(tmp_path / "f.npy", feats)
    split, meta = make_split(_dcfg(split="representative", split_features=str(tmp_path / "f.npy")), _ds(y))
    assert meta["features"].startswith(f"file:{tmp_path / 'f.npy'} sha256 ")
    assert np.array_equal(split.lb_idx, _naive_pick(feats, y, 5, False))


def test_feature_errors_name_the_fix(tmp_path):
    y = _labels()
    with pytest.raises(ValueError, match=r"on toy \(image files\) needs --data.split_features=PATH.npy: \(126, D\)"):
        make_split(_dcfg(split="representative"), _ds(y))
    np.save(tmp_path / "short.npy", np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"short.npy has shape \(10, 3\); it needs \(126, D\)"):
        make_split(_dcfg(split="representative", split_features=str(tmp_path / "short.npy")), _ds(y))
    with pytest.raises(ValueError, match=r"nope.npy is not a readable .npy"):
        make_split(_dcfg(split="representative", split_features=str(tmp_path / "nope.npy")), _ds(y))


def test_config_validates_the_split_options():
    for bad, msg in [({"data.split": "medoid"}, "use random, representative, unrepresentative or file:PATH"),
                     ({"data.split_features": "f.npy"}, "used only by --data.split=representative")]:
        cfg = Config()
        apply_overrides(cfg, bad)
        with pytest.raises(ValueError, match=msg):
            cfg.validate()
    cfg = Config()
    apply_overrides(cfg, {"data.split": "file:runs/x/split.npz"})
    cfg.validate()


# ------------------------------------------------------------------------------------------- on resume
def test_check_same_split_names_what_differs():
    y = _labels()
    split, meta = make_split(_dcfg(num_labels=8), _ds(y))
    saved = split_state(split, meta)
    check_same_split(saved, split, dict(meta), "checkpoint c.pt")  # identical: passes
    relabeled = y.copy()
    i = split.lb_idx[0]
    relabeled[i] = (y[i] + 1) % 4
    with pytest.raises(ValueError) as e:
        check_same_split(saved, *make_split(_dcfg(num_labels=8), _ds(relabeled)), "checkpoint c.pt")
    msg = str(e.value)
    assert "differs from the one checkpoint c.pt was trained on" in msg and "labels_sha256: checkpoint c.pt" in msg
    other, other_meta = make_split(_dcfg(num_labels=8, split_seed=1), _ds(y))
    with pytest.raises(ValueError) as e:
        check_same_split(saved, other, other_meta, "checkpoint c.pt")
    gone = np.setdiff1d(split.lb_idx, other.lb_idx).tolist()
    assert f"only in the checkpoint's split: {gone}" in str(e.value) and "split_sha256" in str(e.value)
    same_idx = split._replace(lb_y=(split.lb_y + 1) % 4)
    with pytest.raises(ValueError) as e:
        check_same_split(saved, same_idx, meta, "checkpoint c.pt")
    assert (f"labels of labeled samples {split.lb_idx.tolist()}: checkpoint {split.lb_y.tolist()}, "
            f"now {same_idx.lb_y.tolist()}") in str(e.value)
