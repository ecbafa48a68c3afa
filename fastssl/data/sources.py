"""Dataset readers: official on-disk formats → uint8 NHWC arrays + int64 labels. Nothing is downloaded.

One entry point, `load_dataset(name, root, **opts) -> Dataset`. Every reader either returns a complete
`Dataset` or raises `DatasetError` (a ValueError) whose message names the files and layout it expected,
what it found, and how to fix it. Readers never leave a half-filled Dataset behind.

Normalization statistics (`mean`, `std`) are per channel in [0, 1] units (multiply by 255 for uint8
pixels). For CIFAR/SVHN/STL-10 they are the values USB and TorchSSL use, so published numbers stay
comparable; MNIST's are the customary 0.1307/0.3081; image folders get ImageNet's; `digits` and `npz`
compute theirs exactly from the training images (a per-channel histogram, so no float copy of the data).
"""
from __future__ import annotations

import functools
import gzip
import inspect
import io
import os
import pickle
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastssl.data.registry import DATASETS

__all__ = ["Dataset", "DatasetError", "DATASETS", "load_dataset"]


class DatasetError(ValueError):
    """A dataset is missing, truncated, corrupt or laid out wrongly; the message says how to fix it."""


@dataclass
class Dataset:
    """A loaded dataset. Array datasets fill `*_x`; image-folder datasets fill `*_files` instead."""

    name: str
    """registry name ("cifar10", ...)"""
    train_x: np.ndarray | None = field(repr=False)
    """(N, H, W, C) uint8 training images (the labeled pool), or None for file datasets"""
    train_y: np.ndarray = field(repr=False)
    """(N,) int64 training labels in [0, num_classes)"""
    test_x: np.ndarray | None = field(repr=False)
    """(M, H, W, C) uint8 test images, or None for file datasets"""
    test_y: np.ndarray = field(repr=False)
    """(M,) int64 test labels"""
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    """(H, W) of the stored images; for image folders, the size the pipeline resizes/crops to"""
    mean: tuple[float, ...]
    """per-channel mean in [0, 1] units"""
    std: tuple[float, ...]
    """per-channel std in [0, 1] units"""
    class_names: list[str]
    extra_unlabeled_x: np.ndarray | None = field(default=None, repr=False)
    """(K, H, W, C) uint8 images with no labels that join the unlabeled set (STL-10's 100k unlabeled as
    a read-only memmap view, SVHN's extra), or None"""
    train_files: list[str] | None = field(default=None, repr=False)
    """image-folder datasets: absolute paths, sorted by (class, file name), aligned with train_y"""
    test_files: list[str] | None = field(default=None, repr=False)

    @property
    def num_train(self) -> int:
        return len(self.train_y)

    @property
    def num_test(self) -> int:
        return len(self.test_y)


# ---------------------------------------------------------------------------------------------- helpers

def _fail(what: str, root: Path | str, found: str | None = None, fix: str = "") -> DatasetError:
    msg = f"{what} (looked in {root})"
    if found is not None:
        msg += f"; found: {found}"
    if fix:
        msg += f". {fix}"
    return DatasetError(msg)


