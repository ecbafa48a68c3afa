"""The labeled/unlabeled split of a training set: chosen by a stated strategy, saved with the run, checked on resume.

Strategies (`--data.split`), all giving `num_labels // num_classes` labeled samples per class:
- `random` (default): a seeded draw without replacement per class, as USB's `split_ssl_data`. The draw uses
  its own `np.random.default_rng(seed)`, so nothing else's RNG state (torch, numpy's global, DALI) changes it.
- `representative` / `unrepresentative`: per class, the samples nearest to / farthest from the class medoid
  (the member with the least sum of Euclidean distances to its class), in the feature space of
  `pixel_features` or of a user-given (N, D) feature file. Deterministic; ties go to the lower index. This is
  the "representative vs non-representative labels" experiment of FixMatch's barely-supervised section.
- `file:PATH`: the labeled indices of a run's `split.npz`, a `.npy`, or a text file, checked against the data.

By default the unlabeled set is the WHOLE training set, labeled samples included (USB's
`include_lb_to_ulb=True`), as in FixMatch. Indices refer to the training set (`Dataset.train_y`). Data that
never has labels (STL-10's unlabeled images, SVHN extra: `Dataset.extra_unlabeled_x`) is not indexed here;
the pipeline appends it after `ulb_idx`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

__all__ = ["Split", "STRATEGIES", "split_labeled", "make_split", "pixel_features", "read_index_file",
           "labels_hash", "save_split", "load_split", "split_state", "check_same_split"]

SPLIT_FILE = "split.npz"
"""file name of the split inside a run directory"""

STRATEGIES = ("random", "representative", "unrepresentative")
"""the --data.split values besides file:PATH"""

FEATURE_SIDE = 32
"""pixel features are box-downscaled until neither side exceeds this (CIFAR-size images stay as they are)"""


class Split(NamedTuple):
    lb_idx: np.ndarray
    """(L,) int64 sorted indices of the labeled samples"""
    ulb_idx: np.ndarray
    """(U,) int64 sorted indices of the unlabeled samples (all of them, or the complement of lb_idx)"""
    lb_y: np.ndarray
    """(L,) int64 labels of the labeled samples (what a resume compares, with the indices)"""


Features = Callable[[np.ndarray], np.ndarray]
"""training indices (n,) → their (n, D) feature rows"""


def split_labeled(labels: np.ndarray, num_labels: int, num_classes: int, seed: int,
                  include_labeled_in_unlabeled: bool = True, *, strategy: str = "random",
                  features: Features | np.ndarray | None = None) -> Split:
    """The labeled set by `strategy` (see the module doc; `file:PATH` included), and the unlabeled set.

    num_labels = -1 (or the size of the training set) means fully supervised: every sample is labeled,
    and the unlabeled set is everything too (or empty with include_labeled_in_unlabeled=False).
    `features` (an (N, D) array or a function of indices) is needed by representative/unrepresentative.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-d integer array, got {labels.dtype}{labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        # num_classes comes from the dataset reader, not from an option: the label file itself is wrong.
        raise ValueError(f"training labels lie in {labels.min()}..{labels.max()}, outside the dataset's "
                         f"{num_classes} classes [0, {num_classes}); the files under --data.root are damaged or "
                         "not of the --data.name dataset")
    n = len(labels)
    lb = _pick(labels, num_labels, num_classes, seed, strategy, features)
    if include_labeled_in_unlabeled:
        ulb = np.arange(n, dtype=np.int64)
    else:
        rest = np.ones(n, dtype=bool)
        rest[lb] = False
        ulb = np.flatnonzero(rest).astype(np.int64)
    return Split(lb, ulb, labels[lb].astype(np.int64))


def _pick(labels: np.ndarray, num_labels: int, num_classes: int, seed: int, strategy: str,
          features: Features | np.ndarray | None) -> np.ndarray:
    """(L,) sorted int64 labeled indices by `strategy`."""
    if strategy.startswith("file:"):
        return read_index_file(strategy[5:], labels, num_labels, num_classes)
    if num_labels == -1 or num_labels == len(labels):
        return np.arange(len(labels), dtype=np.int64)
    per_class = _per_class(labels, num_labels, num_classes)
    if strategy == "random":
        rng = np.random.default_rng(seed)
        picked = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(num_classes)]
    elif strategy in ("representative", "unrepresentative"):
        if features is None:
            raise ValueError(f"--data.split={strategy} needs features; give --data.split_features=PATH.npy")
        get = features if callable(features) else (lambda idx, f=features: f[idx])
        picked = [_by_medoid(np.flatnonzero(labels == c), get, per_class, strategy == "unrepresentative")
                  for c in range(num_classes)]
    else:
        raise ValueError(f"--data.split={strategy!r}: use {', '.join(STRATEGIES)} or file:PATH")
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _per_class(labels: np.ndarray, num_labels: int, num_classes: int) -> int:
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
    return per_class


