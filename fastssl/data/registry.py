"""Dataset registry: one entry per `--data.name`, plain data (no numpy, DALI or torch until a dataset is read).

Each entry holds everything the rest of the code needs to know about a dataset: its reader, whether a
horizontal flip is a valid augmentation, which `--data.*` options its reader takes, and the line that
`fastssl info` prints. `sources.load_dataset` reads through it, `data/build.py` takes the flip default and the
reader options from it, `config.py` checks `--data.name`/`--data.root` against it.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DatasetEntry:
    reader: str
    """"function" in fastssl.data.sources, called as reader(root, **options)"""
    summary: str
    """one line for `fastssl info`: contents, stored format, what --data.root points at"""
    flip: bool = True
    """horizontal flip is a valid augmentation (--aug.flip_prob unset: 0.5 if True, 0 if False); False for
    the digit datasets (digits, MNIST, SVHN): a mirrored digit is another digit or none"""
    options: dict[str, str] = field(default_factory=dict)
    """reader keyword ← `--data.<field>`; a field left at 0/False is not passed, so the reader's default holds"""
    needs_root: bool = True
    """False only for datasets that ship with an installed package (digits)"""


DATASETS: dict[str, DatasetEntry] = {
    "digits": DatasetEntry(
        "_load_digits", "scikit-learn's 8x8 digits upscaled to 16x16, 1347/450 train/test, 10 classes "
        "(the offline default; no files needed)", flip=False, needs_root=False),
    "mnist": DatasetEntry(
        "_load_mnist", "MNIST 28x28 grey, 60k/10k, 10 classes (the four idx files, raw or .gz)", flip=False),
    "cifar10": DatasetEntry(
        "_load_cifar10", "CIFAR-10 32x32 RGB, 50k/10k, 10 classes (python pickle batches, their folder or "
        "the .tar.gz; or a .npz)"),
    "cifar100": DatasetEntry(
        "_load_cifar100", "CIFAR-100 32x32 RGB, 50k/10k, 100 fine classes (python pickles, folder or .tar.gz)"),
    "svhn": DatasetEntry(
        "_load_svhn", "SVHN 32x32 RGB digits, 73k/26k, 10 classes (train/test_32x32.mat; --data.svhn_extra adds "
        "the 531k extra_32x32.mat images as unlabeled)", flip=False, options={"extra": "svhn_extra"}),
    "stl10": DatasetEntry(
        "_load_stl10", "STL-10 96x96 RGB, 5k/8k labeled in 10 classes + 100k unlabeled (stl10_binary; the 2.7 GB "
        "unlabeled file stays on disk, memory-mapped)"),
    "imagefolder": DatasetEntry(
        "_load_imagefolder", "JPEG/PNG files in train/<class>/ and val/<class>/ (or test/), decoded by DALI and "
        "resized to --data.image_size (required)", options={"image_size": "image_size"}),
    "npz": DatasetEntry(
        "_load_npz", "any .npz with uint8 x_train/x_test (N,H,W[,C]) and integer y_train/y_test"),
    "synthetic": DatasetEntry(
        "", "random pre-made batches on the device, no files and no DALI (--data.synthetic_*): times the "
        "trainer's step apart from the data path (fastssl/data/synthetic.py; build_data never calls a reader)",
        needs_root=False),
}