def _listing(path: Path, limit: int = 12) -> str:
    """A short, sorted listing of a folder for error messages."""
    if not path.exists():
        return "nothing (the path does not exist)"
    if not path.is_dir():
        return f"a file, {path.name}"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not names:
        return "an empty folder"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std in [0, 1] units from a uint8 NHWC array, via 256-bin histograms."""
    c = x.shape[-1]
    hist = np.zeros((c, 256), dtype=np.int64)
    for i in range(0, len(x), chunk):
        block = np.asarray(x[i:i + chunk]).reshape(-1, c)
        for ch in range(c):
            hist[ch] += np.bincount(block[:, ch], minlength=256)
    v = np.arange(256, dtype=np.float64) / 255.0
    n = hist.sum(1)
    mean = (hist * v).sum(1) / n
    var = (hist * v**2).sum(1) / n - mean**2
    return tuple(float(m) for m in mean), tuple(float(s) for s in np.sqrt(np.maximum(var, 0.0)))


def _check_labels(y: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DatasetError(f"{where}: labels must lie in [0, {num_classes}), found {y.min()}..{y.max()}; "
                           "the file is corrupt or belongs to another dataset")
    return y


def _need_root(name: str, root, hint: str) -> Path:
    if root is None:
        raise DatasetError(f"{name} needs --data.root: point it at {hint}")
    return Path(root).expanduser()


# ---------------------------------------------------------------------------------------------- digits

def _load_digits(root=None, split_seed: int = 0, test_size: int = 450) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, 0..16), the offline default.

    Pixels are scaled to 0..255 (v * 255 / 16, rounded) and upscaled 2x by NEAREST neighbour to 16x16:
    each source pixel becomes an exact 2x2 block, so no values are invented and the result does not
    depend on an interpolation convention (align-corners etc.); the pipeline's own geometric
    augmentations smooth it anyway. Train/test is a seeded class-stratified split, 1347/450 by default
    (25% test, every class within one image of proportional), fixed by `split_seed`, independent of the
    labeled/unlabeled split seed so the test set stays the same across runs.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x8 = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8), 16 → 255
    x = x8.repeat(2, axis=1).repeat(2, axis=2)[..., None]  # (1797, 16, 16, 1)
    y = d.target.astype(np.int64)
    test_idx = _stratified_pick(y, test_size, split_seed)
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test_idx] = True
    train_x, test_x = x[~is_test], x[is_test]
    mean, std = _channel_stats(train_x)
    return Dataset("digits", train_x, y[~is_test], test_x, y[is_test], num_classes=10, channels=1,
                   image_size=(16, 16), mean=mean, std=std, class_names=[str(i) for i in range(10)])


def _stratified_pick(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k indices, per class proportional to its size (largest remainder so the total is exactly k)."""
    classes, counts = np.unique(y, return_counts=True)
    if not 0 < k < len(y):
        raise DatasetError(f"digits test_size={k} must lie in (0, {len(y)})")
    share = counts * k / len(y)
    take = np.floor(share).astype(np.int64)
    order = np.lexsort((classes, -(share - take)))  # largest remainder first, ties by class id
    take[order[: k - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(y == c), t, replace=False) for c, t in zip(classes, take)]
    return np.sort(np.concatenate(picked))


# ---------------------------------------------------------------------------------------------- CIFAR

_CIFAR = {
    # name: (folder, archive, train members, test members, meta file, label key, names key, classes)
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                "labels", "label_names", 10),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ["train"], ["test"], "meta",
                 "fine_labels", "fine_label_names", 100),
}
# USB / TorchSSL values (per-channel statistics of the training set), in [0, 1] units.
_CIFAR_STATS = {
    "cifar10": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    "cifar100": ((129.3 / 255, 124.1 / 255, 112.4 / 255), (68.2 / 255, 65.4 / 255, 70.4 / 255)),
}

_CIFAR_NAMES = {"cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                            "ship", "truck"]}  # for the npz layout, which carries no names


class _SafeUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickles; unpickling runs arbitrary code, so allow only what they contain:
    numpy arrays (and the latin-1 bytes helper that Python 3 pickles of bytes use)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a CIFAR batch)")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core"):]  # numpy 2 renamed the module
        return super().find_class(module, name)


def _unpickle(raw: bytes, where: str, expected: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="latin1").load()  # Python 2 pickles
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt/foreign file
        raise DatasetError(f"{where} is not a readable CIFAR pickle batch ({type(e).__name__}: {e}); "
                           f"expected {expected}. Re-extract the official archive") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{where} holds a {type(obj).__name__}, not a CIFAR batch dict; expected {expected}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_members(root: Path, folder: str, archive: str, names: list[str]) -> tuple[dict, str]:
    """Raw bytes of each needed member, from the folder, its parent, or the .tar.gz."""
    expected = (f"{folder}/{{{', '.join(names)}}} under {root} (the official python version, {archive}); "
                f"--data.root may be the {folder} folder, its parent, or {archive} itself")
    for cand in (root, root / folder):
        if cand.is_dir() and all((cand / n).is_file() for n in names):
            return {n: (cand / n).read_bytes() for n in names}, expected
    tgz = root if root.is_file() else root / archive
    if tgz.is_file():
        return _read_tar_members(tgz, folder, names, expected), expected
    raise DatasetError(f"expected {expected}; found: {_listing(root)}")


