"""Bookkeeping for scripts/gpu_check.sh: records each stage as it ends, and the phase's figures and targets.

    python scripts/gpu_check_report.py stage OUT PHASE NAME RC SECONDS LIMIT STAGE_OUTPUT [JSON]
    python scripts/gpu_check_report.py finish OUT PHASE

`stage` adds the stage's status (exit code, seconds, pytest counts read from its output) to
OUT/summary-PHASE.json and, given a JSON file the stage wrote, stores it under the stage's name in
OUT/results-PHASE.json. `finish` reads results-PHASE.json, writes the figures and the PASS/FAIL targets
into summary-PHASE.json and prints them. Both rewrite their file whole (write to a temporary name, then
rename), so a phase cut short by a timeout still leaves valid JSON behind.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

TARGETS = {"it_s": 150.0, "of_ceiling": 0.90, "x_baseline": 25.0, "syncs_per_step": 0.0}
"""FixMatch, WRN-28-2, CIFAR shapes, B=64, μ=7, one H200: end-to-end it/s, fraction of the model-only
ceiling, speed-up over the reference-style baseline, host syncs per steady-state step"""


def _load(path: Path, default):
    return json.loads(path.read_text()) if path.is_file() else default


def _save(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def pytest_counts(text: str) -> dict[str, int]:
    """Counts from pytest's last summary line, e.g. '3 passed, 2 skipped, 1 deselected in 4.2s'."""
    lines = [ln for ln in text.splitlines() if re.search(r"\b(passed|failed|skipped|error|errors|no tests ran)\b", ln)
             and re.search(r" in [\d.]+s", ln)]
    if not lines:
        return {}
    return {k.rstrip("s") if k == "errors" else k: int(n)
            for n, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)", lines[-1])}


def stage(out: Path, phase: str, name: str, rc: str, seconds: str, limit: str, output: str,
          json_file: str | None = None) -> None:
    text = Path(output).read_text(errors="replace") if Path(output).is_file() else ""
    rec = {"rc": int(rc), "seconds": int(seconds), "limit_s": int(limit),
           "status": "ok" if rc == "0" else ("timeout" if rc in ("124", "137") else
                                              ("skipped: phase budget spent" if rc == "-1" else "failed"))}
    counts = pytest_counts(text)
    if counts:
        rec["pytest"] = counts
        if rc == "5":
            rec["status"] = "no tests selected"
    ema = re.search(r"EMA = (\d+)% of copy", text)
    if ema:
        rec["ema_pct_of_copy_bandwidth"] = int(ema.group(1))
    if json_file and Path(json_file).is_file():
        try:
            data = json.loads(Path(json_file).read_text())
        except json.JSONDecodeError as e:  # a stage killed while writing it
            rec["results"] = f"unreadable: {e}"
        else:
            results_path = out / f"results-{phase}.json"
            results = _load(results_path, {})
            results[name] = data
            _save(results_path, results)
            rec["results"] = results_path.name
    summary = _load(out / f"summary-{phase}.json", {"phase": phase})
    summary.setdefault("stages", {})[name] = rec
    _save(out / f"summary-{phase}.json", summary)


def kernel_figures(bench: dict) -> dict:
    """Median µs per impl for each pytest-benchmark group, and how much faster Triton is than each reference."""
    groups: dict[str, dict[str, float]] = {}
    for b in bench.get("benchmarks", []):
        impl = b.get("params", {}).get("impl")
        if impl is not None:
            groups.setdefault(b["group"], {})[impl] = round(b["stats"]["median"] * 1e6, 2)
    out = {}
    for group, t in groups.items():
        rec = {"median_us": t}
        for fast, slow in (("triton", "eager_reference"), ("compiled_triton", "compiled_reference"),
                           ("triton", "compiled_reference"), ("triton_flat", "foreach_lerp"), ("triton_flat", "loop")):
            if fast in t and slow in t:
                rec[f"{slow}/{fast}"] = round(t[slow] / t[fast], 2)
        out[group] = rec
    return out


