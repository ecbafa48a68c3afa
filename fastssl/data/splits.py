"""Seeded, class-balanced labeled/unlabeled split of a training set, saved with the run.

Semantics follow USB (`split_ssl_data`): `num_labels` in total, `num_labels // num_classes` per class,
drawn without replacement; by default the unlabeled set is the WHOLE training set, labeled samples
included (USB's `include_lb_to_ulb=True`), as in FixMatch. The draw uses its own
`np.random.default_rng(seed)`, so nothing else's RNG state (torch, numpy's global, DALI) changes it.

Indices refer to the training set (`Dataset.train_y`). Data that never has labels (STL-10's unlabeled
images, SVHN extra: `Dataset.extra_unlabeled_x`) is not indexed here; the pipeline appends it after
`ulb_idx`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["Split", "split_labeled", "labels_hash", "save_split", "load_split", "split_for_run"]

SPLIT_FILE = "split.npz"
"""file name of the split inside a run directory"""


class Split(NamedTuple):
    lb_idx: np.ndarray
    """(L,) int64 sorted indices of the labeled samples"""
    ulb_idx: np.ndarray
    """(U,) int64 sorted indices of the unlabeled samples (all of them, or the complement of lb_idx)"""


def split_labeled(labels: np.ndarray, num_labels: int, num_classes: int, seed: int,
                  include_labeled_in_unlabeled: bool = True) -> Split:
    """Pick `num_labels // num_classes` samples of every class as the labeled set.

    num_labels = -1 (or the size of the training set) means fully supervised: every sample is labeled,
    and the unlabeled set is everything too (or empty with include_labeled_in_unlabeled=False).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-d integer array, got {labels.dtype}{labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels lie in {labels.min()}..{labels.max()}, outside [0, {num_classes}); "
                         f"--data.num_classes does not match the dataset")
    n = len(labels)
    if num_labels == -1 or num_labels == n:
        lb = np.arange(n, dtype=np.int64)
        return Split(lb, lb.copy() if include_labeled_in_unlabeled else np.empty(0, np.int64))
    if num_labels <= 0:
        raise ValueError(f"--data.num_labels={num_labels} must be positive, or -1 for fully supervised")
    if num_labels % num_classes:
        lo = num_labels // num_classes * num_classes
        raise ValueError(f"--data.num_labels={num_labels} is not divisible by {num_classes} classes; use a "
                         f"multiple of {num_classes} (e.g. {lo or num_classes} or {lo + num_classes})")
    per_class = num_labels // num_classes
    counts = np.bincount(labels, minlength=num_classes)
    short = np.flatnonzero(counts < per_class)
    if short.size:
        c = int(short[0])
        raise ValueError(f"class {c} has only {counts[c]} training samples but --data.num_labels={num_labels} "
                         f"asks for {per_class} per class; use --data.num_labels <= {counts.min() * num_classes}")
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(num_classes)]
    lb = np.sort(np.concatenate(picked)).astype(np.int64)
    if include_labeled_in_unlabeled:
        return Split(lb, np.arange(n, dtype=np.int64))
    rest = np.ones(n, dtype=bool)
    rest[lb] = False
    return Split(lb, np.flatnonzero(rest).astype(np.int64))


def labels_hash(labels: np.ndarray) -> str:
    """sha256 of the labels as little-endian int64: identifies the training set a split was made for."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


_META_KEYS = ("dataset", "num_labels", "seed", "labels_sha256")


def save_split(path: str | os.PathLike, split: Split, meta: dict) -> None:
    """Write the split as .npz (lb_idx, ulb_idx, meta as JSON). `meta` needs at least dataset,
    num_labels, seed and labels_sha256 (`labels_hash(train_y)`); more keys are kept."""
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"split meta lacks {missing}; give {', '.join(_META_KEYS)}")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")  # write then rename: a crash never leaves half a file
    np.savez(tmp, lb_idx=np.asarray(split.lb_idx, np.int64), ulb_idx=np.asarray(split.ulb_idx, np.int64),
             meta=np.array(json.dumps(meta, sort_keys=True)))
    os.replace(tmp, path)


def load_split(path: str | os.PathLike, labels: np.ndarray | None = None, **expected) -> tuple[Split, dict]:
    """Read a split written by `save_split`. With `labels`, their hash must equal the saved one and the
    indices must fit; every `expected` key (dataset=, num_labels=, seed=, ...) must equal the saved value.
    A mismatch raises ValueError: reusing a split made for other data would silently be wrong."""
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            split = Split(z["lb_idx"].astype(np.int64), z["ulb_idx"].astype(np.int64))
            meta = json.loads(str(z["meta"]))
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file
        raise ValueError(f"split file {path} is unreadable ({type(e).__name__}: {e}); delete it to draw "
                         "a new split") from None
    diff = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
    if labels is not None and meta["labels_sha256"] != labels_hash(labels):
        diff["labels_sha256"] = (meta["labels_sha256"][:12] + "…", labels_hash(labels)[:12] + "…")
    if diff:
        pretty = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"split file {path} was made for another setup ({pretty}); delete it to draw a new "
                         "split, or point the run at a fresh directory")
    if labels is not None and any(len(i) and i.max() >= len(labels) for i in split):
        raise ValueError(f"split file {path} indexes beyond the {len(labels)} training samples; delete it")
    return split, meta


def split_for_run(run_dir: str | os.PathLike, dataset: str, labels: np.ndarray, num_labels: int,
                  num_classes: int, seed: int, include_labeled_in_unlabeled: bool = True) -> Split:
    """The run's split: loaded (and checked) from run_dir/split.npz when present, else drawn and saved.
    A resumed run therefore trains on exactly the labeled set it started with."""
    path = Path(run_dir) / SPLIT_FILE
    meta = dict(dataset=dataset, num_labels=num_labels, seed=seed,
                include_labeled_in_unlabeled=include_labeled_in_unlabeled)
    if path.exists():
        return load_split(path, labels, **meta)[0]
    split = split_labeled(labels, num_labels, num_classes, seed, include_labeled_in_unlabeled)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_split(path, split, {**meta, "labels_sha256": labels_hash(labels), "num_classes": num_classes})
    return split