def _read_tar_members(tgz: Path, folder: str, names: list[str], expected: str) -> dict:
    out = {}
    try:
        with tarfile.open(tgz, "r:*") as tar:
            for m in tar:  # one sequential pass: a gzip stream cannot seek cheaply
                base = m.name.rsplit("/", 1)
                if m.isfile() and len(base) == 2 and base[0].endswith(folder) and base[1] in names:
                    out[base[1]] = tar.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DatasetError(f"{tgz} is not a readable .tar.gz ({type(e).__name__}: {e}); expected "
                           f"{expected}. Download it again (it may be truncated)") from None
    missing = [n for n in names if n not in out]
    if missing:
        raise DatasetError(f"{tgz} lacks {folder}/{', '.join(missing)}; expected {expected}")
    return out


def _cifar_split(members: dict, names: list[str], label_key: str, num_classes: int, expected: str):
    xs, ys = [], []
    for n in names:
        b = _unpickle(members[n], n, expected)
        if "data" not in b or label_key not in b:
            raise DatasetError(f"{n} has keys {sorted(b)}, expected 'data' and '{label_key}'; expected {expected}")
        data, y = np.asarray(b["data"]), np.asarray(b[label_key])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(y) != len(data):
            raise DatasetError(f"{n}: 'data' is {data.dtype}{data.shape} with {len(y)} labels, expected "
                               f"uint8 (n, 3072) with n labels; the file is corrupt or not {expected}")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # rows are R(1024) G B planes
        ys.append(_check_labels(y, num_classes, n))
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def _load_cifar(name: str, root) -> Dataset:
    folder, archive, train_n, test_n, meta_n, label_key, names_key, k = _CIFAR[name]
    root = _need_root(name, root, f"the folder holding {folder}/ or {archive}")
    if root.suffix == ".npz":  # the shared benchmark layout
        ds = _load_npz(root, num_classes=k)
        if ds.train_x.shape[1:] != (32, 32, 3):
            raise DatasetError(f"{root} holds {ds.train_x.shape[1:]} images; {name} needs (32, 32, 3)")
        mean, std = _CIFAR_STATS[name]
        return Dataset(name, ds.train_x, ds.train_y, ds.test_x, ds.test_y, k, 3, (32, 32), mean, std,
                       _CIFAR_NAMES.get(name, ds.class_names))
    members, expected = _cifar_members(root, folder, archive, train_n + test_n + [meta_n])
    meta = _unpickle(members[meta_n], meta_n, expected)
    class_names = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(names_key, [])]
    if len(class_names) != k:
        raise DatasetError(f"{meta_n} lists {len(class_names)} '{names_key}', expected {k}; expected {expected}")
    train_x, train_y = _cifar_split(members, train_n, label_key, k, expected)
    test_x, test_y = _cifar_split(members, test_n, label_key, k, expected)
    mean, std = _CIFAR_STATS[name]
    return Dataset(name, train_x, train_y, test_x, test_y, k, 3, (32, 32), mean, std, class_names)



# ---------------------------------------------------------------------------------------------- SVHN

def _read_svhn_mat(path: Path, expected: str) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except Exception as e:  # noqa: BLE001 - scipy raises many types for bad files
        raise DatasetError(f"{path} is not a readable MATLAB file ({type(e).__name__}: {e}); expected "
                           f"{expected}. Download it again (it may be truncated)") from None
    if "X" not in mat or "y" not in mat:
        raise DatasetError(f"{path} has variables {sorted(k for k in mat if not k.startswith('__'))}, "
                           f"expected 'X' (32, 32, 3, N) and 'y' (N, 1); expected {expected}")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise DatasetError(f"{path}: X is {x.dtype}{x.shape} with {len(y)} labels, expected uint8 "
                           f"(32, 32, 3, N) with N labels; expected {expected}")
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise DatasetError(f"{path}: labels must lie in 1..10 (10 means digit 0), found {y.min()}..{y.max()}")
    y = y.astype(np.int64) % 10  # the official files store digit 0 as label 10
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), y  # (32, 32, 3, N) → (N, 32, 32, 3)


