"""scripts/gpu_check.sh: the GPU protocol's bookkeeping (targets, pytest counts) and its CPU dry run (the same
stages at tiny sizes), whose output folder must be what the device tool can bring back."""
import gzip
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check_report", REPO / "scripts" / "gpu_check_report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def _step(fast_it_s, ceiling_ratio, syncs, sync_free=True):
    return {"systems": {"fastssl": {"it_s": fast_it_s, "syncs_per_step": syncs, "sync_free": sync_free},
                        "ceiling": {"it_s": fast_it_s / ceiling_ratio}},
            "ratios": {"fastssl/ceiling": ceiling_ratio}}


def test_targets_pass_and_fail_at_the_thresholds():
    base = {"systems": {"baseline": {"it_s": 6.0}}}
    rows = report.targets("fastssl", _step(150.0, 0.90, 0.0), base)
    assert [r["pass"] for r in rows] == [True, True, True, True]
    assert rows[2]["value"] == pytest.approx(25.0)  # 150 it/s over the baseline's 6
    rows = report.targets("fastssl", _step(149.0, 0.89, 0.05), {"systems": {"baseline": {"it_s": 6.0}}})
    assert [r["pass"] for r in rows] == [False, False, False, False]
    rows = report.targets("fastssl", _step(200.0, 0.95, 0.0, sync_free=False), None)
    assert [r["pass"] for r in rows] == [True, True, None, False]  # no baseline run: N/A, not a pass


def test_pytest_counts_read_the_summary_line():
    text = "....s\n=== short test summary ===\nSKIPPED [1] x\n3 passed, 1 skipped, 12 deselected in 4.20s\n"
    assert report.pytest_counts(text) == {"passed": 3, "skipped": 1, "deselected": 12}
    assert report.pytest_counts("1 failed, 2 passed, 1 error in 0.5s") == {"failed": 1, "passed": 2, "error": 1}
    assert report.pytest_counts("no pytest here") == {}


@pytest.mark.slow
def test_dry_run_of_both_phases_fills_one_folder(tmp_path):
    """Both phases on the CPU into one folder: at most 8 files, none over 16 MiB, every stage ok, the summaries
    parse and their figures are the ones in the results files."""
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "TRITON_INTERPRET")}
    env.update(GPU_CHECK_DRY="1", GPU_CHECK_BUDGET="900", PYTHON=os.environ.get("PYTHON", "python3"))
    for phase in ("A", "B"):
        out = subprocess.run(["bash", "scripts/gpu_check.sh", phase, str(tmp_path)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=1200)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert f"phase {phase}: targets" in out.stdout
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(f"{k}-{p}.{ext}" for p in "AB" for k, ext in
                           (("summary", "json"), ("log", "txt"), ("results", "json"), ("trace", "json.gz")))
    assert all((tmp_path / f).stat().st_size <= 16 * 2**20 for f in files)

    for phase, fast in (("A", "fastssl_synth"), ("B", "fastssl")):
        summary = json.loads((tmp_path / f"summary-{phase}.json").read_text())
        results = json.loads((tmp_path / f"results-{phase}.json").read_text())
        bad = {n: s for n, s in summary["stages"].items() if s["status"] != "ok"}
        assert not bad, bad
        assert summary["figures"]["step"]["systems"][fast]["it_s"] == results["step"]["systems"][fast]["it_s"]
        assert summary["figures"]["baseline"]["it_s"] == results["baseline"]["systems"]["baseline"]["it_s"]
        assert [t["name"].split()[0] for t in summary["targets"]] == [fast, f"{fast}/ceiling", f"{fast}/baseline", fast]
        trace = json.loads(gzip.decompress((tmp_path / f"trace-{phase}.json.gz").read_bytes()))
        assert trace["traceEvents"]
    a = json.loads((tmp_path / "summary-A.json").read_text())
    assert a["stages"]["kernel_tests"]["pytest"]["skipped"] > 0  # the -m gpu tests, collected and skipped on CPU
    (group,) = a["figures"]["kernels"]  # the dry run's one case: the eager reference at 448x10 on CPU
    assert "448x10" in group and set(a["figures"]["kernels"][group]["median_us"]) == {"eager_reference"}
    b = json.loads((tmp_path / "summary-B.json").read_text())
    assert b["figures"]["step"]["systems"]["fastssl"]["next_ms_per_step_median"] >= 0
    assert any(k.startswith("dali") and v > 0 for k, v in b["figures"]["pipeline_views_s"].items())
