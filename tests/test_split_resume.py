"""The split through the trainer: saved with the run and in the checkpoint, reusable with --data.split=file:,
and a resume on a different split (changed data file labels, changed index file) refused by name."""
import numpy as np
import pytest
import torch

from fastssl.config import Config, apply_overrides
from fastssl.data.splits import load_split
from fastssl.train.trainer import Trainer

TINY = {"data.name": "npz", "data.num_labels": 20, "data.batch_size": 8, "data.uratio": 2, "data.eval_batch_size": 64,
        "train.steps": 4, "train.eval_every": 2, "train.log_every": 2, "train.ckpt_every": 2, "train.progress": False,
        "train.compile": "off", "train.ema_decay": 0.9}


def _write_npz(path, swap=None):
    """200 train / 40 test 16×16 gray images of 10 classes; `swap` exchanges two training labels."""
    rng = np.random.default_rng(0)
    y = np.arange(200) % 10
    if swap:
        y[list(swap)] = y[list(swap[::-1])]
    np.savez(path, x_train=rng.integers(0, 256, (200, 16, 16), dtype=np.uint8), y_train=y,
             x_test=rng.integers(0, 256, (40, 16, 16), dtype=np.uint8), y_test=np.arange(40) % 10)


def _cfg(root, out, **extra):
    cfg = Config()
    apply_overrides(cfg, {**TINY, "data.root": str(root), "train.out": str(out), **extra})
    return cfg


@pytest.fixture(scope="module")
def rep_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("rep")
    _write_npz(base / "d.npz")
    Trainer(_cfg(base / "d.npz", base / "run", **{"data.split": "representative"})).fit()
    return base


def test_representative_resume_is_bit_identical(rep_run, tmp_path):
    resumed = Trainer(_cfg(rep_run / "d.npz", tmp_path, **{"data.split": "representative",
                                                            "train.resume": str(rep_run / "run" / "ckpt-2.pt")}))
    resumed.fit()
    ref = torch.load(rep_run / "run" / "ckpt-4.pt", weights_only=False)
    got = torch.load(tmp_path / "ckpt-4.pt", weights_only=False)
    for part in ("model", "ema", "algorithm"):
        for k, v in ref[part].items():
            assert torch.equal(v, got[part][k]), f"{part}.{k} differs after resume"
    assert np.array_equal(ref["split"]["lb_idx"], got["split"]["lb_idx"]) and ref["split"]["meta"] == got["split"]["meta"]


def test_split_file_of_a_run_gives_the_same_split(rep_run, tmp_path):
    first, meta = load_split(rep_run / "run" / "split.npz")
    assert meta["split"] == "representative" and meta["features"].startswith("pixels/255")
    again = Trainer(_cfg(rep_run / "d.npz", tmp_path, **{"data.split": f"file:{rep_run / 'run' / 'split.npz'}"}))
    assert np.array_equal(again.data.split.lb_idx, first)
    assert again.data.split_meta["split_sha256"] == meta["split_sha256"]


def test_resume_after_the_labels_changed_is_refused(rep_run, tmp_path):
    ck = torch.load(rep_run / "run" / "ckpt-2.pt", weights_only=False)
    a = int(ck["split"]["lb_idx"][0])  # relabel a labeled sample: its class changes, and so does the split
    b = a + 1
    _write_npz(tmp_path / "d.npz", swap=(a, b))
    with pytest.raises(ValueError) as e:
        Trainer(_cfg(tmp_path / "d.npz", tmp_path / "out", **{"data.split": "representative",
                                                                "train.resume": str(rep_run / "run" / "ckpt-2.pt")}))
    msg = str(e.value)
    assert f"the labeled split differs from the one checkpoint {rep_run / 'run' / 'ckpt-2.pt'} was trained on" in msg
    assert "labels_sha256: checkpoint" in msg and "split_sha256" in msg and "--data.root" in msg


def test_resume_after_the_index_file_changed_is_refused(tmp_path):
    _write_npz(tmp_path / "d.npz")
    idx = tmp_path / "labeled.txt"
    idx.write_text(" ".join(map(str, range(20))))  # samples 0..19: two per class
    Trainer(_cfg(tmp_path / "d.npz", tmp_path / "run", **{"data.split": f"file:{idx}", "train.steps": 2})).fit()
    idx.write_text(" ".join(map(str, range(20, 40))))
    with pytest.raises(ValueError) as e:
        Trainer(_cfg(tmp_path / "d.npz", tmp_path / "run", **{"data.split": f"file:{idx}", "train.steps": 2,
                                                               "train.resume": str(tmp_path / "run")}))
    msg = str(e.value)
    assert "labeled indices only in the checkpoint's split: [0, 1, 2, 3, 4, 5, 6, 7, … (20 in all)]" in msg
    assert "only in this run's: [20, 21, 22" in msg


def test_eval_reads_the_checkpoints_split_instead_of_making_it(rep_run, monkeypatch, capsys):
    """`fastssl eval` of a run trained on a representative split takes the split from the checkpoint
    (selection is minutes at CIFAR scale and eval needs only its sizes): no split is made, the algorithm
    sees the run's labeled/unlabeled sizes, and the top-1 equals the one the run's own last eval logged."""
    import json

    from fastssl import cli
    from fastssl.data import splits

    def refuse(*a, **k):
        raise AssertionError("fastssl eval made the split again")

    monkeypatch.setattr(splits, "make_split", refuse)
    assert cli.main(["eval", "--checkpoint", str(rep_run / "run")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    logged = [json.loads(line) for line in (rep_run / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in logged if "top1" in r][-1]
    assert result["step"] == last["step"] == 4 and result["top1"] == pytest.approx(last["top1"], abs=1e-9)
    lb_idx, meta = load_split(rep_run / "run" / "split.npz")
    sizes = splits.split_from_state({"lb_idx": lb_idx, "lb_y": np.zeros_like(lb_idx), "meta": meta}, 200)[0]
    assert len(sizes.lb_idx) == 20 and len(sizes.ulb_idx) == (200 if meta["include_labeled_in_unlabeled"] else 180)
