"""Readers against tiny files written in the exact official formats (tests/_readers_formats.py): exact
pixel and label round trips, and DatasetError messages that name the expected layout."""
import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from _readers_formats import (idx_bytes, make_targz, rand_images, write_cifar10, write_cifar100,
                              write_mnist, write_stl10, write_svhn_mat)
from fastssl.data.sources import DATASETS, Dataset, DatasetError, load_dataset

SHARED = Path("/work/shared/data")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _same(ds_x, ds_y, x, y):
    assert ds_x.dtype == np.uint8 and ds_y.dtype == np.int64
    assert np.array_equal(np.asarray(ds_x), x) and np.array_equal(ds_y, y)


# ---------------------------------------------------------------------------------------------- digits

def test_digits_offline_default():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    assert (ds.num_train, ds.num_test, ds.image_size, ds.channels, ds.num_classes) == (1347, 450, (16, 16), 1, 10)
    assert ds.train_x.shape == (1347, 16, 16, 1) and ds.train_x.dtype == np.uint8
    # nearest 2x: every 2x2 block is constant, and downsampling gives the scaled sklearn pixels back
    for x in (ds.train_x, ds.test_x):
        for dy, dx in ((0, 1), (1, 0), (1, 1)):
            assert np.array_equal(x[:, ::2, ::2], x[:, dy::2, dx::2])
    src = load_digits()
    want = np.rint(src.images * 255 / 16).astype(np.uint8)
    got = np.concatenate([ds.train_x, ds.test_x])[:, ::2, ::2, 0]
    got_y = np.concatenate([ds.train_y, ds.test_y])
    key = lambda a, yy: sorted(zip(yy.tolist(), (im.tobytes() for im in a)))  # noqa: E731
    assert key(got, got_y) == key(want, src.target)
    assert ds.train_x.max() == 255  # 16 → 255
    # stratified: each class's test share within one image of proportional
    counts = np.bincount(src.target)
    assert np.all(np.abs(np.bincount(ds.test_y) - counts * 450 / 1797) < 1)
    # statistics computed from the training images
    f = ds.train_x.astype(np.float64) / 255
    assert np.allclose(ds.mean, [f.mean()]) and np.allclose(ds.std, [f.std()])
    again, other = load_dataset("digits"), load_dataset("digits", split_seed=1)
    assert np.array_equal(again.test_x, ds.test_x) and not np.array_equal(other.test_y, ds.test_y)


# ---------------------------------------------------------------------------------------------- CIFAR

def test_cifar10_folder_parent_and_targz(tmp_path, rng):
    (trx, try_), (tex, tey), folder = write_cifar10(tmp_path / "data", rng)
    tgz = make_targz(folder, tmp_path / "cifar-10-python.tar.gz")
    only_tgz = tmp_path / "dl"
    only_tgz.mkdir()
    os.link(tgz, only_tgz / tgz.name)
    raw = (folder / "data_batch_1").read_bytes()  # the fixture really is Python 2 / numpy 1 style
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw and pickle.SHORT_BINSTRING + b"\x04data" in raw
    for root in (folder, folder.parent, tgz, only_tgz):
        ds = load_dataset("cifar10", str(root))
        _same(ds.train_x, ds.train_y, trx, try_)
        _same(ds.test_x, ds.test_y, tex, tey)
        assert ds.train_x.flags.c_contiguous and ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"
        assert (ds.num_classes, ds.channels, ds.image_size) == (10, 3, (32, 32))
        assert np.allclose(ds.mean, (0.4914, 0.4824, 0.4467), atol=1e-3)


def test_cifar100_fine_labels_and_targz(tmp_path, rng):
    (trx, try_), (tex, tey), folder = write_cifar100(tmp_path, rng)
    tgz = make_targz(folder, tmp_path / "cifar-100-python.tar.gz")
    for root in (folder, tgz):
        ds = load_dataset("cifar100", root)
        _same(ds.train_x, ds.train_y, trx, try_)
        _same(ds.test_x, ds.test_y, tex, tey)
        assert ds.num_classes == 100 and ds.class_names[:2] == ["c0", "c1"]