# ----------------------------------------------------------------------------------- representative picks
def _by_medoid(members: np.ndarray, features: Features, k: int, farthest: bool) -> np.ndarray:
    """The k members (sorted training indices of one class) nearest to / farthest from their medoid."""
    x = np.asarray(features(members), np.float64).reshape(len(members), -1)
    x -= x.mean(0)  # distances are unchanged; smaller norms lose less to cancellation in the fp32 screen
    d = _dist_to(x, _medoid(x))
    order = np.lexsort((members, -d if farthest else d))  # primary: distance; ties: the lower index
    return members[order[:k]]


def _dist_to(x: np.ndarray, i: int) -> np.ndarray:
    """(n,) fp64 Euclidean distances of every row of x to row i."""
    diff = x - x[i]
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


def _medoid(x: np.ndarray, chunk_bytes: int = 1 << 24) -> int:
    """Row of x (n, D) with the least sum of Euclidean distances to all rows; ties → the lowest row.

    The n² distances are screened in fp32 through the Gram matrix, a block of rows at a time (memory
    n·block, not n²); the decision among the near-best (within 1e-4 relative: the screen's sums were
    measured within 1.1e-6 of fp64 on centered noise, low-rank and digits data) is re-made with exact fp64
    sums, so the answer is the fp64 medoid.
    """
    n = len(x)
    x32 = x.astype(np.float32)
    sq = np.einsum("ij,ij->i", x32, x32)
    rows = max(1, chunk_bytes // (4 * n))
    sums = np.zeros(n)
    for a in range(0, n, rows):  # block of rows × columns a.. : the distance matrix is symmetric, half the flops
        b = min(a + rows, n)
        d2 = x32[a:b] @ x32[a:].T  # (b-a, n-a)
        d2 *= -2
        d2 += sq[a:b, None]
        d2 += sq[None, a:]
        np.maximum(d2, 0, out=d2)
        d = np.sqrt(d2, out=d2)
        sums[a:b] += d.sum(1, dtype=np.float64)  # pairs within the block, and with the rows after it
        sums[b:] += d[:, b - a:].sum(0, dtype=np.float64)  # the same pairs seen from the later rows
    near = np.flatnonzero(sums <= sums.min() * (1 + 1e-4) + 1e-6)
    return int(near[np.argmin([_dist_to(x, i).sum() for i in near])])


def pixel_features(x: np.ndarray) -> np.ndarray:
    """(n, H, W[, C]) uint8 images → (n, D) float32 features: pixels scaled to [0, 1], averaged over f×f boxes,
    f = ceil(max(H, W) / FEATURE_SIDE), rows and columns beyond a multiple of f dropped (D = H//f·W//f·C)."""
    x = np.asarray(x)
    n, h, w = x.shape[:3]
    f = -(-max(h, w) // FEATURE_SIDE)
    if f == 1:
        return x.reshape(n, -1).astype(np.float32) / 255
    x = x[:, :h // f * f, :w // f * f].reshape(n, h // f, f, w // f, f, -1)
    return (x.mean((2, 4), dtype=np.float32) / 255).reshape(n, -1)


# ------------------------------------------------------------------------------------------ index files
def read_index_file(path: str | os.PathLike, labels: np.ndarray, num_labels: int, num_classes: int) -> np.ndarray:
    """Sorted labeled indices from a run's split.npz (refused if made for other training labels), a `.npy`
    of integers, or a text file of integers separated by whitespace or commas (`#` starts a comment).
    They must lie in the training set, be unique, number --data.num_labels (all samples for -1), and be
    class-balanced unless they are the whole training set."""
    p = Path(path)
    where = f"--data.split=file:{p}"
    if not p.is_file():
        raise ValueError(f"{where}: no such file; give a run's {SPLIT_FILE}, a .npy or a text file of labeled indices")
    if p.suffix == ".npz":
        idx, meta = load_split(p)
        if meta.get("labels_sha256", labels_hash(labels)) != labels_hash(labels):
            raise ValueError(f"{where} was saved for other training labels (sha256 {meta['labels_sha256'][:12]}… vs "
                             f"{labels_hash(labels)[:12]}… now, dataset {meta.get('dataset')!r}); its indices would "
                             "pick other images: use it only with the data it was made for")
    elif p.suffix == ".npy":
        try:
            idx = np.load(p, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - a damaged or foreign file
            raise ValueError(f"{where} is not a readable .npy ({type(e).__name__}: {e})") from None
    else:
        tokens = re.sub(r"#[^\n]*", "", p.read_text()).replace(",", " ").split()
        bad = [t for t in tokens if not re.fullmatch(r"[+-]?\d+", t)]
        if bad:
            raise ValueError(f"{where}: {bad[0]!r} is not an integer index; the file must hold training-set "
                             "indices separated by whitespace or commas")
        idx = np.array([int(t) for t in tokens], dtype=np.int64)
    return _checked_indices(idx, labels, num_labels, num_classes, where)


def _checked_indices(idx: np.ndarray, labels: np.ndarray, num_labels: int, num_classes: int, where: str) -> np.ndarray:
    n = len(labels)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{where} holds {idx.dtype}{list(idx.shape)}; it must be a 1-d list of integer indices")
    if idx.size == 0:
        raise ValueError(f"{where} holds no indices")
    out = idx[(idx < 0) | (idx >= n)]
    if out.size:
        raise ValueError(f"{where}: indices {_few(out)} lie outside the {n} training samples [0, {n})")
    u, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{where}: indices {_few(u[counts > 1])} appear more than once")
    want = n if num_labels == -1 else num_labels
    if len(u) != want:
        raise ValueError(f"{where} holds {len(u)} labeled indices but --data.num_labels={num_labels} asks for "
                         f"{want}; use --data.num_labels={len(u)}")
    per = np.bincount(labels[u], minlength=num_classes)
    if len(u) < n and (per != per[0]).any():
        raise ValueError(f"{where}: labeled samples per class are {per.tolist()}, not class-balanced "
                         f"({len(u) / num_classes:g} each); give a balanced index file")
    return u.astype(np.int64)


def _few(a: np.ndarray, k: int = 8) -> str:
    a = np.asarray(a).tolist()
    return str(a[:k])[:-1] + (f", … ({len(a)} in all)]" if len(a) > k else "]")


# ------------------------------------------------------------------------------------- the run's split
def make_split(d: Any, ds: Any) -> tuple[Split, dict]:
    """The split a run trains on, from its DataConfig `d` and loaded Dataset `ds`, and the meta saved with it
    (strategy and parameters, the labels' hash, the split's hash)."""
    labels = np.asarray(ds.train_y)
    features, described = None, None
    if d.split in ("representative", "unrepresentative"):
        features, described = _features(d, ds)
    split = split_labeled(labels, d.num_labels, ds.num_classes, d.split_seed, d.include_labeled_in_unlabeled,
                          strategy=d.split, features=features)
    meta = {"dataset": d.name, "num_labels": d.num_labels, "num_classes": ds.num_classes, "split": d.split,
            "include_labeled_in_unlabeled": d.include_labeled_in_unlabeled, "labels_sha256": labels_hash(labels),
            "split_sha256": _sha256(split.lb_idx, split.lb_y, split.ulb_idx)}
    if d.split == "random":
        meta["seed"] = d.split_seed
    if described:
        meta["features"] = described
    return split, meta


def _features(d: Any, ds: Any) -> tuple[Features, str]:
    n = len(ds.train_y)
    if d.split_features:
        try:
            f = np.load(d.split_features, mmap_mode="r", allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - missing, damaged or foreign file
            raise ValueError(f"--data.split_features={d.split_features} is not a readable .npy "
                             f"({type(e).__name__}: {e}); give an (N, D) array, one row per training sample") from None
        if f.ndim != 2 or len(f) != n:
            raise ValueError(f"--data.split_features={d.split_features} has shape {f.shape}; it needs ({n}, D): "
                             "one row per training sample, in the reader's order")
        return (lambda idx: f[idx]), f"file:{d.split_features} sha256 {_sha256(np.asarray(f))[:16]}"
    if ds.train_x is None:
        raise ValueError(f"--data.split={d.split} on {d.name} (image files) needs --data.split_features=PATH.npy: "
                         f"({n}, D) features of the training images, in the reader's order")
    h, w = ds.train_x.shape[1:3]
    f = -(-max(h, w) // FEATURE_SIDE)
    shown = f"pixels/255 at {h}x{w}" if f == 1 else f"pixels/255, {f}x{f} box mean → {h // f}x{w // f}"
    return (lambda idx: pixel_features(ds.train_x[idx])), shown


def labels_hash(labels: np.ndarray) -> str:
    """sha256 of the labels as little-endian int64: identifies the training set a split was made for."""
    return _sha256(np.asarray(labels))


def _sha256(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype="<i8" if np.issubdtype(a.dtype, np.integer) else None).tobytes())
    return h.hexdigest()


_META_KEYS = ("dataset", "num_labels", "split", "labels_sha256", "split_sha256")


def save_split(path: str | os.PathLike, split: Split, meta: dict) -> None:
    """Write the split as .npz (lb_idx, lb_y, ulb_idx, meta as JSON); `meta` as made by `make_split`."""
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"split meta lacks {missing}; give {', '.join(_META_KEYS)}")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")  # write then rename: a crash never leaves half a file
    np.savez(tmp, lb_idx=np.asarray(split.lb_idx, np.int64), lb_y=np.asarray(split.lb_y, np.int64),
             ulb_idx=np.asarray(split.ulb_idx, np.int64), meta=np.array(json.dumps(meta, sort_keys=True)))
    os.replace(tmp, path)


def load_split(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """The labeled indices and the meta of a saved split.npz (`--data.split=file:RUN/split.npz`)."""
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            return z["lb_idx"], json.loads(str(z["meta"]))
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file
        raise ValueError(f"split file {path} is unreadable ({type(e).__name__}: {e}); give a {SPLIT_FILE} "
                         "written by a run") from None


# ------------------------------------------------------------------------------------------- on resume
def split_state(split: Split, meta: dict) -> dict:
    """What a checkpoint carries to recognise its split: the labeled indices and labels, and the meta."""
    return {"lb_idx": split.lb_idx, "lb_y": split.lb_y, "meta": meta}


def split_from_state(saved: dict, n: int) -> tuple[Split, dict]:
    """The split a checkpoint carries (`split_state`) over a training set of `n` samples, without making it
    again (representative selection takes minutes at CIFAR scale): what `fastssl eval` needs, the sizes."""
    lb_idx, lb_y = np.asarray(saved["lb_idx"], np.int64), np.asarray(saved["lb_y"], np.int64)
    every = np.arange(n, dtype=np.int64)
    ulb_idx = every if saved["meta"].get("include_labeled_in_unlabeled", True) else np.setdiff1d(every, lb_idx)
    return Split(lb_idx, ulb_idx, lb_y), dict(saved["meta"])


def check_same_split(saved: dict, split: Split, meta: dict, source: str) -> None:
    """Refuse (ValueError) a split that differs from `saved` (a `split_state`), naming what differs."""
    problems = [f"{k}: {source} {saved['meta'].get(k)!r}, now {meta.get(k)!r}"
                for k in sorted(set(saved["meta"]) | set(meta)) if saved["meta"].get(k) != meta.get(k)]
    gone, new = np.setdiff1d(saved["lb_idx"], split.lb_idx), np.setdiff1d(split.lb_idx, saved["lb_idx"])
    if gone.size or new.size:
        problems.append(f"labeled indices only in the checkpoint's split: {_few(gone)}; only in this run's: {_few(new)}")
    common, i, j = np.intersect1d(saved["lb_idx"], split.lb_idx, return_indices=True)
    relabeled = saved["lb_y"][i] != split.lb_y[j]
    if relabeled.any():
        problems.append(f"labels of labeled samples {_few(common[relabeled])}: checkpoint {_few(saved['lb_y'][i][relabeled])}, "
                        f"now {_few(split.lb_y[j][relabeled])}")
    if problems:
        raise ValueError(f"the labeled split differs from the one {source} was trained on; refusing to resume:\n  "
                         + "\n  ".join(problems) + "\nresume with the data files (--data.root) and --data.split the "
                         "run started with, or start a new run without --train.resume")