def _load_svhn(root, extra: bool = False) -> Dataset:
    """SVHN cropped digits. `extra=True` adds extra_32x32.mat (531k images) as unlabeled-only data, as
    FixMatch does; it is read eagerly (scipy cannot memory-map .mat), about 1.6 GB."""
    root = _need_root("svhn", root, "the folder holding train_32x32.mat and test_32x32.mat")
    want = ["train_32x32.mat", "test_32x32.mat"] + (["extra_32x32.mat"] if extra else [])
    expected = (f"{', '.join(want)} (the official 'cropped digits' .mat files) in {root}"
                + ("" if extra else "; extra_32x32.mat only with extra=True"))
    base = root / "svhn" if not (root / want[0]).exists() and (root / "svhn" / want[0]).exists() else root
    missing = [n for n in want if not (base / n).is_file()]
    if missing:
        raise DatasetError(f"missing {', '.join(missing)}; expected {expected}; found: {_listing(root)}")
    train_x, train_y = _read_svhn_mat(base / want[0], expected)
    test_x, test_y = _read_svhn_mat(base / want[1], expected)
    extra_x = _read_svhn_mat(base / want[2], expected)[0] if extra else None
    return Dataset("svhn", train_x, train_y, test_x, test_y, 10, 3, (32, 32),
                   (0.4380, 0.4440, 0.4730), (0.1751, 0.1771, 0.1744), [str(i) for i in range(10)],
                   extra_unlabeled_x=extra_x)


# ---------------------------------------------------------------------------------------------- STL-10

_STL_IMG = 3 * 96 * 96


def _stl_images(path: Path, expected: str, lazy: bool) -> np.ndarray:
    size = path.stat().st_size
    if size == 0 or size % _STL_IMG:
        raise DatasetError(f"{path} has {size} bytes, not a positive multiple of 3*96*96={_STL_IMG}; it is "
                           f"truncated or corrupt. Expected {expected}")
    n = size // _STL_IMG
    raw = np.memmap(path, np.uint8, "r", shape=(n, 3, 96, 96)) if lazy else \
        np.fromfile(path, np.uint8).reshape(n, 3, 96, 96)
    # Each image is stored channel by channel, each channel column-major (MATLAB order): axes (C, W, H).
    x = raw.transpose(0, 3, 2, 1)  # (N, C, W, H) → (N, H, W, C)
    return x if lazy else np.ascontiguousarray(x)


def _stl_labels(path: Path, n: int, expected: str) -> np.ndarray:
    y = np.fromfile(path, np.uint8)
    if len(y) != n:
        raise DatasetError(f"{path} holds {len(y)} labels but its images file holds {n} images; one of "
                           f"them is truncated. Expected {expected}")
    if n and (y.min() < 1 or y.max() > 10):
        raise DatasetError(f"{path}: labels must lie in 1..10, found {y.min()}..{y.max()}")
    return y.astype(np.int64) - 1


def _load_stl10(root, unlabeled: bool = True) -> Dataset:
    """STL-10 binary. The 100k unlabeled images (2.7 GB) are a read-only memmap view, never loaded."""
    root = _need_root("stl10", root, "the stl10_binary folder or its parent")
    want = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"] + (["unlabeled_X.bin"] if unlabeled else [])
    expected = (f"stl10_binary/{{{', '.join(want)}}} (the official binary version: extract "
                "stl10_binary.tar.gz; the 2.7 GB unlabeled file is memory-mapped, so it must be a plain file)")
    base = root if (root / want[0]).exists() else root / "stl10_binary"
    missing = [n for n in want if not (base / n).is_file()]
    if missing:
        hint = "; pass unlabeled=False to go without it" if missing == ["unlabeled_X.bin"] else ""
        raise DatasetError(f"missing {', '.join(missing)} in {base}{hint}; expected {expected} under {root}; "
                           f"found: {_listing(base if base.is_dir() else root)}")
    train_x = _stl_images(base / "train_X.bin", expected, lazy=False)
    train_y = _stl_labels(base / "train_y.bin", len(train_x), expected)
    test_x = _stl_images(base / "test_X.bin", expected, lazy=False)
    test_y = _stl_labels(base / "test_y.bin", len(test_x), expected)
    extra_x = _stl_images(base / "unlabeled_X.bin", expected, lazy=True) if unlabeled else None
    names_file = base / "class_names.txt"
    names = names_file.read_text().split() if names_file.is_file() else []
    return Dataset("stl10", train_x, train_y, test_x, test_y, 10, 3, (96, 96),
                   (112.4 / 255, 109.1 / 255, 98.6 / 255), (68.4 / 255, 66.6 / 255, 68.5 / 255),
                   names if len(names) == 10 else [str(i) for i in range(10)], extra_unlabeled_x=extra_x)


# ---------------------------------------------------------------------------------------------- MNIST

_IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}  # unsigned byte data, 1-d (labels) / 3-d (images)