def test_cifar_missing_files_names_layout(tmp_path, rng):
    _, _, folder = write_cifar10(tmp_path, rng)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match=r"data_batch_1.*test_batch.*cifar-10-python\.tar\.gz") as e:
        load_dataset("cifar10", tmp_path)
    assert "found: cifar-10-batches-py/" in str(e.value)
    with pytest.raises(DatasetError, match=r"cifar-100-python/\{train, test, meta\}"):
        load_dataset("cifar100", tmp_path / "nowhere")


@pytest.mark.parametrize("damage", ["truncate", "not_pickle", "bad_shape", "bad_label", "evil"])
def test_cifar_corrupt_batch(tmp_path, rng, damage):
    _, _, folder = write_cifar10(tmp_path, rng)
    f = folder / "data_batch_2"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:-100])
    elif damage == "not_pickle":
        f.write_bytes(b"\x00" * 64)
    elif damage in ("bad_shape", "bad_label"):
        b = pickle.loads(f.read_bytes(), encoding="latin1")  # a Python 2 pickle: str keys
        if damage == "bad_shape":
            b["data"] = b["data"][:, :3000]
        else:
            b["labels"][0] = 10
        f.write_bytes(pickle.dumps(b, protocol=2))
    else:  # a pickle that would run code must be refused, not executed
        class Evil:
            def __reduce__(self):
                return (os.system, ("touch " + str(tmp_path / "pwned"),))
        f.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    want = {"truncate": "data_batch_2 is not a readable CIFAR pickle", "not_pickle": "data_batch_2 is not a readable",
            "bad_shape": r"data_batch_2: 'data' is uint8\(2, 3000\)",
            "bad_label": r"data_batch_2: labels must lie in \[0, 10\)",
            "evil": r"refusing to load \w+\.system"}[damage]
    with pytest.raises(DatasetError, match=want):
        load_dataset("cifar10", folder)
    assert not (tmp_path / "pwned").exists()


