"""fastssl report: seeds grouped by config, the plotted lines and bands equal the runs' metrics.jsonl (mean and
sample std over seeds computed here with numpy), valid PNGs of the stated size, and the Markdown table."""
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from fastssl import report
from fastssl.cli import main


def _write_run(path, seed, lr, records):
    path.mkdir(parents=True)
    config = {"algo": {"name": "fixmatch"}, "optim": {"lr": lr},
              "train": {"seed": seed, "out": str(path), "steps": 400}}  # seed 1 below stopped early
    (path / "config.json").write_text(json.dumps({"config": config, "host": "x"}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _records(seed, steps, with_mask=True):
    rng = np.random.default_rng(seed)
    out = []
    for s in steps:
        rec = {"step": s, "top1": float(rng.uniform(10, 90)), "loss": float(rng.uniform(0.1, 2)),
               "lr": 0.03 * (1 - s / 1000), "its_per_sec": float(rng.uniform(5, 20))}
        if with_mask:
            rec |= {"mask_ratio": float(rng.uniform(0, 1)), "pl_acc": float(rng.uniform(0, 1))}
        out.append(rec)
    return out


@pytest.fixture
def runs(tmp_path):
    recs = {0: _records(0, [100, 200, 300, 400]), 1: _records(1, [100, 200, 300]),
            2: _records(2, [100, 200, 300, 400], with_mask=False)}
    _write_run(tmp_path / "fm" / "seed0", 0, 0.03, recs[0])
    _write_run(tmp_path / "fm" / "seed1", 1, 0.03, recs[1])
    _write_run(tmp_path / "sup", 0, 0.1, recs[2])  # another config: its own line
    return tmp_path, recs


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_seeds_grouped_and_plotted_as_mean_and_std_band(runs):
    pytest.importorskip("matplotlib", reason="optional extra: pip install 'fastssl[plots]'")
    root, recs = runs
    groups = report.group_runs([report.read_run(p) for p in report.find_runs([root])])
    assert [(g.label, [r.seed for r in g.runs]) for g in groups] == [("fm", [0, 1]), ("sup", [0])]
    fig = report.plot_metric(groups, "top1")
    (ax,) = fig.axes
    fm_line, sup_line = ax.get_lines()
    both = np.array([[r["top1"] for r in recs[0][:3]], [r["top1"] for r in recs[1]]])
    np.testing.assert_array_equal(fm_line.get_xdata(), [100, 200, 300])  # the steps both seeds reached
    np.testing.assert_allclose(fm_line.get_ydata(), both.mean(0), rtol=1e-12)
    np.testing.assert_array_equal(sup_line.get_xdata(), [100, 200, 300, 400])
    np.testing.assert_allclose(sup_line.get_ydata(), [r["top1"] for r in recs[2]], rtol=1e-12)
    (band,) = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    std = both.std(0, ddof=1)
    for lo, hi in zip(both.mean(0) - std, both.mean(0) + std):
        assert np.isclose(ys, lo).any() and np.isclose(ys, hi).any()
    assert ys.min() == pytest.approx((both.mean(0) - std).min())
    assert ys.max() == pytest.approx((both.mean(0) + std).max())
    assert fm_line.get_label() == "fm (mean ± std, 2 seeds)" and sup_line.get_label() == "sup"


def test_report_command_writes_pngs_and_table(runs, capsys):
    pytest.importorskip("matplotlib", reason="optional extra: pip install 'fastssl[plots]'")
    root, recs = runs
    out = root / "report"
    assert main(["report", str(root / "fm"), str(root / "sup"), "--out", str(out), "--last-n", "2"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{m}.png" for m in report.METRICS] + ["summary.md"])
    for m in report.METRICS:
        assert _png_size(out / f"{m}.png") == (640, 400)
    rows = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| ")]
    assert rows[0] == "| run | seed | steps | final top-1 | best top-1 | mean of last 2 | it/s |"

    def by_hand(rs):
        top1 = [r["top1"] for r in rs]
        steps = np.diff([0] + [r["step"] for r in rs])
        its = steps.sum() / (steps / [r["its_per_sec"] for r in rs]).sum()  # total steps over total time
        return rs[-1]["step"], top1[-1], max(top1), np.mean(top1[-2:]), its

    stats = {seed: by_hand(recs[seed]) for seed in recs}
    for row, (label, seed) in zip(rows[1:3], (("fm", 0), ("fm", 1))):
        steps, final, best, last, its = stats[seed]
        assert row == f"| {label} | {seed} | {steps} | {final:.2f} | {best:.2f} | {last:.2f} | {its:.2f} |"
    finals = [stats[0][1], stats[1][1]]
    assert rows[3].startswith(f"| **fm** | 2 seeds | 400 | {np.mean(finals):.2f} ± {np.std(finals, ddof=1):.2f} |")
    assert rows[4].startswith(f"| sup | 0 | 400 | {stats[2][1]:.2f} |")


def test_report_of_a_real_run_matches_its_summary(tmp_path):
    pytest.importorskip("matplotlib", reason="optional extra: pip install 'fastssl[plots]'")
    from fastssl.train.trainer import Trainer
    from test_trainer import tiny_cfg

    summary = Trainer(tiny_cfg(tmp_path / "run")).fit()
    files = report.write_report([tmp_path / "run"], tmp_path / "rep")
    assert {p.name for p in files} >= {"top1.png", "mask_ratio.png", "pl_acc.png", "summary.md"}
    row = (tmp_path / "rep" / "summary.md").read_text().splitlines()[4]
    assert row.startswith(f"| run | 0 | 6 | {summary['top1']:.2f} | {summary['best_top1']:.2f} | "
                          f"{summary['mean_last5_top1']:.2f} |")


def test_missing_matplotlib_names_the_extra_and_help_stays_light(runs, monkeypatch, capsys):
    root, _ = runs
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["report", str(root), "--out", str(root / "r")]) == 2
    assert capsys.readouterr().err.strip() == ('fastssl: error: fastssl report draws with matplotlib: '
                                               'pip install "fastssl[plots]"')
    assert not (root / "r").exists()
    code = ("import sys; from fastssl.cli import main; main(['--help']); "
            "assert 'fastssl.report' not in sys.modules and 'matplotlib' not in sys.modules")
    assert "fastssl report RUN_DIR" in subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                                       text=True).stdout