def step_figures(step: dict) -> dict:
    keep = ("it_s", "img_s", "step_ms_median", "syncs_per_step", "sync_free", "sync_error", "sync_ops_per_step",
            "next_ms_per_step_median", "next_ms_per_step_mean", "warmup_s", "peak_mem_gib_above_resident", "error")
    return {"systems": {n: {k: e[k] for k in keep if k in e} for n, e in step.get("systems", {}).items()},
            "ratios": step.get("ratios", {}), "setup": step.get("setup", {}), "profile_trace": step.get("profile_trace")}


def _target(name: str, value, ok: bool | None) -> dict:
    return {"name": name, "value": value, "pass": ok}


def targets(fast: str, step: dict, baseline: dict | None) -> list[dict]:
    """PASS/FAIL of `fast` (fastssl end to end, or fastssl_synth: the step alone) against the targets."""
    e = step.get("systems", {}).get(fast, {})
    ceiling = step.get("systems", {}).get("ceiling", {}).get("it_s")
    base = (baseline or {}).get("systems", {}).get("baseline", {}).get("it_s")
    it_s = e.get("it_s")
    rows = [_target(f"{fast} >= {TARGETS['it_s']:.0f} it/s", it_s, None if it_s is None else it_s >= TARGETS["it_s"])]
    # ceiling: the paired ratio of the interleaved run; baseline: a separate short run (it is CPU-bound)
    r = step.get("ratios", {}).get(f"{fast}/ceiling")
    rows.append(_target(f"{fast}/ceiling >= {TARGETS['of_ceiling']:.2f}", r, None if r is None else r >= TARGETS["of_ceiling"]))
    r = it_s / base if it_s and base else None
    rows.append(_target(f"{fast}/baseline >= {TARGETS['x_baseline']:.0f}x", r, None if r is None else r >= TARGETS["x_baseline"]))
    s = e.get("syncs_per_step")
    rows.append(_target(f"{fast} host syncs/step == 0 (and sync-free under 'error' mode)", s,
                        None if s is None else (s == TARGETS["syncs_per_step"] and e.get("sync_free") is True)))
    return rows


def finish(out: Path, phase: str) -> None:
    results = _load(out / f"results-{phase}.json", {})
    ph = _load(out / f"summary-{phase}.json", {"phase": phase})
    figures = {}
    if "kernel_bench" in results:
        figures["kernels"] = kernel_figures(results["kernel_bench"])
    if "step" in results:
        figures["step"] = step_figures(results["step"])
    if "baseline" in results:
        figures["baseline"] = step_figures(results["baseline"])["systems"].get("baseline", {})
    if "pipeline" in results:
        figures["pipeline_views_s"] = {k: v.get("views_s") for k, v in results["pipeline"].get("loaders", {}).items()}
    ph["figures"] = figures
    fast = "fastssl" if phase == "B" else "fastssl_synth"
    ph["targets"] = targets(fast, results["step"], results.get("baseline")) if "step" in results else []
    ph["env"] = results.get("step", {}).get("env", {})
    _save(out / f"summary-{phase}.json", ph)

    print(f"\n== phase {phase}: stages")
    for name, rec in ph.get("stages", {}).items():
        print(f"  {name:<16} {rec['status']:<28} {rec['seconds']:>4}s  {rec.get('pytest', '')}")
    print(f"== phase {phase}: targets ({'end to end' if phase == 'B' else 'synthetic data: the step alone'})")
    for t in ph["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "N/A "}[t["pass"]]
        val = t["value"]
        print(f"  {verdict}  {t['name']}: {round(val, 3) if isinstance(val, float) else val}")
    step = figures.get("step", {})
    for name, e in step.get("systems", {}).items():
        print(f"  {name:<14} " + ", ".join(f"{k}={round(v, 3) if isinstance(v, float) else v}" for k, v in e.items()))
    for group, rec in figures.get("kernels", {}).items():
        print(f"  {group}: " + ", ".join(f"{k}={v}" for k, v in rec.items() if k != "median_us"))


if __name__ == "__main__":
    cmd, out, phase, *rest = sys.argv[1:]
    if cmd == "stage":
        stage(Path(out), phase, *rest)
    elif cmd == "finish":
        finish(Path(out), phase)
    else:
        sys.exit(f"unknown command {cmd!r}: use stage or finish")