def test_cifar_truncated_targz(tmp_path, rng):
    _, _, folder = write_cifar10(tmp_path / "d", rng)
    tgz = make_targz(folder, tmp_path / "cifar-10-python.tar.gz")
    tgz.write_bytes(tgz.read_bytes()[: tgz.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"not a readable \.tar\.gz.*cifar-10-batches-py"):
        load_dataset("cifar10", tgz)


# ---------------------------------------------------------------------------------------------- SVHN

def test_svhn_mat_round_trip_and_extra(tmp_path, rng):
    trx, try_ = write_svhn_mat(tmp_path / "train_32x32.mat", rng, 12)
    tex, tey = write_svhn_mat(tmp_path / "test_32x32.mat", rng, 5)
    ds = load_dataset("svhn", tmp_path)
    _same(ds.train_x, ds.train_y, trx, try_)  # includes label 10 → 0
    _same(ds.test_x, ds.test_y, tex, tey)
    assert ds.extra_unlabeled_x is None and 0 in ds.train_y.tolist()
    with pytest.raises(DatasetError, match="extra_32x32.mat"):
        load_dataset("svhn", tmp_path, extra=True)
    ex, _ = write_svhn_mat(tmp_path / "extra_32x32.mat", rng, 7)
    assert np.array_equal(load_dataset("svhn", tmp_path, extra=True).extra_unlabeled_x, ex)


def test_svhn_errors(tmp_path, rng):
    import scipy.io

    with pytest.raises(DatasetError, match=r"train_32x32\.mat, test_32x32\.mat"):
        load_dataset("svhn", tmp_path)
    write_svhn_mat(tmp_path / "train_32x32.mat", rng, 4)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8)})
    with pytest.raises(DatasetError, match=r"expected 'X' \(32, 32, 3, N\) and 'y'"):
        load_dataset("svhn", tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes((tmp_path / "train_32x32.mat").read_bytes()[:500])
    with pytest.raises(DatasetError, match="test_32x32.mat"):
        load_dataset("svhn", tmp_path)


# ---------------------------------------------------------------------------------------------- STL-10

def test_stl10_orientation_labels_and_lazy_unlabeled(tmp_path, rng):
    (trx, try_), (tex, tey), u, folder = write_stl10(tmp_path, rng)
    for root in (folder, tmp_path):
        ds = load_dataset("stl10", root)
        _same(ds.train_x, ds.train_y, trx, try_)
        _same(ds.test_x, ds.test_y, tex, tey)
        assert isinstance(ds.extra_unlabeled_x, np.memmap)  # lazy: a view of the file, not a copy
        assert ds.extra_unlabeled_x.shape == (5, 96, 96, 3) and np.array_equal(ds.extra_unlabeled_x, u)
        assert ds.class_names[7] == "monkey" and ds.image_size == (96, 96)
    # orientation pinned on a picture with a known shape: a bright top row, not a left column
    img = np.zeros((1, 96, 96, 3), np.uint8)
    img[0, 0, :, 0] = 255
    raw = np.zeros((3, 96, 96), np.uint8)
    raw[0, :, 0] = 255  # column-major: element (col, row); row 0 of every column
    (folder / "train_X.bin").write_bytes(raw.tobytes())
    (folder / "train_y.bin").write_bytes(bytes([3]))
    ds = load_dataset("stl10", folder, unlabeled=False)
    assert np.array_equal(ds.train_x, img) and ds.train_y.tolist() == [2] and ds.extra_unlabeled_x is None


def test_stl10_errors(tmp_path, rng):
    _, _, _, folder = write_stl10(tmp_path, rng)
    x = folder / "train_X.bin"
    x.write_bytes(x.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="multiple of 3\\*96\\*96.*truncated"):
        load_dataset("stl10", folder)
    x.write_bytes(x.read_bytes()[: 3 * 27648 - 10][: 3 * 27648 - 27648])  # 2 images, 4 labels
    with pytest.raises(DatasetError, match="4 labels but its images file holds 2"):
        load_dataset("stl10", folder)
    (folder / "unlabeled_X.bin").unlink()
    with pytest.raises(DatasetError, match="missing unlabeled_X.bin .*pass unlabeled=False"):
        load_dataset("stl10", folder)
    with pytest.raises(DatasetError, match=r"stl10_binary/\{train_X.bin"):
        load_dataset("stl10", tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- MNIST

@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_round_trip(tmp_path, rng, gz):
    (trx, try_), (tex, tey) = write_mnist(tmp_path, rng, gz=gz)
    ds = load_dataset("mnist", tmp_path)
    _same(ds.train_x, ds.train_y, trx, try_)
    _same(ds.test_x, ds.test_y, tex, tey)
    assert ds.train_x.shape == (6, 28, 28, 1) and ds.channels == 1 and ds.mean == (0.1307,)


def test_mnist_errors(tmp_path, rng):
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\[\.gz\].*t10k-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path)
    write_mnist(tmp_path, rng)
    lab = tmp_path / "train-labels-idx1-ubyte.gz"
    img = tmp_path / "train-images-idx3-ubyte.gz"
    good = img.read_bytes()
    img.write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8))))  # a labels file as images
    with pytest.raises(DatasetError, match="magic is 0x00000801, expected 0x00000803"):
        load_dataset("mnist", tmp_path)
    img.write_bytes(gzip.compress(gzip.decompress(good)[:-7]))
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset("mnist", tmp_path)
    img.write_bytes(good[:-20])
    with pytest.raises(DatasetError, match="not a readable gzip"):
        load_dataset("mnist", tmp_path)
    img.write_bytes(good)
    lab.write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8))))
    with pytest.raises(DatasetError, match="6 images but train-labels-idx1-ubyte.gz 5 labels"):
        load_dataset("mnist", tmp_path)


