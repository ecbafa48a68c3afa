"""Writers of tiny datasets in the exact official on-disk formats, for the reader tests.

Each writer follows the format's published description (independently of the reader under test) and
returns the NHWC uint8 images and int64 labels the reader must give back.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np


def rand_images(rng, n, h, w, c):
    return rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def cifar_row(img: np.ndarray) -> np.ndarray:
    """One CIFAR row by the format's definition: 1024 red bytes, then green, then blue, each plane
    row-major over the 32x32 image (so byte c*1024 + 32*h + w is pixel (h, w) of channel c)."""
    row = np.empty(3072, np.uint8)
    for c in range(3):
        for h in range(32):
            for w in range(32):
                row[c * 1024 + 32 * h + w] = img[h, w, c]
    return row


def _dump(obj, path: Path):
    # Python 3 protocol 2: bytes go through _codecs.encode (how a re-pickled batch looks).
    path.write_bytes(pickle.dumps(obj, protocol=2))


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes (SHORT_BINSTRING/BINSTRING), as cPickle did for the
    official CIFAR batches; under encoding="latin1" they load back as Python 3 str."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def dump_py2(obj, path: Path):
    """A pickle as the official (Python 2, numpy 1) CIFAR batches are: byte strings as py2 str and
    arrays rebuilt through numpy.core.multiarray (numpy 2 renamed it numpy._core)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue().replace(b"cnumpy._core.", b"cnumpy.core."))


def write_cifar10(root: Path, rng, per_batch=(3, 2, 2, 3, 2), n_test=4):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    xs, ys = [], []
    for i, n in enumerate(list(per_batch) + [n_test]):
        x = rand_images(rng, n, 32, 32, 3)
        y = rng.integers(0, 10, n).tolist()
        name = f"data_batch_{i + 1}" if i < 5 else "test_batch"
        rows = np.stack([cifar_row(im) for im in x])
        dump_py2({b"batch_label": name.encode(), b"labels": y, b"data": rows,
               b"filenames": [f"{j}.png".encode() for j in range(n)]}, d / name)
        xs.append(x)
        ys.append(np.asarray(y, np.int64))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    dump_py2({b"label_names": names, b"num_cases_per_batch": 10000, b"num_vis": 3072}, d / "batches.meta")
    return (np.concatenate(xs[:5]), np.concatenate(ys[:5])), (xs[5], ys[5]), d


def write_cifar100(root: Path, rng, n_train=5, n_test=3):
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    out = []
    for name, n in (("train", n_train), ("test", n_test)):
        x = rand_images(rng, n, 32, 32, 3)
        fine = rng.integers(0, 100, n).tolist()
        _dump({b"filenames": [b"x.png"] * n, b"batch_label": name.encode(), b"fine_labels": fine,
               b"coarse_labels": [f // 5 for f in fine], b"data": np.stack([cifar_row(im) for im in x])},
              d / name)
        out.append((x, np.asarray(fine, np.int64)))
    _dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
           b"coarse_label_names": [f"s{i}".encode() for i in range(20)]}, d / "meta")
    return out[0], out[1], d


def make_targz(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return dest


def write_svhn_mat(path: Path, rng, n):
    """The official cropped-digits .mat: X uint8 (32, 32, 3, N), y uint8 (N, 1) with 10 for digit 0."""
    import scipy.io

    x = rand_images(rng, n, 32, 32, 3)
    digits = np.arange(n) % 10  # every digit, 0 included
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
    scipy.io.savemat(path, {"X": np.ascontiguousarray(x.transpose(1, 2, 3, 0)), "y": y})
    return x, digits.astype(np.int64)


def stl_bytes(x: np.ndarray) -> bytes:
    """STL-10 binary by definition: per image, per channel, the 96x96 plane in column-major order
    (byte c*9216 + 96*col + row is pixel (row, col) of channel c)."""
    n = len(x)
    out = np.empty((n, 3 * 96 * 96), np.uint8)
    rows, cols = np.meshgrid(np.arange(96), np.arange(96), indexing="ij")
    for c in range(3):
        out[:, c * 9216 + 96 * cols + rows] = x[:, rows, cols, c]
    return out.tobytes()


def write_stl10(root: Path, rng, n_train=4, n_test=3, n_unlabeled=5):
    d = root / "stl10_binary"
    d.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rand_images(rng, n, 96, 96, 3)
        y = np.arange(n) % 10  # 0-based truth
        (d / f"{split}_X.bin").write_bytes(stl_bytes(x))
        (d / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())  # stored 1..10
        out[split] = (x, y.astype(np.int64))
    u = rand_images(rng, n_unlabeled, 96, 96, 3)
    (d / "unlabeled_X.bin").write_bytes(stl_bytes(u))
    (d / "class_names.txt").write_text("\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse",
                                                  "monkey", "ship", "truck"]) + "\n")
    return out["train"], out["test"], u, d


def idx_bytes(arr: np.ndarray) -> bytes:
    """idx format: magic 0x0000_08_<ndim> (uint8 data), big-endian uint32 dims, then the bytes."""
    return struct.pack(">I", 0x800 + arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_mnist(root: Path, rng, n_train=6, n_test=4, gz=True):
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
            data = idx_bytes(arr)
            if gz:
                (root / (stem + ".gz")).write_bytes(gzip.compress(data))
            else:
                (root / stem).write_bytes(data)
        out.append((x[..., None], y.astype(np.int64)))
    return out[0], out[1]