def _read_idx(path: Path, ndim: int, expected: str) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path} is not a readable gzip file ({type(e).__name__}: {e}); expected "
                           f"{expected}. Download it again (it may be truncated)") from None
    head = 4 * (1 + ndim)
    if len(raw) < head or struct.unpack(">I", raw[:4])[0] != _IDX_MAGIC[ndim]:
        got = f"0x{struct.unpack('>I', raw[:4])[0]:08x}" if len(raw) >= 4 else "too short"
        raise DatasetError(f"{path}: idx magic is {got}, expected 0x{_IDX_MAGIC[ndim]:08x} (uint8, "
                           f"{ndim}-d); expected {expected}")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    if len(raw) != head + int(np.prod(dims)):
        raise DatasetError(f"{path}: header says {dims} = {head + int(np.prod(dims))} bytes, file has "
                           f"{len(raw)}; it is truncated or corrupt. Expected {expected}")
    return np.frombuffer(raw, np.uint8, offset=head).reshape(dims)


def _load_mnist(root) -> Dataset:
    root = _need_root("mnist", root, "the folder holding the four official idx files")
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte"]
    expected = f"{', '.join(stems)} (each raw or .gz, the official idx files) in {root}"
    paths = []
    for stem in stems:
        cands = [d / (stem + ext) for d in (root, root / "MNIST" / "raw", root / "mnist") for ext in ("", ".gz")]
        hit = next((p for p in cands if p.is_file()), None)
        if hit is None:
            raise DatasetError(f"missing {stem}[.gz]; expected {expected}; found: {_listing(root)}")
        paths.append(hit)
    xs, ys = [], []
    for img, lab in (paths[:2], paths[2:]):
        x, y = _read_idx(img, 3, expected), _read_idx(lab, 1, expected)
        if len(x) != len(y):
            raise DatasetError(f"{img.name} holds {len(x)} images but {lab.name} {len(y)} labels; "
                               f"expected {expected}")
        xs.append(np.ascontiguousarray(x[..., None]))  # grayscale → (N, 28, 28, 1)
        ys.append(_check_labels(y, 10, lab.name))
    hw = xs[0].shape[1:3]
    return Dataset("mnist", xs[0], ys[0], xs[1], ys[1], 10, 1, (int(hw[0]), int(hw[1])),
                   (0.1307,), (0.3081,), [str(i) for i in range(10)])


# ---------------------------------------------------------------------------------------------- npz

def _load_npz(root, num_classes: int | None = None) -> Dataset:
    """Any .npz with uint8 x_train/x_test ((N,H,W,C) or (N,H,W)) and integer y_train/y_test."""
    root = _need_root("npz", root, "a .npz file with x_train, y_train, x_test, y_test")
    path = root
    if root.is_dir():
        found = sorted(root.glob("*.npz"))
        if len(found) != 1:
            raise DatasetError(f"{root} holds {len(found)} .npz files; point --data.root at the file itself")
        path = found[0]
    keys = ("x_train", "y_train", "x_test", "y_test")
    expected = f"a .npz with uint8 {keys[0]} (N,H,W[,C]), int {keys[1]} (N,), {keys[2]}, {keys[3]}"
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; expected {expected}")
    try:
        # our own handle: np.load leaks the one it opens when the zip is damaged
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise DatasetError(f"{path} lacks {missing} (has {z.files}); expected {expected}")
            arr = {k: z[k] for k in keys + (("class_names",) if "class_names" in z.files else ())}
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - zip/format errors of a damaged file
        raise DatasetError(f"{path} is not a readable .npz ({type(e).__name__}: {e}); expected {expected}") from None
    xs = []
    for k, yk in (("x_train", "y_train"), ("x_test", "y_test")):
        x = arr[k][..., None] if arr[k].ndim == 3 else arr[k]
        if arr[yk].ndim == 2 and arr[yk].shape[1] == 1:
            arr[yk] = arr[yk][:, 0]  # Keras-style (N, 1) labels
        if (x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(arr[yk]) or arr[yk].ndim != 1
                or not np.issubdtype(arr[yk].dtype, np.integer)):
            raise DatasetError(f"{path}: {k} is {arr[k].dtype}{arr[k].shape}, {yk} {arr[yk].shape}; "
                               f"expected {expected} with equal lengths")
        xs.append(x)
    if xs[0].shape[1:] != xs[1].shape[1:]:
        raise DatasetError(f"{path}: train images are {xs[0].shape[1:]}, test {xs[1].shape[1:]}; they must match")
    k = num_classes or int(max(arr["y_train"].max(initial=0), arr["y_test"].max(initial=0))) + 1
    ytr, yte = _check_labels(arr["y_train"], k, "y_train"), _check_labels(arr["y_test"], k, "y_test")
    names = [str(c) for c in arr["class_names"]] if "class_names" in arr else [str(i) for i in range(k)]
    mean, std = _channel_stats(xs[0])
    h, w, c = xs[0].shape[1:]
    return Dataset("npz", xs[0], ytr, xs[1], yte, k, int(c), (int(h), int(w)), mean, std, names)