# ---------------------------------------------------------------------------------------------- npz

def test_npz_any_layout_and_as_cifar10(tmp_path, rng):
    trx, tex = rand_images(rng, 20, 32, 32, 3), rand_images(rng, 6, 32, 32, 3)
    try_, tey = np.arange(20) % 10, np.arange(6)
    np.savez(tmp_path / "c.npz", x_train=trx, y_train=try_, x_test=tex, y_test=tey, exact_train=np.ones(20, bool))
    ds = load_dataset("npz", tmp_path / "c.npz")
    _same(ds.train_x, ds.train_y, trx, try_)
    _same(ds.test_x, ds.test_y, tex, tey)
    f = trx.reshape(-1, 3).astype(np.float64) / 255
    assert np.allclose(ds.mean, f.mean(0)) and np.allclose(ds.std, f.std(0)) and ds.num_classes == 10
    assert load_dataset("npz", tmp_path).num_train == 20  # a folder with exactly one .npz
    c10 = load_dataset("cifar10", tmp_path / "c.npz")
    assert c10.name == "cifar10" and c10.class_names[0] == "airplane" and np.array_equal(c10.train_x, trx)
    gray = rand_images(rng, 4, 8, 8, 1)[..., 0]
    np.savez(tmp_path / "g.npz", x_train=gray, y_train=np.arange(4)[:, None], x_test=gray, y_test=np.arange(4))
    g = load_dataset("npz", tmp_path / "g.npz", num_classes=5)
    assert g.train_y.tolist() == [0, 1, 2, 3]
    assert g.train_x.shape == (4, 8, 8, 1) and g.num_classes == 5


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "a.npz", x_train=np.zeros((2, 4, 4, 3), np.uint8), y_train=np.zeros(2, int))
    with pytest.raises(DatasetError, match=r"lacks \['x_test', 'y_test'\]"):
        load_dataset("npz", tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", x_train=np.zeros((2, 4, 4, 3)), y_train=np.zeros(2, int),
             x_test=np.zeros((1, 4, 4, 3), np.uint8), y_test=np.zeros(1, int))
    with pytest.raises(DatasetError, match="x_train is float64"):
        load_dataset("npz", tmp_path / "b.npz")
    with pytest.raises(DatasetError, match="holds 2 .npz files"):
        load_dataset("npz", tmp_path)
    (tmp_path / "c.npz").write_bytes((tmp_path / "a.npz").read_bytes()[:50])
    with pytest.raises(DatasetError, match="not a readable .npz"):
        load_dataset("npz", tmp_path / "c.npz")


# ---------------------------------------------------------------------------------------------- folders

def test_imagefolder_sorted_file_lists(tmp_path):
    from PIL import Image

    px = np.zeros((5, 5, 3), np.uint8)
    layout = {"train": {"dog": ["b.jpg", "a.png", "c.JPEG"], "cat": ["z.jpg"]},
              "val": {"cat": ["1.png"], "dog": ["0.jpg"]}}
    for split, classes in layout.items():
        for cls, files in classes.items():
            (tmp_path / split / cls).mkdir(parents=True)
            for f in files:
                Image.fromarray(px).save(tmp_path / split / cls / f, format="PNG" if f.endswith("png") else "JPEG")
            (tmp_path / split / cls / "notes.txt").write_text("not an image")
            (tmp_path / split / cls / ".hidden.jpg").write_bytes(b"")
    ds = load_dataset("imagefolder", tmp_path, image_size=64)
    assert ds.class_names == ["cat", "dog"] and ds.train_x is None and ds.image_size == (64, 64)
    assert [Path(f).name for f in ds.train_files] == ["z.jpg", "a.png", "b.jpg", "c.JPEG"]
    assert ds.train_y.tolist() == [0, 1, 1, 1] and ds.train_y.dtype == np.int64
    assert [Path(f).name for f in ds.test_files] == ["1.png", "0.jpg"] and ds.test_y.tolist() == [0, 1]
    assert all(os.path.isabs(f) and os.path.isfile(f) for f in ds.train_files + ds.test_files)
    (tmp_path / "val").rename(tmp_path / "test")
    assert load_dataset("imagefolder", tmp_path).test_y.tolist() == [0, 1]
    (tmp_path / "test" / "bird").mkdir()
    with pytest.raises(DatasetError, match=r"classes not in train/: \['bird'\]"):
        load_dataset("imagefolder", tmp_path)
    with pytest.raises(DatasetError, match=r"train/<class>/\*\.jpg.*val/<class>"):
        load_dataset("imagefolder", tmp_path / "test")


