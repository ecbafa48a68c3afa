"""scripts/reproduce.py: recipe selection, commands, skip/resume decisions, the table's statistics, and a
real run → skip → resume → table cycle on a synthetic CIFAR-10 in the official pickle format."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from _readers_formats import cifar_row, dump_py2

spec = importlib.util.spec_from_file_location("reproduce", Path(__file__).parents[1] / "scripts" / "reproduce.py")
repro = importlib.util.module_from_spec(spec)
spec.loader.exec_module(repro)


def test_select_patterns_in_recipe_order_and_unknown_patterns_fail():
    assert repro.select(["cifar10_fixmatch_*"]) == ["cifar10_fixmatch_40", "cifar10_fixmatch_250",
                                                     "cifar10_fixmatch_4000"]
    assert repro.select(["svhn_*_40", "stl10_fixmatch_40"]) == ["svhn_fixmatch_40", "svhn_supervised_40",
                                                               "stl10_fixmatch_40"]
    with pytest.raises(SystemExit, match=r"no recipe matches \['cifar11_\*'\]"):
        repro.select(["cifar10_fixmatch_40", "cifar11_*"])


def test_dry_run_prints_torchrun_commands_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    rc = repro.main(["run", "cifar10_fixmatch_40", "--seeds", "0,1", "--nproc", "8", "--data-root", "/d",
                     "--out", str(out), "--dry-run", "--", "--train.compile_mode=max-autotune"])
    assert rc == 0 and not out.exists()
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[")]
    assert len(lines) == 2
    for seed, line in enumerate(lines):
        assert "-m torch.distributed.run --standalone --nproc_per_node=8 -m fastssl train --recipe cifar10_fixmatch_40" in line
        assert f"--train.seed={seed}" in line and f"--train.out={out}/cifar10_fixmatch_40/seed{seed}" in line
        assert line.endswith("--data.root=/d --train.compile_mode=max-autotune")
        assert "--train.resume" not in line


def test_state_new_resume_done(tmp_path):
    d = tmp_path / "run"
    assert repro.state(d, 100) == "new"
    d.mkdir()
    (d / "metrics.jsonl").write_text("")
    assert repro.state(d, 100) == "new"
    (d / "ckpt-50.pt").write_bytes(b"")
    assert repro.state(d, 100) == "resume"
    (d / "summary.json").write_text(json.dumps({"step": 50}))  # an earlier, shorter run: not this one
    assert repro.state(d, 100) == "resume"
    (d / "summary.json").write_text(json.dumps({"step": 100}))
    assert repro.state(d, 100) == "done"
    cmd = repro.command("cifar10_fixmatch_40", 3, d, data_root=None, nproc=1, resume=True, extra=[])
    assert cmd[:3] == [sys.executable, "-m", "fastssl"] and cmd[-1] == f"--train.resume={d}"


def test_final_step_follows_extra_options_in_both_forms():
    assert repro._steps("cifar10_fixmatch_40", []) == 1 << 20
    assert repro._steps("cifar10_fixmatch_40", ["--train.steps=300"]) == 300
    assert repro._steps("cifar10_fixmatch_40", ["--model.name=cnn_small", "--train.steps", "70"]) == 70


def _summary(path: Path, best: float, last: float):
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"step": 10, "top1": last, "best_top1": best,
                                                   "mean_last5_top1": last}))


def test_table_mean_sample_std_and_reference(tmp_path):
    for seed, best, last in ((0, 92.0, 91.0), (1, 93.0, 92.5), (2, 94.5, 94.0)):
        _summary(tmp_path / "cifar10_fixmatch_40" / f"seed{seed}", best, last)
    _summary(tmp_path / "cifar10_dash_40" / "seed0", 90.0, 89.0)  # no TorchSSL figure; one seed: no ±
    (tmp_path / "cifar10_flexmatch_40" / "seed0").mkdir(parents=True)  # unfinished: no summary, not listed
    rows = repro.table(tmp_path).splitlines()
    assert len(rows) == 4
    # by hand: mean 93.1667, sample std sqrt(((-7/6)^2 + (-1/6)^2 + (4/3)^2) / 2) = 1.2583; 93.1667 - 92.53
    assert rows[2] == "| cifar10_fixmatch_40 | 0,1,2 | 93.17 ± 1.26 | 92.50 ± 1.50 | 92.53 ± 0.28 | +0.64 |"
    assert math.isclose(np.std([92.0, 93.0, 94.5], ddof=1), 1.2583, abs_tol=1e-4)
    assert rows[3] == "| cifar10_dash_40 | 0 | 90.00 | 89.00 | — | — |"
    with pytest.raises(SystemExit, match="no finished runs"):
        repro.table(tmp_path / "empty")


def _write_cifar10(root: Path, per_batch: int = 12, n_test: int = 20) -> Path:
    """The official python pickle batches, class-balanced labels so 40 labels (4 per class) can be drawn."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        n = per_batch if i < 5 else n_test
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        name = f"data_batch_{i + 1}" if i < 5 else "test_batch"
        dump_py2({b"batch_label": name.encode(), b"labels": [(i * n + j) % 10 for j in range(n)],
                  b"data": np.stack([cifar_row(im) for im in x]), b"filenames": [b"x.png"] * n}, d / name)
    dump_py2({b"label_names": [b"c%d" % k for k in range(10)], b"num_cases_per_batch": 10000, b"num_vis": 3072},
             d / "batches.meta")
    return d


def test_run_skip_resume_and_table_for_real(tmp_path, capsys):
    data = _write_cifar10(tmp_path)
    out = tmp_path / "runs"
    small = ["--model.name=cnn_small", "--train.steps=2", "--train.eval_every=2", "--train.ckpt_every=1",
             "--data.batch_size=10", "--data.uratio=1", "--data.eval_batch_size=10", "--data.num_threads=1"]
    args = ["run", "cifar10_fixmatch_40", "--seeds", "0", "--data-root", str(data), "--out", str(out), "--", *small]
    assert repro.main(args) == 0
    run_dir = out / "cifar10_fixmatch_40" / "seed0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 2 and 0.0 <= summary["top1"] <= 100.0
    assert json.loads((run_dir / "config.json").read_text())["config"]["data"]["num_labels"] == 40
    capsys.readouterr()

    assert repro.main(args) == 0  # finished: skipped, nothing run
    assert "1 run(s), 1 done, 0 to run" in capsys.readouterr().out

    (run_dir / "summary.json").unlink()  # as if killed after its last checkpoint
    assert repro.main(args) == 0
    printed = capsys.readouterr().out
    assert "(resuming)" in printed and f"--train.resume={run_dir}" in printed
    assert json.loads((run_dir / "summary.json").read_text())["top1"] == summary["top1"]
    assert "| cifar10_fixmatch_40 | 0 |" in repro.table(out)