# ---------------------------------------------------------------------------------------------- folders

_IMG_EXT = {".jpg", ".jpeg", ".png"}


def _scan_split(split_dir: Path, class_names: list[str]) -> tuple[list[str], np.ndarray]:
    files, labels = [], []
    split_dir = split_dir.resolve()  # once, not per file: ImageNet has 1.28M of them
    for label, cls in enumerate(class_names):
        cdir = split_dir / cls
        if not cdir.is_dir():
            continue  # a test split may lack a class
        with os.scandir(cdir) as it:  # scandir's is_file() needs no extra stat per entry
            found = sorted(e.name for e in it if e.is_file() and not e.name.startswith(".")
                           and os.path.splitext(e.name)[1].lower() in _IMG_EXT)
        files += [os.path.join(cdir, f) for f in found]
        labels += [label] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def _check_images(files: list[str], root: str) -> None:
    """Every image file checked once (cached), before any training: a DatasetError names each bad one (the
    first 20, and how many in all)."""
    from fastssl.data.verify import verify_images

    bad = verify_images(files, root)
    if bad:
        shown = "\n  ".join(f"{f}: {r}" for f, r in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DatasetError(f"{len(bad)} unreadable image(s) under {root}; fix or remove them:\n  {shown}{more}")


def _load_imagefolder(root, image_size: tuple[int, int] | int = 224) -> Dataset:
    """root/train/<class>/*.jpg|jpeg|png and root/val/<class>/... (or test/). Returns sorted FILE lists;
    DALI decodes them. Classes are train's sub-folders in sorted order; labels index into them."""
    root = _need_root("imagefolder", root, "a folder with train/<class>/*.jpg and val/<class>/*.jpg")
    expected = (f"{root}/train/<class>/*.jpg|jpeg|png and {root}/val/<class>/... (or test/), one "
                "sub-folder per class")
    train_dir = root / "train"
    test_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DatasetError(f"expected {expected}; found: {_listing(root)}")
    class_names = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_names:
        raise DatasetError(f"{train_dir} has no class sub-folders; expected {expected}; found: {_listing(train_dir)}")
    unknown = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and p.name not in class_names)
    if unknown:
        raise DatasetError(f"{test_dir} has classes not in train/: {unknown}; both must use the same class names")
    train_files, train_y = _scan_split(train_dir, class_names)
    test_files, test_y = _scan_split(test_dir, class_names)
    empty = [c for i, c in enumerate(class_names) if not np.any(train_y == i)]
    if empty or not test_files:
        raise DatasetError(f"no .jpg/.jpeg/.png images in {', '.join(empty) or test_dir.name}; expected {expected}")
    _check_images(train_files + test_files, str(root))
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return Dataset("imagefolder", None, train_y, None, test_y, len(class_names), 3, size,
                   (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), class_names,
                   train_files=train_files, test_files=test_files)


# ---------------------------------------------------------------------------------------------- entry

_load_cifar10 = functools.partial(_load_cifar, "cifar10")
_load_cifar100 = functools.partial(_load_cifar, "cifar100")


def load_dataset(name: str, root: str | os.PathLike | None = None, **opts) -> Dataset:
    """Load dataset `name` from `root` (--data.name / --data.root) with its reader's keyword options (the
    reader's signature; `registry.DATASETS` says which `--data.*` fields feed them)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid --data.name values: {', '.join(DATASETS)}")
    reader = globals()[DATASETS[name].reader]
    valid = [p for p in inspect.signature(reader).parameters if p != "root"]
    bad = sorted(set(opts) - set(valid))
    if bad:
        raise DatasetError(f"{name} takes no option(s) {bad}; its options are: {valid or 'none'}")
    return reader(root, **opts)