# ---------------------------------------------------------------------------------------------- entry

def test_entry_point_errors(tmp_path):
    valid = "digits, mnist, cifar10, cifar100, svhn, stl10, imagefolder, npz"
    with pytest.raises(DatasetError, match=f"unknown dataset 'cifar11'; valid --data.name values: {valid}"):
        load_dataset("cifar11", tmp_path)
    with pytest.raises(DatasetError, match=r"svhn takes no option\(s\) \['extar'\]; its options are: \['extra'\]"):
        load_dataset("svhn", tmp_path, extar=True)
    with pytest.raises(DatasetError, match="cifar10 needs --data.root"):
        load_dataset("cifar10", None)
    assert isinstance(DatasetError("x"), ValueError) and set(DATASETS) >= {"digits", "npz"}
    assert "train_x" not in repr(load_dataset("digits"))  # arrays are kept out of the repr


# ---------------------------------------------------------------------------------------------- real data

@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="real MNIST not on this machine (/work/shared/data/mnist)")
def test_real_mnist_smoke():
    ds = load_dataset("mnist", SHARED / "mnist")
    assert ds.train_x.shape == (60000, 28, 28, 1) and ds.test_x.shape == (10000, 28, 28, 1)
    assert np.bincount(ds.train_y).tolist()[:2] == [5923, 6742]  # published per-digit counts
    assert abs(ds.train_x.mean() / 255 - 0.1307) < 1e-3


@pytest.mark.skipif(not (SHARED / "cifar10.npz").is_file(), reason="shared cifar10.npz not on this machine")
def test_real_cifar10_npz_smoke():
    ds = load_dataset("npz", SHARED / "cifar10.npz")
    assert ds.train_x.shape == (50000, 32, 32, 3) and np.bincount(ds.test_y).tolist() == [1000] * 10
    assert np.allclose(ds.mean, (0.4914, 0.4822, 0.4465), atol=2e-4)  # the published CIFAR-10 values
    assert np.allclose(ds.std, (0.2470, 0.2435, 0.2616), atol=2e-4)


# ---------------------------------------------------------------------------------------------- registry

def test_registry_entries_match_their_readers():
    """Each entry names a reader that exists, its options are that reader's keywords and `--data.*` fields."""
    import dataclasses
    import inspect

    from fastssl.config import DataConfig
    from fastssl.data import sources

    fields = {f.name for f in dataclasses.fields(DataConfig)}
    for name, entry in DATASETS.items():
        if name == "synthetic":  # built by fastssl.data.synthetic, never read from files
            assert entry.reader == "" and not entry.options
            continue
        params = inspect.signature(getattr(sources, entry.reader)).parameters
        assert "root" in params, name
        for kw, field in entry.options.items():
            assert kw in params and field in fields, (name, kw, field)
    assert [n for n, e in DATASETS.items() if not e.flip] == ["digits", "mnist", "svhn"]
    assert [n for n, e in DATASETS.items() if not e.needs_root] == ["digits", "synthetic"]
